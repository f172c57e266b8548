"""Benchmarks, each printing one JSON line.

`pipeline` times a training step with and without the augmentation pipeline, so the pipeline's
overhead is measured, not guessed. `time-to-accuracy` trains an arch's preset recipe on all 50,000
training images, evaluates the test split once at the end, and reports the wall-clock and whether
the target accuracy was reached (the recipe is fixed in advance, as in the public speed runs: the
test split is not watched during training). `teacher` scores a `--teacher` (one file or an ensemble) on the
validation split in the views that `--kd-cache` computes, and times that pass.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import TextIO

import torch
import torch.nn.functional as F

from . import augment
from .argtypes import fraction, positive_int
from .calibration import held_out
from .config import command_line, recipe, weights_name
from .data import DATA_DIR_HELP, VAL_SIZE, load_split, model_input
from .distill import Teacher
from .errors import UserError
from .model import build_model
from .runtime import autocast, pick_device, prepare, resolve_precision
from .train import train
from .weights import load_weights


def _time_steps(step, n: int) -> float:
    step()  # warm-up: oneDNN/cuDNN pick their kernels on the first call
    step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n):
        step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / n


def pipeline(arch: str, batch_size: int, size: int, steps: int, device_name: str) -> dict:
    """Seconds per training step: model alone on a ready batch vs. augment + normalize + model."""
    device = pick_device(device_name)
    torch.manual_seed(0)
    model = prepare(build_model(arch), device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4 * batch_size, 3, 32, 32), dtype=torch.uint8, generator=g)
    padded = augment.reflect_pad(images, 4).to(device)
    labels = torch.randint(0, 10, (batch_size,), generator=g).to(device)
    ready = model_input(images[:batch_size].to(device), size)

    def model_step(x: torch.Tensor) -> None:
        with autocast(device):
            loss = F.cross_entropy(model(x).float(), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def augmented() -> torch.Tensor:
        idx = torch.randperm(len(padded), generator=g)[:batch_size].to(device)
        return model_input(augment.apply(padded[idx], augment.draw_params(batch_size, 4, 0, g)), size)

    raw = _time_steps(lambda: model_step(ready), steps)
    full = _time_steps(lambda: model_step(augmented()), steps)
    aug_only = _time_steps(augmented, steps)
    return {
        "arch": arch, "device": str(device), "batch_size": batch_size, "size": size,
        "model_step_s": round(raw, 4), "pipeline_step_s": round(full, 4), "augment_s": round(aug_only, 4),
        # The pipeline's own cost is augment_s; the step difference is the same figure plus timing noise.
        "overhead_pct": round(100 * aug_only / raw, 2),
        "step_diff_pct": round(100 * (full - raw) / raw, 2),
        "model_images_per_s": round(batch_size / raw, 1), "pipeline_images_per_s": round(batch_size / full, 1),
    }  # fmt: skip


class _LinesWithout(io.TextIOBase):
    """A text stream passing whole lines on to target, except those that name `hidden`."""

    def __init__(self, target: TextIO, hidden: str) -> None:
        self.target, self.hidden, self.pending = target, hidden, ""

    def write(self, text: str) -> int:
        *lines, self.pending = (self.pending + text).split("\n")
        self.target.writelines(line + "\n" for line in lines if self.hidden not in line)
        return len(text)

    def flush(self) -> None:
        if self.pending and self.hidden not in self.pending:
            self.target.write(self.pending)
        self.pending = ""
        self.target.flush()


def time_to_accuracy(arch: str, target: float, seed: int, data_dir: str | None, out: str | None, **overrides) -> dict:
    """Train recipe(arch) on all training images, test once; wall-clock, throughput and accuracy.

    The weights are kept in `out` when one is given; otherwise the run folder is temporary, and no line
    printed (train's "saved weights to ...", the JSON's command) names it, since it is gone afterwards.
    """
    with tempfile.TemporaryDirectory(prefix="resnet5m-bench-") as tmp:
        cfg = recipe(arch, seed=seed, val_size=0, test=True, data_dir=data_dir, out=out or tmp, quiet=True, **overrides)
        start = time.perf_counter()
        log = sys.stderr if out else _LinesWithout(sys.stderr, tmp)
        with contextlib.redirect_stdout(log):  # train's own lines; stdout carries the JSON line only
            history = train(cfg)
        log.flush()
        wall = time.perf_counter() - start
        metrics = load_weights(Path(cfg.out) / weights_name(arch)).meta["metrics"]
    train_seconds = sum(row["seconds"] for row in history)
    images = sum(row["seconds"] * row["images_per_s"] for row in history)
    reached = metrics["test_acc"] >= target
    return {
        "arch": arch, "seed": seed, "epochs": cfg.epochs, "target": target,
        "test_acc": metrics["test_acc"], "test_n": metrics["test_n"], "reached": reached,
        "wall_s": round(wall, 1),  # everything: data loading, init, training, checkpoints, the test pass
        "train_s": round(train_seconds, 1),  # the training passes alone
        "time_to_target_s": round(wall, 1) if reached else None,
        "train_images_per_s": round(images / train_seconds, 1),
        "threads": torch.get_num_threads(), "device": str(pick_device(cfg.device)), "compile": cfg.compile,
        "command": command_line(cfg if out else replace(cfg, out=recipe(arch).out)),  # no --out naming a removed folder
    }  # fmt: skip


def teacher_check(teacher: str, data_dir: str | None, val_size: int = VAL_SIZE, device: str = "auto") -> dict:
    """A teacher's (or an ensemble's) accuracy on the val split, in the views --kd-cache computes, and that pass's speed.

    The soft targets are single views (the image as is, and mirrored), so these are one-view figures; their mean is
    flip TTA. held_out says, per member, whether its training kept these images out (None: its file does not say).
    """
    dev = pick_device(device)
    precision = resolve_precision(dev, "auto")
    net = Teacher(teacher, dev)
    images, labels = load_split("val", data_dir, download_missing=False, val_size=val_size)
    net.cached_logits(images[:100], precision)  # warm-up: the first batches pay for kernel choices
    start = time.perf_counter()
    logits = net.cached_logits(images, precision)  # (n, 2, classes)
    seconds = time.perf_counter() - start
    right = (logits.argmax(2) == labels[:, None]).float()  # (n, 2)
    return {
        "teacher": teacher, "sha256": net.sha256, "members": len(net.nets), "val_n": len(labels),
        "held_out": [held_out(meta, val_size) for meta in net.metas],
        "val_acc": round(right[:, 0].mean().item(), 6), "val_acc_mirrored": round(right[:, 1].mean().item(), 6),
        "val_acc_flip_tta": round((logits.mean(1).argmax(1) == labels).float().mean().item(), 6),
        "images_per_s": round(2 * len(labels) / seconds, 1), "device": str(dev), "precision": precision,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resnet5m.bench")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pipeline", help="training-step time with and without the augmentation pipeline")
    p.add_argument("--arch", default="seed")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--size", type=positive_int, default=32, help="training resolution")
    p.add_argument("--steps", type=positive_int, default=5)
    p.add_argument("--device", default="auto")

    p = sub.add_parser("time-to-accuracy", help="train an arch's preset on all training images; wall-clock to the target")
    p.add_argument("--arch", default="fast")
    p.add_argument("--target", type=fraction, default=0.94, help="test accuracy to reach (fraction)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    p.add_argument("--out", help="keep the run folder here (default: a temporary folder, removed afterwards)")
    p.add_argument("--epochs", type=positive_int, help="override the preset's epochs")
    p.add_argument("--progressive", help="override the preset's resolution schedule")
    p.add_argument("--device", help="override the device (default: auto)")
    p.add_argument("--batch-size", type=positive_int, help="override the preset's batch size (give --lr with it)")
    p.add_argument("--lr", type=float, help="override the preset's peak learning rate")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, help="torch.compile the model (GPU runs)")
    p.add_argument("--teacher", help="distil from these weights (see `resnet5m train --teacher`)")
    p.add_argument("--kd-weight", type=fraction, help="with --teacher: weight of its soft targets (default: train's)")
    p.add_argument("--kd-temperature", type=float, help="with --teacher: temperature of its soft targets (default: train's)")
    p.add_argument("--kd-cache", action=argparse.BooleanOptionalAction, help="with --teacher: its logits computed once")
    p = sub.add_parser("teacher", help="a --teacher's accuracy on the val split and the speed of its --kd-cache pass")
    p.add_argument("--teacher", required=True, help="weights file, or several joined by commas (an ensemble)")
    p.add_argument("--val-size", type=positive_int, default=VAL_SIZE, help=f"the last N training images (default: {VAL_SIZE})")
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    p.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    try:
        if args.command == "pipeline":
            out = pipeline(args.arch, args.batch_size, args.size, args.steps, args.device)
        elif args.command == "teacher":
            out = teacher_check(args.teacher, args.data_dir, args.val_size, args.device)
        else:
            names = ("epochs", "progressive", "device", "batch_size", "lr", "compile", "teacher", "kd_weight", "kd_temperature",
                     "kd_cache")  # fmt: skip
            overrides = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
            out = time_to_accuracy(args.arch, args.target, args.seed, args.data_dir, args.out, **overrides)
        print(json.dumps(out))
    except UserError as e:
        print(f"resnet5m.bench: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
