"""Which device each local rank drives, of those a ``--device`` value names (``utils.devices``).

Local rank i drives the i-th listed GPU; CUDA_VISIBLE_DEVICES is left alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from yolodist.errors import BadFlag


def device_for_rank(devices: Sequence[torch.device], local_rank: int, local_world_size: int) -> torch.device:
    """The device local rank ``local_rank`` drives: the i-th listed GPU, or the shared CPU/MPS device.

    Too few GPUs for the processes on this node is a BadFlag, raised before any work is done.
    """
    if not devices:
        raise BadFlag("--device names no device; use cpu, 0 or a list like 0,1")
    if devices[0].type in ("cpu", "mps"):
        return devices[0]
    if len(devices) < local_world_size:
        listed = ",".join(str(d.index) for d in devices)
        raise BadFlag(
            f"{local_world_size} processes on this node but --device lists only {len(devices)} GPU(s) ({listed}); "
            "list one GPU per process or lower --nproc_per_node"
        )
    return devices[local_rank]
