"""`cluster/*.yaml` pass the checks `ray up` runs (Ray's defaults merged, then Ray's own schema),
and keep what our commands and our security defaults rely on."""
import copy
import re
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from conftest import REPO
from swinray.errors import ConfigError
from swinray.resolve import AIM_REPO_ENV, aim_repo_for
from swinray.runtime import keep_token_private

CONFIGS = sorted((REPO / "cluster").glob("*.yaml"))


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def start_commands(cfg: dict) -> list[str]:
    return cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]


def test_both_cluster_configs_ship():
    assert [p.name for p in CONFIGS] == ["gpu.yaml", "local.yaml"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_ray_up_accepts_the_config(path):
    validate_config(prepare_config(load(path)))        # what `ray up` does before launching anything


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_the_schema_check_is_real(path):
    broken = copy.deepcopy(load(path))
    broken["auth"]["ssh_usr"] = broken["auth"].pop("ssh_user")            # a typo Ray must reject
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_ray_process_uses_token_auth_and_the_dashboard_stays_on_loopback(path):
    cfg = load(path)
    ray_starts = [c for c in start_commands(cfg) if "ray start" in c]
    assert len(ray_starts) == 2 and all(re.search(r"RAY_AUTH_MODE=token [^&;]*ray start", c) for c in ray_starts)
    (head,) = [c for c in cfg["head_start_ray_commands"] if "ray start --head" in c]
    assert "--dashboard-host=127.0.0.1" in head
    assert any(dest.endswith(".ray/auth_token") for dest in cfg["file_mounts"])   # the same token everywhere
    assert any("chmod 600 ~/.ray/auth_token" in c for c in cfg["setup_commands"])  # not world-readable


def all_commands(cfg: dict) -> list[str]:
    keys = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
            "head_start_ray_commands", "worker_start_ray_commands")
    return [c for key in keys for c in cfg.get(key) or []]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_no_aim_server_and_nothing_we_start_listens_beyond_loopback(path):
    commands = all_commands(load(path))
    assert not any(re.search(r"\baim\s+server\b", c) for c in commands)           # no Aim server at all
    assert not any("aim://" in c for c in commands)
    hosts = [h for c in commands for h in re.findall(r"--[\w-]*host[ =](\S+)", c)]
    assert hosts and set(hosts) == {"127.0.0.1"}, hosts       # the dashboard, the Aim UI: loopback only
    assert not any(re.search(r"0\.0\.0\.0|hostname -I|ip addr", c) for c in commands)   # no own address bound
    (aim,) = [c for c in commands if "aim up" in c]
    assert re.search(r"aim up --repo ~/aim --host 127\.0\.0\.1 --port 43800", aim)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_the_ray_token_is_private_to_its_user_on_every_node_however_it_got_there(path):
    cfg = load(path)
    (head,) = [c for c in cfg["head_start_ray_commands"] if "ray start --head" in c]
    (worker,) = [c for c in cfg["worker_start_ray_commands"] if "ray start" in c]
    assert re.search(r"ray start --head.*&& chmod 600 ~/\.ray/auth_token", head, re.DOTALL)   # after Ray writes it
    assert "chmod 600 ~/.ray/auth_token" in worker                                          # after every sync
    assert any("chmod 600 ~/.ray/auth_token" in c for c in cfg["setup_commands"])


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_jobs_on_the_head_track_into_the_repo_its_aim_ui_serves_without_a_flag(path):
    commands = load(path)["head_start_ray_commands"]
    (head,) = [c for c in commands if "ray start --head" in c]
    assert "SWINRAY_AIM_REPO=$HOME/aim " in head          # inherited by every job's driver; `aim up --repo ~/aim`


def test_the_heads_aim_repo_is_the_default_a_flag_still_wins_and_no_server_is_taken(monkeypatch, tmp_path):
    monkeypatch.delenv(AIM_REPO_ENV, raising=False)
    assert aim_repo_for("", str(tmp_path)) == str(tmp_path.resolve())
    monkeypatch.setenv(AIM_REPO_ENV, str(tmp_path / "aim"))
    assert aim_repo_for("", str(tmp_path)) == str(tmp_path / "aim")
    assert aim_repo_for("/shared/aim", str(tmp_path)) == "/shared/aim"
    monkeypatch.setenv(AIM_REPO_ENV, "aim://10.0.0.5:53800")          # a head configured the old way
    with pytest.raises(ConfigError, match=r"\$SWINRAY_AIM_REPO=aim://10.0.0.5:53800: the Aim repo is a folder"):
        aim_repo_for("", str(tmp_path))
    with pytest.raises(ConfigError, match="run.aim_repo=aim://h:53800: .*no authentication"):
        aim_repo_for("aim://h:53800", str(tmp_path))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_the_project_is_synced_where_it_is_installed_without_local_outputs(path):
    cfg = load(path)
    (project,) = [dest for dest, src in cfg["file_mounts"].items() if src == "."]
    installs = cfg.get("setup_commands", []) + cfg.get("head_setup_commands", []) + cfg.get("worker_setup_commands", [])
    target = project.replace("~", "$HOME")
    assert any("pip install" in c and "-e" in c and (project in c or target in c) for c in installs)
    assert {".venv", "outputs", ".git"} <= set(cfg["rsync_exclude"])


def test_gpu_cluster_scales_gpu_workers_from_zero_with_a_spot_option_and_a_cpu_only_head():
    cfg = load(REPO / "cluster" / "gpu.yaml")
    types = cfg["available_node_types"]
    workers = {name: t for name, t in types.items() if name != cfg["head_node_type"]}
    assert all(t["min_workers"] == 0 and t["max_workers"] >= 1 for t in workers.values())
    assert any(t["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot" for t in workers.values())
    assert all(t["node_config"]["InstanceType"].startswith(("g5.", "g6.", "p4", "p5")) for t in workers.values())
    head = types[cfg["head_node_type"]]["node_config"]["InstanceType"]
    assert not head.startswith(("g", "p"))                                    # no GPU on the head
    assert any("whl/cpu" in c for c in cfg["head_setup_commands"])            # so no CUDA torch either
    assert cfg["provider"]["cache_stopped_nodes"] is False


def test_a_token_file_ray_left_world_readable_is_made_the_users_alone(tmp_path, monkeypatch):
    """Ray writes ~/.ray/auth_token 0644, for a new local instance too; every command tightens it."""
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    token = tmp_path / ".ray" / "auth_token"
    token.parent.mkdir()
    token.write_text("secret")
    token.chmod(0o644)
    keep_token_private()
    assert token.stat().st_mode & 0o777 == 0o600
