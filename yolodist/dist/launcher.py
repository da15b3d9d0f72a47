"""``yolodist train --nproc-per-node N ...``: start a DDP job through torch's own launcher.

Before launching, the master port is checked on this machine (node 0 hosts the rendezvous store)
so that "address already in use" becomes one clear message that names a free port, instead of a
launcher traceback. Without ``--master-port`` a single-node job takes a free port, so two trainings
on one machine never clash.
"""

from __future__ import annotations

import logging
import os
import socket

from yolodist.errors import BadFlag, DistFailure, PortBusy

LOGGER = logging.getLogger(__name__)


def under_launcher() -> bool:
    """True inside a process started by torchrun / torch.distributed.launch."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


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


def launch_args(nproc: int, nnodes: int, node_rank: int, master_addr: str, master_port: int | None) -> list[str]:
    """The torch.distributed.run arguments for this node, with the master port checked or chosen."""
    if nproc < 1 or nnodes < 1 or not 0 <= node_rank < nnodes:
        raise BadFlag(f"--nproc-per-node {nproc}, --nnodes {nnodes}, --node-rank {node_rank} do not make a valid job")
    if master_port is None:
        if nnodes > 1:
            raise BadFlag("--master-port is required with --nnodes > 1: every node must name the same port")
        master_port = free_port()
    elif node_rank == 0 and not port_is_free(master_port):
        raise PortBusy(
            f"--master-port {master_port} is already in use on this machine (another training probably holds it); "
            f"rerun with --master-port {free_port()}"
        )
    return [
        "--nproc_per_node",
        str(nproc),
        "--nnodes",
        str(nnodes),
        "--node_rank",
        str(node_rank),
        "--master_addr",
        master_addr,
        "--master_port",
        str(master_port),
    ]


def launch(launcher_args: list[str], module: str, argv: list[str]) -> int:
    """Run ``python -m module argv`` on every process of this node through torch.distributed.run."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    try:
        torchrun([*launcher_args, "-m", module, *argv])
    except ChildFailedError as e:
        failures = ", ".join(f"rank {rank} exit code {f.exitcode}" for rank, f in sorted(e.failures.items()))
        raise DistFailure(f"the distributed job failed ({failures}); the failing rank's error is shown above") from None
    return 0
