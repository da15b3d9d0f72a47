"""Label parsing: every bad-label kind of RELIABILITY.md's table, plus a never-raises property."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from yolodist.data.labels import img2label_path, parse_label_bytes, parse_label_file, parse_label_text

GOOD = "0 0.5 0.5 0.2 0.2\n1 0.3 0.3 0.1 0.1\n"


def test_bom_and_crlf_are_accepted(tmp_path):
    f = tmp_path / "a.txt"
    f.write_bytes(b"\xef\xbb\xbf" + GOOD.replace("\n", "\r\n").encode())
    res = parse_label_file(f, nc=2)
    assert res.fatal is None and res.problems == []
    np.testing.assert_allclose(res.labels, [[0, 0.5, 0.5, 0.2, 0.2], [1, 0.3, 0.3, 0.1, 0.1]], rtol=1e-6)
    assert res.labels.dtype == np.float32


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf", "1e999"])
def test_non_finite_row_is_dropped(bad):
    res = parse_label_text(f"0 0.5 0.5 {bad} 0.2\n{GOOD}", nc=2)
    assert res.fatal is None
    assert res.problems == ["non-finite"]
    assert len(res.labels) == 2


def test_non_integer_class_skips_image():
    res = parse_label_text("0.5 0.5 0.5 0.2 0.2\n", nc=2)
    assert res.fatal == "non-integer class" and len(res.labels) == 0
    assert "0.5" in res.detail


@pytest.mark.parametrize("cls", ["1e9", "3", "-1"])
def test_class_out_of_range_names_valid_range(cls):
    res = parse_label_text(f"{cls} 0.5 0.5 0.2 0.2\n", nc=3)
    assert res.fatal == "class out of range"
    assert "0..2" in res.detail


def test_class_unbounded_without_nc():
    assert parse_label_text("1e9 0.5 0.5 0.2 0.2\n", nc=None).fatal is None
    assert parse_label_text("-1 0.5 0.5 0.2 0.2\n", nc=None).fatal == "class out of range"


@pytest.mark.parametrize("row", ["0 0.5 0.5 0 0.2", "0 0.5 0.5 0.2 0", "0 0.5 0.5 -0.1 0.2"])
def test_zero_size_box_row_dropped(row):
    res = parse_label_text(f"{row}\n{GOOD}", nc=2)
    assert res.problems == ["zero-size box"] and len(res.labels) == 2


def test_decimal_comma_is_non_numeric():
    res = parse_label_text("0 0,5 0.5 0.2 0.2\n", nc=2)
    assert res.fatal == "non-numeric value" and "0,5" in res.detail


def test_non_utf8_is_unusable(tmp_path):
    f = tmp_path / "a.txt"
    f.write_bytes(b"0 0.5 0.5 0.2 0.2\n\xff\xfe 0.1\n")
    res = parse_label_file(f, nc=2)
    assert res.fatal == "not UTF-8" and len(res.labels) == 0


def test_duplicates_removed_and_counted():
    res = parse_label_text(GOOD + "0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2 0.2\n", nc=2)
    assert res.problems == ["duplicate", "duplicate"]
    # First occurrences are kept in file order.
    np.testing.assert_allclose(res.labels[:, 0], [0, 1])


def test_polygon_becomes_its_bounding_box():
    res = parse_label_text("2 0.1 0.2 0.5 0.2 0.5 0.6 0.1 0.6\n", nc=3)
    assert res.fatal is None and res.problems == ["polygon converted"]
    np.testing.assert_allclose(res.labels, [[2, 0.3, 0.4, 0.4, 0.4]], atol=1e-6)


@pytest.mark.parametrize("row", ["0 0.5 0.5 0.2", "0 0.5 0.5 0.2 0.2 0.3", "0 0.1 0.1 0.2 0.2 0.3 0.3 0.4"])
def test_bad_column_count(row):
    assert parse_label_text(row + "\n", nc=2).fatal == "bad column count"


def test_out_of_range_dropped_tiny_overshoot_clipped():
    res = parse_label_text("0 1.5 0.5 0.2 0.2\n0 0.5 0.5 0.2 1.0005\n", nc=2)
    assert res.problems == ["out of range"]
    assert len(res.labels) == 1
    assert (res.labels[:, 1:] >= 0).all() and (res.labels[:, 1:] <= 1).all()


def test_box_past_the_edge_is_clipped_to_the_image():
    res = parse_label_text("0 0.95 0.5 0.2 0.2\n", nc=1)
    # x from 0.85 to 1.05 -> 0.85 to 1.0
    np.testing.assert_allclose(res.labels, [[0, 0.925, 0.5, 0.15, 0.2]], atol=1e-6)


def test_missing_and_empty_files_are_background(tmp_path):
    missing = parse_label_file(tmp_path / "nope.txt", nc=2)
    assert missing.missing and missing.fatal is None and missing.labels.shape == (0, 5)
    f = tmp_path / "empty.txt"
    f.write_text("\n  \n")
    empty = parse_label_file(f, nc=2)
    assert not empty.missing and empty.fatal is None and empty.labels.shape == (0, 5)


def test_img2label_path_replaces_last_images_component():
    p = os.sep.join(["", "d", "images", "x", "images", "a.b.jpg"])
    assert img2label_path(p) == os.sep.join(["", "d", "images", "x", "labels", "a.b.txt"])
    assert img2label_path(os.sep.join(["", "d", "pics", "a.png"])) == os.sep.join(["", "d", "pics", "a.txt"])


def _check_result(res, nc):
    assert res.labels.dtype == np.float32 and res.labels.ndim == 2 and res.labels.shape[1] == 5
    if res.fatal:
        assert len(res.labels) == 0
    if len(res.labels):
        assert np.isfinite(res.labels).all()
        assert (res.labels[:, 1:] >= 0).all() and (res.labels[:, 1:] <= 1).all()
        assert (res.labels[:, 3:] > 0).all()
        assert (res.labels[:, 0] >= 0).all() and (res.labels[:, 0] < nc).all()


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300))
def test_parser_never_raises_on_bytes(raw):
    _check_result(parse_label_bytes(raw, nc=3), 3)


_TOKENS = st.sampled_from(["0", "1", "2", "7", "0.5", ".3", "1.", "-0.2", "1e-3", "nan", "inf", "0,5", "x", "1.0005"])
_LINES = st.lists(_TOKENS, min_size=0, max_size=10).map(" ".join)


@settings(max_examples=200, deadline=None)
@given(st.lists(_LINES, max_size=8), st.sampled_from(["\n", "\r\n"]))
def test_parser_never_raises_on_label_like_text(lines, eol):
    _check_result(parse_label_text(eol.join(lines), nc=3), 3)
