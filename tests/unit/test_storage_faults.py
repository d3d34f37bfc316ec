"""Faults named as faults: a place a command cannot write to (no permission, a read-only or full disk,
a file where a folder should be) stops it with one message naming that place, the cause and the
setting that chose it, and `ok: false`. No valid case is refused for it, nothing half-written counts
as done, and a rerun once it is fixed keeps what was finished. The data are small generated phantoms;
a full disk is injected (every write into a file on it fails with ENOSPC, as a full filesystem's does)."""
import builtins
import errno
import io
import json
import os
import pickle
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from ray.train import ControllerError, WorkerGroupError

import swinray.data.cache
import swinray.storage
import swinray.writable
from swinray.cli import main
from swinray.data.cache import cached_row
from swinray.data.case_pipeline import process_case
from swinray.data.datasets import load_dataset
from swinray.data.phantom import write_phantom_dataset
from swinray.data.tasks import TaskSpec
from swinray.errors import StorageError
from swinray.models.registry import build_swin_unetr
from swinray.models.segmenter import save_segmenter
from swinray.storage import SyncedLog
from swinray.train.trainer import training_fault

CAUSES = {"read_only": "permission denied (errno 13); make it writable",
          "immutable": "operation not permitted (errno 1); make it writable",
          "file_in_the_way": "not a directory (errno 20); move the file that stands where a folder should be",
          "full": "no space left on device (errno 28); free space"}


def phantom(tmp_path, cases: int = 3) -> Path:
    write_phantom_dataset(tmp_path / "phantom", cases, seed=1, shape=(48, 48, 16))
    return tmp_path / "phantom"


@pytest.fixture
def disk(monkeypatch):
    """``disk.fill(folder)``: the disk holding ``folder`` is full from now on, for every file our
    writers (``swinray.storage``, ``swinray.writable``) open there; ``disk.free()`` frees it."""
    class Disk:
        full: Path | None = None

        def fill(self, folder):
            self.full = Path(folder)

        def free(self):
            self.full = None

        def holds(self, path) -> bool:
            return self.full is not None and self.full in Path(os.path.abspath(path)).parents

    state = Disk()

    class File(io.FileIO):
        def write(self, data):
            if state.holds(self.name):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return super().write(data)

    def opener(path, mode="r", *args, **kwargs):
        writes = ("w" in mode or "x" in mode) and "b" in mode
        return File(path, mode) if writes else builtins.open(path, mode, *args, **kwargs)
    for module in (swinray.storage, swinray.writable):
        monkeypatch.setattr(module, "open", opener, raising=False)
    return state


@pytest.fixture
def blocked(tmp_path, request, disk):
    """``blocked(how)``: a folder a command cannot write to, ``how`` one of CAUSES. A read-only
    parent (0o555) does not stop root: skipped then; an immutable one (chattr +i) stops root too,
    and is skipped where chattr cannot set it."""
    def make(how: str) -> Path:
        parent = tmp_path / how
        if how == "read_only":
            parent.mkdir()
            parent.chmod(0o555)
            request.addfinalizer(lambda: parent.chmod(0o755))
            if os.access(parent, os.W_OK):
                pytest.skip("this user writes to read-only folders (root); see immutable and file_in_the_way")
            return parent / "out"
        if how == "immutable":
            parent.mkdir()
            if subprocess.run(["chattr", "+i", str(parent)], capture_output=True).returncode != 0:
                pytest.skip("chattr +i is not available here")
            request.addfinalizer(lambda: subprocess.run(["chattr", "-i", str(parent)], check=True))
            return parent / "out"
        if how == "full":
            disk.fill(tmp_path / "full")
            return tmp_path / "full" / "out"
        (tmp_path / "a_file").write_text("in the way")
        return tmp_path / "a_file" / "out"
    return make


def run(capfd, verb: str, *args: str) -> tuple[int, dict, str]:
    """A command as a user runs it: (exit code, its one JSON line, what it said on stderr)."""
    code = main(verb, list(args))
    out, err = capfd.readouterr()
    assert len(out.strip().splitlines()) == 1, out
    return code, json.loads(out), err


def assert_one_clear_message(code: int, summary: dict, err: str, folder: Path, cause: str, key: str) -> None:
    assert code == 1 and summary["ok"] is False
    assert summary["error"].startswith(f"cannot write to {folder}") and cause in summary["error"]
    assert summary["error"].endswith(f", or choose another {key}")
    assert err.count(summary["error"]) == 1 and "Traceback" not in err and "rejected" not in err


# --------------------------------------------------------------------------------------------
# Before any work: the place is tried before Ray starts
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("how", CAUSES)
def test_a_cache_folder_that_cannot_be_written_stops_preprocessing_before_ray_refusing_no_case(
        tmp_path, capfd, blocked, how):
    cache_dir = blocked(how)
    code, summary, err = run(capfd, "preprocess", "--data", str(phantom(tmp_path)), "--set",
                             f"data.cache_dir={cache_dir}", "--set", f"run.storage={tmp_path / 'runs'}")
    assert_one_clear_message(code, summary, err, cache_dir, CAUSES[how], "data.cache_dir")
    assert "ray: " not in err                                       # no Ray started for it
    assert not list(tmp_path.rglob("*rejected*"))


@pytest.mark.parametrize("how", CAUSES)
@pytest.mark.parametrize("verb, args, key, folder", [
    ("preprocess", ["--data", "PHANTOM"], "run.storage", "preprocess"),
    ("finetune", ["--preset", "debug", "--data", "PHANTOM"], "run.storage", "finetune-debug"),
    ("pretrain", [], "data.phantom_dir", "phantom"),        # no --data: the phantom in run.storage, its first write
], ids=["preprocess", "finetune", "pretrain_on_the_phantom"])
def test_a_run_storage_that_cannot_be_written_stops_the_command_with_one_message(
        tmp_path, capfd, blocked, how, verb, args, key, folder):
    storage = blocked(how)
    args = [str(phantom(tmp_path)) if a == "PHANTOM" else a for a in args]
    code, summary, err = run(capfd, verb, *args, "--set", f"run.storage={storage}")
    assert_one_clear_message(code, summary, err, storage / folder, CAUSES[how], key)
    assert not list(tmp_path.rglob("*rejected*")) and not list(tmp_path.rglob("config.json"))


@pytest.mark.parametrize("how", CAUSES)
def test_a_predict_output_folder_that_cannot_be_written_stops_it_with_one_message(tmp_path, capfd, blocked, how):
    output = blocked(how)
    code, summary, err = run(capfd, "predict", "--checkpoint", str(tmp_path / "model.pt"), "--input",
                             str(phantom(tmp_path) / "imagesTr"), "--output", str(output))
    assert_one_clear_message(code, summary, err, output, CAUSES[how], "folder")


# --------------------------------------------------------------------------------------------
# Mid-run: a disk that fills
# --------------------------------------------------------------------------------------------

def test_a_disk_that_fills_while_cases_are_written_is_a_fault_never_a_rejected_case(tmp_path, disk):
    """What each Ray Data task of preprocessing runs, one case at a time; the driver stops on a fault row."""
    dataset = load_dataset(phantom(tmp_path), log=lambda m: None)
    cache = tmp_path / "cache"
    assert [process_case(c, dataset.task, cache)["status"] for c in dataset.cases[:2]] == ["written"] * 2
    disk.fill(tmp_path)
    row = process_case(dataset.cases[2], dataset.task, cache)
    assert row["status"] == "fault" and row["reason"] == (
        f"cannot write to {cache}: no space left on device (errno 28); free space, or choose another data.cache_dir")
    files = sorted(p.name for p in (cache / "cases").iterdir())
    assert files == ["phantom_000.json", "phantom_000.npy", "phantom_001.json", "phantom_001.npy"]  # none half
    disk.free()
    assert [cached_row(cache, c) is not None for c in dataset.cases] == [True, True, False]   # a rerun's work
    assert process_case(dataset.cases[2], dataset.task, cache)["status"] == "written"


def test_predict_stops_when_its_output_disk_fills_and_keeps_the_label_maps_written(tmp_path, capfd, monkeypatch):
    """A real (untrained, tiny) model on two small scans; the disk fills after the first label map."""
    task = TaskSpec("Faults", "CT", ("CT",), ("background", "organ"), (1.5, 1.5, 2.0), "ct_window", (-175.0, 250.0),
                    (64, 64, 64))
    scans = tmp_path / "scans"
    scans.mkdir()
    body = np.full((32, 32, 16), -1000, np.int16)
    body[4:-4, 4:-4, 2:-2] = 40
    for name in ("s0", "s1"):
        nib.save(nib.Nifti1Image(body, np.diag([1.5, 1.5, 2.0, 1.0])), scans / f"{name}.nii.gz")
    kwargs = {"in_channels": 1, "out_channels": 2, "feature_size": 12, "window_size": 4}
    model = save_segmenter(build_swin_unetr(**kwargs), tmp_path / "model.pt", kwargs, task.roi_size,
                           json.loads(json.dumps(task.__dict__)))
    out, saved, real_save = tmp_path / "labels", [], nib.save

    def save_on_a_disk_that_fills(image, filename):
        if saved:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(image, filename)
        saved.append(filename)
    monkeypatch.setattr(nib, "save", save_on_a_disk_that_fills)
    code, summary, err = run(capfd, "predict", "--checkpoint", str(model), "--input", str(scans), "--output", str(out))
    assert_one_clear_message(code, summary, err, out, CAUSES["full"], "output")
    assert summary["error"] == f"cannot write to {out}: {CAUSES['full']}, or choose another output"
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "s0.nii.gz"]     # kept; nothing half-written


def test_a_training_that_failed_writing_run_storage_is_named_as_that_fault(tmp_path):
    """As Ray Train reports a failed ``fit()``: the workers' errors, or the controller's."""
    run_dir = tmp_path / "runs" / "finetune"
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))              # a write names no file
    refused = PermissionError(errno.EACCES, "Permission denied", str(run_dir / "metrics.jsonl"))
    for error in (WorkerGroupError("rank 1 failed", {0: ValueError("other"), 1: full}), ControllerError(refused)):
        fault = training_fault(error, run_dir)
        assert isinstance(fault, StorageError) and str(fault).startswith(f"cannot write to {run_dir}: ")
        assert str(fault).endswith("or choose another run.storage")
        assert str(pickle.loads(pickle.dumps(fault))) == str(fault)       # crosses from workers whole
    elsewhere = PermissionError(errno.EACCES, "Permission denied", "/data/scans/a.nii.gz")   # an input, not ours
    assert training_fault(WorkerGroupError("rank 0 failed", {0: elsewhere}), run_dir) is None
    assert training_fault(WorkerGroupError("rank 0 failed", {0: RuntimeError("NaN")}), run_dir) is None
    unnamed = PermissionError(errno.EPERM, "Operation not permitted")      # e.g. signalling a process: no place's
    assert training_fault(WorkerGroupError("rank 0 failed", {0: unnamed}), run_dir) is None


def test_a_link_planted_under_a_writers_temporary_name_is_not_written_through(tmp_path):
    victim = tmp_path / "elsewhere" / "precious.txt"
    victim.parent.mkdir()
    victim.write_text("keep me")
    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / f".manifest.json.{os.getpid()}.tmp").symlink_to(victim)
    (folder / f".write-probe.{os.getpid()}").symlink_to(victim)
    swinray.storage.write_json(folder / "manifest.json", {"cases": []})
    swinray.writable.check_writable(folder, "data.cache_dir")
    assert victim.read_text() == "keep me"
    assert json.loads((folder / "manifest.json").read_text()) == {"cases": []}


def test_a_remembered_rejection_outlives_a_change_of_the_relative_limits(tmp_path):
    """Workers refuse cases under the absolute limits only; the relative ones are the driver's, per run."""
    from swinray.config import VolumeLimits
    root = tmp_path / "Data"
    write_phantom_dataset(root, 2, shape=(48, 48, 16))
    dataset = load_dataset(root, log=lambda m: None)
    case = dataset.cases[0]
    Path(case.image[0]).write_bytes(Path(case.image[0]).read_bytes()[:300])        # truncated: refused
    cache = tmp_path / "cache"
    row = process_case(case, dataset.task, cache)
    assert row["status"] == "rejected"
    swinray.storage.write_json(swinray.data.cache.rejection_path(cache, case.case_id), row)
    assert cached_row(cache, case) is not None
    assert cached_row(cache, case, VolumeLimits(max_times_median=4, relative_floor_mb=1)) is not None
    assert cached_row(cache, case, VolumeLimits(max_megavoxels=8)) is None


def test_a_metrics_line_cut_short_by_a_full_disk_is_dropped_when_the_run_resumes(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')
    dropped = SyncedLog(log).keep(lambda line: json.loads(line)["step"] <= 2)
    assert dropped == 1 and log.read_text() == '{"step": 1}\n{"step": 2}\n'
