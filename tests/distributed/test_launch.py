"""Launch topologies and rank-0-only phases, with real launchers and ranks on gloo (RELIABILITY.md L3, L6-L8, F4, C9).

"Nodes" are separate launcher processes on 127.0.0.1; every launch has a hard deadline and its
leftover processes are killed (``launch_helpers.run_together``).
"""

from __future__ import annotations

import json
import re
import socket
import sys
import uuid
from pathlib import Path

import pytest

from tests.distributed.conftest import ROOT, free_port
from tests.distributed.launch_helpers import WRAPPER, run_one, run_together, tiny_train_args, torchrun_command
from yolodist.data.synthetic import ensure_shapes
from yolodist.distributed.launcher import Topology, plan, rendezvous_error
from yolodist.errors import DistFailure, PortBusy

pytestmark = pytest.mark.dist

TRAIN = str(ROOT / "train.py")
SHORTCUT = [sys.executable, "-m", "yolodist.cli", "train"]
ALL_ROW = re.compile(r"^\s+all\s+\d+\s+\d+", re.MULTILINE)  # the validation summary row, printed by rank 0 only
VALIDATIONS = 2  # a one-epoch run validates its epoch, then best.pt
FAQ = (ROOT / "docs" / "multi-gpu.md").read_text().split("## FAQ", 1)[-1]


def test_rendezvous_errors_name_what_to_do():
    where = Topology(nproc=1, nnodes=2, node_rank=0, master_addr="10.0.0.1", master_port=29500, join_timeout_s=8.0)
    joined = rendezvous_error("Timed out after 9 seconds waiting for clients. 1/2 clients joined.", where)
    assert isinstance(joined, DistFailure)
    assert str(joined).startswith("only 1/2 nodes joined within 8 s")
    assert "--master-port 29500" in str(joined) and "--dist-timeout" in str(joined)
    unreachable = rendezvous_error(
        "The client socket has timed out after 8000ms while trying to connect to (10.0.0.1, 29500).", where
    )
    assert isinstance(unreachable, DistFailure) and "10.0.0.1:29500 could not be reached" in str(unreachable)
    busy = rendezvous_error("port: 29500, useIpv6: false, code: -98, name: EADDRINUSE", where)
    assert isinstance(busy, PortBusy) and "--master-port" in str(busy)
    assert rendezvous_error("something else entirely", where) is None


def test_join_timeout_reaches_the_static_rendezvous():
    args = plan(2, 2, 1, "10.0.0.1", 29500, join_timeout_s=7.5).torchrun_args()
    assert args[args.index("--rdzv-conf") + 1] == "timeout=8"  # whole seconds, rounded up
    assert plan(2, 1, 0, "127.0.0.1", None, join_timeout_s=60).master_port > 0


@pytest.mark.timeout(150)
@pytest.mark.timing
def test_two_nodes_c10d_rendezvous_on_loopback(tmp_path, tiny_shapes):
    """L3: two launchers joined through a c10d rendezvous on 127.0.0.1; rank 0 (on either) reports once."""
    endpoint, run_id = f"127.0.0.1:{free_port()}", f"t{uuid.uuid4().hex[:12]}"
    project = tmp_path / "runs"
    commands = [
        torchrun_command(
            "--nnodes",
            "2",
            "--nproc_per_node",
            "1",
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            endpoint,
            "--rdzv-id",
            run_id,
            # Both nodes share one address here, so the host of the store is named, not guessed.
            "--rdzv-conf",
            f"is_host={int(node == 0)}",
            TRAIN,
            *tiny_train_args(tiny_shapes, project, "c10d"),
        )
        for node in (0, 1)
    ]
    nodes = run_together(commands, tmp_path / "logs", timeout=120, stagger_s=1.0)
    assert [n.returncode for n in nodes] == [0, 0], nodes[0].stderr[-2000:] + nodes[1].stderr[-2000:]
    outputs = [n.output for n in nodes]
    assert sum(len(ALL_ROW.findall(o)) for o in outputs) == VALIDATIONS, outputs
    assert sum(o.count("Starting training") for o in outputs) == 1
    assert "2 process(es) x 2 images" in "".join(outputs)
    assert [p.name for p in project.iterdir()] == ["c10d"]  # one run directory, written by the global rank 0
    assert (project / "c10d" / "weights" / "last.pt").is_file()


@pytest.mark.timeout(60)
@pytest.mark.timing
def test_raw_torchrun_busy_port_is_quoted_in_the_faq(tmp_path):
    """L6: torchrun's own EADDRINUSE line, as the FAQ quotes it (with torchrun's default port 29500)."""
    with socket.socket() as held:
        held.bind(("", 0))
        held.listen()
        port = held.getsockname()[1]
        run = run_one(
            torchrun_command("--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(port), TRAIN),
            tmp_path / "logs",
            timeout=45,
        )
    assert run.returncode != 0
    lines = [line for line in run.stderr.splitlines() if "EADDRINUSE" in line]
    assert lines, run.stderr[-3000:]
    quoted = lines[-1].strip().replace(f"port: {port},", "port: 29500,")
    assert quoted in FAQ, f"docs/multi-gpu.md FAQ should quote: {quoted}"
    assert "--master_port" in FAQ.split(quoted, 1)[1].split("**", 1)[0]  # ...followed by the fix


@pytest.mark.timeout(60)
@pytest.mark.timing
def test_node_never_joins_raw_torchrun(tmp_path, tiny_shapes):
    """L7 (raw torchrun): the join is bounded by --rdzv-conf timeout, and torch names the count itself."""
    run = run_one(
        torchrun_command(
            "--nproc_per_node",
            "1",
            "--nnodes",
            "2",
            "--node_rank",
            "0",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
            "--rdzv-conf",
            "timeout=8",
            TRAIN,
            *tiny_train_args(tiny_shapes, tmp_path / "runs", "alone"),
        ),
        tmp_path / "logs",
        timeout=45,
    )
    assert run.returncode != 0
    lines = [line.strip() for line in run.stderr.splitlines() if "1/2 clients joined" in line]
    assert lines, run.stderr[-3000:]
    assert 8 <= run.seconds < 30
    # The FAQ quotes the line as measured with timeout=8; the seconds it reports may drift under load.
    assert re.sub(r"after \d+ seconds", "after 9 seconds", lines[-1]) in FAQ, lines[-1]
    assert "--rdzv-conf timeout=" in FAQ


@pytest.mark.timeout(60)
@pytest.mark.timing
def test_node_never_joins_launch_shortcut(tmp_path, tiny_shapes):
    """L7 (our shortcut): --dist-timeout bounds the join; one line names how many nodes joined."""
    port = free_port()
    run = run_one(
        [
            *SHORTCUT,
            "--nproc-per-node",
            "1",
            "--nnodes",
            "2",
            "--node-rank",
            "0",
            "--master-port",
            str(port),
            "--dist-timeout",
            "8",
            *tiny_train_args(tiny_shapes, tmp_path / "runs", "alone"),
        ],
        tmp_path / "logs",
        timeout=45,
    )
    assert run.returncode != 0
    assert 8 <= run.seconds < 30, run.seconds
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    last = run.stderr.strip().splitlines()[-1]
    assert "only 1/2 nodes joined within 8 s" in last and f"--master-port {port}" in last, run.stderr


@pytest.mark.timeout(200)
@pytest.mark.timing
@pytest.mark.slow  # torchrun's own --standalone ports; make test keeps our shortcut's stacked jobs (below)
def test_stacked_standalone_jobs(tmp_path, tiny_shapes):
    """L8: two --standalone jobs of two ranks each, started together, train apart and write apart."""
    project = tmp_path / "runs"
    commands = [
        torchrun_command("--standalone", "--nproc_per_node", "2", TRAIN, *tiny_train_args(tiny_shapes, project, name))
        for name in ("job_a", "job_b")
    ]
    jobs = run_together(commands, tmp_path / "logs", timeout=180)
    assert [j.returncode for j in jobs] == [0, 0], jobs[0].stderr[-2000:] + jobs[1].stderr[-2000:]
    _assert_apart(jobs, project, ("job_a", "job_b"))


@pytest.mark.timeout(200)
@pytest.mark.timing
def test_stacked_launch_shortcut_jobs_pick_their_own_ports(tmp_path, tiny_shapes):
    """L8 (our shortcut): without --master-port, two jobs started together each take a free port."""
    project = tmp_path / "runs"
    commands = [
        [*SHORTCUT, "--nproc-per-node", "2", *tiny_train_args(tiny_shapes, project, name)]
        for name in ("job_a", "job_b")
    ]
    jobs = run_together(commands, tmp_path / "logs", timeout=180)
    assert [j.returncode for j in jobs] == [0, 0], jobs[0].stderr[-2000:] + jobs[1].stderr[-2000:]
    _assert_apart(jobs, project, ("job_a", "job_b"))


def _assert_apart(jobs, project: Path, names: tuple[str, ...]) -> None:
    """Each job reported once, about its own run directory only, and wrote its own checkpoint."""
    for job, name in zip(jobs, names, strict=True):
        other = next(n for n in names if n != name)
        assert job.output.count("Starting training") == 1 and len(ALL_ROW.findall(job.output)) == VALIDATIONS
        assert "2 process(es) x 2 images" in job.output
        assert str(project / name) in job.output and str(project / other) not in job.output
        assert (project / name / "weights" / "last.pt").is_file()
    assert sorted(p.name for p in project.iterdir()) == sorted(names)


def _label_events(log_dir: Path, rank: int) -> dict[str, list[dict]]:
    """The events ``launch_wrapper.py slow-labels`` recorded for ``rank``, by kind (load, scan, save, wait)."""
    events: dict[str, list[dict]] = {"load": [], "scan": [], "save": [], "wait": []}
    log = log_dir / f"labels-rank{rank}.jsonl"
    for line in log.read_text().splitlines() if log.is_file() else []:
        event = json.loads(line)
        events[event["event"]].append(event)
    return events


@pytest.mark.timeout(150)
# Not timing: the scan's sleep outlasts the timeout whatever the load (and costs no CPU in the parallel phase).
def test_slow_rank0_label_cache_outlasts_dist_timeout(tmp_path):
    """F4: local rank 0 scans labels for 12 s with --dist-timeout 8; the other rank waits on a store key,
    then reads the cache rank 0 wrote instead of scanning the images itself."""
    # A dataset of its own: the session's tiny set may already carry label caches from other tests.
    data = ensure_shapes(tmp_path / "shapes", n_train=16, n_val=8, img_size=128, seed=0)
    project, events = tmp_path / "runs", tmp_path / "events"
    events.mkdir()
    run = run_one(
        torchrun_command(
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
            str(WRAPPER),
            "slow-labels",
            "12",
            str(events),
            *tiny_train_args(data, project, "slow", "--dist-timeout", "8"),
        ),
        tmp_path / "logs",
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    rank0, rank1 = _label_events(events, 0), _label_events(events, 1)
    caches = sorted({e["what"] for e in rank0["load"]})
    assert len(caches) == 2, rank0  # the train and the val label caches
    # Rank 0 scanned and wrote each cache exactly once; rank 1 asked for the same labels and got
    # them from those caches, without a scan or a write of its own.
    assert sorted(e["what"] for e in rank0["scan"]) == sorted(e["what"] for e in rank0["save"]) == caches
    assert sorted({e["what"] for e in rank1["load"]}) == caches, rank1
    assert rank1["scan"] == [] and rank1["save"] == [], rank1
    # Rank 1 waited on the store for longer than --dist-timeout (rank 0 slept 12 s), without failing,
    # and started on the train labels only once rank 0's cache was on disk.
    waits = {e["what"]: e["seconds"] for e in rank1["wait"]}
    assert waits.get("train-labels", 0) > 8, rank1["wait"]
    assert rank0["wait"] == [], rank0["wait"]  # the local main rank goes first, it never waits
    saved = {e["what"]: e["time"] for e in rank0["save"]}
    first = rank1["load"][0]
    assert first["time"] >= saved[first["what"]], (rank0, rank1)
    assert "Starting training" in run.stdout and (project / "slow" / "weights" / "last.pt").is_file()
    assert "dist_timeout: 8.0" in (project / "slow" / "opt.yaml").read_text()


@pytest.mark.timeout(150)
def test_multi_scale_uses_one_size_per_step_on_every_rank(tmp_path, tiny_shapes):
    """C9: with --multi-scale both ranks train each step at the same (varying) size."""
    run = run_one(
        torchrun_command(
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
            str(WRAPPER),
            "record-sizes",
            str(tmp_path),
            *tiny_train_args(tiny_shapes, tmp_path / "runs", "multi", "--multi-scale"),
        ),
        tmp_path / "logs",
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    sizes = [(tmp_path / f"sizes-rank{r}.txt").read_text().splitlines() for r in (0, 1)]
    assert len(sizes[0]) > 2 and sizes[0] == sizes[1], sizes
    assert len(set(sizes[0])) > 1, sizes  # the size really changed between steps
