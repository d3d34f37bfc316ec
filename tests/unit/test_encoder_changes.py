"""An encoder file pretrained again in place changes no setting of the runs that use it: a started
run records the weights it began from and is not resumed, nor its old model reused, from others."""
import json

import pytest

from swinray.bench import label_efficiency
from swinray.bench.label_efficiency import ROW_FILE, _reuse_key, one_run, run_config
from swinray.config import BenchConfig, FinetuneConfig, apply_overrides
from swinray.data.phantom import write_phantom_dataset
from swinray.errors import EncoderChanged, RunChanged
from swinray.presets import preset
from swinray.resolve import resolve_finetune, save
from swinray.storage import file_sha256
from swinray.train.finetune import PRETRAINED_REPORT, encoder_digest_to_record, plan_finetune

GRID = {"spacing_mm": [3.906, 3.906, 2.5], "window_hu": [-160.0, 240.0]}


@pytest.fixture
def encoder(tmp_path):
    path = tmp_path / "ssl" / "encoder.pt"
    path.parent.mkdir()
    path.write_bytes(b"first weights")
    return path


def started(run_dir, encoder_sha256) -> None:
    """A run folder as training leaves it: its report of the encoder, and a log to resume from."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / PRETRAINED_REPORT).write_text(json.dumps({"sha256": encoder_sha256}))
    (run_dir / "metrics.jsonl").write_text('{"step": 1}\n')


def test_a_started_run_is_refused_other_weights_in_its_encoder_file(tmp_path, encoder):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    first = file_sha256(encoder)
    assert encoder_digest_to_record(run_dir, str(encoder), first) == first          # not started: recorded
    started(run_dir, first)
    encoder.write_bytes(b"second weights")
    with pytest.raises(EncoderChanged, match=rf"seg.pretrained={encoder}: the file changed since {run_dir} started"):
        encoder_digest_to_record(run_dir, str(encoder), file_sha256(encoder))
    encoder.write_bytes(b"first weights")
    assert encoder_digest_to_record(run_dir, str(encoder), first) == first          # the same weights again
    (run_dir / PRETRAINED_REPORT).write_text('{"loaded": 126}')                      # reported before sha256 was
    assert encoder_digest_to_record(run_dir, str(encoder), first) is None           # unknown: not vouched for


def test_fine_tuning_refuses_a_changed_encoder_before_preprocessing(tmp_path, encoder):
    write_phantom_dataset(tmp_path / "data", 2, shape=(64, 64, 32))
    cfg = apply_overrides(preset(FinetuneConfig, "debug"), {
        "data.source": str(tmp_path / "data"), "data.cache_dir": str(tmp_path / "cache"),
        "run.storage": str(tmp_path / "runs"), "seg.pretrained": str(encoder)})
    resolved = resolve_finetune(cfg, print)
    save(resolved)
    started(tmp_path / "runs" / cfg.run.name, file_sha256(encoder))
    encoder.write_bytes(b"second weights")
    with pytest.raises(EncoderChanged):
        plan_finetune(resolved)
    assert resolved.paths.cache.startswith(str(tmp_path / "cache")) and not (tmp_path / "cache").exists()


def bench_run(tmp_path, encoder):
    cfg = apply_overrides(preset(BenchConfig, "debug"), {"out_dir": str(tmp_path),
                                                         "data.source": str(tmp_path / "no-such-dataset")})
    return run_config(cfg, "ssl", str(encoder), 0.1, 0)


def finished(run_dir, key: dict) -> None:
    """A finished run's folder as the bench leaves it: started, and its row."""
    started(run_dir, key["encoder_sha256"])
    (run_dir / ROW_FILE).write_text(json.dumps({"config": key, "row": {"test_dice": 0.5}}))


def test_a_finished_run_of_the_former_weights_is_kept_aside_and_run_again(tmp_path, encoder):
    """Left in place, the former run would be taken as finished and its old model scored as the new row."""
    run_cfg = bench_run(tmp_path, encoder)
    runs, lines = tmp_path / "label_efficiency", []
    finished(runs / run_cfg.run.name, _reuse_key(run_cfg, GRID))
    encoder.write_bytes(b"second weights")
    again = one_run(run_cfg, {"run": run_cfg.run.name}, lines.append, GRID)
    assert "no-such-dataset" in again["error"]                  # it ran again (and fails here, without data)
    kept = [p for p in runs.iterdir() if p.name.startswith(f"{run_cfg.run.name}.superseded-")]
    assert len(kept) == 1 and (kept[0] / ROW_FILE).is_file() and (kept[0] / "metrics.jsonl").is_file()
    assert not (runs / run_cfg.run.name / "metrics.jsonl").exists()
    assert "other settings (encoder_sha256)" in lines[0] and str(kept[0]) in lines[0]


def test_a_row_of_other_weights_restored_onto_a_run_of_these_keeps_the_run(tmp_path, encoder):
    """Rows copied back from another machine, whose CPU made other weights, onto this machine's run in
    progress: the row is set aside, the run's checkpoints are not."""
    run_cfg = bench_run(tmp_path, encoder)
    run_dir = tmp_path / "label_efficiency" / run_cfg.run.name
    started(run_dir, file_sha256(encoder))
    (run_dir / ROW_FILE).write_text(json.dumps({"config": {**_reuse_key(run_cfg, GRID), "encoder_sha256": "other"},
                                                "row": {"test_dice": 0.5}}))
    one_run(run_cfg, {"run": run_cfg.run.name}, lambda *_: None, GRID)
    assert (run_dir / "metrics.jsonl").is_file() and not (run_dir / ROW_FILE).exists()
    assert len(list(run_dir.glob(f"{ROW_FILE}.superseded-*"))) == 1


@pytest.mark.parametrize("refusal", [EncoderChanged("the file changed"), RunChanged("another config")])
def test_a_run_folder_fine_tuning_refuses_is_kept_aside_and_the_run_started_again(tmp_path, encoder, monkeypatch,
                                                                                   refusal):
    """An unfinished run of the former weights, or a run of other settings, under the name asked for."""
    run_cfg = bench_run(tmp_path, encoder)
    runs = tmp_path / "label_efficiency"
    started(runs / run_cfg.run.name, "former")
    calls = []

    def refused_once(cfg, log):          # the fault: fine-tuning refuses the folder's run as another
        calls.append((runs / run_cfg.run.name).exists())
        if len(calls) == 1:
            raise refusal
        raise RuntimeError("ran again")
    monkeypatch.setattr(label_efficiency, "run_finetune", refused_once)
    row = one_run(run_cfg, {"run": run_cfg.run.name}, lambda *_: None, GRID)
    assert calls == [True, False] and row["error"] == "RuntimeError: ran again"
    assert [p.name.split(".superseded-")[0] for p in runs.iterdir()] == [run_cfg.run.name]
