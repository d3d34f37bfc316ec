"""`platform/` shadows the stdlib module from the repo root; the stdlib API must keep working."""
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO

STDLIB_CHECK = (
    "import platform, uuid, sys; "
    "assert platform.__file__.endswith('platform/__init__.py'), platform.__file__; "
    "print(platform.system(), platform.python_version(), platform.machine(), "
    "platform.uname().system, platform.platform(), uuid.uuid4().version)"
)


def test_stdlib_api_works_through_our_package():
    out = subprocess.run([sys.executable, "-c", STDLIB_CHECK], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    system, version, *_ , uuid_version = out.stdout.split()
    assert system == __import__("platform").system()
    assert version == ".".join(map(str, sys.version_info[:3]))
    assert uuid_version == "4"


def test_torch_and_ray_import_under_our_package():
    code = ("import platform, torch, ray; assert platform.__file__.endswith('__init__.py'); "
            "print(torch.__version__, ray.__version__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_every_launcher_answers_help():
    verbs = sorted(p.stem for p in (REPO / "platform").glob("*.py") if p.name != "__init__.py")
    assert {"preprocess", "pretrain", "finetune", "sweep", "evaluate", "predict", "report"} <= set(verbs)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    helps = {verb: subprocess.Popen([sys.executable, "-m", f"platform.{verb}", "--help"], cwd=REPO, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for verb in verbs}                                 # all at once: each is mostly start-up
    for verb, process in helps.items():
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, f"{verb}: {stderr}"
        assert f"python -m platform.{verb}" in stdout


def test_launchers_are_thin():
    for path in (REPO / "platform").glob("*.py"):
        if path.name != "__init__.py":
            assert len(path.read_text().splitlines()) <= 10, f"{path} holds more than a launcher"


def test_python_dash_m_pytest_and_pytest_command_both_work(tmp_path):
    spec = tmp_path / "test_spec.py"
    spec.write_text("import platform\n\ndef test_it():\n    assert platform.system()\n")
    for cmd in ([sys.executable, "-m", "pytest"], [str(Path(sys.executable).parent / "pytest")]):
        out = subprocess.run([*cmd, "-q", "-p", "no:cacheprovider", str(spec)], cwd=REPO,
                             capture_output=True, text=True)
        assert out.returncode == 0 and "1 passed" in out.stdout, (cmd, out.stdout, out.stderr)
