"""C6: a dataset that does not fill the last global batch gives the same training on 1 and 2 ranks."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import ROOT, concurrently, run_script
from tests.distributed.test_ddp import _global_rel_diff, _max_rel_diff, torchrun

pytestmark = pytest.mark.dist


@pytest.mark.timeout(300)
def test_eleven_images_batch_four_two_ranks_equal_one_process(tmp_path):
    from yolodist.data.synthetic import ensure_shapes

    data = ensure_shapes(tmp_path / "shapes11", n_train=11, n_val=4, img_size=96, seed=2)
    common = [
        str(ROOT / "train.py"), "--data", str(data), "--cfg", "yolov5n.yaml", "--weights", "", "--img", "64",
        "--batch", "4", "--epochs", "1", "--workers", "0", "--device", "cpu", "--deterministic", "--noplots",
        "--noautoanchor", "--project", str(tmp_path / "runs"),
    ]  # fmt: skip
    # 11 = 4 + 4 + 3: the last global batch is split 2 + 1 over the ranks, nothing repeated.
    one, two = concurrently(
        lambda: run_script([*common, "--name", "one"], cwd=tmp_path),
        lambda: torchrun([*common, "--name", "two", "--sync-bn"], cwd=tmp_path),
    )
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    load = lambda name: torch.load(tmp_path / "runs" / name / "weights" / "last.pt", weights_only=True)  # noqa: E731
    a, b = load("one"), load("two")
    for key in ("model", "ema"):
        assert _global_rel_diff(a[key], b[key]) < 1e-4, key
        assert _max_rel_diff(a[key], b[key]) < 2.5e-4, key
