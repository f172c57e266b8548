"""Benchmarks: `python -m resnet5m.bench pipeline` times a training step with and without the
augmentation pipeline, so the pipeline's overhead is measured, not guessed."""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F

from . import augment
from .data import model_input
from .errors import UserError
from .model import build_model
from .runtime import autocast, pick_device, prepare


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resnet5m.bench")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pipeline", help="training-step time with and without the augmentation pipeline")
    p.add_argument("--arch", default="seed")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--size", type=int, default=32, help="training resolution")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    try:
        print(json.dumps(pipeline(args.arch, args.batch_size, args.size, args.steps, args.device)))
    except UserError as e:
        print(f"resnet5m.bench: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
