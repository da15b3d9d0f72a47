"""Downloads over a local HTTP server and file URLs; archive unpacking that never writes outside its target (S3)."""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import stat
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import free_port
from yolodist.errors import BadData, UserError
from yolodist.utils.archive import extract, member_names
from yolodist.utils.download import (
    RELEASE_URL,
    DownloadFailed,
    download,
    is_url,
    release_url,
    url_basename,
)

TRUNCATED = "/truncated.bin"  # announces more bytes than it sends, then closes the connection


class _Handler(SimpleHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == TRUNCATED:
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"x" * 1000)
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass


@contextlib.contextmanager
def serve(directory: Path) -> Iterator[str]:
    """Serve ``directory`` on 127.0.0.1 (port from bind(0)); yields the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def site(tmp_path) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "site"
    root.mkdir()
    with serve(root) as url:
        yield root, url


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ----------------------------------------------------------------------------------------- download


def test_http_download_with_progress(site, tmp_path, capsys, monkeypatch):
    root, url = site
    payload = os.urandom(300_000)
    (root / "payload.bin").write_bytes(payload)
    dest = tmp_path / "out" / "payload.bin"
    monkeypatch.setenv("YOLODIST_PROGRESS", "bar")  # as on a terminal
    assert download(f"{url}/payload.bin", dest, desc="payload") == dest
    assert dest.read_bytes() == payload and _listing(dest.parent) == ["payload.bin"]
    err = capsys.readouterr().err
    assert "payload" in err and "100%" in err  # tqdm knew the total from Content-Length


def test_http_download_in_a_log_is_one_line(site, tmp_path, capsys, caplog, monkeypatch):
    root, url = site
    (root / "payload.bin").write_bytes(os.urandom(300_000))
    monkeypatch.setenv("YOLODIST_PROGRESS", "lines")  # as in a batch job's log file
    caplog.set_level(logging.INFO, logger="yolodist")
    download(f"{url}/payload.bin", tmp_path / "payload.bin", desc="payload")
    captured = capsys.readouterr()
    assert "\r" not in captured.err + captured.out and "%|" not in captured.err
    assert [r.getMessage().split(" in ")[0] for r in caplog.records] == ["payload: 0.3 MiB"]


def test_file_url(tmp_path):
    src = tmp_path / "a b.bin"
    src.write_bytes(b"hello")
    dest = tmp_path / "copy.bin"
    download(src.as_uri(), dest, progress=False)
    assert dest.read_bytes() == b"hello"


def _assert_offline_message(err: UserError, url: str, dest: Path) -> None:
    msg = str(err)
    assert isinstance(err, DownloadFailed) and isinstance(err, UserError)
    assert msg.startswith(f"could not download {url} (") and "\n" not in msg
    assert msg.endswith(f"; download it yourself and put it at {dest.absolute()}")


def test_404_gives_the_offline_message_and_leaves_nothing(site, tmp_path):
    _, url = site
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DownloadFailed) as e:
        download(f"{url}/missing.pt", out / "missing.pt", progress=False)
    _assert_offline_message(e.value, f"{url}/missing.pt", out / "missing.pt")
    assert "HTTP 404" in str(e.value) and _listing(out) == []


def test_connection_refused_gives_the_offline_message_and_leaves_nothing(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/yolov5s.pt"  # nothing listens on a just-freed port
    with pytest.raises(DownloadFailed) as e:
        download(url, tmp_path / "yolov5s.pt", progress=False, timeout=5)
    _assert_offline_message(e.value, url, tmp_path / "yolov5s.pt")
    assert "refused" in str(e.value).lower() and _listing(tmp_path) == []


def test_truncated_transfer_is_refused(site, tmp_path):
    _, url = site
    out = tmp_path / "out"
    with pytest.raises(DownloadFailed, match=r"received 1000 of 100000 bytes") as e:
        download(url + TRUNCATED, out / "t.bin", progress=False)
    _assert_offline_message(e.value, url + TRUNCATED, out / "t.bin")
    assert not out.exists()  # neither the temp file nor the folder made for it is left


def test_an_existing_file_survives_a_failed_download(site, tmp_path):
    _, url = site
    dest = tmp_path / "keep.bin"
    dest.write_bytes(b"old")
    with pytest.raises(DownloadFailed):
        download(url + TRUNCATED, dest, progress=False)
    assert dest.read_bytes() == b"old" and _listing(tmp_path) == ["keep.bin", "site"]


@pytest.mark.parametrize("url", ["ftp://example.com/x.zip", "javascript:alert(1)", "/just/a/path.zip"])
def test_other_schemes_are_rejected(tmp_path, url):
    with pytest.raises(DownloadFailed, match="only http, https and file URLs"):
        download(url, tmp_path / "x.zip", progress=False)
    assert _listing(tmp_path) == []


def test_release_url_and_override(monkeypatch):
    monkeypatch.delenv("YOLODIST_RELEASE_URL", raising=False)
    assert release_url("yolov5s.pt") == f"{RELEASE_URL}/yolov5s.pt"
    assert RELEASE_URL == "https://github.com/ultralytics/yolov5/releases/download/v7.0"
    assert release_url("yolov5x6.pt", base="http://127.0.0.1:1/") == "http://127.0.0.1:1/yolov5x6.pt"
    for unknown in ("yolov5q.pt", "best.pt", "yolov5s", "yolov5s-seg.pt"):
        assert release_url(unknown) is None
    monkeypatch.setenv("YOLODIST_RELEASE_URL", "http://mirror.local/v7")
    assert release_url("yolov5n.pt") == "http://mirror.local/v7/yolov5n.pt"


def test_url_helpers():
    assert url_basename("https://h/a/b/yolo%20v5.pt?raw=1#x") == "yolo v5.pt"
    assert is_url("https://h/x.zip") and is_url("file:///tmp/x.zip")
    assert not is_url("bash data/scripts/get_coco.sh") and not is_url("import os\nos.system('x')")


# ----------------------------------------------------------------------------------------- archives


def _zip(path: Path, members: list[tuple[str, bytes] | zipfile.ZipInfo]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for m in members:
            if isinstance(m, zipfile.ZipInfo):
                zf.writestr(m, b"../../outside.txt")
            else:
                zf.writestr(*m)
    return path


def _zip_link(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # Unix, so external_attr carries the mode
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def _tar(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w:gz" if path.name.endswith("gz") else "w") as tf:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tf.addfile(m)
            else:
                info = tarfile.TarInfo(m[0])
                info.size = len(m[1])
                tf.addfile(info, io.BytesIO(m[1]))
    return path


def _tar_info(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


GOOD = ("ok.txt", b"fine")  # a safe member first: refusing must still happen before anything is written
UNSAFE = {
    "zip-dotdot": ("evil.zip", lambda p: _zip(p, [GOOD, ("../outside.txt", b"x")]), "../outside.txt", "'..'"),
    "zip-nested-dotdot": ("evil.zip", lambda p: _zip(p, [GOOD, ("a/../../outside.txt", b"x")]), "a/../..", "'..'"),
    # p is <tmp_path>/site/<name>: absolute members point at <tmp_path>, so even a broken extract stays in the sandbox
    "zip-absolute": (
        "evil.zip",
        lambda p: _zip(p, [GOOD, (str(p.parents[1] / "abs.txt"), b"x")]),
        "abs.txt",
        "absolute",
    ),
    "zip-drive": ("evil.zip", lambda p: _zip(p, [GOOD, ("C:/outside.txt", b"x")]), "C:/", "absolute"),
    "zip-backslash": ("evil.zip", lambda p: _zip(p, [GOOD, ("..\\outside.txt", b"x")]), "outside", "'..'"),
    "zip-symlink": ("evil.zip", lambda p: _zip(p, [GOOD, _zip_link("link")]), "link", "symbolic link"),
    "tar-dotdot": ("evil.tar", lambda p: _tar(p, [GOOD, ("../outside.txt", b"x")]), "../outside.txt", "'..'"),
    "tgz-absolute": (
        "evil.tar.gz",
        lambda p: _tar(p, [GOOD, (str(p.parents[1] / "abs.txt"), b"x")]),
        "abs.txt",
        "absolute",
    ),
    "tar-symlink": (
        "evil.tar",
        lambda p: _tar(p, [GOOD, _tar_info("link", tarfile.SYMTYPE, "../outside.txt")]),
        "link",
        "symbolic link",
    ),
    "tar-symlink-then-write": (
        "evil.tgz",
        lambda p: _tar(p, [_tar_info("d", tarfile.SYMTYPE, ".."), ("d/outside.txt", b"x")]),
        "'d'",
        "symbolic link",
    ),
    "tar-hardlink": (
        "evil.tar",
        lambda p: _tar(p, [GOOD, _tar_info("hard", tarfile.LNKTYPE, "../outside.txt")]),
        "hard",
        "hard link",
    ),
    "tar-device": ("evil.tar", lambda p: _tar(p, [GOOD, _tar_info("dev", tarfile.CHRTYPE)]), "dev", "device"),
}


@pytest.mark.parametrize("case", list(UNSAFE))
def test_unsafe_archives_are_refused_and_nothing_is_written(site, tmp_path, case):
    """S3: fetched over HTTP, refused by name, and neither the target nor its parent changes."""
    name, make, member, why = UNSAFE[case]
    root, url = site
    make(root / name)
    area = tmp_path / "area"
    target = area / "datasets" / "target"
    target.mkdir(parents=True)
    (area / "keep.txt").write_text("keep")
    before = _listing(area)
    archive = download(f"{url}/{name}", tmp_path / "dl" / name, progress=False)
    with pytest.raises(BadData) as e:
        extract(archive, target)
    msg = str(e.value)
    assert "unsafe member" in msg and member in msg and why in msg and "\n" not in msg
    assert _listing(area) == before  # the target stays empty and nothing appeared beside or above it
    assert not (tmp_path / "outside.txt").exists() and not (tmp_path / "abs.txt").exists()


def test_a_refused_archive_does_not_even_create_the_target(tmp_path):
    archive = _zip(tmp_path / "a.zip", [GOOD, ("../x", b"x")])
    with pytest.raises(BadData, match=r"'\.\./x'"):
        extract(archive, tmp_path / "new" / "target")
    assert _listing(tmp_path) == ["a.zip"]


def test_a_link_already_in_the_target_cannot_lead_outside(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "target"
    target.mkdir()
    (target / "data").symlink_to(outside, target_is_directory=True)
    archive = _zip(tmp_path / "a.zip", [("data/x.txt", b"x")])
    with pytest.raises(BadData, match=r"'data/x.txt'.*resolves outside"):
        extract(archive, target)
    assert _listing(outside) == []


@pytest.mark.parametrize("name", ["good.zip", "good.tar", "good.tar.gz", "good.tgz", "noext"])
def test_good_archives_extract(site, tmp_path, name):
    root, url = site
    files = {"ds/images/a.jpg": b"jpeg", "ds/labels/a.txt": b"0 0.5 0.5 0.1 0.1\n", "top.txt": b"t"}
    if name.endswith(".zip") or name == "noext":
        with zipfile.ZipFile(root / name, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("ds/", b"")  # an explicit folder entry, as zip tools write them
            for k, v in files.items():
                zf.writestr(k, v)
    else:
        _tar(root / name, list(files.items()))
    archive = download(f"{url}/{name}", tmp_path / "dl" / name, progress=False)
    assert set(member_names(archive)) >= set(files)
    target = tmp_path / "target"
    paths = extract(archive, target)
    assert {str(p.relative_to(target)) for p in paths} >= set(files)
    for k, v in files.items():
        assert (target / k).read_bytes() == v
    assert _listing(tmp_path) == sorted(
        ["dl", f"dl/{name}", "site", f"site/{name}", "target", "target/ds", "target/ds/images", "target/ds/labels"]
        + [f"target/{k}" for k in files]
    )


def test_a_damaged_archive_is_refused_and_partial_output_removed(tmp_path):
    archive = _zip(tmp_path / "d.zip", [("first/a.txt", b"a" * 100), ("second/b.txt", b"b" * 100)])
    data = bytearray(archive.read_bytes())
    at = data.index(b"b" * 100)
    data[at : at + 10] = b"X" * 10  # the second member's bytes no longer match its CRC
    archive.write_bytes(bytes(data))
    target = tmp_path / "target"
    with pytest.raises(BadData, match=r"could not unpack .*d\.zip.*download it again"):
        extract(archive, target)
    assert _listing(target) == []


def test_not_an_archive(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"<html>not found</html>")
    with pytest.raises(BadData, match="neither a zip nor a tar"):
        extract(junk, tmp_path / "t")
