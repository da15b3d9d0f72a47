"""Failures, hangs (in a step, in validation, in a save) and non-finite losses with real ranks on gloo
(RELIABILITY.md F1, F2, F3, C7, C8).

Faults are injected by ``fault_train.py``, which patches the trainer in the test process only.
Every launcher writes to files (no pipe can fill up and block it) and carries a marker, so anything
left when a test ends is found (and killed).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from tests.distributed.conftest import MARKER, ROOT, _kill_marked, _marked_pids, free_port
from yolodist.data.sampler import ShardedBatchSampler
from yolodist.distributed import collectives
from yolodist.distributed.env import DistEnv
from yolodist.distributed.lifecycle import StopSignals
from yolodist.distributed.watchdog import describe_laggards
from yolodist.engine import epoch, step
from yolodist.engine.epoch import SkipBatches
from yolodist.engine.run import RunProgress

WRAPPER = str(Path(__file__).with_name("fault_train.py"))
TRAIN = str(ROOT / "train.py")


def train_flags(data: Path, project: Path, name: str, *extra: str) -> list[str]:
    """Tiny YOLOv5n training: 16 images at 64 px, total batch 4 (4 steps an epoch), one update per batch."""
    return [
        *("--data", str(data), "--cfg", "yolov5n.yaml", "--weights", "", "--img", "64", "--batch", "4"),
        *("--workers", "0", "--device", "cpu", "--noplots", "--nbs", "4", "--epochs", "1"),
        *("--project", str(project), "--name", name, *extra),
    ]


def torchrun_command(*args: str, nproc: int = 1, nnodes: int = 1, node_rank: int = 0, port: int) -> list[str]:
    where = ("--nnodes", str(nnodes), "--node_rank", str(node_rank), "--nproc_per_node", str(nproc))
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *where,
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(port),
        *args,
    ]


class Job:
    """One launcher (torchrun or python) started in its own session, its output in two files."""

    def __init__(self, command: Sequence[str], logs: Path, name: str, marker: str, cwd: Path = ROOT) -> None:
        logs.mkdir(parents=True, exist_ok=True)
        self.out_path, self.err_path = logs / f"{name}.out", logs / f"{name}.err"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", MARKER: marker}
        with self.out_path.open("w") as out, self.err_path.open("w") as err:
            self.proc = subprocess.Popen(
                list(command), cwd=cwd, env=env, stdout=out, stderr=err, text=True, start_new_session=True
            )
        self.ended: float | None = None

    @property
    def output(self) -> str:
        return self.out_path.read_text(errors="replace") + self.err_path.read_text(errors="replace")

    def poll(self) -> int | None:
        rc = self.proc.poll()
        if rc is not None and self.ended is None:
            self.ended = time.monotonic()
        return rc

    def wait_for_text(self, text: str, timeout: float) -> float:
        """When ``text`` first appeared in the output (monotonic seconds); fails the test after ``timeout``."""
        deadline = time.monotonic() + timeout
        while text not in self.output:
            if time.monotonic() > deadline or (self.poll() is not None and text not in self.output):
                pytest.fail(f"{text!r} never appeared (rc {self.proc.returncode})\n{self.output[-3000:]}")
            time.sleep(0.1)
        return time.monotonic()


@contextmanager
def launched() -> Iterator[str]:
    """A marker for the jobs started in the block; whatever still carries it at the end is killed."""
    marker = uuid.uuid4().hex
    try:
        yield marker
    finally:
        _kill_marked(marker)


def finish(jobs: Sequence[Job], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(job.poll() is None for job in jobs):
        if time.monotonic() > deadline:
            tails = "\n---\n".join(job.output[-2500:] for job in jobs)
            pytest.fail(f"launcher(s) still running after {timeout:g} s\n{tails}")
        time.sleep(0.1)


def no_leftovers(marker: str) -> list[int]:
    """Processes of the job still alive a moment after every launcher has exited."""
    deadline = time.monotonic() + 3
    while _marked_pids(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    return _marked_pids(marker)


def all_finite(path: Path) -> bool:
    ckpt = torch.load(path, weights_only=True)
    tensors = [*ckpt["model"].values(), *(ckpt["ema"] or {}).values()]
    return all(torch.isfinite(t).all() for t in tensors if t.is_floating_point())


# ---- in-process pieces -------------------------------------------------------------------------


def test_peer_failures_are_told_from_own_errors():
    lost = RuntimeError("[gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:41395")
    waited = RuntimeError("[gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 3000ms for recv operation")
    assert collectives.peer_failure(lost) == "lost"
    assert collectives.peer_failure(waited) == "timeout"
    assert collectives.peer_failure(RuntimeError("injected failure on rank 1 at step 3")) is None
    assert collectives.peer_failure(ValueError("connection closed by peer")) is None
    assert collectives.peer_failure(RuntimeError("DataLoader timed out after 5 seconds")) is None


def test_waiting_in_a_collective_is_seen_from_the_stack():
    assert not collectives.waiting_for_peers(sys._getframe())
    namespace = {"__name__": "torch.distributed.fake", "sys": sys}
    exec("def here():\n    return sys._getframe()\n", namespace)
    assert collectives.waiting_for_peers(namespace["here"]())


def test_laggards_are_named_from_the_heartbeats():
    # Everyone at the same step: the rank that is not waiting in a collective holds up the others.
    notes = {0: "0 3 waiting 0", 1: "0 3 working 1"}
    assert describe_laggards(notes, 2, me=0) == "rank 1 (node 1) is at epoch 0 step 3, outside any collective"
    assert describe_laggards(notes, 2, me=1) == ""
    # A rank behind the others is named even while it waits.
    behind = describe_laggards({0: "1 0 waiting 0", 1: "0 3 waiting 0", 2: "1 0 waiting 1"}, 4, me=0)
    assert behind.startswith("rank 1 (node 0) is at epoch 0 step 3, waiting") and "rank(s) 3 never" in behind
    # Outside the training step the note names the phase: the rank still validating is the one waited for.
    validating = {0: "0 3 waiting 0", 1: "0 3 validating 1"}
    assert describe_laggards(validating, 2, me=0) == "rank 1 (node 1) is validating epoch 0"
    assert describe_laggards({0: "0 3 saving 0", 1: "0 3 waiting 1"}, 2, me=1) == "rank 0 (node 0) is saving epoch 0"


def test_skip_batches_continues_the_same_epoch():
    sampler = ShardedBatchSampler(22, 4, rank=1, world=2, seed=3)
    sampler.set_epoch(2)
    assert list(SkipBatches(sampler, 2)) == list(sampler)[2:]
    assert len(SkipBatches(sampler, 2)) == len(sampler) - 2 and len(SkipBatches(sampler, 99)) == 0


def test_stop_signals_set_a_flag_and_a_second_ctrl_c_interrupts():
    signals = StopSignals(announce=False)
    signals.install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert signals.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
    finally:
        signals.restore()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def _toy_context(signum: int = 0) -> step.StepContext:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    signals = StopSignals(announce=False)
    signals.signum = signum  # as its handler would have set it
    return step.StepContext(model, model, None, optimizer, scaler, None, DistEnv(), 1, autocast=None, stop=signals)


def test_an_update_with_nan_gradients_is_skipped_and_counted():
    ctx = _toy_context()
    progress = RunProgress()  # where the trainer counts skipped updates
    before = [p.detach().clone() for p in ctx.model.parameters()]
    for p in ctx.model.parameters():
        p.grad = torch.full_like(p, float("nan"))
    agreed = step.apply_update(ctx)
    epoch.after_update(progress, step.StepOutcome(torch.zeros(3), *agreed), ctx.env, 0, 0)
    assert agreed.skipped and progress.skipped_in_a_row == 1
    assert all(torch.equal(a, b) for a, b in zip(before, ctx.model.parameters(), strict=True))
    assert all(p.grad is None for p in ctx.model.parameters())
    ctx.model(torch.ones(1, 3)).sum().backward()
    agreed = step.apply_update(ctx)
    epoch.after_update(progress, step.StepOutcome(torch.zeros(3), *agreed), ctx.env, 0, 1)
    assert not agreed.skipped and progress.skipped_in_a_row == 0 and agreed.stop_signal == 0
    assert not all(torch.equal(a, b) for a, b in zip(before, ctx.model.parameters(), strict=True))


def _micro_batch(ctx: step.StepContext, loss_sums: torch.Tensor) -> torch.Tensor:
    """What train_step does between forward and backward: share the counts and this rank's news."""
    return step.share_counts(ctx, torch.ones(3, 3), step.local_news(ctx, loss_sums))


def test_a_pending_signal_is_agreed_at_the_update():
    ctx = _toy_context(signum=signal.SIGTERM)
    _micro_batch(ctx, torch.ones(3, 3))
    ctx.model(torch.ones(1, 3)).sum().backward()
    agreed = step.apply_update(ctx)
    assert agreed.stop_signal == signal.SIGTERM and not agreed.skipped
    assert ctx.window.sums is None  # the next window starts afresh


def test_a_nonfinite_loss_anywhere_in_the_window_skips_the_update():
    ctx = _toy_context()
    before = [p.detach().clone() for p in ctx.model.parameters()]
    sums = torch.ones(3, 3)
    sums[1, 2] = float("inf")
    _micro_batch(ctx, sums)  # an accumulation micro-batch with an inf loss term
    _micro_batch(ctx, torch.ones(3, 3))  # the update's own micro-batch is finite
    ctx.model(torch.ones(1, 3)).sum().backward()  # and so are the gradients
    agreed = step.apply_update(ctx)
    assert agreed.skipped and agreed.stop_signal == 0
    assert all(torch.equal(a, b) for a, b in zip(before, ctx.model.parameters(), strict=True))


WATCHDOG_PROBE = textwrap.dedent(
    """
    import time
    from yolodist.distributed.env import DistEnv
    from yolodist.distributed.watchdog import Watchdog

    dog = Watchdog(DistEnv(rank=1, node_rank=1), timeout_s=1.0)
    dog.start()
    dog.pet(0, 0)
    with dog.phase("validating"):  # a validation longer than the timeout, with progress at every batch
        for _ in range(8):
            time.sleep(0.3)
            dog.progress()
    print("survived the phase", flush=True)
    dog.pet(0, 7)
    with dog.phase("saving"):
        time.sleep(30)  # hung in a save: the watchdog must end the process long before this
    print("not reached", flush=True)
    """
)


@pytest.mark.timeout(60)
@pytest.mark.timing
def test_watchdog_ends_a_hung_process_with_its_stacks(tmp_path):
    """A phase longer than the timeout survives while it shows progress; a hung one is ended, named.
    (A hang in the training step itself is F3, with real ranks.)"""
    probe = tmp_path / "probe.py"
    probe.write_text(WATCHDOG_PROBE)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, str(probe)], capture_output=True, text=True, timeout=45, cwd=ROOT)
    assert proc.returncode != 0
    assert "survived the phase" in proc.stdout and "not reached" not in proc.stdout
    said = "rank 1 (node 1) made no progress for 1 s while saving epoch 0 (--dist-timeout)"
    assert said in proc.stderr, proc.stderr
    assert "most recent call first" in proc.stderr and "probe.py" in proc.stderr  # the stack dump
    assert time.monotonic() - started < 25


# ---- real ranks ----------------------------------------------------------------------------------


@pytest.mark.dist
@pytest.mark.timeout(120)
@pytest.mark.timing
def test_f1_a_rank_that_raises_ends_the_job(tmp_path, tiny_shapes):
    """F1: rank 1 raises at step 3; the launcher exits non-zero promptly, the error shown once, nothing left."""
    args = [WRAPPER, "--fault", "raise", "--rank", "1", "--step", "3", "--", *train_flags(tiny_shapes, tmp_path, "f1")]
    with launched() as marker:
        job = Job(torchrun_command(*args, nproc=2, port=free_port()), tmp_path / "logs", "f1", marker)
        failed_at = job.wait_for_text("injected failure on rank 1 at step 3", timeout=90)
        finish([job], timeout=30)
        assert no_leftovers(marker) == []
    output = job.output
    assert job.proc.returncode != 0
    assert job.ended - failed_at < 15, output[-3000:]
    assert output.count("RuntimeError: injected failure on rank 1 at step 3") == 1
    # The other rank says why it stops in one line instead of a traceback of its own.
    assert "rank 0 (node 0): stopping because another rank failed" in output
    assert "Connection closed by peer" not in output, output[-3000:]


def restart_flags(data: Path, project: Path, name: str) -> list[str]:
    return train_flags(data, project, name, "--epochs", "3", "--deterministic")


@pytest.mark.dist
@pytest.mark.timeout(240)
# The slow layer's: a Python raise is the gentle form of the failure that test_kill injects as a
# SIGKILL of a rank of two c10d launchers in the default layer.
@pytest.mark.parametrize("nodes", [1, 2], ids=["F5-1node", "F6-2nodes"])
@pytest.mark.slow
@pytest.mark.timing
def test_f5_f6_a_restarted_launch_continues_its_run_bitwise(tmp_path, tiny_shapes, uninterrupted, nodes):
    """F5 (2 ranks on one launcher) and F6 (two launchers of one rank each on 127.0.0.1): with --max-restarts 1,
    rank 1 fails in epoch 1; the restarted round resumes the same run from its last.pt (epoch 0) and ends with
    weights bitwise equal to an uninterrupted run's."""
    fault = [WRAPPER, "--fault", "raise", "--rank", "1", "--step", "6", "--"]
    restarts = ["--max-restarts", "1", *fault, *restart_flags(tiny_shapes, tmp_path, "elastic")]
    port = free_port()
    with launched() as marker:
        jobs = [
            Job(
                torchrun_command(*restarts, nproc=2 // nodes, nnodes=nodes, node_rank=n, port=port),
                tmp_path / "logs",
                f"node{n}",
                marker,
            )
            for n in range(nodes)
        ]
        finish(jobs, timeout=150)
        assert no_leftovers(marker) == []
    for job in jobs:
        assert job.proc.returncode == 0, job.output[-3000:]
    output = "".join(job.output for job in jobs)
    assert "injected failure on rank 1 at step 6" in output
    assert f"restart 1: continuing this launch's run from {tmp_path / 'elastic' / 'weights' / 'last.pt'}" in output
    assert not (tmp_path / "elastic2").exists()  # the same run directory, not a new one
    assert not list(tmp_path.glob(".restart-*"))  # the note is gone once training finished
    resumed = torch.load(tmp_path / "elastic" / "weights" / "last.pt", weights_only=True)
    assert uninterrupted["epoch"] == resumed["epoch"] == 2
    for key in ("model", "ema"):
        assert all(torch.equal(uninterrupted[key][k], resumed[key][k]) for k in uninterrupted[key]), key


def elastic_node(*args: str, port: int, last_call_s: float) -> list[str]:
    """One node of an elastic job: 1 or 2 nodes of one rank each, c10d rendezvous on 127.0.0.1."""
    return [
        *(sys.executable, "-m", "torch.distributed.run", "--nnodes", "1:2", "--nproc_per_node", "1"),
        *("--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "f7"),
        *("--rdzv-conf", f"last_call_timeout={last_call_s:g}", "--max-restarts", "1", *args),
    ]


def wait_listening(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail(f"nothing listens on 127.0.0.1:{port} after {timeout:g} s")
            time.sleep(0.1)


@pytest.mark.dist
@pytest.mark.timeout(300)
@pytest.mark.timing
def test_f7_elastic_scale_down_continues_on_one_node_on_the_same_trajectory(tmp_path, tiny_shapes):
    """F7: two elastic nodes (--nnodes 1:2) train with --sync-bn; node B's launcher gets SIGTERM early in epoch 1.
    Both ranks stop at one step and save; node A's launcher restarts alone, with WORLD_SIZE 1 and the same total
    batch, continues the run from that checkpoint, and ends on the uninterrupted 2-rank trajectory."""
    from tests.distributed.test_ddp import _global_rel_diff

    flags = lambda name: train_flags(tiny_shapes, tmp_path, name, "--epochs", "2", "--deterministic", "--sync-bn")  # noqa: E731
    port = free_port()
    with launched() as marker:
        # The uninterrupted reference trains beside the elastic run (whose steps are slowed anyway).
        ref = Job(torchrun_command(TRAIN, *flags("ref"), nproc=2, port=free_port()), tmp_path / "logs", "ref", marker)
        slow = [WRAPPER, "--fault", "slow", "--seconds", "0.5", "--", *flags("elastic")]
        # Node A starts first and hosts the rendezvous store (the first launcher to bind the endpoint does);
        # node B, which will be stopped, only connects to it. A long last call on the first rendezvous lets
        # both join before it closes; the restarted round waits as long for a node that will not come back.
        nodes = [Job(elastic_node(*slow, port=port, last_call_s=15), tmp_path / "logs", "A", marker)]
        wait_listening(port, timeout=60)
        nodes.append(Job(elastic_node(*slow, port=port, last_call_s=15), tmp_path / "logs", "B", marker))
        nodes[0].wait_for_text("finished step 4", timeout=120)  # the first step of epoch 1 (4 steps an epoch)
        nodes[1].proc.send_signal(signal.SIGTERM)
        finish([ref, *nodes], timeout=150)
        assert no_leftovers(marker) == []
    assert ref.proc.returncode == 0, ref.output[-3000:]
    a, b = nodes
    assert b.proc.returncode != 0
    assert a.proc.returncode == 0, a.output[-3000:] + b.output[-3000:]
    last = tmp_path / "elastic" / "weights" / "last.pt"
    assert "Interrupted at epoch 1 step" in a.output + b.output, a.output[-3000:]
    assert f"restart 1: continuing this launch's run from {last}" in a.output, a.output[-3000:]
    assert "2 process(es) x 2 images" in a.output + b.output  # the first round: both nodes
    assert "1 process(es) x 4 images" in a.output  # the total batch, now on one rank
    assert not (tmp_path / "elastic2").exists()
    reference = torch.load(tmp_path / "ref" / "weights" / "last.pt", weights_only=True)
    resumed = torch.load(last, weights_only=True)
    assert reference["epoch"] == resumed["epoch"] == 1 and reference["updates"] == resumed["updates"]
    # One rank instead of two sums in another order; each update of this tiny run in warm-up amplifies
    # that rounding about threefold (RELIABILITY F7's 1e-4 holds for the few updates after the scale-down).
    for key in ("model", "ema"):
        assert _global_rel_diff(reference[key], resumed[key]) < 1e-4, key


@pytest.mark.dist
@pytest.mark.timeout(150)
@pytest.mark.timing
def test_f2_a_rank_that_raises_ends_both_nodes(tmp_path, tiny_shapes):
    """F2: the same on two launchers ("nodes") of one rank each on 127.0.0.1: both exit non-zero."""
    port = free_port()
    args = [WRAPPER, "--fault", "raise", "--rank", "1", "--step", "3", "--", *train_flags(tiny_shapes, tmp_path, "f2")]
    with launched() as marker:
        nodes = [
            Job(torchrun_command(*args, nnodes=2, node_rank=n, port=port), tmp_path / "logs", f"node{n}", marker)
            for n in (0, 1)
        ]
        failed_at = nodes[1].wait_for_text("injected failure on rank 1 at step 3", timeout=110)
        finish(nodes, timeout=30)
        assert no_leftovers(marker) == []
    assert [node.proc.returncode != 0 for node in nodes] == [True, True]
    assert max(node.ended for node in nodes) - failed_at < 20, nodes[0].output[-3000:]
    assert "rank 0 (node 0): stopping because another rank failed" in nodes[0].output
    assert nodes[0].output.count("Traceback") == 1  # the launcher's own; rank 0 says one line


@pytest.mark.dist
@pytest.mark.timeout(150)
@pytest.mark.timing
def test_f3_a_hung_rank_is_ended_by_its_watchdog(tmp_path, tiny_shapes):
    """F3: rank 1 (node 1) sleeps forever at step 3; with --dist-timeout 10 both launchers exit within ~2x."""
    port = free_port()
    flags = train_flags(tiny_shapes, tmp_path, "f3", "--dist-timeout", "10", "--noval", "--epochs", "2")
    args = [WRAPPER, "--fault", "hang", "--rank", "1", "--step", "3", "--", *flags]
    with launched() as marker:
        nodes = [
            Job(torchrun_command(*args, nnodes=2, node_rank=n, port=port), tmp_path / "logs", f"node{n}", marker)
            for n in (0, 1)
        ]
        hung_at = nodes[1].wait_for_text("rank 1 hangs at step 3", timeout=110)
        finish(nodes, timeout=35)
        assert no_leftovers(marker) == []
    assert [node.proc.returncode != 0 for node in nodes] == [True, True]
    assert max(node.ended for node in nodes) - hung_at < 25
    stuck = nodes[1].output
    assert "rank 1 (node 1) made no progress for 10 s at epoch 0 step 3" in stuck, stuck[-3000:]
    assert "most recent call first" in stuck and "fault_train.py" in stuck  # the stack dump shows where
    # Rank 0 names the laggard, whether its watchdog or its collective's timeout went first (or it
    # saw rank 1's exit as a lost peer).
    assert "rank 1 (node 1) is at epoch 0 step 3" in nodes[0].output or "another rank failed" in nodes[0].output


@pytest.mark.dist
@pytest.mark.timeout(150)
@pytest.mark.parametrize(
    ("fault", "rank", "phase"),
    [("hang-in-val", 1, "validating"), ("hang-in-save", 0, "saving")],
    ids=["F3-validation", "F3-save"],
)
@pytest.mark.timing
def test_f3_a_rank_hung_outside_the_step_is_ended_and_named(tmp_path, tiny_shapes, fault, rank, phase):
    """F3 outside the training step, on two launchers of one rank each: rank 1 hangs fetching its validation
    batch, or rank 0 hangs inside its checkpoint write. No launcher would end the hung rank (its peer's node
    exits alone); its watchdog does within the timeout, and both nodes say who hung where."""
    port = free_port()
    flags = train_flags(tiny_shapes, tmp_path, "hang", "--dist-timeout", "10")  # one epoch, validated and saved
    args = [WRAPPER, "--fault", fault, "--rank", str(rank), "--", *flags]
    with launched() as marker:
        nodes = [
            Job(torchrun_command(*args, nnodes=2, node_rank=n, port=port), tmp_path / "logs", f"node{n}", marker)
            for n in (0, 1)
        ]
        hung_at = nodes[rank].wait_for_text(f"rank {rank} hangs", timeout=110)
        finish(nodes, timeout=35)
        assert no_leftovers(marker) == []
    assert [node.proc.returncode != 0 for node in nodes] == [True, True]
    assert max(node.ended for node in nodes) - hung_at < 25
    stuck, other = nodes[rank].output, nodes[1 - rank].output
    said = f"rank {rank} (node {rank}) made no progress for 10 s while {phase} epoch 0 (--dist-timeout)"
    assert said in stuck, stuck[-3000:]
    assert "most recent call first" in stuck and "fault_train.py" in stuck  # the stack dump shows where
    # The other rank names the hung one (from the heartbeats), or saw it exit as a lost peer.
    assert f"rank {rank} (node {rank}) is {phase} epoch 0" in other or "another rank failed" in other, other[-3000:]
    for node in nodes:  # the ranks say one line (and a stack dump); the only traceback is the launcher's
        assert node.output.count("Traceback") <= 1, node.output[-3000:]


@pytest.mark.dist
@pytest.mark.timeout(120)
def test_c7_a_rank_without_labels_trains_with_the_others(tmp_path, tiny_shapes):
    """C7: rank 1's batches have no labels at all (no scale has a match there): every step completes, all finite."""
    record = tmp_path / "record"
    record.mkdir()
    args = [WRAPPER, "--fault", "empty", "--rank", "1", "--record", str(record), "--"]
    args += train_flags(tiny_shapes, tmp_path, "c7", "--noval")
    with launched() as marker:
        job = Job(torchrun_command(*args, nproc=2, port=free_port()), tmp_path / "logs", "c7", marker)
        finish([job], timeout=100)
    assert job.proc.returncode == 0, job.output[-3000:]
    for rank in (0, 1):  # four updates on each rank, none skipped for non-finite values
        assert (record / f"updates-rank{rank}.txt").read_text().split("\n")[:-1] == ["0 0", "1 0", "2 0", "3 0"]
    assert all_finite(tmp_path / "c7" / "weights" / "last.pt")


@pytest.mark.dist
@pytest.mark.timeout(120)
def test_c8_nan_on_one_rank_skips_the_same_update_everywhere(tmp_path, tiny_shapes):
    """C8: rank 1's loss is NaN at step 2 only: both ranks skip that update, rank 0 warns once, training ends well."""
    record = tmp_path / "record"
    record.mkdir()
    args = [WRAPPER, "--fault", "nan", "--rank", "1", "--step", "2", "--record", str(record), "--"]
    args += train_flags(tiny_shapes, tmp_path, "c8", "--noval")
    with launched() as marker:
        job = Job(torchrun_command(*args, nproc=2, port=free_port()), tmp_path / "logs", "c8", marker)
        finish([job], timeout=100)
    assert job.proc.returncode == 0, job.output[-3000:]
    updates = [(record / f"updates-rank{rank}.txt").read_text() for rank in (0, 1)]
    assert updates[0] == updates[1] == "0 0\n1 0\n2 1\n3 0\n"
    assert job.output.count("non-finite loss or gradients at epoch 0 step 2") == 1
    assert all_finite(tmp_path / "c8" / "weights" / "last.pt")


@pytest.mark.dist
@pytest.mark.timeout(150)
def test_c8_nan_that_persists_stops_cleanly_and_keeps_the_last_good_checkpoint(tmp_path, tiny_shapes):
    """C8: NaN on rank 1 from step 5 (epoch 1) on: after 10 skipped updates the job stops with one message."""
    args = [WRAPPER, "--fault", "nan-from", "--rank", "1", "--step", "5", "--"]
    args += train_flags(tiny_shapes, tmp_path, "c8", "--noval", "--epochs", "4")
    with launched() as marker:
        job = Job(torchrun_command(*args, nproc=2, port=free_port()), tmp_path / "logs", "c8", marker)
        finish([job], timeout=130)
    output = job.output
    assert job.proc.returncode != 0
    assert "loss is NaN/inf for 10 steps in a row (last at epoch 3 step 2): lower --hyp lr0" in output, output[-3000:]
    assert output.count("Traceback") == 1  # the launcher's own; the ranks say one line each
    last = tmp_path / "c8" / "weights" / "last.pt"
    assert torch.load(last, weights_only=True)["epoch"] == 0  # written before the NaN began, never after
    assert all_finite(last)
