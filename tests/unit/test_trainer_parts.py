"""Small trainer pieces: early stopping, multi-scale agreement, freezing, warm-up length."""

from yolodist.config.schema import Hyp, TrainConfig
from yolodist.engine.build import freeze_layers, warmup_iterations
from yolodist.engine.inputs import multi_scale_size
from yolodist.engine.trainer import EarlyStopping
from yolodist.models import Model


def test_early_stopping_patience():
    stop = EarlyStopping(patience=2)
    assert [stop(e, f) for e, f in enumerate([0.1, 0.3, 0.2, 0.25])] == [False, False, False, True]
    never = EarlyStopping(patience=0)
    assert not any(never(e, 0.0 if e else 1.0) for e in range(50))


def test_multi_scale_size_is_keyed_by_step_not_rank():
    cfg = TrainConfig(imgsz=320, seed=3)
    sizes = [multi_scale_size(cfg, 1, step, 32) for step in range(20)]
    assert sizes == [multi_scale_size(cfg, 1, step, 32) for step in range(20)]  # any rank computes the same
    assert all(s % 32 == 0 and 160 <= s <= 480 for s in sizes) and len(set(sizes)) > 3


def test_freeze_layers():
    model = Model("yolov5n.yaml", nc=2)
    freeze_layers(model, (2,))
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("model.0.", "model.1.")) for n in frozen)
    freeze_layers(model, (0,))
    assert all(p.requires_grad for p in model.parameters())
    freeze_layers(model, (3, 5))
    assert {n.split(".")[1] for n, p in model.named_parameters() if not p.requires_grad} == {"3", "5"}


def test_warmup_length_as_upstream():
    cfg = TrainConfig(epochs=100)
    assert warmup_iterations(cfg, Hyp(warmup_epochs=3), 10) == 100  # at least 100 iterations
    assert warmup_iterations(cfg, Hyp(warmup_epochs=3), 1000) == 3000
    assert warmup_iterations(TrainConfig(epochs=2), Hyp(warmup_epochs=3), 10) == 10  # at most half the run
    assert warmup_iterations(cfg, Hyp(warmup_epochs=0), 10) == 100  # upstream warms up 100 iterations even then
