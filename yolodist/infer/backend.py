"""Run a detector from a weights file of any supported format with one call signature.

``load_backend(path, device)`` picks the runtime from the file suffix: ``.pt`` (our or upstream
checkpoints, PyTorch), ``.torchscript`` (``torch.jit``) or ``.onnx`` (onnxruntime). Every backend
takes a float batch ``[B, 3, H, W]`` scaled to 0-1 and returns the decoded predictions
``[B, N, 5 + nc]`` float32 (cx, cy, w, h in input pixels, objectness, class scores), the input that
``ops.nms.non_max_suppression`` expects.

An exported file may be fixed to one input size and batch. A batch of another size is split into
chunks of the fixed batch (the last one padded), so val.py can feed big batches to a batch-1 export;
another input size cannot be fixed up and raises a BadFlag.
"""

from __future__ import annotations

import ast
import json
import logging
import warnings
import zipfile
from pathlib import Path

import torch

from yolodist.checkpoint.weights import load_model, resolve_weights
from yolodist.errors import BadCheckpoint, BadFlag

LOGGER = logging.getLogger(__name__)

SUFFIXES = (".pt", ".torchscript", ".onnx")


class Backend:
    """A loaded detector. ``names`` class names, ``stride`` largest stride, ``device`` where inputs go."""

    path: Path
    names: list[str]
    stride: int
    device: torch.device
    fp16: bool = False
    #: a fixed input size (h, w) the model was exported for, or None when any multiple of stride works
    fixed_shape: tuple[int, int] | None = None
    #: a fixed batch size, or None when any batch works
    fixed_batch: int | None = None
    #: the model, when it is a PyTorch module (for validation losses)
    module: torch.nn.Module | None = None

    def __call__(self, imgs: torch.Tensor) -> torch.Tensor:
        """``imgs`` ``[B, 3, H, W]`` 0-1 -> decoded ``[B, N, 5 + nc]`` float32."""
        if imgs.ndim != 4:
            raise ValueError(f"expected images [B, 3, H, W], got shape {tuple(imgs.shape)}")
        self._check_size(tuple(imgs.shape[2:]))
        n, fixed = imgs.shape[0], self.fixed_batch
        if fixed is None or n == fixed:
            return self._run(imgs)
        outputs = []
        for start in range(0, n, fixed):
            chunk = imgs[start : start + fixed]
            if chunk.shape[0] < fixed:  # the file accepts exactly `fixed` images: pad with blanks
                pad = chunk.new_zeros((fixed - chunk.shape[0], *chunk.shape[1:]))
                chunk = torch.cat([chunk, pad])
            outputs.append(self._run(chunk))
        return torch.cat(outputs)[:n]

    def _check_size(self, size: tuple[int, ...]) -> None:
        if self.fixed_shape is None or size == self.fixed_shape:
            return
        h, w = self.fixed_shape
        img = f"{h}" if h == w else f"{h} {w}"
        raise BadFlag(
            f"{self.path.name} was exported for {h}x{w} images but got {size[0]}x{size[1]}; "
            f"run with --img {img}, or re-export with --dynamic"
        )

    def _run(self, imgs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class TorchBackend(Backend):
    """A ``.pt`` checkpoint run by PyTorch (any input size and batch)."""

    def __init__(self, path: Path, device: torch.device, half: bool = False) -> None:
        model = load_model(path, device)
        self.path = path
        self.fp16 = half and device.type == "cuda"
        self.module = model.half() if self.fp16 else model
        self.names = list(model.names)
        self.stride = int(model.stride.max())
        self.device = device

    def _run(self, imgs: torch.Tensor) -> torch.Tensor:
        imgs = imgs.to(self.device, torch.float16 if self.fp16 else torch.float32)
        decoded, _ = self.module(imgs)
        return decoded.float()


def _names(value: object, path: Path) -> list[str]:
    """Class names from export metadata: a list, or upstream's {index: name} dict (JSON or Python repr)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            try:
                value = ast.literal_eval(value)  # upstream writes str(dict); literal_eval evaluates no code
            except (ValueError, SyntaxError):
                value = None
    if isinstance(value, dict):
        value = [value[k] for k in sorted(value, key=int)]
    if not isinstance(value, list) or not value:
        raise BadCheckpoint(f"{path} carries no class names in its metadata; re-export it with export.py")
    return [str(v) for v in value]


def _peek_config(path: Path) -> dict:
    """``config.txt`` of a TorchScript archive (a zip), read without loading the model; {} if absent."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith("/extra/config.txt")), None)
            return json.loads(archive.read(name)) if name else {}
    except (OSError, zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError):
        return {}  # the real load reports a damaged file


def _traced_device(path: Path, device: torch.device) -> torch.device:
    """The device a TorchScript file can run on: ``device``, or the one it was traced on when they differ.

    A trace records the device the head builds its grids on; moving the weights with ``map_location``
    does not move those, so a CPU export runs on the CPU only (and a CUDA export on CUDA only).
    """
    traced_on = _peek_config(path).get("device")  # absent in upstream's files
    if traced_on is None or traced_on == device.type:
        return device
    if traced_on == "cpu":
        LOGGER.warning(
            f"WARNING ⚠️ {path.name} was exported on the CPU and runs there; re-export with --device 0 for GPU"
        )
        return torch.device("cpu")
    raise BadFlag(f"{path.name} was exported on {traced_on} and runs only there; re-export it with --device cpu")


class TorchScriptBackend(Backend):
    """A ``.torchscript`` file from export.py; names, stride and input shape come from its ``config.txt``."""

    def __init__(self, path: Path, device: torch.device, half: bool = False) -> None:
        extra = {"config.txt": ""}
        device = _traced_device(path, device)
        try:
            with warnings.catch_warnings():
                # torch marks torch.jit as deprecated; the files it reads are still the supported format here
                warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
                module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
        except RuntimeError as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BadCheckpoint(
                f"{path} cannot be loaded as TorchScript ({reason}); re-export it with export.py --include torchscript"
            ) from None
        try:
            meta = json.loads(extra["config.txt"] or "{}")
        except json.JSONDecodeError:
            meta = {}
        self.path = path
        self.names = _names(meta.get("names"), path)
        self.stride = int(meta.get("stride", 32))
        if "shape" in meta:  # upstream's config.txt: {"shape": [b, 3, h, w], ...}, always a fixed trace
            self.fixed_batch, self.fixed_shape = int(meta["shape"][0]), (int(meta["shape"][2]), int(meta["shape"][3]))
        elif not meta.get("dynamic", False) and "imgsz" in meta:
            self.fixed_batch, self.fixed_shape = int(meta["batch"]), (int(meta["imgsz"][0]), int(meta["imgsz"][1]))
        self.fp16 = half and device.type == "cuda"
        self.module = module.half() if self.fp16 else module.float()
        self.module.eval()
        self.device = device

    def _run(self, imgs: torch.Tensor) -> torch.Tensor:
        imgs = imgs.to(self.device, torch.float16 if self.fp16 else torch.float32)
        out = self.module(imgs)
        return (out[0] if isinstance(out, list | tuple) else out).float()


def _decode_metadata(raw: dict[str, str]) -> dict:
    """ONNX ``metadata_props`` strings -> values (JSON where it parses, else the string)."""
    out = {}
    for key, value in raw.items():
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


class OnnxBackend(Backend):
    """An ``.onnx`` file run by onnxruntime; fixed shape and batch are read from the input's static dims."""

    def __init__(self, path: Path, device: torch.device, half: bool = False) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise BadFlag(f"running {path.name} needs onnxruntime; pip install onnxruntime") from None
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda":
            if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
                providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
            else:
                LOGGER.warning(
                    "WARNING ⚠️ onnxruntime here has no CUDA support, running on CPU; "
                    "pip install onnxruntime-gpu to run ONNX models on a GPU"
                )
                device = torch.device("cpu")
        options = onnxruntime.SessionOptions()
        # One thread setting (torch.set_num_threads / OMP_NUM_THREADS) then governs both runtimes.
        options.intra_op_num_threads = torch.get_num_threads()
        try:
            self.session = onnxruntime.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as e:  # onnxruntime's errors are its own pybind types (InvalidProtobuf, Fail, ...)
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BadCheckpoint(
                f"{path} cannot be loaded by onnxruntime ({reason}); re-export it with export.py"
            ) from None
        meta = _decode_metadata(self.session.get_modelmeta().custom_metadata_map)
        self.path = path
        self.names = _names(meta.get("names"), path)
        self.stride = int(meta.get("stride", 32))
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        self.output_name = self.session.get_outputs()[0].name
        batch, _, height, width = model_input.shape  # ints where static, names or None where dynamic
        self.fixed_batch = batch if isinstance(batch, int) else None
        self.fixed_shape = (height, width) if isinstance(height, int) and isinstance(width, int) else None
        self.fp16 = model_input.type == "tensor(float16)"  # the file decides; --half cannot change it
        self.device = device

    def _run(self, imgs: torch.Tensor) -> torch.Tensor:
        x = imgs.detach().to("cpu", torch.float16 if self.fp16 else torch.float32).contiguous().numpy()
        y = self.session.run([self.output_name], {self.input_name: x})[0]
        return torch.from_numpy(y).float().to(self.device)


def load_backend(path: str | Path, device: str | torch.device = "cpu", half: bool = False) -> Backend:
    """The backend for ``path``, chosen by suffix (``.pt``, ``.torchscript``, ``.onnx``)."""
    # A missing upstream release name (yolov5s.pt) or an http(s) URL is fetched, as for training.
    path = Path(path) if Path(path).exists() else resolve_weights(str(path))
    device = torch.device(device)
    suffix = path.suffix.lower()
    if suffix == ".pt":
        return TorchBackend(path, device, half)
    if suffix == ".torchscript":
        return TorchScriptBackend(path, device, half)
    if suffix == ".onnx":
        return OnnxBackend(path, device, half)
    raise BadCheckpoint(f"{path}: unsupported weights format {suffix!r}; use one of {', '.join(SUFFIXES)}")
