"""Packaging and layering: the install claims no generic top-level names; models and pretext stand alone."""
import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_an_installed_environment_has_no_top_level_models_or_search_spaces(tmp_path):
    """From outside the repository, only ``swinray`` (and its subpackages) is importable."""
    code = ("import importlib.util as u; import swinray.models.registry, swinray.search_spaces as s; "
            "print(u.find_spec('models'), u.find_spec('search_spaces'), s.space_for('BTCV').__module__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["None", "None", "swinray.search_spaces.btcv"]


@pytest.mark.parametrize("folder", ["models", "swinray/pretext"])
def test_models_and_pretext_import_nothing_from_the_rest_of_the_library(folder):
    for path in sorted((REPO / folder).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                assert not node.module.startswith("swinray") or node.module.startswith(f"{folder.replace('/', '.')}"), \
                    f"{path.relative_to(REPO)} imports {node.module}"
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith(("swinray", "models")) for a in node.names), path


def test_a_source_tree_runs_its_own_models_not_those_an_editable_install_points_at(tmp_path):
    """As under ``ray job submit --working-dir .``: the uploaded copy's models/ and search_spaces/ are used."""
    for folder in ("swinray", "models", "search_spaces", "platform"):
        shutil.copytree(REPO / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    code = "import swinray.models.registry as r, swinray.search_spaces.btcv as b; print(r.__file__, b.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(tmp_path / "models" / "registry.py"), str(tmp_path / "search_spaces" / "btcv.py")]
