"""Following a log as it grows: whole lines only, a rewritten log read again from its start, and a
log written on another node read from its object."""
import json

from swinray.logtail import LogTail
from swinray.storage import local_path, upload


def test_only_whole_lines_are_read_and_each_once(tmp_path):
    log = tmp_path / "metrics.jsonl"
    tail = LogTail(log)
    assert tail.read() == ([], False)                                   # not written yet
    log.write_bytes(b'{"step": 1}\n{"step": 2}\n{"st')                  # the third is being written
    assert tail.read() == ([b'{"step": 1}', b'{"step": 2}'], False)
    assert tail.read() == ([], False)
    with log.open("ab") as f:
        f.write(b'ep": 3}\n')
    assert tail.read() == ([b'{"step": 3}'], False)


def test_a_rewritten_log_is_read_again_from_its_start_even_when_it_grew_past_where_reading_stopped(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in (1, 2, 3)))
    tail = LogTail(log)
    assert len(tail.read()[0]) == 3
    # A resumed run dropped step 3 and redid it, then went on: longer than before, step 3 differs
    log.write_text("".join(json.dumps({"step": s, "loss": 0.1 * s}) + "\n" for s in (1, 2, 3, 4)))
    lines, from_start = tail.read()
    assert from_start and [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4]
    saved = tail.state()                                                # where a later reader goes on
    again = LogTail(log, offset=saved["offset"], last=saved["last"].encode())
    assert again.read() == ([], False)


def test_a_log_written_on_another_node_is_read_from_its_object(s3_bucket, tmp_path, monkeypatch):
    uri = f"s3://{s3_bucket['bucket']}/runs/r/metrics.jsonl"
    monkeypatch.setenv("SWINRAY_STORAGE_MIRROR", str(tmp_path / "node-a"))
    written = local_path(uri)
    written.parent.mkdir(parents=True)
    written.write_text('{"step": 1}\n')
    upload(written)
    monkeypatch.setenv("SWINRAY_STORAGE_MIRROR", str(tmp_path / "node-b"))
    tail = LogTail(local_path(uri), remote_poll_s=3600)
    assert tail.read() == ([b'{"step": 1}'], False)                    # nothing here: the object
    monkeypatch.setenv("SWINRAY_STORAGE_MIRROR", str(tmp_path / "node-a"))
    with written.open("a") as f:
        f.write('{"step": 2}\n')
    upload(written)
    monkeypatch.setenv("SWINRAY_STORAGE_MIRROR", str(tmp_path / "node-b"))
    assert tail.read() == ([], False)                                   # not again before the interval
    assert tail.read(final=True) == ([b'{"step": 2}'], False)
    assert not local_path(uri).exists()                                 # this node's copy is not touched
