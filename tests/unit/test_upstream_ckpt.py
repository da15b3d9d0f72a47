"""Upstream YOLOv5 checkpoints (pickled whole modules) load through the allowlist; crafted files never run.

The upstream-like files are made without upstream code: a temporary package ``models`` (and ``yolov5.models``,
as the pip package names it) defines empty classes with upstream's names, a subprocess re-labels the modules
of our own ``Model`` as those classes and pickles them the way upstream's train.py saves a checkpoint. The
test process cannot import ``models``, as a user's cannot.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import random
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, run_script
from yolodist.checkpoint.files import save_checkpoint, strip_for_release
from yolodist.checkpoint.state import build_checkpoint
from yolodist.checkpoint.upstream import load_upstream
from yolodist.checkpoint.weights import load_model, load_weights
from yolodist.errors import BadCheckpoint
from yolodist.models import Model

NAMES = {0: "circle", 1: "square", 2: "triangle"}
PAYLOADS = ("os_system", "subprocess", "exec", "open")

FAKE_YOLO = """
from torch import nn

class DetectionModel(nn.Module):
    pass

class Detect(nn.Module):
    pass
"""
FAKE_COMMON = """
from torch import nn

class Conv(nn.Module):
    pass

class C3(nn.Module):
    pass

class Bottleneck(nn.Module):
    pass

class SPPF(nn.Module):
    pass

class Concat(nn.Module):
    pass

class Evil:
    pass
"""

# Runs where ``models`` is importable: our Model relabelled as upstream classes, saved as upstream's train.py does.
MAKER = """
import argparse, builtins, copy, datetime, os, pathlib, subprocess, sys
import numpy as np
import torch
import yolodist.models as ours
from yolodist.models import Model

out, sentinel = pathlib.Path(sys.argv[1]), sys.argv[2]


def relabel(model, prefix):
    yolo = __import__(prefix + "yolo", fromlist=["x"])
    common = __import__(prefix + "common", fromlist=["x"])
    classes = {ours.Model: yolo.DetectionModel, ours.Detect: yolo.Detect}
    classes.update({getattr(ours, n): getattr(common, n) for n in ("Conv", "C3", "Bottleneck", "SPPF", "Concat")})
    for module in model.modules():
        module.__class__ = classes.get(type(module), type(module))
    head = model.model[-1]
    stride = head._buffers.pop("stride")  # upstream keeps stride as a plain attribute, not a buffer
    head._non_persistent_buffers_set.discard("stride")
    del head._grids, model.layer_records
    head.stride = model.stride = stride
    head.grid = [torch.empty(0) for _ in range(head.nl)]
    head.anchor_grid = [torch.empty(0) for _ in range(head.nl)]
    model.names, model.nc, model.inplace, model.hyp = dict(NAMES), 3, True, {"lr0": 0.01}
    return model


NAMES = {0: "circle", 1: "square", 2: "triangle"}
torch.manual_seed(0)
model = Model("yolov5n.yaml", nc=3)
with torch.no_grad():
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_(0, 0.1)
            m.num_batches_tracked.fill_(7)
ema = copy.deepcopy(model)
with torch.no_grad():
    for p in ema.parameters():
        p.add_(0.01)  # EMA weights differ from the model's, so the test can tell which were loaded
torch.save({"model": model.state_dict(), "ema": ema.state_dict()}, out / "reference.pt")
optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


def upstream_ckpt(prefix, **extra):
    return {
        "epoch": 2,
        "best_fitness": np.array([0.25]),
        "model": relabel(copy.deepcopy(model), prefix).half(),
        "ema": relabel(copy.deepcopy(ema), prefix).half(),
        "updates": 12,
        "optimizer": optimizer.state_dict(),
        "opt": argparse.Namespace(save_dir=pathlib.Path("runs/train/exp"), epochs=3, lr=np.float64(0.01)),
        "git": {"remote": "", "branch": "", "commit": ""},
        "date": datetime.datetime.now().isoformat(),
        **extra,
    }


torch.save(upstream_ckpt("models."), out / "upstream.pt")
torch.save(upstream_ckpt("yolov5.models."), out / "upstream_pip.pt")


def stripped(**extra):  # as strip_optimizer leaves a file: no EMA, no optimizer, epoch -1
    return upstream_ckpt("models.", epoch=-1, best_fitness=None, ema=None, updates=None, optimizer=None, **extra)


torch.save(stripped(), out / "upstream_stripped.pt")
unknown_class = stripped()
unknown_class["model"].extra = __import__("models.common", fromlist=["x"]).Evil()
torch.save(unknown_class, out / "unknown_class.pt")
torch.save(stripped(hook=os.system), out / "unknown_function.pt")
torch.save(stripped(hook=builtins.eval), out / "unknown_builtin.pt")


class Payload:
    def __init__(self, kind):
        self.kind = kind

    def __reduce__(self):
        calls = {
            "os_system": (os.system, (f"touch {sentinel}-os_system",)),
            "subprocess": (subprocess.call, (["touch", f"{sentinel}-subprocess"],)),
            "exec": (builtins.exec, (f"open({sentinel + '-exec'!r}, 'w').close()",)),
            "open": (builtins.open, (f"{sentinel}-open", "w")),
        }
        return calls[self.kind]


for kind in ("os_system", "subprocess", "exec", "open"):
    torch.save({"model": Payload(kind), "epoch": -1}, out / f"evil_{kind}.pt")
    inside = stripped()
    inside["model"].model[24].payload = Payload(kind)  # deep inside an otherwise upstream-like model
    torch.save(inside, out / f"evil_inside_{kind}.pt")
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """All the files MAKER writes (checkpoints and reference tensors), made once for this module."""
    root = tmp_path_factory.mktemp("upstream")
    package, out = root / "package", root / "out"
    for base in (package / "models", package / "yolov5" / "models"):
        base.mkdir(parents=True)
        (base / "__init__.py").write_text("")
        (base / "yolo.py").write_text(FAKE_YOLO)
        (base / "common.py").write_text(FAKE_COMMON)
    (package / "yolov5" / "__init__.py").write_text("")
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(package), str(ROOT)]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", MAKER, str(out), str(out / "pwned")],
        cwd=package,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not list(out.glob("pwned*"))  # saving never runs a payload
    return out


def test_loading_imports_no_upstream_code(files):
    # The point of the fake package: loading must not depend on, or import, upstream's code.
    assert importlib.util.find_spec("models") is None
    before = set(sys.modules)
    load_weights(files / "upstream.pt")
    load_weights(files / "upstream_pip.pt")
    imported = {name for name in set(sys.modules) - before if name.split(".")[0] in ("models", "yolov5")}
    assert not imported


def reference(files: Path, which: str = "ema") -> dict[str, torch.Tensor]:
    return torch.load(files / "reference.pt", weights_only=True)[which]


@pytest.mark.parametrize("name", ["upstream.pt", "upstream_pip.pt"])
def test_upstream_checkpoint_loads_as_our_layout(files, name, caplog):
    expected = reference(files)
    with caplog.at_level(logging.INFO, logger="yolodist"):
        ckpt = load_weights(files / name)
    assert f"Loaded upstream YOLOv5 checkpoint {files / name} ({len(expected)} tensors)" in caplog.text
    assert ckpt["source"] == "yolov5" and ckpt["epoch"] == -1
    assert ckpt["ema"] is None and ckpt["optimizer"] is None
    assert ckpt["names"] == ["circle", "square", "triangle"] and ckpt["nc"] == 3
    assert ckpt["stride"] == [8.0, 16.0, 32.0] and ckpt["yaml"]["nc"] == 3
    state = ckpt["model"]
    assert list(state) == list(expected) and len(state) == len(Model("yolov5n.yaml", nc=3).state_dict())
    assert "model.24.anchors" in state and "model.24.m.0.weight" in state and "model.0.conv.weight" in state
    for key, want in expected.items():
        got = state[key]
        if want.is_floating_point():
            assert got.dtype == torch.float32, key
            # the file stores half precision: equal to the EMA tensor rounded to float16
            assert torch.equal(got, want.half().float()), key
        else:
            assert got.dtype == want.dtype and torch.equal(got, want), key
    # anchors are stored in grid units (pixels / stride) by upstream and by us alike
    torch.testing.assert_close(state["model.24.anchors"][0, 0] * 8, torch.tensor([10.0, 13.0]))


def test_model_weights_when_the_file_has_no_ema(files):
    state = load_upstream(files / "upstream_stripped.pt")["model"]
    model_state = reference(files, "model")
    key = "model.0.conv.weight"
    assert torch.equal(state[key], model_state[key].half().float())
    assert not torch.equal(state[key], reference(files)[key].half().float())


def test_rebuilt_model_gives_our_models_outputs(files):
    ours = Model("yolov5n.yaml", nc=3)
    ours.load_state_dict({k: v.half().float() if v.is_floating_point() else v for k, v in reference(files).items()})
    full_precision = Model("yolov5n.yaml", nc=3)
    full_precision.load_state_dict(reference(files))
    x = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, _ = ours.eval()(x)
        unrounded, _ = full_precision.eval()(x)
        got_unfused, _ = load_model(files / "upstream.pt", fuse=False)(x)
        got, _ = load_model(files / "upstream.pt")(x)
    assert torch.equal(got_unfused, want)  # same tensors, same graph: identical
    torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-4)  # fusing only reorders the arithmetic
    torch.testing.assert_close(got, unrounded, atol=0.05, rtol=5e-3)  # half-precision storage costs little
    assert load_model(files / "upstream.pt").names == ["circle", "square", "triangle"]


@pytest.mark.parametrize(
    ("name", "global_name"),
    [
        ("unknown_class.pt", "models.common.Evil"),
        ("unknown_function.pt", "posix.system"),
        ("unknown_builtin.pt", "builtins.eval"),
    ],
)
def test_a_name_outside_the_allowlist_is_refused_with_its_name(files, name, global_name):
    with pytest.raises(BadCheckpoint) as info:
        load_weights(files / name)
    message = str(info.value)
    assert global_name in message and str(files / name) in message and "not loaded" in message


@pytest.mark.parametrize("kind", PAYLOADS)
@pytest.mark.parametrize("where", ["evil", "evil_inside"])
def test_crafted_pickle_never_runs(files, where, kind):
    path = files / f"{where}_{kind}.pt"
    with pytest.raises(BadCheckpoint, match="so it was not loaded") as info:
        load_weights(path)
    assert str(path) in str(info.value)
    with pytest.raises(BadCheckpoint):
        load_model(path)
    assert not list(files.glob("pwned*"))
    assert not list(Path.cwd().glob("*pwned*"))


def test_crafted_pickle_is_refused_by_train(files, tiny_shapes, tmp_path):
    common = ["--data", str(tiny_shapes), "--epochs", "1", "--img", "64", "--batch", "4", "--cfg", "yolov5n.yaml"]
    common += ["--workers", "0", "--device", "cpu", "--project", str(tmp_path / "runs")]
    path = files / "evil_inside_os_system.pt"
    for flags in (["--weights", str(path)], ["--weights", "", "--resume", str(path)]):
        proc = run_script([str(ROOT / "train.py"), *common, *flags], cwd=tmp_path)
        output = proc.stdout + proc.stderr
        assert proc.returncode != 0, output[-2000:]
        assert "Traceback" not in output, output[-2000:]
        errors = [line for line in output.splitlines() if "error:" in line]
        assert len(errors) == 1 and str(path) in errors[0], output[-2000:]
        assert "posix.system" in errors[0] or "not loaded" in errors[0], errors[0]
    assert not list(files.glob("pwned*")) and not list(tmp_path.rglob("*pwned*"))


def test_own_checkpoints_load_with_plain_torch_load(tmp_path):
    """S4 for what test_checkpoint does not cover: a real Model's checkpoint and its released (stripped) form."""
    model = Model("yolov5n.yaml", nc=3)
    state = model.state_dict()
    ckpt = build_checkpoint(
        model_state=state,
        ema_state=state,
        ema_updates=1,
        optimizer_state=None,
        epoch=0,
        best_fitness=0.0,
        opt={"epochs": 1},
        yaml=model.yaml,
        names=["a", "b", "c"],
        hyp={"lr0": 0.01},
    )
    path = tmp_path / "last.pt"
    save_checkpoint(ckpt, path)
    released = strip_for_release(path, tmp_path / "best.pt")
    for file in (path, released):
        plain = torch.load(file)  # the default is weights_only=True: no allowlist needed
        assert sorted(plain["model"]) == sorted(state)
    assert "source" not in load_weights(path)  # our own files never take the upstream path


def _rewrite_zip(source: Path, target: Path, change) -> None:
    """Copy a torch zip record by record; ``change(name, data)`` returns new data, or None to drop the record."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w") as zout:
        for name in zin.namelist():
            data = change(name, zin.read(name))
            if data is not None:
                zout.writestr(name, data)


DAMAGE = {
    "truncated": "truncated or corrupt",
    "zero": "is empty",
    "random": "not a PyTorch checkpoint",
    "wrong-zip": "zip archive but not a PyTorch checkpoint",
    "legacy-pickle": "legacy",
    "garbled-record": "cannot be read safely",
    "missing-tensor": "could not be read safely",
    "not-a-model": "holds no YOLOv5 detection model",
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_files_via_load_weights(tmp_path, files, case):
    """F12 through load_weights; the last three are upstream-like files that reach the upstream reader."""
    path, source = tmp_path / "w.pt", files / "upstream_stripped.pt"
    if case == "truncated":
        path.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    elif case == "zero":
        path.write_bytes(b"")
    elif case == "random":
        path.write_bytes(random.Random(0).randbytes(500))
    elif case == "wrong-zip":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("archive/data.pkl", b"not a pickle")
    elif case == "legacy-pickle":
        torch.save({"model": Model}, path, _use_new_zipfile_serialization=False)
    elif case == "garbled-record":
        _rewrite_zip(source, path, lambda name, data: data[: len(data) // 2] if name.endswith("data.pkl") else data)
    elif case == "missing-tensor":
        _rewrite_zip(source, path, lambda name, data: None if name.endswith("/data/0") else data)
    else:
        torch.save({"model": argparse.Namespace(weights="x")}, path)
    with pytest.raises(BadCheckpoint, match=DAMAGE[case]) as info:
        load_weights(path)
    message = str(info.value)
    assert str(path) in message and "Errno" not in message and "\n" not in message


def test_real_upstream_package_if_installed(tmp_path):
    """With the pip package ``yolov5`` importable, a checkpoint it writes loads and matches its outputs."""
    yolo = pytest.importorskip("yolov5.models.yolo")
    upstream = yolo.DetectionModel(str(ROOT / "yolodist" / "models" / "cfg" / "yolov5n.yaml"), nc=3).eval()
    path = tmp_path / "real.pt"
    torch.save({"epoch": -1, "model": upstream.half(), "ema": None, "optimizer": None, "opt": {}}, path)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        want = upstream.float()(x)[0]
        got, _ = load_model(path, fuse=False)(x)
    torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-3)
