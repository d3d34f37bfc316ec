"""scripts/find-python, which `make` uses to pick the interpreter for .venv: Python 3.10-3.12 (Aim, the
tracker, has no build for 3.13+), or a refusal within seconds that says what to install.

Each test runs the real script on real interpreters from pyenv, symlinked into a temporary bin/ that is
the whole PATH (/usr/bin is left out: it may hold a supported python3.x of its own, which the script
would rightly pick), with HOME an empty folder so that ~/.pyenv is not found unless a test puts it there.
"""
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import REPO

SCRIPT = REPO / "scripts" / "find-python"
PYENV_VERSIONS = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
MESSAGE = "swinray needs Python 3.10, 3.11 or 3.12"


def pyenv_python(minor: int) -> Path:
    """The real interpreter of a pyenv Python 3.<minor>, or skip the test cleanly."""
    found = sorted(PYENV_VERSIONS.glob(f"3.{minor}.*/bin/python3"))
    if not found:
        pytest.skip(f"no Python 3.{minor} under {PYENV_VERSIONS} (pyenv install 3.{minor})")
    return found[-1]


def version_of(python: str) -> tuple[int, int]:
    out = subprocess.run([python, "-c", "import sys; print(*sys.version_info[:2])"],
                         capture_output=True, text=True, check=True)
    return tuple(map(int, out.stdout.split()))


def find_python(tmp_path, links: dict[str, Path], python: str | None = None, home: Path | None = None):
    """Run the script with PATH = a bin/ holding ``links`` (name -> interpreter); (result, seconds)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, target in links.items():
        (bin_dir / name).symlink_to(target)
    if home is None:
        home = tmp_path / "home"
        home.mkdir()
    env = {"PATH": str(bin_dir), "HOME": str(home)}
    start = time.monotonic()
    result = subprocess.run(["/bin/sh", str(SCRIPT)] + ([python] if python is not None else []),
                            env=env, capture_output=True, text=True, timeout=60)
    return result, time.monotonic() - start


def test_python3_313_falls_through_to_python312(tmp_path):
    result, _ = find_python(tmp_path, {"python3": pyenv_python(13), "python3.12": pyenv_python(12)})
    assert result.returncode == 0, result.stderr
    assert version_of(result.stdout.strip()) == (3, 12)


def test_python3_313_alone_is_refused_quickly_with_what_to_install(tmp_path):
    result, seconds = find_python(tmp_path, {"python3": pyenv_python(13)})
    assert result.returncode != 0 and result.stdout == ""
    assert seconds < 5
    assert MESSAGE in result.stderr and "python3 is Python 3.13." in result.stderr, result.stderr
    assert "Install Python 3.12" in result.stderr and "make PYTHON=" in result.stderr


def test_supported_python3_comes_first(tmp_path):
    result, _ = find_python(tmp_path, {"python3": pyenv_python(11), "python3.12": pyenv_python(12)})
    assert result.returncode == 0, result.stderr
    assert version_of(result.stdout.strip()) == (3, 11)


@pytest.mark.parametrize("minor", [13, 9])
def test_explicit_unsupported_python_is_refused_not_replaced(tmp_path, minor):
    """`make PYTHON=...` names the interpreter: a 3.13 or a 3.9 is refused even with python3.12 at hand."""
    explicit = str(pyenv_python(minor))
    result, seconds = find_python(tmp_path, {"python3": pyenv_python(12), "python3.12": pyenv_python(12)},
                                  python=explicit)
    assert result.returncode != 0 and result.stdout == ""
    assert seconds < 5
    assert MESSAGE in result.stderr and f"PYTHON={explicit} is Python 3.{minor}." in result.stderr, result.stderr


def test_explicit_supported_python_is_honoured(tmp_path):
    explicit = str(pyenv_python(10))
    result, _ = find_python(tmp_path, {"python3": pyenv_python(11)}, python=explicit)
    assert result.returncode == 0, result.stderr
    assert version_of(result.stdout.strip()) == (3, 10)


def test_pyenv_install_is_found_when_path_has_none(tmp_path):
    home = tmp_path / "home"
    (home / ".pyenv" / "versions" / "3.12.99" / "bin").mkdir(parents=True)
    (home / ".pyenv" / "versions" / "3.12.99" / "bin" / "python3").symlink_to(pyenv_python(12))
    result, _ = find_python(tmp_path, {"python3": pyenv_python(13)}, home=home)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(home / ".pyenv" / "versions" / "3.12.99" / "bin" / "python3")


def make_install(tmp_path, path_python: Path, venv_python: Path | None = None):
    """`make install` in a copy of the Makefile and the script, PATH holding python3 -> path_python, rm
    and touch; with venv_python, a .venv it made earlier, without pip. (result, seconds, project)
    pip may use no index, so that a broken recipe fails here rather than downloading torch."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    project = tmp_path / "project"
    (project / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "Makefile", project)
    shutil.copy(SCRIPT, project / "scripts")
    (project / "pyproject.toml").write_text("")
    if venv_python is not None:
        subprocess.run([venv_python, "-m", "venv", "--without-pip", project / ".venv"], check=True)
        (project / ".venv" / "kept").touch()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(path_python)
    for tool in ("rm", "touch"):                              # all the recipe needs up to its first pip
        (bin_dir / tool).symlink_to(shutil.which(tool))
    start = time.monotonic()
    result = subprocess.run([make, "install"], cwd=project, capture_output=True, text=True, timeout=60,
                            env={"PATH": str(bin_dir), "HOME": str(tmp_path),
                                 "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1"})
    return result, time.monotonic() - start, project


@pytest.mark.parametrize("stale_venv", [False, True])
def test_make_install_stops_before_touching_venv(tmp_path, stale_venv):
    """With only a 3.13 about, `make install` stops within seconds, creating no .venv, and leaves one
    made earlier by 3.13 as it was."""
    python313 = pyenv_python(13)
    result, seconds, project = make_install(tmp_path, python313, python313 if stale_venv else None)
    assert result.returncode != 0
    assert seconds < 5
    assert "python3 is Python 3.13." in result.stderr, result.stderr
    if stale_venv:
        assert (project / ".venv" / "kept").exists()
    else:
        assert not (project / ".venv").exists()


def test_make_install_keeps_a_venv_of_a_supported_python(tmp_path):
    """A .venv made earlier by 3.12 is used as it is, even when PATH has only a 3.13 (this one has no
    pip, so `make` stops at its first pip step, which is as far as this test needs)."""
    result, _, project = make_install(tmp_path, pyenv_python(13), venv_python=pyenv_python(12))
    assert "No module named pip" in result.stderr, result.stderr
    assert MESSAGE not in result.stderr and "-m venv" not in result.stdout
    assert (project / ".venv" / "kept").exists()
