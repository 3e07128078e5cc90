"""Downloads against a local HTTP server on 127.0.0.1: resume, checksum, safe extraction."""

from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
import threading
from pathlib import Path

import pytest

from vol_transfer.cli import main
from vol_transfer.datasets.download import download_file, extract_archive
from vol_transfer.errors import InputDataError


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves one payload, honours ``Range``, and can drop the first response half-way."""

    payload = b""
    cut_first_after: int | None = None
    requests: list[str | None] = []

    def do_GET(self) -> None:  # noqa: N802
        range_header = self.headers.get("Range")
        type(self).requests.append(range_header)
        start = int(range_header.split("=")[1].rstrip("-")) if range_header else 0
        body = self.payload[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if type(self).cut_first_after is not None:
            self.wfile.write(body[: type(self).cut_first_after])
            type(self).cut_first_after = None
            self.wfile.flush()
            self.connection.close()
            return
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server():
    _RangeHandler.requests = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()


def _tar_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _url(server: http.server.HTTPServer, name: str) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/{name}"


def test_interrupted_download_resumes_with_range_and_verifies(server, tmp_path: Path) -> None:
    payload = _tar_bytes({"Task04_Hippocampus/dataset.json": b"{}" * 50_000})
    _RangeHandler.payload = payload
    _RangeHandler.cut_first_after = 30_000
    md5 = hashlib.md5(payload).hexdigest()
    with pytest.raises(InputDataError, match="resume"):
        download_file(_url(server, "Task04.tar"), tmp_path, md5=md5, progress=False)
    part = tmp_path / "Task04.tar.part"
    assert part.stat().st_size == 30_000
    path = download_file(_url(server, "Task04.tar"), tmp_path, md5=md5, progress=False)
    assert _RangeHandler.requests[-1] == "bytes=30000-"
    assert path.read_bytes() == payload and not part.exists()


def test_checksum_mismatch_removes_partial_and_names_the_file(server, tmp_path: Path) -> None:
    _RangeHandler.payload = b"not the archive you want"
    with pytest.raises(InputDataError, match="checksum mismatch") as info:
        download_file(_url(server, "x.tar"), tmp_path, md5="0" * 32, progress=False)
    assert "x.tar" in str(info.value)
    assert not list(tmp_path.iterdir())


def test_complete_file_is_not_downloaded_again(server, tmp_path: Path) -> None:
    _RangeHandler.payload = b"abc" * 1000
    md5 = hashlib.md5(_RangeHandler.payload).hexdigest()
    download_file(_url(server, "a.bin"), tmp_path, md5=md5, progress=False)
    download_file(_url(server, "a.bin"), tmp_path, md5=md5, progress=False)
    assert len(_RangeHandler.requests) == 1


def test_extraction_refuses_members_outside_the_folder(tmp_path: Path) -> None:
    archive = tmp_path / "evil.tar"
    archive.write_bytes(_tar_bytes({"../escape.txt": b"x"}))
    with pytest.raises(InputDataError, match="unsafe"):
        extract_archive(archive, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()


def test_cli_download_extracts_and_prints_next_step(server, tmp_path: Path, capsys) -> None:
    payload = _tar_bytes({"Task04_Hippocampus/imagesTr/a.txt": b"volume"})
    _RangeHandler.payload = payload
    md5 = hashlib.md5(payload).hexdigest()
    code = main(["datasets", "download", "msd-hippocampus", str(tmp_path), "--url", _url(server, "T.tar"), "--md5", md5])
    assert code == 0
    assert (tmp_path / "Task04_Hippocampus/imagesTr/a.txt").read_bytes() == b"volume"
    assert "--layout msd" in capsys.readouterr().out


def test_cli_brats_explains_registration(tmp_path: Path, capsys) -> None:
    assert main(["datasets", "download", "brats", str(tmp_path)]) == 2
    assert "registration" in capsys.readouterr().err


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_download_and_extraction_match_monai(server, tmp_path: Path, kind: str) -> None:
    """Cross-check with monai.apps (download_url + extractall, what download_and_extract runs).

    We keep our own: it resumes a cut download from its ``.part`` (MONAI starts again from byte 0)
    and needs no ``requests`` package (download_and_extract does, to ask the server the file name).
    """
    from monai.apps import download_url, extractall

    files = {"Task04_Hippocampus/dataset.json": b'{"name": "Hippocampus"}',
             "Task04_Hippocampus/imagesTr/hippocampus_001.nii.gz": bytes(range(256)) * 40}
    buffer = io.BytesIO()
    if kind == "zip":
        import zipfile

        with zipfile.ZipFile(buffer, "w") as zipped:
            for name, data in files.items():
                zipped.writestr(name, data)
    else:
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    _RangeHandler.payload = buffer.getvalue()
    md5 = hashlib.md5(_RangeHandler.payload).hexdigest()
    url = _url(server, f"Task04.{kind}")
    ours = extract_archive(download_file(url, tmp_path / "ours", md5=md5, progress=False), tmp_path / "ours" / "out")
    theirs = tmp_path / "monai" / f"Task04.{kind}"
    download_url(url, theirs, hash_val=md5, hash_type="md5", progress=False)
    extractall(theirs, tmp_path / "monai" / "out", has_base=False)
    assert _tree(ours) == _tree(tmp_path / "monai" / "out") == files
    assert (tmp_path / "ours" / f"Task04.{kind}").read_bytes() == theirs.read_bytes()
