"""Unpack zip and tar (optionally gzip/bzip2/xz-compressed) archives safely.

Every member is checked before anything is written: names that would land outside the target
(``..``, absolute paths, drive letters), links and device files refuse the whole archive
(RELIABILITY S3). A damaged archive leaves nothing of this call's behind.
"""

from __future__ import annotations

import contextlib
import re
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from yolodist.errors import BadData
from yolodist.utils.download import describe_error

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
_CHUNK = 1 << 20
_DRIVE = re.compile(r"^[A-Za-z]:")


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
        raise BadData(f"archive {archive} is damaged ({describe_error(e)}); delete it and download it again") from e
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
            f"could not unpack {archive} into {target} ({describe_error(e)}); delete it and download it again"
        ) from e
    except BaseException:
        _undo([p for p in created if p != target])
        raise
    return paths
