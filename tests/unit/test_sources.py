"""detect.py's --source: image files, folders, globs, videos, .txt lists, several at once, and bad input."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from yolodist.errors import BadData, BadFlag
from yolodist.infer.sources import Source, list_source_files


def write_image(path: Path, value: int = 100, shape: tuple[int, int] = (32, 48)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((*shape, 3), value, np.uint8))
    return path


def write_video(path: Path, values: list[int], size: tuple[int, int] = (48, 32), fps: float = 5.0) -> Path:
    """A tiny MJPG video whose i-th frame is flat grey ``values[i]`` (so a test can tell frames apart)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    assert writer.isOpened()
    for v in values:
        writer.write(np.full((size[1], size[0], 3), v, np.uint8))
    writer.release()
    return path


def items(source: Source) -> list:
    return list(source)


def test_single_image_file(tmp_path):
    img = write_image(tmp_path / "a.jpg", shape=(30, 40))
    (item,) = items(Source(str(img)))
    assert item.path == img.resolve()
    assert item.image.shape == (30, 40, 3) and item.image.dtype == np.uint8
    assert item.frame is None and item.video is None and item.number == 1


def test_directory_lists_images_then_videos_and_ignores_other_files(tmp_path):
    write_video(tmp_path / "a_clip.avi", [0, 50])
    write_image(tmp_path / "z.png")
    write_image(tmp_path / "b.jpg")
    (tmp_path / "notes.txt").write_text("not a source list inside a folder")
    (tmp_path / "._b.jpg").write_bytes(b"macOS fork")
    (tmp_path / "sub").mkdir()
    source = Source(tmp_path)
    assert [p.name for p in source.files] == ["b.jpg", "z.png", "a_clip.avi"]
    got = items(source)
    assert [(i.path.name, i.frame, i.number) for i in got] == [
        ("b.jpg", None, 1),
        ("z.png", None, 2),
        ("a_clip.avi", 1, 3),
        ("a_clip.avi", 2, 3),
    ]
    assert source.skipped == 0


def test_glob(tmp_path):
    for name in ("a.jpg", "b.jpg", "c.png"):
        write_image(tmp_path / name)
    write_image(tmp_path / "deep" / "d.jpg")
    assert [p.name for p in Source(str(tmp_path / "*.jpg")).files] == ["a.jpg", "b.jpg"]
    assert [p.name for p in Source(str(tmp_path / "**" / "*.jpg")).files] == ["a.jpg", "b.jpg", "d.jpg"]
    with pytest.raises(BadData, match="matches no files"):
        Source(str(tmp_path / "*.bmp"))


def test_video_frames_fps_size_and_stride(tmp_path):
    video = write_video(tmp_path / "v.avi", [0, 60, 120, 180], size=(48, 32), fps=5.0)
    got = items(Source(video))
    assert [i.frame for i in got] == [1, 2, 3, 4]
    info = got[0].video
    assert (info.width, info.height, info.frames) == (48, 32, 4) and info.fps == pytest.approx(5.0)
    assert got[0].image.shape == (32, 48, 3)
    assert [round(float(i.image.mean()) / 60) for i in got] == [0, 1, 2, 3]  # every frame, in order

    strided = items(Source(video, vid_stride=2))
    # n frames grabbed, the last one kept (upstream): frames 2 and 4 of 4, numbered 1 and 2
    assert [i.frame for i in strided] == [1, 2]
    assert [round(float(i.image.mean()) / 60) for i in strided] == [1, 3]
    assert strided[0].video.frames == 2
    with pytest.raises(BadFlag, match="vid-stride"):
        Source(video, vid_stride=0)


def test_txt_list_of_files_folders_and_relative_paths(tmp_path):
    a = write_image(tmp_path / "imgs" / "a.jpg")
    write_image(tmp_path / "more" / "b.jpg")
    write_video(tmp_path / "v.avi", [10])
    listing = tmp_path / "list.txt"
    # an absolute file, a folder relative to the list, a video; blank lines and comments are skipped
    listing.write_text(f"{a}\n\n# comment\nmore\nv.avi\n")
    source = Source(str(listing))
    assert [p.name for p in source.files] == ["a.jpg", "b.jpg", "v.avi"]
    assert len(items(source)) == 3


def test_several_sources_and_duplicates(tmp_path):
    a = write_image(tmp_path / "a.jpg")
    b = write_image(tmp_path / "b.jpg")
    images, videos = list_source_files([str(b), str(a), str(tmp_path / "*.jpg")])
    assert [p.name for p in images] == ["b.jpg", "a.jpg"] and videos == []


def test_missing_path_is_bad_data_naming_it(tmp_path):
    missing = tmp_path / "nope" / "x.jpg"
    with pytest.raises(BadData, match=re.escape(f"{missing} does not exist")):
        Source(str(missing))
    listing = tmp_path / "list.txt"
    listing.write_text("gone.jpg\n")
    with pytest.raises(BadData, match=re.escape("gone.jpg does not exist")):
        Source(str(listing))


def test_folder_without_media_is_bad_data(tmp_path):
    (tmp_path / "readme.md").write_text("hi")
    with pytest.raises(BadData, match="no images or videos found"):
        Source(tmp_path)


def test_unreadable_image_is_skipped_counted_and_warned(tmp_path, caplog):
    write_image(tmp_path / "a.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"this is not a jpeg")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "bad.avi").write_bytes(b"this is not a video either")
    source = Source(tmp_path)
    with caplog.at_level(logging.WARNING, logger="yolodist"):
        got = items(source)
    assert [i.path.name for i in got] == ["a.jpg"]
    assert source.skipped == 3
    assert "broken.jpg" in caplog.text and "empty.png" in caplog.text and "bad.avi" in caplog.text


@pytest.mark.parametrize("live", ["0", "rtsp://cam/stream", "http://example.com/a.jpg", "list.streams", "screen"])
def test_live_sources_are_refused(live):
    with pytest.raises(BadFlag, match="not supported in this version"):
        Source(live)
