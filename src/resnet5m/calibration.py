"""Temperature scaling: one scalar T that divides the logits so that confidence matches accuracy (Guo et al., 2017).

`resnet5m calibrate` fits T on the validation split (the last --val-size training images, as
`resnet5m train --val-size` holds them out), never on the test split, and writes a copy of the weights
whose metadata holds `temperature`; evaluate and predict divide the logits by it. T never changes a
prediction, only how sure the probabilities say the model is.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from .argtypes import positive_int
from .data import DATA_DIR_HELP, load_split
from .errors import UserError
from .evaluate import ECE_BINS, batched_logits, expected_calibration_error, recipe_views, views_text
from .weights import open_weights, save_weights

VAL_SIZE = 5000  # `resnet5m train`'s default held-out split: the last 5,000 training images
# Keys save_weights writes itself; everything else in the source file's metadata is carried over.
_REWRITTEN = {"format", "format_version", "arch", "config", "params", "metrics", "recipe", "history", "torch_version", "created"}


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T > 0 that minimizes the NLL of softmax(logits / T); optimized over log T, so T stays positive."""
    log_t = torch.zeros(1, requires_grad=True)
    logits, labels = logits.detach().double(), labels.detach()
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.double().exp(), labels)
        loss.backward()
        return loss

    with torch.enable_grad():  # callers may sit in inference mode
        optimizer.step(closure)
    return math.exp(log_t.item())


def calibration_figures(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> dict[str, float]:
    """NLL and ECE of softmax(logits / temperature)."""
    scaled = logits / temperature
    confidences, predictions = scaled.softmax(1).max(1)
    ece = expected_calibration_error(confidences, predictions == labels)
    return {"nll": F.cross_entropy(scaled, labels).item(), "ece": ece}


def held_out(meta: dict, val_size: int) -> bool | None:
    """Whether training held out the last val_size images: True, False, or None when the file does not say."""
    recorded = (meta.get("data") or {}).get("val_images", (meta.get("recipe") or {}).get("val_size"))
    return None if recorded is None else int(recorded) >= val_size


def seen_note(seen_held_out: bool | None, meta: dict) -> str | None:
    """The caveat to print when the validation images may have been training images, else None."""
    if seen_held_out is True:
        return None
    if seen_held_out is None:
        return "the weights do not record their training split: if they were trained on these images, T is fitted on seen data"
    train_n = (meta.get("data") or {}).get("train_images")
    trained = f"all {train_n:,} training images" if train_n else "these images"
    return (
        f"these weights were trained on {trained} (val_images {meta.get('data', {}).get('val_images', 0)}), so the "
        "validation images were seen in training: the model is surer on them than on new images, so T fitted there may be "
        "lower than new images need; train with --val-size 5000 for a held-out fit"
    )


def calibrate(
    weights: str | os.PathLike,
    out: str | os.PathLike,
    *,
    data_dir: str | None = None,
    download: bool = True,
    val_size: int = VAL_SIZE,
    device: str = "auto",
    batch_size: int = 200,
    force: bool = False,
    progress: bool = True,
) -> dict:
    """Fit T on the last val_size training images and save a copy of `weights` at `out` that records it."""
    weights, out = Path(weights), Path(out)
    if out.exists() and out.resolve() == weights.resolve():
        raise UserError("--out must differ from --weights; calibrating writes a new file and keeps the original")
    if out.exists() and not force:
        raise UserError(f"{out} already exists; pass --force to replace it (the old file is not kept)")
    loaded, model, dev = open_weights(weights, None, device)
    if loaded.format not in ("fp32", "fp16"):
        raise UserError(f"{weights} is a {loaded.format} file; calibrate the .pt weights it came from, then export that copy")
    images, labels = load_split("train", data_dir, download_missing=download)
    if not 0 < val_size < len(labels):
        raise UserError(f"--val-size must be in 1..{len(labels) - 1} (the training split has {len(labels):,} images)")
    first = len(labels) - val_size
    tta, shift = recipe_views(loaded.meta)  # the views evaluate and predict average, so T fits what they see
    logits, _ = batched_logits(model, images[first:], device=dev, batch_size=batch_size, tta=tta, tta_shift=shift,
                               progress=progress, desc="calibrate")  # fmt: skip
    labels, last = labels[first:], len(labels) - 1
    temperature = fit_temperature(logits, labels)
    before, after = calibration_figures(logits, labels), calibration_figures(logits, labels, temperature)
    seen = held_out(loaded.meta, val_size)
    record = {
        "images": f"training images {first:,}..{last:,} (the last {val_size:,}, the validation split)",
        "n": val_size, "tta": tta, "tta_shift": shift, "held_out_in_training": seen,
        "before": before, "after": after, "source_sha256": loaded.sha256,
    }  # fmt: skip
    extra = {k: v for k, v in loaded.meta.items() if k not in _REWRITTEN}
    digest = save_weights(
        out, loaded.model, loaded.arch, metrics=loaded.meta.get("metrics"), recipe=loaded.meta.get("recipe"),
        history=loaded.meta.get("history"), extra={**extra, "temperature": temperature, "calibration": record},
        half=loaded.format == "fp16", overwrite=force,
    )  # fmt: skip
    return {"weights": str(weights), "out": str(out), "sha256": digest, "temperature": temperature, **record,
            "views": views_text(tta, shift), "caveat": seen_note(seen, loaded.meta)}  # fmt: skip


def add_calibrate_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `resnet5m calibrate`."""
    parser.add_argument("--weights", required=True, help="our .pt weights (fp32 or fp16) to calibrate; left unchanged")
    parser.add_argument("--out", required=True, help="where to write the calibrated copy")
    parser.add_argument("--force", action="store_true", help="replace an existing --out")
    parser.add_argument("--data-dir", help=DATA_DIR_HELP)
    parser.add_argument(
        "--download", action=argparse.BooleanOptionalAction, default=True, help="download CIFAR-10 when it is missing"
    )
    parser.add_argument(
        "--val-size", type=positive_int, default=VAL_SIZE, help=f"fit on the last N training images (default: {VAL_SIZE})"
    )
    parser.add_argument("--batch-size", type=positive_int, default=200)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def cmd_calibrate(args: argparse.Namespace) -> dict:
    """Run `resnet5m calibrate` and report the fit."""
    result = calibrate(
        args.weights, args.out, data_dir=args.data_dir, download=args.download, val_size=args.val_size, device=args.device,
        batch_size=args.batch_size, force=args.force, progress=not args.json,
    )  # fmt: skip
    if not args.json:
        before, after = result["before"], result["after"]
        print(f"fitted on {result['images']}, never the test split; logits{result['views'] or ' of one view'}")
        if result["caveat"]:
            print(f"caveat    {result['caveat']}")
        print(f"temperature {result['temperature']:.4f}")
        print(f"NLL       {before['nll']:.4f} -> {after['nll']:.4f}  (on the images it was fitted on)")
        print(f"ECE       {100 * before['ece']:.2f}% -> {100 * after['ece']:.2f}%  ({ECE_BINS} bins)")
        print(f"wrote     {result['out']}  (sha256 {result['sha256'][:16]}...); evaluate and predict apply its temperature")
    return result
