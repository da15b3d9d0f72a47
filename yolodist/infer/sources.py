"""What ``detect.py --source`` reads: image files, folders, globs, videos, ``.txt`` lists, or several of these.

Iterating a ``Source`` yields one ``SourceItem`` per image or per video frame, in upstream YOLOv5's
order: all images first, then all videos, each group in the order the files were found (folders
and globs sorted). Images are decoded upright (EXIF orientation applied) as HxWx3 uint8 BGR; an
image that cannot be decoded is skipped with a warning and counted in ``Source.skipped``.
Live sources (webcams, streams, URLs, screenshots) are refused: they cannot be tested offline.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from yolodist.data.images import IMG_FORMATS, ImageReadError, read_image
from yolodist.errors import BadData, BadFlag

LOGGER = logging.getLogger(__name__)

VID_FORMATS = ("asf", "avi", "gif", "m4v", "mkv", "mov", "mp4", "mpeg", "mpg", "ts", "wmv", "webm")
_URL_PREFIXES = ("rtsp://", "rtmp://", "http://", "https://")


@dataclass(frozen=True)
class VideoInfo:
    """What a video writer needs to reproduce the source: frame rate and size, and how many frames come."""

    fps: float
    width: int
    height: int
    frames: int  # frames this source will yield (the container's count divided by the frame stride)


class SourceItem(NamedTuple):
    """One image or video frame.

    ``frame`` is the 1-based number of this frame among the frames read from its video (upstream's
    numbering, used in ``<stem>_<frame>.txt``), None for an image. ``number`` is the 1-based position
    of the file among all the source's files.
    """

    path: Path
    image: np.ndarray
    frame: int | None
    video: VideoInfo | None
    number: int


def _suffix(path: str | Path) -> str:
    return Path(path).suffix[1:].lower()


def check_live_source(source: str) -> None:
    """Refuse webcams, streams, URLs and screenshots with one sentence saying what to do instead."""
    text = source.strip()
    lowered = text.lower()
    if text.isnumeric() or lowered.endswith(".streams") or lowered.startswith("screen"):
        kind = "webcam" if text.isnumeric() else "stream" if lowered.endswith(".streams") else "screenshot"
        raise BadFlag(
            f"--source {text}: {kind} input is not supported in this version; pass image or video files instead"
        )
    if lowered.startswith(_URL_PREFIXES):
        raise BadFlag(
            f"--source {text}: URLs and streams are not supported in this version; download the file and pass its path"
        )


def _read_list(list_file: Path) -> list[str]:
    """Entries of a ``.txt`` list: one path (file, folder or glob) per line; relative ones as the cwd, else the list."""
    try:
        lines = list_file.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise BadData(f"cannot read the source list {list_file} ({e}); pass a readable UTF-8 text file") from e
    entries = []
    for line in (x.strip() for x in lines):
        if not line or line.startswith("#"):
            continue
        path = Path(line).expanduser()
        # Upstream resolves against the current directory; lists written beside their images use the
        # list's own folder, so fall back to it rather than fail.
        if not path.is_absolute() and not path.exists() and "*" not in line and (list_file.parent / path).exists():
            path = list_file.parent / path
        entries.append(str(path))
    return entries


def _expand(entry: str, depth: int = 0) -> list[Path]:
    """The files one ``--source`` entry names; a missing path is a BadData naming it."""
    if "*" in entry or "?" in entry:
        matches = sorted(glob.glob(str(Path(entry).expanduser()), recursive=True))
        if not matches:
            raise BadData(f"--source {entry} matches no files; check the pattern")
        return [Path(p).resolve() for p in matches if os.path.isfile(p)]
    path = Path(entry).expanduser()
    if path.is_dir():
        # hidden files (macOS '._a.jpg' forks, editor temp files) are not images the user meant
        return sorted(p.resolve() for p in path.iterdir() if p.is_file() and p.suffix and not p.name.startswith("."))
    if path.is_file():
        if _suffix(path) == "txt" and depth == 0:
            return [p for item in _read_list(path) for p in _expand(item, depth + 1)]
        return [path.resolve()]
    raise BadData(f"--source {entry} does not exist; check the path")


def list_source_files(source: str | Path | Sequence[str | Path]) -> tuple[list[Path], list[Path]]:
    """(images, videos) named by ``source``; files of other types are ignored as upstream ignores them."""
    entries = [source] if isinstance(source, str | Path) else list(source)
    if not entries:
        raise BadFlag("--source is empty; pass an image, video, folder, glob or .txt list")
    for entry in entries:
        check_live_source(str(entry))
    seen: set[Path] = set()
    images, videos = [], []
    for path in (p for e in entries for p in _expand(str(e))):
        if path in seen:
            continue
        seen.add(path)
        if _suffix(path) in IMG_FORMATS:
            images.append(path)
        elif _suffix(path) in VID_FORMATS:
            videos.append(path)
    if not images and not videos:
        shown = ", ".join(str(e) for e in entries)
        raise BadData(
            f"no images or videos found in {shown}; supported images: {', '.join(IMG_FORMATS)}; "
            f"videos: {', '.join(VID_FORMATS)}"
        )
    return images, videos


class Source:
    """Iterate the images and video frames named by ``source`` (see the module docstring).

    ``vid_stride`` keeps every n-th video frame: n frames are grabbed and the last one decoded, as
    upstream does. ``skipped`` counts images and videos that could not be read.
    """

    def __init__(self, source: str | Path | Sequence[str | Path], vid_stride: int = 1) -> None:
        if vid_stride < 1:
            raise BadFlag(f"--vid-stride must be 1 or more, got {vid_stride}")
        self.images, self.videos = list_source_files(source)
        self.files = self.images + self.videos
        self.vid_stride = vid_stride
        self.skipped = 0

    def __len__(self) -> int:
        """Number of files (not frames)."""
        return len(self.files)

    def __iter__(self) -> Iterator[SourceItem]:
        for number, path in enumerate(self.images, 1):
            try:
                image = read_image(path)
            except ImageReadError as e:
                self.skipped += 1
                LOGGER.warning(f"WARNING ⚠️ skipping image {number}/{len(self)} {path}: {e.reason}")
                continue
            yield SourceItem(path, image, None, None, number)
        for number, path in enumerate(self.videos, len(self.images) + 1):
            yield from self._frames(path, number)

    def _frames(self, path: Path, number: int) -> Iterator[SourceItem]:
        capture = cv2.VideoCapture(str(path))
        try:
            if not capture.isOpened():
                self.skipped += 1
                LOGGER.warning(f"WARNING ⚠️ skipping video {number}/{len(self)} {path}: cannot be opened")
                return
            info = VideoInfo(
                fps=capture.get(cv2.CAP_PROP_FPS) or 30.0,  # some containers report 0
                width=int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
                height=int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                frames=int(capture.get(cv2.CAP_PROP_FRAME_COUNT) / self.vid_stride),
            )
            frame = 0
            while True:
                # grab() skips decoding, so the frames between the kept ones cost little
                for _ in range(self.vid_stride):
                    grabbed = capture.grab()
                ok, image = capture.retrieve() if grabbed else (False, None)
                if not ok or image is None:
                    break
                frame += 1
                yield SourceItem(path, image, frame, info, number)
        finally:
            capture.release()
