"""torchvision's NMS operator without its package: the same results, and none of its start-up."""

import subprocess
import sys

import torch
import torchvision

from tests.conftest import ROOT
from yolodist.ops import kernels
from yolodist.ops.boxes import box_iou

COMMAND_IMPORTS = """
import sys
import torch
from yolodist.cli import detect, export, train, val
from yolodist.engine import trainer
from yolodist.infer import predictor
from yolodist.models import Model
from yolodist.ops.nms import non_max_suppression

Model("yolov5n.yaml").info(imgsz=64)  # counts the GFLOPs

out = non_max_suppression(torch.rand(1, 50, 8) * 60)
print(len(out[0]) > 0, sorted(m for m in ("torchvision", "torch._dynamo") if m in sys.modules))
"""


def random_boxes(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=gen) * 100 - 10
    return torch.cat([xy, xy + torch.rand(n, 2, generator=gen) * 40 + 1], 1)


def test_nms_and_box_iou_equal_torchvisions():
    boxes, scores = random_boxes(400, 0), torch.rand(400, generator=torch.Generator().manual_seed(1))
    assert torch.equal(kernels.nms(boxes, scores, 0.5), torchvision.ops.nms(boxes, scores, 0.5))
    other = random_boxes(30, 2)
    torch.testing.assert_close(box_iou(boxes, other), torchvision.ops.box_iou(boxes, other), rtol=1e-6, atol=1e-7)
    assert box_iou(boxes[:0], other).shape == (0, 30)


def test_inference_imports_neither_torchvision_nor_torch_dynamo():
    # val.py, detect.py and export.py start seconds sooner. A fresh interpreter: this test process has
    # imported torchvision itself.
    proc = subprocess.run([sys.executable, "-c", COMMAND_IMPORTS], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split("\n")[0] == "True []"


def test_an_unfamiliar_torchvision_build_falls_back_to_importing_the_package(monkeypatch, tmp_path):
    broken = tmp_path / "_C.so"
    broken.write_bytes(b"not a library")
    monkeypatch.setattr(kernels, "_operator_libraries", lambda: [broken])
    monkeypatch.delitem(sys.modules, "torchvision")
    kernels._register_nms()  # the broken file is skipped, the package imported
    assert "torchvision" in sys.modules and hasattr(torch.ops.torchvision, "nms")
