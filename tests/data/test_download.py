"""Downloader against a local HTTP server serving the real PTB-XL folder (127.0.0.1, free port)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import re
import threading
from pathlib import Path

import pytest

from lsemvae.cli import main
from lsemvae.data.download import DownloadError, download, parse_sums

FIRST = "records100/00000/0000[1-2]_lr.*"  # 4 files


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with ``Range: bytes=N-`` support (what PhysioNet's server does)."""

    ranges = True

    def log_message(self, *args):  # keep test output clean
        pass

    def send_head(self):
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        path = Path(self.translate_path(self.path))
        if not (self.ranges and match and path.is_file()):
            return super().send_head()
        start, size = int(match.group(1)), path.stat().st_size
        if start >= size:
            self.send_error(416)
            return None
        fh = open(path, "rb")
        fh.seek(start)
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.send_header("Content-Length", str(size - start))
        self.end_headers()
        return fh


class NoRangeHandler(RangeHandler):
    ranges = False


def _serve(root: Path, handler):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


@pytest.fixture(params=[RangeHandler, NoRangeHandler], ids=["range", "no-range"])
def server_url(request, ptbxl_root):
    server, thread = _serve(ptbxl_root, request.param)
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"  # the handler's `ranges` says if it resumes
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_download_verifies_and_skips_present_files(server_url, tmp_path, ptbxl_root):
    summary = download("ptb-xl", tmp_path, base_url=server_url, include=[FIRST], progress=False)
    assert sorted(summary.downloaded) == ["records100/00000/00001_lr.dat", "records100/00000/00001_lr.hea",
                                          "records100/00000/00002_lr.dat", "records100/00000/00002_lr.hea"]
    for rel in summary.downloaded:
        assert _sha(tmp_path / rel) == _sha(ptbxl_root / rel)
    assert (tmp_path / "SHA256SUMS.txt").is_file()
    again = download("ptb-xl", tmp_path, base_url=server_url, include=[FIRST], progress=False)
    assert again.downloaded == [] and len(again.present) == 4 and again.bytes_fetched == 0


def test_download_resumes_partial_file_and_replaces_corrupt_one(server_url, request, tmp_path, ptbxl_root):
    rel = "records100/00000/00001_lr.dat"
    full = (ptbxl_root / rel).read_bytes()
    target = tmp_path / rel
    target.parent.mkdir(parents=True)
    target.with_name(target.name + ".part").write_bytes(full[:10_000])
    (tmp_path / "records100/00000/00001_lr.hea").write_text("tampered")
    summary = download("ptb-xl", tmp_path, base_url=server_url, include=["records100/00000/00001_lr.*"],
                       progress=False)
    assert target.read_bytes() == full
    assert _sha(tmp_path / "records100/00000/00001_lr.hea") == _sha(ptbxl_root / "records100/00000/00001_lr.hea")
    assert set(summary.downloaded) == {rel, "records100/00000/00001_lr.hea"}
    if request.node.callspec.id == "range":
        assert summary.resumed == [rel] and summary.bytes_fetched < len(full) - 5000  # only the rest was fetched
    else:  # server ignored Range: the part file was restarted, still verified
        assert summary.resumed == []
    assert not list(tmp_path.rglob("*.part"))


def test_download_cli_with_limit(server_url, tmp_path, capsys):
    code = main(["data", "download", "ptb-xl", "--dest", str(tmp_path), "--base-url", server_url,
                 "--include", "records500/*", "--limit", "3", "--no-progress"])
    assert code == 0 and "downloaded 3 file(s)" in capsys.readouterr().out
    assert len([p for p in tmp_path.rglob("*") if p.is_file() and p.name != "SHA256SUMS.txt"]) == 3


def test_download_errors(tmp_path, ptbxl_root):
    with pytest.raises(DownloadError, match="cannot connect"):
        download("ptb-xl", tmp_path, base_url="http://127.0.0.1:9/", progress=False)
    with pytest.raises(DownloadError, match="unsafe path"):
        parse_sums("0" * 64 + "  ../etc/passwd\n", source="x")
    server, thread = _serve(ptbxl_root, RangeHandler)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        with pytest.raises(DownloadError, match="no file matches"):
            download("ptb-xl", tmp_path, base_url=url, include=["nothing/*"], progress=False)
        with pytest.raises(DownloadError, match="HTTP 404"):
            download("ptb-xl", tmp_path, base_url=url + "missing/", progress=False)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_checksum_mismatch_is_reported(tmp_path, ptbxl_root):
    mirror = tmp_path / "mirror"
    (mirror / "records100/00000").mkdir(parents=True)
    (mirror / "records100/00000/00001_lr.hea").write_text("not the real header\n")
    real = [ln for ln in (ptbxl_root / "SHA256SUMS.txt").read_text().splitlines()
            if ln.endswith("records100/00000/00001_lr.hea")]
    (mirror / "SHA256SUMS.txt").write_text("\n".join(real) + "\n")
    server, thread = _serve(mirror, RangeHandler)
    try:
        with pytest.raises(DownloadError, match="failed sha256 verification"):
            download("ptb-xl", tmp_path / "dest", base_url=f"http://127.0.0.1:{server.server_address[1]}",
                     progress=False)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert not (tmp_path / "dest/records100/00000/00001_lr.hea").exists()
