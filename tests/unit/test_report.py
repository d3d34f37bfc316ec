"""`platform.report`: an Aim experiment read back through Aim's SDK and written as Markdown plus
plots. The repo here is made by our own Tracker, as fine-tuning and sweeps make it."""
import base64
import json
import urllib.parse

import pytest

from swinray.aim_mirror import mirror_to_aim
from swinray.config import ConfigError, ReportConfig
from swinray.report.runs import read_experiment, varying_params
from swinray.report.write import run_report
from swinray.tracking import Tracker, aim_explorer_url

CLASSES = ("anterior", "posterior")


def track(tmp_path, name: str, experiment: str, lr: float, dice: list[float] | None):
    """A run's folder as a run leaves it: its config and rank 0's metrics."""
    run_dir = tmp_path / "runs" / name
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"optim": {"lr": lr, "batch_size": 2},
                                                     "run": {"name": name, "experiment": experiment}}))
    tracker = Tracker(run_dir)
    for step in (1, 2, 3):
        metrics = {"loss": 1.0 / step}
        if dice:
            metrics.update(val_dice=dice[step - 1],
                           **{f"val_dice_{c}": dice[step - 1] + (0.01 if c == "anterior" else -0.01) for c in CLASSES})
        tracker.log(metrics, step)
    tracker.close()


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    track(tmp, "trial-a", "sweep-x", 1e-4, [0.2, 0.5, 0.4])       # best at step 2
    track(tmp, "trial-b", "sweep-x", 3e-3, [0.1, 0.3, 0.6])       # the best run, at step 3
    track(tmp, "trial-c", "sweep-x", 1e-2, None)                  # stopped before validating
    track(tmp, "other", "finetune", 1e-3, [0.9, 0.9, 0.9])        # another experiment: not reported
    with mirror_to_aim(str(tmp / "aim"), folders=[tmp / "runs"], poll_s=0.2) as mirror:   # as a driver does
        pass
    assert mirror.aim_error is None
    return tmp


def test_an_experiments_runs_are_read_with_names_flat_hyperparameters_and_curves(repo):
    runs = read_experiment(str(repo / "aim"), "sweep-x")
    assert [r.name for r in runs] == ["trial-a", "trial-b", "trial-c"]
    assert runs[0].params["optim.lr"] == 1e-4 and runs[0].best("val_dice") == (2, pytest.approx(0.5))
    assert runs[2].best("val_dice") is None
    assert varying_params(runs) == ["optim.lr", "run.name"]         # batch size is the same everywhere


def test_the_report_names_the_best_run_its_per_class_dice_and_writes_three_plots(repo, tmp_path):
    summary = run_report(ReportConfig(aim_repo=str(repo / "aim"), experiment="sweep-x", out_dir=str(tmp_path)),
                         log=lambda *_: None)
    assert summary["runs"] == 3 and summary["validated"] == 2 and summary["hyperparameters"] == ["optim.lr"]
    assert summary["best_run"] == "trial-b" and summary["best_dice"] == pytest.approx(0.6)
    assert summary["best_per_class"] == pytest.approx({"anterior": 0.61, "posterior": 0.59})
    assert [p.split("/")[-1] for p in summary["plots"]] == [
        "val_dice_per_run.png", "parallel_coordinates.png", "best_run_per_class.png"]
    for plot in summary["plots"]:
        with open(plot, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    table = [line for line in (tmp_path / "report.md").read_text().splitlines() if line.startswith("| trial")]
    assert [row.split(" | ")[0] for row in table] == ["| trial-b (best)", "| trial-a", "| trial-c"]  # by Dice
    assert "| 0.6000 | 3 | 3 | 0.003 |" in table[0]


def test_an_unknown_experiment_lists_the_ones_there(repo, tmp_path):
    with pytest.raises(ConfigError, match="experiments there: finetune, sweep-x"):
        run_report(ReportConfig(aim_repo=str(repo / "aim"), experiment="sweep-y", out_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match="no Aim repository"):
        run_report(ReportConfig(aim_repo=str(tmp_path / "nowhere"), experiment="sweep-x", out_dir=str(tmp_path)))


def test_the_report_reads_a_repo_folder_never_an_aim_server(tmp_path):
    with pytest.raises(ConfigError, match="aim_repo=aim://10.0.0.5:53800: a folder holding .aim is read"):
        run_report(ReportConfig(aim_repo="aim://10.0.0.5:53800", experiment="sweep-x", out_dir=str(tmp_path)))


def test_an_explorer_link_carries_the_query_in_aims_own_url_state():
    url = aim_explorer_url('run.experiment == "sweep-x"', page="runs", base="http://127.0.0.1:43800/")
    assert url.startswith("http://127.0.0.1:43800/runs?select=O-")
    state = json.loads(urllib.parse.unquote(base64.b64decode(url.split("O-", 1)[1]).decode()))
    assert state == {"options": [], "query": "", "advancedMode": True, "advancedQuery": 'run.experiment == "sweep-x"'}
