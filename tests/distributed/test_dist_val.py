"""Distributed validation (val.py under torchrun) gives exactly the single-process metrics."""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import concurrently, run_script
from tests.distributed.conftest import ROOT

pytestmark = pytest.mark.dist


def _args(data, weights, project, name):
    return [
        str(ROOT / "val.py"), "--data", str(data), "--weights", str(weights), "--img", "64", "--batch", "6",
        "--workers", "0", "--device", "cpu", "--save-json", "--noplots", "--project", str(project), "--name", name,
    ]  # fmt: skip


def _all_row(text: str) -> str:
    return re.search(r"^\s+all\s+.*$", text, re.M).group(0)


def test_two_ranks_equal_one_process(tmp_path, tiny_shapes, tiny_checkpoint, torchrun):
    # batch 6 over 8 images: the second global batch is padded with repeats, which must not count twice
    single, double = concurrently(
        lambda: run_script(_args(tiny_shapes, tiny_checkpoint, tmp_path, "one"), cwd=tmp_path),
        lambda: torchrun(_args(tiny_shapes, tiny_checkpoint, tmp_path, "two"), nproc=2, cwd=tmp_path),
    )
    assert single.returncode == 0, single.stderr[-3000:]
    assert double.returncode == 0, double.stderr[-3000:]
    one_out, two_out = single.stdout + single.stderr, double.stdout + double.stderr
    assert _all_row(one_out) == _all_row(two_out)
    assert len(re.findall(r"^\s+all\s", two_out, re.M)) == 1  # rank 0 alone reports
    assert re.search(r"^\s+all\s+8\s", two_out, re.M)
    one = json.loads((tmp_path / "one" / "tiny_predictions.json").read_text())
    two = json.loads((tmp_path / "two" / "tiny_predictions.json").read_text())
    key = lambda d: (d["image_id"], d["category_id"], d["score"], d["bbox"])  # noqa: E731
    assert sorted(map(key, one)) == sorted(map(key, two))
    coco = [re.search(r"COCO evaluator: .*", t).group(0) for t in (one_out, two_out)]
    assert coco[0] == coco[1]
