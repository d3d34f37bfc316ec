"""`platform.download` against a local HTTP server on 127.0.0.1 serving a small MSD-layout tar made
here: download, MD5 check, an interrupted transfer resumed with a Range request, and a rerun that
fetches nothing. The official URLs and checksums are MONAI's own table."""
import hashlib
import http.server
import json
import tarfile
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from swinray.config import DownloadConfig
from swinray.data.download import DownloadError, msd_table, run_download

TASK = "Task04_Hippocampus"


def write_msd_tar(tmp: Path, cases: int = 3) -> Path:
    """A tiny Task04_Hippocampus: MRI volumes with anterior/posterior labels, as MSD ships it."""
    task = tmp / "src" / TASK
    (task / "imagesTr").mkdir(parents=True)
    (task / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    training = []
    for i in range(1, cases + 1):
        image = rng.uniform(50, 200, (20, 24, 16)).astype(np.float32)
        label = np.zeros(image.shape, np.uint8)
        label[5:9, 6:12, 4:8], label[10:14, 6:12, 4:8] = 1, 2
        name = f"hippocampus_{i:03d}.nii.gz"
        nib.save(nib.Nifti1Image(image, np.eye(4)), task / "imagesTr" / name)
        nib.save(nib.Nifti1Image(label, np.eye(4)), task / "labelsTr" / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    (task / "dataset.json").write_text(json.dumps({
        "name": "Hippocampus", "modality": {"0": "MRI"},
        "labels": {"0": "background", "1": "Anterior", "2": "Posterior"},
        "numTraining": cases, "training": training, "test": []}))
    archive = tmp / f"{TASK}.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(task, arcname=TASK)
    return archive


class Mirror:
    """Serves files from a folder with Range support; ``cut_after`` drops the connection mid-file."""

    def __init__(self, folder: Path):
        self.folder, self.cut_after, self.requests = folder, None, []
        mirror = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                data = (mirror.folder / self.path.lstrip("/")).read_bytes()
                start = int(self.headers["Range"].split("=")[1].split("-")[0]) if self.headers["Range"] else 0
                mirror.requests.append((self.path, self.headers["Range"]))
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if mirror.cut_after is not None:
                    body, mirror.cut_after = body[:mirror.cut_after], None     # the connection drops
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def mirror(tmp_path):
    archive = write_msd_tar(tmp_path)
    server = Mirror(archive.parent)
    yield server, hashlib.md5(archive.read_bytes()).hexdigest(), archive
    server.server.shutdown()


def config(tmp_path, mirror_url, md5, **kw) -> DownloadConfig:
    return DownloadConfig(task=TASK, root=str(tmp_path / "msd"), mirror=mirror_url, md5=md5, **kw)


def test_the_official_table_is_monais_and_names_every_msd_task():
    table = msd_table()
    assert len(table) == 10 and table[TASK][0].endswith(f"/{TASK}.tar") and len(table[TASK][1]) == 32


def test_a_task_is_downloaded_checked_extracted_and_a_rerun_fetches_nothing(mirror, tmp_path):
    server, md5, _ = mirror
    summary = run_download(config(tmp_path, server.url, md5), log=lambda *_: None)
    (task,) = summary["tasks"]
    assert summary["ok"] and task["archive"] == "downloaded" and task["extracted"] is True
    assert task["cases"] == 3 and task["labelled"] == 3 and task["rejected"] == []
    assert (tmp_path / "msd" / TASK / "dataset.json").exists()
    assert not list((tmp_path / "msd").glob(".extract-*"))          # no staging folder left behind
    again = run_download(config(tmp_path, server.url, md5), log=lambda *_: None)
    assert again["tasks"][0]["archive"] == "present" and again["tasks"][0]["extracted"] is False
    assert len(server.requests) == 1                                 # nothing fetched the second time


def test_an_interrupted_download_resumes_where_it_stopped(mirror, tmp_path):
    server, md5, archive = mirror
    server.cut_after = 10_000
    with pytest.raises(DownloadError, match="run the same command again to continue"):
        run_download(config(tmp_path, server.url, md5), log=lambda *_: None)
    part = tmp_path / "msd" / f"{TASK}.tar.part"
    assert part.stat().st_size == 10_000
    summary = run_download(config(tmp_path, server.url, md5), log=lambda *_: None)
    assert summary["tasks"][0]["archive"] == "resumed" and summary["ok"]
    assert server.requests[-1] == (f"/{TASK}.tar", "bytes=10000-")     # only the rest was asked for
    assert (tmp_path / "msd" / f"{TASK}.tar").read_bytes() == archive.read_bytes() and not part.exists()


def test_a_checksum_mismatch_is_a_clear_error_and_the_file_is_removed(mirror, tmp_path):
    server, _, _ = mirror
    with pytest.raises(DownloadError, match="MD5 is not 0{32}; the file was removed"):
        run_download(config(tmp_path, server.url, "0" * 32), log=lambda *_: None)
    assert list((tmp_path / "msd").iterdir()) == []
