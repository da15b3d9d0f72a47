"""Frozen dataclasses for every setting a run uses (training and validation), validated when they are made."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields

from yolodist.errors import BadConfig, BadFlag


@dataclass(frozen=True)
class Hyp:
    """Training hyperparameters; names and defaults are YOLOv5's hyp.scratch-low."""

    lr0: float = 0.01
    lrf: float = 0.01
    momentum: float = 0.937
    weight_decay: float = 0.0005
    warmup_epochs: float = 3.0
    warmup_momentum: float = 0.8
    warmup_bias_lr: float = 0.1
    box: float = 0.05
    cls: float = 0.5
    cls_pw: float = 1.0
    obj: float = 1.0
    obj_pw: float = 1.0
    iou_t: float = 0.20
    anchor_t: float = 4.0
    fl_gamma: float = 0.0
    hsv_h: float = 0.015
    hsv_s: float = 0.7
    hsv_v: float = 0.4
    degrees: float = 0.0
    translate: float = 0.1
    scale: float = 0.5
    shear: float = 0.0
    perspective: float = 0.0
    flipud: float = 0.0
    fliplr: float = 0.5
    mosaic: float = 1.0
    mixup: float = 0.0
    copy_paste: float = 0.0
    label_smoothing: float = 0.0
    # YOLOv5 hyp files may carry an `anchors` count (anchors per level) used when building a model.
    anchors: float | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise BadConfig(f"hyperparameter {f.name!r} must be a number, got {value!r}")
            if value < 0:
                raise BadConfig(f"hyperparameter {f.name!r} must not be negative, got {value}")
        for name in ("mosaic", "mixup", "fliplr", "flipud", "copy_paste"):
            if getattr(self, name) > 1:
                raise BadConfig(f"hyperparameter {name!r} is a probability and must be <= 1")

    @classmethod
    def from_dict(cls, values: dict, source: str = "hyperparameters") -> Hyp:
        """Build from a YAML mapping; unknown keys are errors so a typo never passes silently."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise BadConfig(
                f"{source}: unknown hyperparameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        converted = {k: (float(v) if isinstance(v, int) and not isinstance(v, bool) else v) for k, v in values.items()}
        return cls(**converted)

    def to_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def replace(self, **changes: float) -> Hyp:
        return dataclasses.replace(self, **changes)


OPTIMIZERS = ("SGD", "Adam", "AdamW")
VAL_TASKS = ("val", "test", "speed")
CACHE_MODES = ("ram", "disk")
AMP_MODES = ("auto", "off", "fp16", "bf16")
HSV_PLACES = ("auto", "loader", "device")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run is told; field names follow upstream's train.py flags."""

    weights: str = ""
    cfg: str = ""
    data: str = "shapes.yaml"
    hyp: str = "hyp.scratch-low.yaml"
    epochs: int = 100
    batch_size: int = 16
    imgsz: int = 640
    rect: bool = False
    resume: str | bool = False
    nosave: bool = False
    noval: bool = False
    noautoanchor: bool = False
    noplots: bool = False
    cache: str | None = None
    image_weights: bool = False
    device: str = ""
    multi_scale: bool = False
    single_cls: bool = False
    optimizer: str = "SGD"
    sync_bn: bool = False
    workers: int = 8
    project: str = "runs/train"
    name: str = "exp"
    exist_ok: bool = False
    cos_lr: bool = False
    label_smoothing: float = 0.0
    patience: int = 100
    freeze: tuple[int, ...] = (0,)
    save_period: int = -1
    seed: int = 0
    deterministic: bool = False
    local_rank: int | None = None
    nbs: int = 64
    dist_timeout: float = 1800.0
    min_warmup_iters: int = 100
    # Speed levers (not upstream flags): autocast precision, the convolutions' memory layout, JPEG
    # decoding shrunk by the decoder for training images at least twice imgsz, and where the HSV
    # colour jitter runs.
    amp: str = "auto"
    channels_last: bool = True
    scaled_decode: bool = True
    # Where the HSV colour jitter runs: the loader workers, or the training device after batching.
    hsv_jitter: str = "auto"
    # Hyperparameter evolution: how many generations (trainings) in all; None trains once.
    evolve: int | None = None

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}"),
            (self.imgsz >= 32, f"--img must be at least 32 pixels, got {self.imgsz}"),
            (self.workers >= 0, f"--workers must not be negative, got {self.workers}"),
            (self.nbs >= 1, f"--nbs must be at least 1, got {self.nbs}"),
            (self.dist_timeout > 0, f"--dist-timeout must be positive, got {self.dist_timeout}"),
            (self.optimizer in OPTIMIZERS, f"--optimizer must be one of {', '.join(OPTIMIZERS)}"),
            (self.cache in (None, *CACHE_MODES), f"--cache must be 'ram' or 'disk', got {self.cache!r}"),
            (0 <= self.label_smoothing < 1, "--label-smoothing must be in [0, 1)"),
            (self.patience >= 0, "--patience must not be negative (0 disables early stopping)"),
            (self.amp in AMP_MODES, f"--amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}"),
            (
                self.hsv_jitter in HSV_PLACES,
                f"--hsv-jitter must be one of {', '.join(HSV_PLACES)}, got {self.hsv_jitter!r}",
            ),
            (self.evolve is None or self.evolve >= 1, f"--evolve must be at least 1 generation, got {self.evolve}"),
            (
                not (self.evolve and self.resume),
                "--evolve cannot resume a training from a checkpoint; to continue an evolution run the same "
                "command with --exist-ok (or a bare --resume) and the same --project/--name",
            ),
            (
                not (self.image_weights and self.rect),
                "--image-weights draws images at random and --rect needs batches of images of similar shape; "
                "use one of the two",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise BadFlag(message)

    def check_world(self, world_size: int) -> None:
        """Cross-field rules that need the launch topology; fail before any work is done."""
        if self.batch_size % world_size:
            suggestion = max(world_size, self.batch_size // world_size * world_size)
            raise BadFlag(
                f"--batch-size {self.batch_size} is the total batch over {world_size} processes and must be a "
                f"multiple of {world_size}; try --batch-size {suggestion}"
            )

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["freeze"] = list(self.freeze)
        return out

    def replace(self, **changes: object) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def val_config(self) -> ValConfig:
        """What each epoch's validation is told: val.py's thresholds, on batches twice the training batch."""
        return ValConfig(
            batch_size=self.batch_size * 2, imgsz=self.imgsz, workers=self.workers, single_cls=self.single_cls
        )


@dataclass(frozen=True)
class ValConfig:
    """Everything a validation is told; field names follow upstream's val.py flags.

    ``weights`` is a tuple as the flag takes several files (upstream's ensembles), so that asking for
    an ensemble is refused here with the other flag errors, in the order val.py has always checked them.
    """

    data: str | None = None
    weights: tuple[str, ...] = ("yolov5s.pt",)
    batch_size: int = 32
    imgsz: int = 640
    conf_thres: float = 0.001
    iou_thres: float = 0.6
    max_det: int = 300
    task: str = "val"
    device: str = ""
    workers: int = 8
    single_cls: bool = False
    verbose: bool = False
    save_txt: bool = False
    save_conf: bool = False
    save_json: bool = False
    project: str = "runs/val"
    name: str = "exp"
    exist_ok: bool = False
    half: bool = False
    noplots: bool = False
    dist_timeout: float = 1800.0
    local_rank: int | None = None

    def __post_init__(self) -> None:
        if self.task not in VAL_TASKS:
            hint = " (the speed/accuracy study is not supported)" if self.task == "study" else ""
            raise BadFlag(f"--task {self.task!r} is not one of {', '.join(VAL_TASKS)}{hint}")
        if len(self.weights) != 1:
            raise BadFlag("give one --weights file (model ensembles are not supported)")
        if self.batch_size < 1 or self.imgsz < 1:
            raise BadFlag("--batch-size and --img must be positive")
        if not 0 <= self.conf_thres <= 1 or not 0 <= self.iou_thres <= 1:
            raise BadFlag("--conf-thres and --iou-thres must be between 0 and 1")

    @property
    def plots(self) -> bool:
        """Whether this validation draws its plots (a --task speed run only times the model)."""
        return not self.noplots and self.task != "speed"

    def for_task(self) -> ValConfig:
        """The settings the task runs with: as upstream, --task speed times the model at deployment
        thresholds and saves no labels or JSON."""
        if self.task != "speed":
            return self
        return self.replace(conf_thres=0.25, iou_thres=0.45, save_json=False, save_txt=False)

    def replace(self, **changes: object) -> ValConfig:
        return dataclasses.replace(self, **changes)
