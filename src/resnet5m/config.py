"""What a training run is: every knob (TrainConfig), each arch's preset recipe, their checks and CLI flags."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields

from .data import DATA_DIR_HELP
from .errors import UserError
from .fastnet import FastConfig
from .model import get_config, safe_name


def _f(default, help: str):  # noqa: A002 - mirrors argparse's name
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Every knob of a run; each field is also a `resnet5m train` flag. Defaults are the seed recipe."""

    arch: str = _f("seed", "architecture: a name (seed, fast, best, tiny) or a spec such as resnet:5,4,3@64,128,256")
    epochs: int = _f(30, "number of epochs")
    batch_size: int = _f(256, "global batch size (split across ranks under torchrun)")
    lr: float = _f(0.2, "peak learning rate")
    momentum: float = _f(0.9, "Nesterov momentum")
    optimizer: str = _f("sgd", "sgd, or muon: conv filters take orthogonalized steps (--muon-lr), the rest SGD")
    muon_lr: float = _f(0.24, "Muon learning rate of the conv filters (with --optimizer muon)")
    muon_momentum: float = _f(0.6, "Muon Nesterov momentum of the conv filters (with --optimizer muon)")
    weight_decay: float = _f(5e-4, "weight decay (not applied to BatchNorm and biases)")
    bn_bias_lr_scale: float = _f(1.0, "learning-rate multiplier for BatchNorm shifts (biases)")
    label_smoothing: float = _f(0.1, "label smoothing")
    warmup_epochs: float = _f(1.0, "linear warmup length in epochs")
    schedule: str = _f("linear", "decay after warmup: linear or cosine (stepped per batch)")
    lr_start: float = _f(0.0, "learning rate of the first step, as a fraction of the peak (warmup rises from it)")
    lr_end: float = _f(0.0, "learning rate of the last step, as a fraction of the peak (decay ends at it)")
    crop_pad: int = _f(4, "random-crop reflect padding in pixels (0: no crop)")
    flip: bool = _f(True, "random horizontal flips")
    alternate_flip: bool = _f(False, "flip each image on alternate epochs (a random half in the first), not at random")
    cutout: int = _f(0, "cutout square size in pixels (0: off)")
    progressive: str = _f("", "early epochs at lower resolution, e.g. '16:4,24:4' (4 epochs at 16 px, 4 at 24, rest 32)")
    ema: bool = _f(False, "evaluate an exponential moving average of the weights")
    ema_decay: float = _f(0.999, "EMA decay per step (warmed up: step t uses min(decay, (1+t)/(10+t)))")
    lookahead: bool = _f(False, "every 5 steps after epoch 3, pull an average of the weights towards them and go on from it")
    bn_momentum: float = _f(0.1, "BatchNorm running-statistics momentum (PyTorch's: the newest batch's weight)")
    whiten_bias_epochs: int = _f(0, "fast/best nets: learn the whitening bias for the first N epochs only (0: always)")
    teacher: str = _f(
        "",
        "knowledge distillation: weights of a trained teacher (any format `evaluate` reads), or several joined by commas "
        "for an ensemble, whose logits are averaged (empty: none)",
    )
    kd_weight: float = _f(0.5, "with --teacher: weight a of the teacher's soft targets, (1-a) for the labels")
    kd_temperature: float = _f(4.0, "with --teacher: softmax temperature T of the soft targets (their term is scaled by T^2)")
    kd_cache: bool = _f(
        False,
        "with --teacher: its logits computed once, before training, for each training image and its mirror image "
        "(no crops, no cutout), instead of on every augmented batch: nearly free per step",
    )
    tta: bool = _f(True, "flip test-time augmentation at evaluation")
    tta_shift: int = _f(0, "also evaluate copies shifted diagonally by N pixels and average (0: off)")
    val_size: int = _f(5000, "hold out the last N training images for validation (0: train on all)")
    subset: int = _f(0, "train on the first N training images only (0: all)")
    test: bool = _f(False, "evaluate on the test split once, at the end")
    seed: int = _f(0, "random seed")
    device: str = _f("auto", "auto, cpu, cuda or mps")
    precision: str = _f(
        "auto", "auto (bf16 on CPUs and GPUs with native bf16, fp16 + loss scaling on older GPUs, else fp32), bf16, fp16 or fp32"
    )
    sync_bn: bool = _f(False, "multi-GPU runs: BatchNorm statistics over the global batch (SyncBatchNorm; CUDA only)")
    compile: bool = _f(False, "torch.compile the model (worth it on GPU for long runs)")
    deterministic: bool = _f(
        False, "CUDA: deterministic cuDNN kernels without autotuning, so a resumed run is bitwise the straight one "
        "(slower; CPU runs always are)"
    )  # fmt: skip
    out: str = _f("", "run folder for checkpoints, history and final weights (empty: runs/<arch>)")
    resume: bool = _f(False, "continue from the run folder's last checkpoint")
    data_dir: str | None = _f(None, DATA_DIR_HELP)
    download: bool = _f(True, "download CIFAR-10 when it is missing")
    quiet: bool = _f(False, "no progress bars, one line per epoch")

    def __post_init__(self) -> None:
        if not self.out:  # one folder per arch, so a run of another arch does not find this one's checkpoint
            self.out = f"runs/{safe_name(self.arch)}"


# Chosen on the validation split (--val-size 5000; docs/results.md "Fast net"); the optimizer settings follow the
# public airbench94 recipe for a network of this shape, translated to a mean-reduced loss, at half its batch and
# learning rate: on a CPU a 512-image step costs as much per image, and twice the steps help. 20 epochs, not
# airbench's 10: on an AMX CPU they still fit in 20 minutes, and they lift validation from 94.10% to 94.74%.
_FAST = {
    "epochs": 20,
    "batch_size": 512,
    "lr": 0.75,
    "momentum": 0.85,
    "weight_decay": 1.33e-3,
    "bn_bias_lr_scale": 64.0,
    "label_smoothing": 0.2,
    "warmup_epochs": 2.0,
    "crop_pad": 2,
    "alternate_flip": True,
    "lookahead": True,
    "bn_momentum": 0.4,
    "tta_shift": 1,
}

# Per-architecture recipes: the fields where `resnet5m train --arch NAME` departs from the defaults above.
PRESETS: dict[str, dict] = {
    "fast": _FAST,
    # Chosen on validation (docs/results.md, "Best net"): the fast recipe for a net of airbench96's shape,
    # trained 50 epochs with airbench96's stronger augmentation (4-px crops, 12-px cutout); 30 epochs fell short.
    "best": {**_FAST, "epochs": 50, "crop_pad": 4, "cutout": 12},
}


def weights_name(arch: str) -> str:
    """The file name `resnet5m train` gives a run's final weights: resnet5m_<arch>.pt, a spec made file-safe."""
    return f"resnet5m_{safe_name(arch)}.pt"


def recipe(arch: str = "seed", **overrides) -> TrainConfig:
    """The TrainConfig of an architecture's preset recipe, with overrides (unknown names raise)."""
    return TrainConfig(**{"arch": arch, **PRESETS.get(arch, {}), **overrides})


# Fields that may differ when a run is resumed (where and how it runs, not what it computes). Precision is one:
# a Drive run started on an A100 (bf16) must go on on a T4 (fp16); bitwise resume then no longer holds.
RUNTIME_FIELDS = {"device", "out", "resume", "data_dir", "download", "quiet", "compile", "test", "precision", "deterministic"}


def parse_progressive(spec: str, epochs: int) -> list[int]:
    """'16:4,24:4' -> the input resolution of each epoch, e.g. [16]*4 + [24]*4 + [32]*(epochs-8)."""
    sizes: list[int] = []
    for part in filter(None, spec.split(",")):
        try:
            size, n = (int(v) for v in part.split(":"))
        except ValueError as e:
            raise UserError(f"bad --progressive '{spec}'; write SIZE:EPOCHS pairs like '16:4,24:4'") from e
        if not 8 <= size <= 32 or n < 0:
            raise UserError(f"bad --progressive '{spec}'; sizes run 8..32 and epochs are >= 0")
        sizes += [size] * n
    return (sizes + [32] * epochs)[:epochs]


def check_config(cfg: TrainConfig) -> None:
    if cfg.epochs < 1 or cfg.batch_size < 2 or cfg.lr <= 0 or cfg.muon_lr <= 0:
        raise UserError("--epochs must be >= 1, --batch-size >= 2, --lr > 0 and --muon-lr > 0")
    if cfg.optimizer not in ("sgd", "muon"):
        raise UserError(f"unknown --optimizer '{cfg.optimizer}'; use sgd or muon")
    if cfg.schedule not in ("linear", "cosine"):
        raise UserError(f"unknown --schedule '{cfg.schedule}'; use linear or cosine")
    if cfg.ema and cfg.lookahead:
        raise UserError("--ema and --lookahead both keep a weight average; choose one")
    if not (0 <= cfg.lr_start <= 1 and 0 <= cfg.lr_end <= 1):
        raise UserError("--lr-start and --lr-end are fractions of the peak learning rate: give values in 0..1")
    whitened = isinstance(get_config(cfg.arch), FastConfig)  # the fast and best nets start with a whitening layer
    if cfg.whiten_bias_epochs < 0 or (cfg.whiten_bias_epochs and not whitened):
        raise UserError("--whiten-bias-epochs is for --arch fast or best (their whitening layer) and must be >= 0")
    if not 0 <= cfg.kd_weight <= 1 or cfg.kd_temperature <= 0:
        raise UserError("--kd-weight must be in 0..1 and --kd-temperature > 0")
    if cfg.kd_cache and not cfg.teacher:
        raise UserError("--kd-cache caches a teacher's logits: give --teacher WEIGHTS too, or drop --kd-cache")
    parse_progressive(cfg.progressive, cfg.epochs)


def _flag(name: str) -> str:
    """The CLI flag of a TrainConfig field: batch_size -> --batch-size."""
    return "--" + name.replace("_", "-")


def command_line(cfg: TrainConfig) -> str:
    """The `resnet5m train` command that reproduces cfg: its arch and every field that differs from the arch's preset."""
    parts = ["resnet5m", "train", "--arch", cfg.arch]
    preset = recipe(cfg.arch)
    for f in fields(TrainConfig):
        value = getattr(cfg, f.name)
        if f.name == "arch" or f.name in RUNTIME_FIELDS - {"out"} or value == getattr(preset, f.name):
            continue
        flag = _flag(f.name)
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + flag[2:])
        else:
            parts += [flag, str(value)]
    return " ".join(parts)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field. Flags left out take the arch's preset (PRESETS), else the field's default."""
    for f in fields(TrainConfig):
        flag = _flag(f.name)
        presets = ", ".join(f"{arch} {p[f.name]}" for arch, p in PRESETS.items() if f.name in p)
        given = f.metadata["help"]  # a help that explains its own default (--data-dir) is not given a second one
        text = given if "(default:" in given else f"{given} (default: {f.default}{'; ' + presets if presets else ''})"
        if f.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            kind = {"int": int, "float": float}.get(str(f.type), str)
            parser.add_argument(flag, type=kind, default=None, help=text)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The arch's preset recipe with every flag the user gave applied on top."""
    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name) is not None}
    return recipe(given.pop("arch", "seed"), **given)
