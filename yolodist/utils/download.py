"""Fetch named-but-missing files (release weights, dataset archives) and unpack archives safely.

``download`` streams an http(s) or file URL into a temp file beside the destination and renames it
into place only when every byte announced by ``Content-Length`` has arrived, so a dropped connection
never leaves a file that looks complete. Any failure is a ``DownloadFailed`` whose message is the
offline recipe: what to fetch, from where, and where to put it.

``extract`` unpacks zip and tar (optionally gzip/bzip2/xz-compressed) archives. Every member is
checked before anything is written: names that would land outside the target (``..``, absolute
paths, drive letters), links and device files refuse the whole archive (RELIABILITY S3).

Release weights: ``release_url("yolov5s.pt")`` gives the upstream YOLOv5 v7.0 asset URL. The base
URL can be replaced with the ``YOLODIST_RELEASE_URL`` environment variable (a mirror, or a local
server for offline sites and tests).
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import re
import stat
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from tqdm import tqdm

from yolodist.errors import BadData, UserError
from yolodist.utils.console import bars_wanted
from yolodist.utils.io import atomic_open

LOGGER = logging.getLogger(__name__)

RELEASE_URL = "https://github.com/ultralytics/yolov5/releases/download/v7.0"
RELEASE_URL_ENV = "YOLODIST_RELEASE_URL"
# Detection weights only: upstream's -cls and -seg assets hold models this package cannot train.
RELEASE_ASSETS = frozenset(f"yolov5{size}{p6}.pt" for size in "nsmlx" for p6 in ("", "6"))
URL_SCHEMES = ("http", "https", "file")
DEFAULT_TIMEOUT = 30.0
_CHUNK = 1 << 20
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
_DRIVE = re.compile(r"^[A-Za-z]:")


class DownloadFailed(UserError):
    """A file could not be fetched; the message says where to get it and where to put it by hand."""


def release_url(name: str, base: str | None = None) -> str | None:
    """The download URL of the upstream release asset ``name`` (``yolov5s.pt`` ...), or None if unknown.

    ``base`` defaults to ``$YOLODIST_RELEASE_URL``, else upstream's v7.0 release.
    """
    if name not in RELEASE_ASSETS:
        return None
    base = base or os.environ.get(RELEASE_URL_ENV) or RELEASE_URL
    return f"{base.rstrip('/')}/{name}"


def url_basename(url: str) -> str:
    """The file name a URL points at (query and fragment dropped, %-escapes decoded)."""
    return Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name


def is_url(text: str) -> bool:
    """True for a single ``scheme://...`` token (whatever the scheme; ``download`` checks that)."""
    return re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*://\S+", text.strip()) is not None


class _SafeRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects (GitHub release assets redirect to a CDN) but only to http(s)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urllib.parse.urlsplit(newurl).scheme.lower() not in ("http", "https"):
            raise urllib.error.URLError(f"redirect to a non-http(s) URL {newurl}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _describe(error: BaseException) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        reason = error.reason
        return str(reason.strerror or reason) if isinstance(reason, OSError) else str(reason)
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


def download(
    url: str, dest: str | Path, *, desc: str | None = None, timeout: float = DEFAULT_TIMEOUT, progress: bool = True
) -> Path:
    """Fetch ``url`` (http, https or file) to ``dest`` atomically, with a progress bar; returns ``dest``.

    Raises ``DownloadFailed`` (nothing left at ``dest`` or in its temp file) when the server is
    unreachable, answers with an error, or sends fewer or more bytes than its ``Content-Length``.
    """
    dest = Path(dest)
    offline = f"; download it yourself and put it at {dest.absolute()}"
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in URL_SCHEMES:
        raise DownloadFailed(f"cannot download {url}: only http, https and file URLs are supported{offline}")
    made = [d for d in (dest.parent, *dest.parent.parents) if not d.exists()]
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        opener = urllib.request.build_opener(_SafeRedirects)
        request = urllib.request.Request(url, headers={"User-Agent": "yolodist"})
        with opener.open(request, timeout=timeout) as response, atomic_open(dest) as f:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            # In a log file (a batch job) a redrawn bar is noise: one line when the file is complete instead.
            bar_shown = progress and bars_wanted()
            started = time.monotonic()
            received = _copy_with_bar(response, f, total, desc or dest.name, bar_shown)
            # http.client returns a short body without complaint when the peer closes early.
            if total is not None and received != total:
                raise DownloadFailed(f"could not download {url} (received {received} of {total} bytes){offline}")
        if progress and not bar_shown:
            LOGGER.info(f"{desc or dest.name}: {received / 2**20:.1f} MiB in {time.monotonic() - started:.1f} s")
    except BaseException as e:
        for folder in made:  # deepest first: parents() runs upwards
            with contextlib.suppress(OSError):
                folder.rmdir()
        if isinstance(e, DownloadFailed):
            raise
        if isinstance(e, urllib.error.URLError | http.client.HTTPException | OSError | ValueError):
            raise DownloadFailed(f"could not download {url} ({_describe(e)}){offline}") from e
        raise
    return dest


def _copy_with_bar(response: BinaryIO, f: BinaryIO, total: int | None, desc: str, bar_shown: bool) -> int:
    """Copy ``response`` into ``f`` in chunks, advancing a byte progress bar; returns the bytes copied."""
    received = 0
    with tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, disable=not bar_shown) as bar:
        while chunk := response.read(_CHUNK):
            f.write(chunk)
            received += len(chunk)
            bar.update(len(chunk))
    return received


def _unsafe_name(name: str) -> str | None:
    """Why an archive member name would escape the folder it is unpacked into, or None if it is safe."""
    if "\x00" in name:
        return "a NUL byte in its name"
    posix = name.replace("\\", "/")  # zips written on Windows may use backslashes
    if posix.startswith("/") or _DRIVE.match(posix):
        return "an absolute path"
    if ".." in PurePosixPath(posix).parts:
        return "a '..' path component"
    return None


def _member_path(name: str, target: Path) -> Path:
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    return target.joinpath(*parts)


def _tar_kind(member: tarfile.TarInfo) -> str | None:
    if member.issym():
        return "a symbolic link"
    if member.islnk():
        return "a hard link"
    if member.ischr() or member.isblk():
        return "a device file"
    if member.isfifo():
        return "a FIFO"
    if not (member.isfile() or member.isdir()):
        return "a special file"
    return None


def _zip_kind(info: zipfile.ZipInfo) -> str | None:
    mode = info.external_attr >> 16  # Unix mode bits, when the zip was made on Unix
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device file"
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        return "a special file"
    return None


def _refuse(archive: Path, target: Path, name: str, why: str) -> BadData:
    return BadData(
        f"archive {archive} holds an unsafe member {name!r} ({why}); nothing was unpacked into {target}: "
        "get the archive from a trusted source"
    )


def _archive_kind(archive: Path) -> str | None:
    # The name decides first: a tar whose last member is a zip also passes is_zipfile().
    name = archive.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith(TAR_SUFFIXES):
        return "tar"
    if zipfile.is_zipfile(archive):
        return "zip"
    return "tar" if tarfile.is_tarfile(archive) else None


def _open_members(archive: Path) -> tuple[str, list]:
    try:
        kind = _archive_kind(archive)
        if kind == "zip":
            with zipfile.ZipFile(archive) as zf:
                return "zip", zf.infolist()
        if kind == "tar":
            with tarfile.open(archive, "r:*") as tf:
                return "tar", tf.getmembers()
    except (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError, OSError) as e:
        raise BadData(f"archive {archive} is damaged ({_describe(e)}); delete it and download it again") from e
    raise BadData(f"{archive} is neither a zip nor a tar archive; check the download URL")


def member_names(archive: str | Path) -> list[str]:
    """The member names of a zip or tar archive, in archive order."""
    _, members = _open_members(Path(archive))
    return [m.filename if isinstance(m, zipfile.ZipInfo) else m.name for m in members]


def _check_members(archive: Path, target: Path, kind: str, members: list) -> list[Path]:
    """Each member's destination, after refusing the archive if any member is unsafe."""
    real_target = target.resolve()
    paths = []
    for m in members:
        name = m.filename if kind == "zip" else m.name
        why = _unsafe_name(name) or (_zip_kind(m) if kind == "zip" else _tar_kind(m))
        path = _member_path(name, target)
        # A link already inside the target (from an earlier unpack) could still lead outside it.
        if why is None and not path.resolve().is_relative_to(real_target):
            why = "a path that resolves outside the target folder"
        if why is not None:
            raise _refuse(archive, target, name, why)
        paths.append(path)
    return paths


def _write_zip(archive: Path, target: Path, members: list, paths: list[Path]) -> None:
    with zipfile.ZipFile(archive) as zf:
        for info, path in zip(members, paths, strict=True):
            if info.is_dir():
                path.mkdir(parents=True, exist_ok=True)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(path, "wb") as out:
                while chunk := src.read(_CHUNK):
                    out.write(chunk)


def _write_tar(archive: Path, target: Path, members: list) -> None:
    with tarfile.open(archive, "r:*") as tf:
        # The data filter re-checks what _check_members already refused: a second line of defence.
        if hasattr(tarfile, "data_filter"):
            tf.extractall(target, members=members, filter="data")
        else:  # pragma: no cover - Python without the PEP 706 backport
            tf.extractall(target, members=members)  # every member was checked above


def _undo(created: list[Path]) -> None:
    # Deepest paths first, so folders are empty by the time they are reached.
    for path in sorted(created, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            path.rmdir() if path.is_dir() and not path.is_symlink() else path.unlink()


def extract(archive: str | Path, target: str | Path) -> list[Path]:
    """Unpack a zip or tar archive into ``target`` and return the unpacked paths, in archive order.

    Raises ``BadData`` naming the first unsafe member (before anything is written), or when the
    archive is damaged; in the latter case whatever this call had already created is removed again.
    """
    archive, target = Path(archive), Path(target)
    kind, members = _open_members(archive)
    paths = _check_members(archive, target, kind, members)
    target.mkdir(parents=True, exist_ok=True)
    created = {p for path in paths for p in (path, *path.parents) if p.is_relative_to(target) and not p.exists()}
    try:
        if kind == "zip":
            _write_zip(archive, target, members, paths)
        else:
            _write_tar(archive, target, members)
    except (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError, OSError, ValueError) as e:
        _undo([p for p in created if p != target])
        raise BadData(
            f"could not unpack {archive} into {target} ({_describe(e)}); delete it and download it again"
        ) from e
    except BaseException:
        _undo([p for p in created if p != target])
        raise
    return paths
