"""``--device`` strings -> torch devices; which device each local rank drives.

CUDA_VISIBLE_DEVICES is never written: '--device 2,3' selects GPUs 2 and 3 by index, and local
rank i drives the i-th listed one, so other jobs' view of the GPUs is left alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from yolodist.errors import BadFlag


def _cuda_indices(device: str, text: str, cuda_count: int) -> list[int]:
    try:
        indices = [int(x) for x in text.split(",") if x != ""]
    except ValueError:
        raise BadFlag(f"--device {device!r} is not understood; use cpu, mps, 0 or a list like 0,1") from None
    if not indices or len(set(indices)) != len(indices):
        raise BadFlag(f"--device {device!r} must list distinct GPU indices, e.g. 0,1")
    missing = [i for i in indices if not 0 <= i < cuda_count]
    if missing:
        visible = f"0..{cuda_count - 1}" if cuda_count else "none"
        noun = "device is" if cuda_count == 1 else "devices are"
        raise BadFlag(
            f"--device {device.strip()} requested but only {cuda_count} CUDA {noun} visible ({visible}); "
            "choose visible GPU indices or use --device cpu"
        )
    return indices


def parse_device(device: str, cuda_count: int, mps_available: bool = False) -> list[torch.device]:
    """Turn a ``--device`` value into the devices it names, checked to exist.

    '' means the first GPU if there is one, else the CPU (as upstream); 'cpu'; 'mps'; '0', '0,1',
    ' 0, 1 ', 'cuda:1' name GPUs by index. Unknown or absent devices raise BadFlag.
    """
    text = str(device).strip().lower().replace(" ", "")
    text = "0" if text == "cuda" else text.replace("cuda:", "")
    if text == "cpu":
        return [torch.device("cpu")]
    if text == "mps":
        if not mps_available:
            raise BadFlag("--device mps requested but MPS is not available on this machine; use --device cpu")
        return [torch.device("mps")]
    if text == "":
        return [torch.device("cuda", 0)] if cuda_count else [torch.device("cpu")]
    return [torch.device("cuda", i) for i in _cuda_indices(device, text, cuda_count)]


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
