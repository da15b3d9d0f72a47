"""TorchScript and ONNX export: parity with the PyTorch model, dynamic shapes, metadata, backends."""

from __future__ import annotations

import json
import logging
import shutil
import sys

import numpy as np
import onnx
import pytest
import torch

from tests.unit.conftest import CHECKPOINT_NAMES
from yolodist.augment.geometry import letterbox
from yolodist.checkpoint.weights import load_model
from yolodist.data.images import read_image
from yolodist.data.synthetic import ensure_shapes
from yolodist.errors import BadCheckpoint, BadFlag
from yolodist.export import onnx as onnx_export
from yolodist.export.formats import parse_formats
from yolodist.export.onnx import export_onnx
from yolodist.export.prepare import check_image_size, metadata
from yolodist.export.run import ExportOptions, check_options, export
from yolodist.export.torchscript import export_torchscript
from yolodist.infer.backend import OnnxBackend, TorchScriptBackend, _names, load_backend

SIZE = 64
FIXED_BATCH = 2


def assert_matches(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Exported output equals PyTorch's to 1e-4, relative to the scale of each kind of value.

    Boxes are in input pixels (up to hundreds) and scores in 0..1. Another runtime sums the same
    convolutions in another order, so float32 rounding errors scale with the magnitudes summed, not
    with each element: an element near zero can differ by far more than 1e-4 of itself. Hence
    rtol 1e-4 plus an atol of 1e-4 times the largest value of that kind (1 for the scores).
    """
    assert actual.shape == expected.shape and actual.dtype == torch.float32
    boxes, scores = expected[..., :4], expected[..., 4:]
    torch.testing.assert_close(actual[..., :4], boxes, rtol=1e-4, atol=1e-4 * boxes.abs().max().item())
    torch.testing.assert_close(actual[..., 4:], scores, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    m = load_model(tiny_checkpoint)
    m.detect.export = True
    return m


@pytest.fixture(scope="module")
def exports(model, tmp_path_factory):
    """Fixed (batch 2, 64x64) and dynamic exports of the test model, made once for this module."""
    out = tmp_path_factory.mktemp("exports")
    example = torch.zeros(FIXED_BATCH, 3, SIZE, SIZE)
    fixed = metadata(model, (SIZE, SIZE), FIXED_BATCH, dynamic=False, half=False)
    dynamic = metadata(model, (SIZE, SIZE), 1, dynamic=True, half=False)
    return {
        "onnx": export_onnx(model, example, out / "fixed.onnx", fixed),
        "torchscript": export_torchscript(model, example, out / "fixed.torchscript", fixed),
        "onnx-dynamic": export_onnx(model, example[:1], out / "dynamic.onnx", dynamic),
        "torchscript-dynamic": export_torchscript(model, example[:1], out / "dynamic.torchscript", dynamic),
    }


def reference(model, imgs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(imgs)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_matches_pytorch_on_random_input(model, exports, fmt):
    imgs = torch.rand(FIXED_BATCH, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    backend = load_backend(exports[fmt])
    assert_matches(backend(imgs), reference(model, imgs))


def test_onnxruntime_session_matches_pytorch(model, exports):
    """The raw onnxruntime session, without our backend in between."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(exports["onnx"]), providers=["CPUExecutionProvider"])
    imgs = torch.rand(FIXED_BATCH, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    (out,) = session.run(["output0"], {"images": imgs.numpy()})
    assert_matches(torch.from_numpy(out), reference(model, imgs))


def test_onnx_matches_pytorch_on_a_real_image(model, exports, tmp_path):
    data = ensure_shapes(tmp_path / "shapes", n_train=4, n_val=2, img_size=SIZE, seed=0)
    image_path = sorted((data.parent / "images" / "val").glob("*.jpg"))[0]
    img, _, _ = letterbox(read_image(image_path), SIZE, auto=False)
    rgb = np.ascontiguousarray(img[..., ::-1].transpose(2, 0, 1))  # BGR HWC -> RGB CHW
    imgs = torch.from_numpy(rgb)[None].float() / 255
    out = load_backend(exports["onnx"])(imgs)  # one image into a batch-2 file: padded, then trimmed
    expected = reference(model, imgs)
    assert_matches(out, expected)
    assert out[0, :, 4].argmax() == expected[0, :, 4].argmax()  # the same most confident anchor


@pytest.mark.parametrize("fmt", ["onnx-dynamic", "torchscript-dynamic"])
def test_dynamic_export_runs_other_sizes_and_batches(model, exports, fmt):
    backend = load_backend(exports[fmt])
    assert backend.fixed_shape is None and backend.fixed_batch is None
    generator = torch.Generator().manual_seed(3)
    for batch, height, width in [(1, SIZE, SIZE), (3, 96, 128)]:
        imgs = torch.rand(batch, 3, height, width, generator=generator)
        out = backend(imgs)
        anchors = 3 * sum((height // s) * (width // s) for s in (8, 16, 32))
        assert out.shape == (batch, anchors, 5 + len(CHECKPOINT_NAMES))
        assert_matches(out, reference(model, imgs))


def test_onnx_file_is_valid_and_carries_metadata(exports):
    proto = onnx.load(str(exports["onnx"]))
    onnx.checker.check_model(proto)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["names"]) == CHECKPOINT_NAMES
    assert int(meta["stride"]) == 32
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [FIXED_BATCH, 3, SIZE, SIZE]
    assert proto.opset_import[0].version == onnx_export.DEFAULT_OPSET


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_backend_reads_metadata(exports, fmt):
    backend = load_backend(exports[fmt])
    assert backend.names == CHECKPOINT_NAMES and backend.stride == 32
    assert backend.fixed_shape == (SIZE, SIZE) and backend.fixed_batch == FIXED_BATCH
    assert backend.device == torch.device("cpu") and not backend.fp16


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_backend_splits_a_large_batch_into_fixed_chunks(model, exports, fmt, monkeypatch):
    backend = load_backend(exports[fmt])
    seen = []
    run = backend._run
    monkeypatch.setattr(backend, "_run", lambda x: seen.append(x.shape[0]) or run(x))
    imgs = torch.rand(5, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    out = backend(imgs)
    assert seen == [FIXED_BATCH] * 3  # 2 + 2 + (1 image + 1 blank)
    assert out.shape[0] == 5
    assert_matches(out, reference(model, imgs))


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_wrong_size_for_fixed_export_is_a_bad_flag(exports, fmt):
    backend = load_backend(exports[fmt])
    with pytest.raises(BadFlag, match=r"exported for 64x64 images but got 96x96.*--img 64.*--dynamic"):
        backend(torch.zeros(1, 3, 96, 96))


def test_image_size_is_rounded_up_to_the_stride(caplog):
    with caplog.at_level(logging.WARNING, logger="yolodist"):
        assert check_image_size([64], 32) == (64, 64)
        assert not caplog.records
        assert check_image_size([65, 100], 32) == (96, 128)
    assert "--img-size 65 must be multiple of max stride 32, updating to 96" in caplog.text
    with pytest.raises(BadFlag, match="one size or a height and a width"):
        check_image_size([64, 64, 64], 32)


def test_formats():
    assert parse_formats(["TorchScript", "onnx,torchscript"]) == ("torchscript", "onnx")
    with pytest.raises(BadFlag, match=r"--include tflite is not supported.*choose from: torchscript onnx"):
        parse_formats(["onnx", "tflite"])
    with pytest.raises(BadFlag, match="--include bogus"):
        parse_formats(["bogus"])


def test_flag_combinations_fail_before_any_work(monkeypatch, tmp_path):
    weights = tmp_path / "missing.pt"  # never read: every check comes first
    cpu = ExportOptions(weights=weights, half=True)
    with pytest.raises(BadFlag, match="--half only compatible with GPU export"):
        check_options(cpu, ("torchscript",))
    with pytest.raises(BadFlag, match="got 3 values"):
        check_options(ExportOptions(weights=weights, imgsz=(64, 64, 64)), ("onnx",))
    with pytest.raises(BadFlag, match="--batch-size 0"):
        check_options(ExportOptions(weights=weights, batch=0), ("onnx",))
    with pytest.raises(BadFlag, match="--opset 99"):
        check_options(ExportOptions(weights=weights, opset=99), ("onnx",))
    monkeypatch.setattr(onnx_export, "SIMPLIFIERS", ("no_such_simplifier_module",))
    with pytest.raises(BadFlag, match="pip install onnxslim"):
        check_options(ExportOptions(weights=weights, simplify=True), ("onnx",))
    with pytest.raises(BadFlag, match="--half only"):
        export(ExportOptions(weights=weights, include=("onnx",), half=True))


def test_export_writes_next_to_the_weights_and_reports_failures(tiny_checkpoint, tmp_path, monkeypatch, caplog):
    weights = tmp_path / "best.pt"
    shutil.copy(tiny_checkpoint, weights)

    def broken(*args, **kwargs):
        raise RuntimeError("tracer exploded")

    monkeypatch.setattr("yolodist.export.run.export_torchscript", broken)
    with caplog.at_level(logging.INFO, logger="yolodist"):
        saved, failed = export(ExportOptions(weights=weights, include=("torchscript", "onnx"), imgsz=(SIZE,)))
    assert saved == [tmp_path / "best.onnx"] and failed == ["torchscript"]
    assert "TorchScript: export failure ❌" in caplog.text and "tracer exploded" in caplog.text
    assert "with output shape (1, 252, 8)" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.onnx", "best.pt"]  # no temp files left


def test_unreadable_files_are_bad_checkpoints(tmp_path):
    for name in ("bad.onnx", "bad.torchscript"):
        (tmp_path / name).write_bytes(b"not a model")
        with pytest.raises(BadCheckpoint, match=f"{name} cannot be loaded"):
            load_backend(tmp_path / name)
    (tmp_path / "model.tflite").write_bytes(b"x")
    with pytest.raises(BadCheckpoint, match=r"unsupported weights format '.tflite'.*\.onnx"):
        load_backend(tmp_path / "model.tflite")


def test_missing_onnxruntime_says_how_to_install(exports, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` raise ImportError
    with pytest.raises(BadFlag, match="pip install onnxruntime"):
        OnnxBackend(exports["onnx"], torch.device("cpu"))


def test_names_from_upstream_metadata(tmp_path):
    # upstream YOLOv5 stores str(dict) in ONNX metadata and a JSON dict with string keys in config.txt
    assert _names("{0: 'person', 1: 'bicycle'}", tmp_path) == ["person", "bicycle"]
    assert _names({"1": "b", "0": "a"}, tmp_path) == ["a", "b"]
    with pytest.raises(BadCheckpoint, match="no class names"):
        _names(None, tmp_path)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_config_is_readable_by_plain_torch(exports):
    extra = {"config.txt": ""}
    torch.jit.load(str(exports["torchscript"]), _extra_files=extra)
    meta = json.loads(extra["config.txt"])
    assert meta["names"] == CHECKPOINT_NAMES and meta["stride"] == 32
    assert meta["imgsz"] == [SIZE, SIZE] and meta["batch"] == FIXED_BATCH and meta["dynamic"] is False
    assert TorchScriptBackend(exports["torchscript"], torch.device("cpu")).fixed_batch == FIXED_BATCH


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_upstream_metadata_layouts_load(exports, tmp_path):
    """Upstream writes config.txt as {"shape", "stride", "names": {index: name}} and ONNX names as str(dict)."""
    upstream_config = {"shape": [1, 3, SIZE, SIZE], "stride": 32, "names": {"0": "person", "1": "bus", "2": "car"}}
    scripted = torch.jit.load(str(exports["torchscript"]))
    torch.jit.save(scripted, str(tmp_path / "up.torchscript"), _extra_files={"config.txt": json.dumps(upstream_config)})
    backend = load_backend(tmp_path / "up.torchscript")
    assert backend.names == ["person", "bus", "car"]
    assert backend.fixed_batch == 1 and backend.fixed_shape == (SIZE, SIZE)

    proto = onnx.load(str(exports["onnx"]))
    del proto.metadata_props[:]
    for key, value in {"stride": "32", "names": "{0: 'person', 1: 'bus', 2: 'car'}"}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(tmp_path / "up.onnx"))
    backend = load_backend(tmp_path / "up.onnx")
    assert backend.names == ["person", "bus", "car"] and backend.stride == 32
