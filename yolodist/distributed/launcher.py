"""``yolodist train --nproc-per-node N ...``: start a DDP job through torch's own launcher.

Before launching, the master port is checked on this machine (node 0 hosts the rendezvous store)
so that "address already in use" becomes one clear message that names a free port, instead of a
launcher traceback. Without ``--master-port`` a single-node job takes a free port, so two trainings
on one machine never clash.

The join of the nodes is bounded by the same timeout as the collectives (``--dist-timeout``): node 0
waits that long for the others, the others that long to reach node 0, and a missing node becomes one
message that says how many joined, not a launcher traceback after torch's default quarter of an hour.
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
from dataclasses import dataclass

from yolodist.distributed import slurm
from yolodist.errors import BadFlag, DistFailure, PortBusy, UserError

LOGGER = logging.getLogger(__name__)
# torch's static rendezvous: "Timed out after 9 seconds waiting for clients. 1/2 clients joined."
_JOINED = re.compile(r"(\d+)/(\d+) clients joined")


def under_launcher() -> bool:
    """True inside a process started by torchrun / torch.distributed.launch, or one of several srun tasks."""
    return ("RANK" in os.environ and "WORLD_SIZE" in os.environ) or slurm.is_multi_task_step(os.environ)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Whether ``port`` can be bound on all interfaces, as the launcher's store will bind it."""
    with socket.socket() as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


@dataclass(frozen=True)
class Topology:
    """This node's part of a static-rendezvous job, as torch.distributed.run takes it."""

    nproc: int
    nnodes: int
    node_rank: int
    master_addr: str
    master_port: int
    join_timeout_s: float

    def torchrun_args(self) -> list[str]:
        return [
            "--nproc_per_node",
            str(self.nproc),
            "--nnodes",
            str(self.nnodes),
            "--node_rank",
            str(self.node_rank),
            "--master_addr",
            self.master_addr,
            "--master_port",
            str(self.master_port),
            # The static rendezvous reads whole seconds; it bounds both node 0's wait for the others
            # and the others' attempts to reach node 0.
            "--rdzv-conf",
            f"timeout={max(1, math.ceil(self.join_timeout_s))}",
        ]


def plan(
    nproc: int, nnodes: int, node_rank: int, master_addr: str, master_port: int | None, join_timeout_s: float
) -> Topology:
    """This node's topology, with the master port checked (node 0) or chosen (single node)."""
    if nproc < 1 or nnodes < 1 or not 0 <= node_rank < nnodes:
        raise BadFlag(f"--nproc-per-node {nproc}, --nnodes {nnodes}, --node-rank {node_rank} do not make a valid job")
    if master_port is None:
        if nnodes > 1:
            raise BadFlag("--master-port is required with --nnodes > 1: every node must name the same port")
        master_port = free_port()
    elif node_rank == 0 and not port_is_free(master_port):
        raise PortBusy(_busy_message(master_port))
    return Topology(nproc, nnodes, node_rank, master_addr, master_port, join_timeout_s)


def _busy_message(port: int) -> str:
    return (
        f"--master-port {port} is already in use on this machine (another training probably holds it); "
        f"rerun with --master-port {free_port()}"
    )


def rendezvous_error(text: str, where: Topology) -> UserError | None:
    """The actionable message for the launcher's own rendezvous failure, or None when it is something else."""
    same_flags = f"--nnodes {where.nnodes} --master-addr {where.master_addr} --master-port {where.master_port}"
    waited = f"{where.join_timeout_s:g} s"
    joined = _JOINED.search(text)
    if joined:
        return DistFailure(
            f"only {joined[1]}/{joined[2]} nodes joined within {waited}; start every other node with the same "
            f"{same_flags} and its own --node-rank, or allow longer with --dist-timeout"
        )
    lowered = text.lower()
    if "eaddrinuse" in lowered or "address already in use" in lowered:
        return PortBusy(_busy_message(where.master_port))
    if "timed out" in lowered and "connect" in lowered:
        return DistFailure(
            f"node 0 at {where.master_addr}:{where.master_port} could not be reached within {waited}; start it "
            f"(--node-rank 0) with the same {same_flags}, check that this machine can reach it (firewall), "
            "or allow longer with --dist-timeout"
        )
    return None


def launch(where: Topology, module: str, argv: list[str]) -> int:
    """Run ``python -m module argv`` on every process of this node through torch.distributed.run."""
    from torch.distributed import DistError
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    try:
        torchrun([*where.torchrun_args(), "-m", module, *argv])
    except ChildFailedError as e:
        failures = ", ".join(f"rank {rank} exit code {f.exitcode}" for rank, f in sorted(e.failures.items()))
        raise DistFailure(f"the distributed job failed ({failures}); the failing rank's error is shown above") from None
    except DistError as e:
        friendly = rendezvous_error(str(e), where)
        if friendly is None:
            raise
        raise friendly from None
    return 0
