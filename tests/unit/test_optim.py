"""Optimiser groups, weight-decay scaling, LR schedules and warm-up, as upstream YOLOv5."""

import copy
import dataclasses
import itertools
import math

import pytest
import torch
from torch import nn

from yolodist.checkpoint.restore import keep_implementation, restore
from yolodist.checkpoint.state import TrainingState
from yolodist.config.schema import Hyp, TrainConfig
from yolodist.engine.build import build_optim
from yolodist.engine.ema import ModelEMA
from yolodist.engine.optim import (
    accumulate_steps,
    build_optimizer,
    lr_lambda,
    param_groups,
    scaled_weight_decay,
    warmup,
    warmup_steps,
)
from yolodist.errors import BadFlag


class MyBN(nn.modules.batchnorm._BatchNorm):
    """Stands in for our CPU SyncBN: a _BatchNorm subclass that is not a torch.nn class."""

    def _check_input_dim(self, x):
        pass


def model_zoo() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=False),  # weight -> decay
        nn.BatchNorm2d(4),  # weight -> norm, bias -> bias
        nn.Conv2d(4, 4, 1),  # weight -> decay, bias -> bias
        MyBN(4),  # weight -> norm, bias -> bias
        nn.GroupNorm(2, 4),  # weight -> norm, bias -> bias
        nn.Flatten(),
        nn.LayerNorm(4 * 6 * 6),  # weight -> norm, bias -> bias
        nn.Linear(4 * 6 * 6, 2),  # weight -> decay, bias -> bias
    )


def ids(params):
    return {id(p) for p in params}


def test_param_groups_classify_every_parameter_once():
    m = model_zoo()
    weights, norms, biases = param_groups(m)
    assert ids(weights) == ids([m[0].weight, m[2].weight, m[7].weight])
    assert ids(norms) == ids([m[1].weight, m[3].weight, m[4].weight, m[6].weight])
    assert ids(biases) == ids([m[1].bias, m[2].bias, m[3].bias, m[4].bias, m[6].bias, m[7].bias])
    assert len(weights) + len(norms) + len(biases) == len(list(m.parameters()))


def test_shared_parameter_listed_once():
    conv = nn.Conv2d(2, 2, 1)
    m = nn.Sequential(conv, nn.ReLU(), conv)  # the same module twice
    weights, _, biases = param_groups(m)
    assert len(weights) == 1 and len(biases) == 1
    build_optimizer(m, "SGD", 0.01, 0.9, 5e-4)  # torch refuses a parameter in two groups


def test_sgd_groups_in_upstream_order():
    m = model_zoo()
    opt = build_optimizer(m, "SGD", lr=0.01, momentum=0.937, decay=5e-4)
    g0, g1, g2 = opt.param_groups
    assert len(g0["params"]) == 6 and len(g1["params"]) == 3 and len(g2["params"]) == 4
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 5e-4, 0.0]
    assert all(g["nesterov"] and g["momentum"] == 0.937 and g["lr"] == 0.01 for g in opt.param_groups)


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_adam_variants(name):
    opt = build_optimizer(model_zoo(), name, lr=0.001, momentum=0.9, decay=5e-4)
    assert type(opt).__name__ == name
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 5e-4, 0.0]
    assert all(g["betas"] == (0.9, 0.999) for g in opt.param_groups)


def test_unknown_optimizer_is_a_flag_error():
    with pytest.raises(BadFlag, match="SGD, Adam, AdamW"):
        build_optimizer(model_zoo(), "RMSProp", 0.01, 0.9, 5e-4)


def test_decay_only_shrinks_group_one():
    m = model_zoo()
    with torch.no_grad():
        for p in m.parameters():
            p.fill_(1.0)
    opt = build_optimizer(m, "SGD", lr=0.1, momentum=0.0, decay=0.5)  # momentum 0: plain SGD
    assert not opt.param_groups[0]["nesterov"]
    for p in m.parameters():
        p.grad = torch.zeros_like(p)  # only weight decay moves anything
    opt.step()
    weights, norms, biases = param_groups(m)
    assert all(torch.allclose(p, torch.full_like(p, 0.95)) for p in weights)  # 1 - 0.1 * 0.5
    assert all(torch.equal(p, torch.ones_like(p)) for p in norms + biases)


def test_model_without_biases_keeps_three_groups():
    opt = build_optimizer(nn.Conv2d(3, 4, 3, bias=False), "SGD", 0.01, 0.9, 5e-4)
    assert [len(g["params"]) for g in opt.param_groups] == [0, 1, 0]


def test_accumulation_and_decay_scaling():
    assert [accumulate_steps(b) for b in (1, 16, 24, 64, 128)] == [64, 4, 3, 1, 1]
    assert accumulate_steps(8, nbs=32) == 4
    assert scaled_weight_decay(5e-4, 16, 4) == pytest.approx(5e-4)
    assert scaled_weight_decay(5e-4, 24, 3) == pytest.approx(5e-4 * 72 / 64)
    assert scaled_weight_decay(5e-4, 128, 1) == pytest.approx(1e-3)


@pytest.mark.parametrize("cos", [False, True])
def test_schedule_end_points_and_monotonic(cos):
    lf = lr_lambda(10, 0.01, cos)
    assert lf(0) == pytest.approx(1.0) and lf(10) == pytest.approx(0.01)
    values = [lf(x) for x in range(11)]
    assert all(a > b for a, b in itertools.pairwise(values))


def test_schedule_midpoints():
    assert lr_lambda(10, 0.01, False)(5) == pytest.approx(0.505)
    assert lr_lambda(10, 0.01, True)(5) == pytest.approx(0.505)  # cosine crosses the middle too
    assert lr_lambda(10, 0.01, True)(2) == pytest.approx(((1 - math.cos(0.2 * math.pi)) / 2) * -0.99 + 1)
    assert lr_lambda(10, 0.01, True)(2) > lr_lambda(10, 0.01, False)(2)  # cosine stays high early


def test_schedule_drives_lambda_lr():
    opt = build_optimizer(model_zoo(), "SGD", 0.01, 0.9, 5e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=lr_lambda(4, 0.1, False))
    for _ in range(4):
        opt.step()
        sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.001] * 3)


def test_warmup_steps_minimum():
    assert warmup_steps(3, 10) == 100  # upstream's 100-iteration floor
    assert warmup_steps(3, 1000) == 3000
    assert warmup_steps(0.5, 333) == 166  # round(166.5) -> banker's rounding, as upstream
    assert warmup_steps(3, 10, minimum=0) == 30
    assert warmup_steps(0, 10) == 100 and warmup_steps(0, 10, minimum=0) == 0


def sgd_with_scheduler(epochs=10, lrf=0.01):
    opt = build_optimizer(model_zoo(), "SGD", lr=0.01, momentum=0.937, decay=5e-4)
    lf = lr_lambda(epochs, lrf, False)
    torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=lf)  # sets initial_lr as in training
    return opt, lf


def test_warmup_start_middle_end():
    opt, lf = sgd_with_scheduler()
    kw = {"warmup_bias_lr": 0.1, "momentum": 0.937, "warmup_momentum": 0.8}
    warmup(opt, 0, 100, 0, lf, **kw)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1, 0.0, 0.0])
    assert all(g["momentum"] == pytest.approx(0.8) for g in opt.param_groups)
    warmup(opt, 50, 100, 0, lf, **kw)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.055, 0.005, 0.005])
    assert opt.param_groups[1]["momentum"] == pytest.approx(0.8685)
    warmup(opt, 100, 100, 0, lf, **kw)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.01] * 3)
    assert all(g["momentum"] == pytest.approx(0.937) for g in opt.param_groups)
    warmup(opt, 250, 300, 2, lf, **kw)  # a later epoch aims at lr0 * lf(epoch)
    target = 0.01 * lf(2)
    assert opt.param_groups[1]["lr"] == pytest.approx(target * 250 / 300)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 + (target - 0.1) * 250 / 300)


def test_warmup_without_scheduler_uses_configured_lr_and_leaves_adam_betas():
    opt = build_optimizer(model_zoo(), "AdamW", lr=0.002, momentum=0.9, decay=5e-4)
    warmup(opt, 100, 100, 0, lambda epoch: 1.0, warmup_bias_lr=0.1, momentum=0.9, warmup_momentum=0.8)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.002] * 3)
    warmup(opt, 0, 100, 0, lambda epoch: 1.0, warmup_bias_lr=0.1, momentum=0.9, warmup_momentum=0.8)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1, 0.0, 0.0])
    assert all(g["betas"] == (0.9, 0.999) and "momentum" not in g for g in opt.param_groups)


def well_posed() -> nn.Module:
    # Every parameter gets a real gradient: a bias right before a normalisation gets ~1e-8, which Adam
    # turns into a +-lr step whose sign is rounding noise, and the kernels could not be compared.
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.SiLU(), nn.Conv2d(4, 2, 1))


def train_a_few_steps(opt: torch.optim.Optimizer, model: nn.Module, steps: int = 3) -> None:
    torch.manual_seed(1)
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(2, 3, 8, 8)).square().mean().backward()
        opt.step()


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_cpu_optimisers_use_fused_kernels_and_match_the_for_loop(name):
    fused_model, loop_model = well_posed(), well_posed()
    fused = build_optimizer(fused_model, name, lr=0.01, momentum=0.9, decay=5e-4)
    assert all(g["fused"] for g in fused.param_groups)
    loop = build_optimizer(loop_model, name, lr=0.01, momentum=0.9, decay=5e-4)
    for group in loop.param_groups:
        group["fused"], group["foreach"] = False, False
    train_a_few_steps(fused, fused_model)
    train_a_few_steps(loop, loop_model)
    for a, b in zip(fused_model.parameters(), loop_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_for_loop_state_resumes_on_the_fused_kernels():
    # Checkpoints written by a for-loop optimiser (older runs, upstream's) carry fused=None in their
    # groups; loading one must not switch this run back to the slow kernels, nor change the update.
    model = well_posed()
    loop = build_optimizer(model, "AdamW", lr=0.01, momentum=0.9, decay=5e-4)
    for group in loop.param_groups:
        group["fused"] = None
    train_a_few_steps(loop, model, steps=2)
    resumed_model = well_posed()
    resumed_model.load_state_dict(model.state_dict())
    resumed = build_optimizer(resumed_model, "AdamW", lr=0.01, momentum=0.9, decay=5e-4)
    resumed.load_state_dict(copy.deepcopy(loop.state_dict()))  # as from a file: no shared tensors
    assert not any(g["fused"] for g in resumed.param_groups)  # what torch does on its own
    keep_implementation(resumed)
    assert all(g["fused"] for g in resumed.param_groups)
    train_a_few_steps(loop, model, steps=1)
    train_a_few_steps(resumed, resumed_model, steps=1)
    for a, b in zip(model.parameters(), resumed_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def restore_training(cfg: TrainConfig, ckpt: dict, optim, model: nn.Module) -> int:
    """The epoch a resume from ``ckpt`` starts at, restored through the one path training takes."""
    return restore(TrainingState.from_dict(ckpt), cfg, model=model, ema=ModelEMA(model), optim=optim, nc=2).start_epoch


def upstream_epoch_lrs(epochs: int, lf) -> list[float]:
    """Each epoch's LR per group (flat) after warm-up by upstream's rule: a LambdaLR built, then reset to
    ``last_epoch = start_epoch - 1`` ("do not move"), and stepped at each epoch's end."""
    opt = build_optimizer(model_zoo(), "SGD", 0.01, 0.937, 5e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=lf)
    sched.last_epoch = -1
    lrs = []
    for _ in range(epochs):
        lrs.extend(g["lr"] for g in opt.param_groups)
        opt.step()
        sched.step()
    return lrs


@pytest.mark.parametrize("cos", [False, True])
def test_training_schedule_is_upstreams_epoch_by_epoch(cos):
    epochs = 14
    cfg = TrainConfig(epochs=epochs, cos_lr=cos, batch_size=16)
    optim = build_optim(model_zoo(), cfg, Hyp(), torch.device("cpu"))
    ours = []
    for _ in range(epochs):
        ours.extend(g["lr"] for g in optim.optimizer.param_groups)
        optim.optimizer.step()
        optim.scheduler.step()
    expected = upstream_epoch_lrs(epochs, lr_lambda(epochs, 0.01, cos))
    assert ours == pytest.approx(expected, rel=1e-12)
    # Upstream's last epoch trains at lf(epochs - 2), twice the lrf at 14 epochs: not lf(epochs - 1).
    assert ours[-1] == pytest.approx(0.01 * optim.lr_fn(epochs - 2))
    assert ours[3 * 4] == pytest.approx(0.01 * optim.lr_fn(3))  # epoch 4, group 0


def test_resumed_schedule_continues_where_it_stopped(tmp_path):
    epochs = 10
    cfg = TrainConfig(epochs=epochs, batch_size=16)
    model = model_zoo()
    full = build_optim(model, cfg, Hyp(), torch.device("cpu"))
    for _ in range(6):
        full.optimizer.step()
        full.scheduler.step()
    ckpt = {"optimizer": full.optimizer.state_dict(), "epoch": 5}
    resumed = build_optim(model, dataclasses.replace(cfg, resume=True), Hyp(), torch.device("cpu"))
    assert restore_training(dataclasses.replace(cfg, resume=True), ckpt, resumed, model) == 6
    for _ in range(6, epochs):
        assert [g["lr"] for g in resumed.optimizer.param_groups] == pytest.approx(
            [g["lr"] for g in full.optimizer.param_groups], rel=1e-12
        )
        for optim in (full, resumed):
            optim.optimizer.step()
            optim.scheduler.step()


def test_a_mid_epoch_resume_keeps_the_lr_warm_up_left():
    """Warm-up ends inside an epoch at lr0 * lf(epoch), which the scheduler's factor for it is not."""
    cfg = TrainConfig(epochs=2, batch_size=16)
    model = model_zoo()
    run = build_optim(model, cfg, Hyp(), torch.device("cpu"))
    run.optimizer.step()
    run.scheduler.step()  # epoch 0 done
    warmup(run.optimizer, 4, 4, 1, run.lr_fn, warmup_bias_lr=0.1, momentum=0.937, warmup_momentum=0.8)
    in_force = [g["lr"] for g in run.optimizer.param_groups]
    assert in_force == pytest.approx([0.01 * run.lr_fn(1)] * 3)  # not the scheduler's lf(0)
    ckpt = {"optimizer": run.optimizer.state_dict(), "epoch": 0, "batches_done": 2}
    resumed = build_optim(model, dataclasses.replace(cfg, resume=True), Hyp(), torch.device("cpu"))
    assert restore_training(dataclasses.replace(cfg, resume=True), ckpt, resumed, model) == 1
    assert [g["lr"] for g in resumed.optimizer.param_groups] == in_force
    for optim in (resumed, run):
        optim.optimizer.step()
        optim.scheduler.step()
    assert [g["lr"] for g in resumed.optimizer.param_groups] == [g["lr"] for g in run.optimizer.param_groups]
