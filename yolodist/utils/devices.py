"""``--device`` strings -> torch devices, the one parser every command uses.

CUDA_VISIBLE_DEVICES is never written: '--device 2,3' selects GPUs 2 and 3 by index, so other jobs'
view of the GPUs is left alone. Which of the listed devices each local rank of a launch drives is
decided in ``yolodist.distributed`` (``devices.device_for_rank``); detection and export, which must stay
out of ``yolodist.distributed``, take the first listed device through :func:`select_device`.
"""

from __future__ import annotations

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


def local_accelerators() -> tuple[int, bool]:
    """(how many CUDA devices this process sees, whether MPS is available): what ``--device`` may name."""
    # Builds without the MPS backend have no torch.backends.mps at all.
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    return torch.cuda.device_count(), mps


def select_device(device: str) -> torch.device:
    """The device a one-model command runs on: the first one ``device`` names on this machine."""
    return parse_device(device, *local_accelerators())[0]
