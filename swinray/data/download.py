"""``platform.download``: an MSD task from its official distribution, checked and ready to preprocess.

URLs and MD5 checksums are MONAI's own table (``DecathlonDataset.resource`` / ``.md5``); the archive
is verified with MONAI's ``check_hash`` and unpacked with MONAI's ``extractall`` (which refuses
members that would land outside the output folder). MONAI downloads in one go, so the transfer is
ours: it goes to ``<archive>.part`` and an interrupted download continues where it stopped (HTTP
Range). A complete, verified archive or an extracted task is never fetched again.

    python -m platform.download --task Task04_Hippocampus --root /data/msd
"""
from __future__ import annotations

import http.client
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from swinray.config import ConfigError, DownloadConfig
from swinray.errors import DatasetError
from swinray.progress import Progress

CHUNK = 1 << 20


class DownloadError(DatasetError):
    """A download or its archive is unusable; the message names the URL or file and what to do."""


def msd_table() -> dict[str, tuple[str, str]]:
    """Task name -> (URL, MD5), as MONAI distributes the Decathlon."""
    from monai.apps import DecathlonDataset
    return {task: (url, DecathlonDataset.md5[task]) for task, url in DecathlonDataset.resource.items()}


def fetch(url: str, archive: Path, md5: str, log=print) -> str:
    """``archive`` from ``url``, MD5-checked: "present" (already complete), "downloaded" or "resumed"."""
    from monai.apps.utils import check_hash
    if archive.exists():
        if check_hash(archive, md5, "md5"):
            return "present"
        log(f"{archive}: MD5 is not {md5}; downloading it again")
        archive.unlink()
    part = archive.with_name(archive.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            if offset and response.status != 206:          # the server ignores Range: start over
                offset = 0
            total = offset + int(response.headers.get("Content-Length") or 0)
            progress = Progress(max(total // CHUNK, 1), "MB", f"download {archive.name}", initial=offset // CHUNK)
            with part.open("ab" if offset else "wb") as f:
                while chunk := response.read(CHUNK):
                    f.write(chunk)
                    progress.set(f.tell() // CHUNK)
                received = f.tell()
            progress.close()
            if total > offset and received < total:         # the connection ended early
                raise http.client.IncompleteRead(b"", total - received)
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        kept = part.stat().st_size if part.exists() else 0
        raise DownloadError(f"{url}: download interrupted ({e}); {kept} bytes kept in {part}, "
                            "run the same command again to continue") from None
    if not check_hash(part, md5, "md5"):
        part.unlink()
        raise DownloadError(f"{url}: the downloaded file's MD5 is not {md5}; the file was removed, run the "
                            "same command again (if it fails again, the mirror serves a different file)")
    part.rename(archive)
    return "resumed" if offset else "downloaded"


def extract(archive: Path, root: Path, task: str) -> bool:
    """Unpack into ``root/<task>`` through a staging folder, so an interrupted extraction never
    looks finished; False if the task folder was already there."""
    from monai.apps.utils import extractall
    target = root / task
    if (target / "dataset.json").exists():
        return False
    with tempfile.TemporaryDirectory(prefix=f".extract-{task}-", dir=root) as staging:
        extractall(archive, staging, file_type="tar", has_base=True)
        unpacked = Path(staging) / task
        if not (unpacked / "dataset.json").exists():
            raise DownloadError(f"{archive}: holds no {task}/dataset.json; not an MSD task archive")
        if target.exists():
            shutil.rmtree(target)
        unpacked.rename(target)
    return True


def check_task(folder: Path, log=print) -> dict:
    """The preprocessing's dataset validation on every case: what reads, what is refused and why."""
    from swinray.data.case_pipeline import load_case
    from swinray.data.datasets import load_dataset
    from swinray.data.nifti import CaseError
    dataset = load_dataset(folder)
    progress = Progress(len(dataset.cases), "case", f"check {folder.name}")
    rejected = list(dataset.rejected)
    for case in dataset.cases:
        try:
            load_case(case, dataset.task)
        except CaseError as e:
            rejected.append(str(e))
        progress.update()
    progress.close()
    for reason in rejected:
        log(f"rejected: {reason}")
    return {"cases": len(dataset.cases), "labelled": sum(c.label is not None for c in dataset.cases),
            "rejected": rejected}


def download_task(task: str, cfg: DownloadConfig, log=print) -> dict:
    table = msd_table()
    url, md5 = table[task]
    if cfg.mirror:
        url = f"{cfg.mirror.rstrip('/')}/{url.rsplit('/', 1)[1]}"
    md5 = cfg.md5 or md5
    root = Path(cfg.root)
    root.mkdir(parents=True, exist_ok=True)
    archive = root / url.rsplit("/", 1)[1]
    if (root / task / "dataset.json").exists() and not archive.exists():
        fetched = "extracted before"
    else:
        log(f"{task}: {url} -> {archive}")
        fetched = fetch(url, archive, md5, log)
    extracted = extract(archive, root, task) if archive.exists() else False
    if extracted and not cfg.keep_archive:
        archive.unlink()
    check = check_task(root / task, log) if cfg.check else {}
    log(f"{task}: {fetched}, {'extracted' if extracted else 'already extracted'}"
        + (f", {check['cases']} case(s), {len(check['rejected'])} rejected" if check else ""))
    return {"task": task, "folder": str(root / task), "archive": fetched, "extracted": extracted, **check}


def run_download(cfg: DownloadConfig, log=print) -> dict:
    table = msd_table()
    tasks = sorted(table) if cfg.task == "all" else [cfg.task]
    unknown = [t for t in tasks if t not in table]
    if unknown or not cfg.task:
        raise ConfigError(f"task={cfg.task!r}: name an MSD task ({', '.join(sorted(table))}) or all")
    if cfg.md5 and len(tasks) > 1:
        raise ConfigError("md5 overrides one task's checksum; it cannot be used with task=all")
    results = []
    for task in tasks:
        try:
            results.append(download_task(task, cfg, log))
        except DownloadError as e:               # one task's failure never stops the others
            if len(tasks) == 1:
                raise
            log(f"error: {e}")
            results.append({"task": task, "error": str(e)})
    return {"command": "download", "root": str(Path(cfg.root).resolve()), "tasks": results,
            "ok": all("error" not in r and not r.get("rejected") for r in results)}
