"""Reruns, on a private Ray instance started per test: preprocessing with nothing to do starts no Ray;
a disk that fills mid-run (under preprocessing's cache, under a training run's storage) stops the
run with one error naming that fault, and the rerun once it is freed keeps all that was finished."""
import contextlib
import json

import pytest
import ray

from swinray.config import DataConfig, PreprocessConfig, PretrainConfig, RunConfig, apply_overrides
from swinray.data.datasets import load_dataset
from swinray.data.phantom import write_phantom_dataset
from swinray.data.preprocess import preprocess_dataset, run_preprocess
from swinray.errors import StorageError
from swinray.presets import preset
from swinray.runtime import shutdown_ray
from swinray.train.pretrain import run_pretrain

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def quiet(*_):
    pass


@pytest.fixture
def private_ray(ray_tmpdir, monkeypatch):
    """``with private_ray(**runtime_env):`` a local Ray of 2 CPUs in the test's temp dir, where an
    instance started by mistake (``init_ray``) would go too; shut down by the end of the test."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", ray_tmpdir)

    @contextlib.contextmanager
    def start(**runtime_env):
        ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=ray_tmpdir, log_to_driver=False,
                 runtime_env=runtime_env or None)
        try:
            yield
        finally:
            shutdown_ray(wait_for_processes=True)
    yield start
    shutdown_ray(wait_for_processes=True)


def disk_that_fills(cache: str, full: str, after: int):
    """A worker setup hook: while the file ``full`` exists, the disk of ``cache`` is full once it
    holds ``after`` finished cases: every write our writers (``swinray.storage``) make there fails
    with ENOSPC, as a full filesystem's does. Self-contained: Ray ships it to workers by value."""
    def hook():
        import builtins
        import errno
        import glob
        import io
        import os

        import swinray.storage

        class File(io.FileIO):
            def write(self, data):
                if os.path.exists(full) and len(glob.glob(f"{cache}/*/cases/*.json")) >= after:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return super().write(data)

        def opener(path, mode="r", *args, **kwargs):
            writes = ("w" in mode or "x" in mode) and "b" in mode
            return File(path, mode) if writes else builtins.open(path, mode, *args, **kwargs)
        swinray.storage.open = opener
    return hook


def metrics_disk_that_fills(run_dir: str, full: str):
    """A worker setup hook: while the file ``full`` exists, the disk of ``run_dir`` is full once Ray
    Train has registered the run's first checkpoint: appending to the metrics log fails with ENOSPC."""
    def hook():
        import errno
        import json
        import os

        import swinray.storage
        append = swinray.storage.SyncedLog.append

        def checkpointed() -> bool:
            try:
                with open(f"{run_dir}/checkpoint_manager_snapshot.json") as f:
                    return bool(json.load(f)["checkpoint_results"])
            except (OSError, ValueError, KeyError):
                return False

        def append_on_a_disk_that_fills(self, line):
            if os.path.exists(full) and checkpointed():
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            append(self, line)
        swinray.storage.SyncedLog.append = append_on_a_disk_that_fills
    return hook


def test_a_rerun_with_unchanged_rejects_starts_no_ray_and_redoes_nothing(private_ray, tmp_path):
    write_phantom_dataset(tmp_path / "data", 2, seed=1, shape=(48, 48, 16))
    broken = tmp_path / "data" / "imagesTr" / "phantom_001.nii.gz"
    broken.write_bytes(broken.read_bytes()[:300])
    dataset = load_dataset(tmp_path / "data", log=quiet)
    with private_ray():
        first = preprocess_dataset(dataset, tmp_path / "cache", 0, RunConfig(), log=quiet)
    assert (first["cases_written"], first["cases_rejected"]) == (1, 1)
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache" / "cases").iterdir()}
    again = preprocess_dataset(dataset, tmp_path / "cache", 0, RunConfig(), log=quiet)
    assert not ray.is_initialized(), "the rerun started Ray"
    assert (again["cases_written"], again["cases_skipped"], again["cases_rejected"]) == (0, 1, 1)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    rejected = json.loads((tmp_path / "cache" / "rejected.json").read_text())
    assert len(rejected) == 1 and "phantom_001.nii.gz: corrupt or truncated gzip stream" in rejected[0]["reason"]


def test_a_cache_disk_that_fills_mid_run_is_one_named_fault_and_a_rerun_keeps_the_finished_cases(
        private_ray, tmp_path):
    write_phantom_dataset(tmp_path / "data", 8, seed=2, shape=(48, 48, 16))
    cache, full = tmp_path / "cache", tmp_path / "disk-is-full"
    full.touch()
    cfg = PreprocessConfig(data=DataConfig(source=str(tmp_path / "data"), cache_dir=str(cache)),
                           run=RunConfig(name="preprocess", storage=str(tmp_path / "runs")))
    with private_ray(worker_process_setup_hook=disk_that_fills(str(cache), str(full), after=3)):
        with pytest.raises(StorageError) as fault:
            run_preprocess(cfg, quiet)
        (folder,) = cache.iterdir()
        assert str(fault.value) == (f"cannot write to {folder}: no space left on device (errno 28); free space, "
                                    "or choose another data.cache_dir")
        finished = {p: p.stat().st_mtime_ns for p in folder.glob("cases/*.json")}
        assert 3 <= len(finished) < 8
        assert not list(cache.rglob("*rejected*"))                 # no valid case refused for it
        full.unlink()                                               # space freed
        again = run_preprocess(cfg, quiet)
    assert again["ok"] and again["cases_rejected"] == 0
    assert again["cases_written"] + again["cases_skipped"] == 8 and again["cases_skipped"] >= len(finished)
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # not redone


def test_a_run_storage_disk_that_fills_mid_training_is_one_named_fault_and_a_rerun_resumes(private_ray, tmp_path):
    """Debug pretraining (8 steps, a checkpoint every 4) whose metrics log hits a full disk after its
    first checkpoint; no retries, so the fault ends the run."""
    cfg = apply_overrides(preset(PretrainConfig, "debug"), {
        "data.phantom_dir": str(tmp_path / "phantom"), "data.cache_dir": str(tmp_path / "cache"),
        "run.storage": str(tmp_path / "runs"), "run.max_failures": 0})
    run_dir, full = tmp_path / "runs" / cfg.run.name, tmp_path / "disk-is-full"
    full.touch()
    with private_ray(worker_process_setup_hook=metrics_disk_that_fills(str(run_dir), str(full))):
        with pytest.raises(StorageError) as fault:
            run_pretrain(cfg, quiet)
        assert str(fault.value) == (f"cannot write to {run_dir}: no space left on device (errno 28); free space, "
                                    "or choose another run.storage")
        logged = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert logged[:4] == [1, 2, 3, 4] and logged[-1] < cfg.optim.num_steps
        full.unlink()                                               # space freed
        again = run_pretrain(cfg, quiet)
    assert again["ok"] and again["steps"] == cfg.optim.num_steps
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, cfg.optim.num_steps + 1))        # resumed from step 4; no step twice
