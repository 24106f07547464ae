"""Download a PhysioNet dataset with sha256 verification and resume.

PhysioNet publishes ``SHA256SUMS.txt`` (``<sha256>  <relative path>`` per line) at the root of each
dataset version. We fetch it first, then every listed file (or those matching ``include``
patterns) into ``dest``: a file already present with the right hash is skipped, a partial
download (``<file>.part``) resumes with an HTTP ``Range`` request, and every file is verified
before it is renamed into place. A wrong hash is retried once from scratch, then reported.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Sequence

from lsemvae.errors import LSEMVAEError

DATASETS: dict[str, str] = {
    "ptb-xl": "https://physionet.org/files/ptb-xl/1.0.3/",
    "ludb": "https://physionet.org/files/ludb/1.0.1/",
}
SUMS_FILE = "SHA256SUMS.txt"
CHUNK = 1 << 16


class DownloadError(LSEMVAEError):
    """A download failed (network, HTTP status, checksum). The message names the URL and file."""


@dataclass
class DownloadSummary:
    downloaded: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)  # already there with the right hash
    resumed: list[str] = field(default_factory=list)
    bytes_fetched: int = 0


def parse_sums(text: str, *, source: str) -> list[tuple[str, str]]:
    """``[(sha256, relative_path)]`` from a SHA256SUMS file; refuses paths that leave the folder."""
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.strip().split(maxsplit=1)
        if len(parts) != 2 or len(parts[0]) != 64 or any(c not in "0123456789abcdef" for c in parts[0].lower()):
            raise DownloadError(f"{source}: line {n} is not '<sha256>  <path>': {line[:80]!r}")
        digest, rel = parts[0].lower(), parts[1].lstrip("*")
        p = PurePosixPath(rel)
        if p.is_absolute() or ".." in p.parts:
            raise DownloadError(f"{source}: line {n}: unsafe path {rel!r}")
        out.append((digest, rel))
    if not out:
        raise DownloadError(f"{source}: no checksums listed")
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _open(url: str, *, start: int = 0, timeout: float = 60.0):
    req = urllib.request.Request(url, headers={"User-Agent": "lsemvae-downloader"})
    if start:
        req.add_header("Range", f"bytes={start}-")
    try:
        return urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and start:  # range beyond the end: the .part is complete or stale
            return None
        raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise DownloadError(f"{url}: cannot connect ({reason}); check the network or --base-url") from None


def _fetch(url: str, target: Path, digest: str, bar) -> tuple[int, bool, bool]:
    """Download ``url`` to ``target`` via ``target.part``: (bytes fetched, resumed, verified).

    A part file that fails verification is deleted, so the next attempt starts from scratch.
    """
    part = target.with_name(target.name + ".part")
    start = part.stat().st_size if part.is_file() else 0
    resp = _open(url, start=start)
    resumed = False
    fetched = 0
    if resp is not None:
        with resp:
            if start and resp.status != 206:  # server ignored Range: start over
                start = 0
            resumed = start > 0
            with open(part, "ab" if start else "wb") as fh:
                while block := resp.read(CHUNK):
                    fh.write(block)
                    fetched += len(block)
                    bar.update(len(block))
                fh.flush()
                os.fsync(fh.fileno())
    if not part.is_file() or _sha256(part) != digest:
        part.unlink(missing_ok=True)
        return fetched, resumed, False
    os.replace(part, target)
    return fetched, resumed, True


def download(
    dataset_or_url: str,
    dest: str | Path,
    *,
    base_url: str | None = None,
    include: Sequence[str] = (),
    limit: int | None = None,
    progress: bool = True,
) -> DownloadSummary:
    """Download ``dataset_or_url`` (a key of :data:`DATASETS`) into ``dest``.

    ``base_url`` overrides the dataset's PhysioNet URL (a mirror, or a local server in tests).
    ``include``: glob patterns on relative paths (``records100/00000/*``); ``limit``: at most this
    many files (after filtering, in listing order). ``SHA256SUMS.txt`` is always saved too.
    """
    from tqdm import tqdm

    if base_url is None:
        if dataset_or_url not in DATASETS:
            raise DownloadError(f"unknown dataset {dataset_or_url!r}; known: {', '.join(DATASETS)} (or pass --base-url)")
        base_url = DATASETS[dataset_or_url]
    base_url = base_url.rstrip("/") + "/"
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)

    sums_url = base_url + SUMS_FILE
    with _open(sums_url) as resp:
        sums_text = resp.read().decode("utf-8")
    entries = parse_sums(sums_text, source=sums_url)
    if include:
        entries = [e for e in entries if any(fnmatch.fnmatch(e[1], pat) for pat in include)]
        if not entries:
            raise DownloadError(f"{sums_url}: no file matches --include {list(include)}")
    if limit is not None:
        entries = entries[:max(0, limit)]
    (dest / SUMS_FILE).write_text(sums_text, encoding="utf-8")

    summary = DownloadSummary()
    failed: list[str] = []
    with tqdm(total=None, unit="B", unit_scale=True, desc=f"download {dataset_or_url}", disable=not progress) as bar:
        for digest, rel in entries:
            target = dest / rel
            if target.is_file() and _sha256(target) == digest:
                summary.present.append(rel)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            url = base_url + urllib.request.quote(rel)
            for _attempt in (1, 2):
                fetched, resumed, ok = _fetch(url, target, digest, bar)
                summary.bytes_fetched += fetched
                if ok:
                    summary.downloaded.append(rel)
                    if resumed:
                        summary.resumed.append(rel)
                    break
            else:
                failed.append(rel)
    if failed:
        raise DownloadError(f"{len(failed)} file(s) failed sha256 verification after a retry: "
                            f"{', '.join(failed[:10])}. The mirror may be corrupt; try again or another --base-url")
    return summary
