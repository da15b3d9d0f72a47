"""load_weights / model_from_checkpoint / load_model on our own checkpoints: EMA preferred, fused files,
names, and clear refusals when the file does not describe its own weights."""

from __future__ import annotations

import copy

import pytest
import torch

from yolodist.checkpoint.files import save_checkpoint
from yolodist.checkpoint.state import build_checkpoint
from yolodist.checkpoint.weights import load_model, load_weights, model_from_checkpoint
from yolodist.errors import BadCheckpoint
from yolodist.models import Model


@pytest.fixture(scope="module")
def trained() -> tuple[Model, Model]:
    """A yolov5n (nc=2) with non-trivial BatchNorm statistics, and an EMA that differs from it."""
    torch.manual_seed(0)
    model = Model("yolov5n.yaml", nc=2)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    ema = copy.deepcopy(model)
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(0.01)
    return model.eval(), ema.eval()


def ckpt_for(model: Model, ema: Model | None, **extra) -> dict:
    return build_checkpoint(
        model_state=model.state_dict(),
        ema_state=ema.state_dict() if ema is not None else None,
        ema_updates=1,
        optimizer_state=None,
        epoch=0,
        best_fitness=0.0,
        opt={},
        yaml=model.yaml,
        names=["cat", "dog"],
        hyp={},
        extra=extra,
    )


X = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def outputs(model: Model) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(X)[0]


def test_own_checkpoint_gives_the_ema_model(tmp_path, trained):
    model, ema = trained
    path = tmp_path / "best.pt"
    save_checkpoint(ckpt_for(model, ema), path)
    assert "source" not in load_weights(path)
    rebuilt = load_model(path, fuse=False)
    assert rebuilt.names == ["cat", "dog"] and not rebuilt.training
    assert torch.equal(outputs(rebuilt), outputs(ema))
    assert not torch.equal(outputs(rebuilt), outputs(model))
    torch.testing.assert_close(outputs(load_model(path)), outputs(ema), atol=1e-3, rtol=1e-4)  # fused
    assert all(not p.requires_grad for p in load_model(path).parameters())


def test_model_weights_without_ema_and_names_as_dict(trained):
    model, _ = trained
    ckpt = ckpt_for(model, None)
    ckpt["names"] = {0: "cat", 1: "dog"}
    rebuilt = model_from_checkpoint(ckpt)
    assert torch.equal(outputs(rebuilt), outputs(model)) and rebuilt.names == ["cat", "dog"]


def test_a_fused_state_dict_is_rebuilt_fused(trained):
    _, ema = trained
    fused = copy.deepcopy(ema).fuse()
    ckpt = ckpt_for(fused, None)
    assert not any(".bn." in k for k in ckpt["model"])
    rebuilt = model_from_checkpoint(ckpt)
    torch.testing.assert_close(outputs(rebuilt), outputs(ema), atol=1e-3, rtol=1e-4)


def test_files_that_do_not_describe_their_weights_are_refused(trained):
    model, _ = trained
    no_yaml = ckpt_for(model, None)
    no_yaml["yaml"] = None
    with pytest.raises(BadCheckpoint, match="no model description"):
        model_from_checkpoint(no_yaml, "w.pt")
    other_nc = ckpt_for(model, None)
    other_nc["nc"] = 5
    with pytest.raises(BadCheckpoint, match=r"w\.pt does not match the model it describes"):
        model_from_checkpoint(other_nc, "w.pt")
    with pytest.raises(BadCheckpoint, match=r"strides \[8.0, 16.0, 64.0\]"):
        model_from_checkpoint(ckpt_for(model, None, stride=[8.0, 16.0, 64.0]), "w.pt")
    assert model_from_checkpoint(ckpt_for(model, None, stride=[8.0, 16.0, 32.0])).stride.tolist() == [8, 16, 32]
