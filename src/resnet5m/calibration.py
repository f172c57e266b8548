"""Temperature scaling: one scalar T that divides the logits so that confidence matches accuracy (Guo et al., 2017).

`resnet5m calibrate` fits T on the validation split (the last --val-size training images, as
`resnet5m train --val-size` holds them out), or on a labelled file of the user's own (--images), never on the
test split, and writes a copy of the weights whose metadata holds `temperature`; evaluate and predict divide the
logits by it. Weights trained on the validation images are refused (T fitted on seen images is far too low), and
so is a T outside T_RANGE. T never changes a prediction, only how sure the probabilities say the model is.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from .argtypes import positive_int
from .data import DATA_DIR_HELP, VAL_SIZE, load_split
from .errors import UserError
from .evaluate import ECE_BINS, batched_logits, expected_calibration_error, recipe_views, views_text
from .inputs import read_inputs
from .weights import carried_over, open_weights, save_weights

T_RANGE = (0.05, 20.0)  # a fitted T outside this is a sign of a bad fit (seen or too few images), not a calibration


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


def recorded_val_size(meta: dict) -> int | None:
    """How many of the last training images the weights' run held out (0: none), or None when the file does not say."""
    recorded = (meta.get("data") or {}).get("val_images", (meta.get("recipe") or {}).get("val_size"))
    return None if recorded is None else int(recorded)


def held_out(meta: dict, val_size: int) -> bool | None:
    """Whether training held out the last val_size images: True, False, or None when the file does not say."""
    recorded = recorded_val_size(meta)
    return None if recorded is None else recorded >= val_size


UNRECORDED = "the weights do not record their training split: if they were trained on these images, T is fitted on seen data"


def _validation(weights: Path, meta: dict, data_dir: str | None, download: bool, val_size: int | None) -> tuple:
    """(images, labels, what they are, held out) of the validation split; refused where training saw it."""
    val_size = val_size or recorded_val_size(meta) or VAL_SIZE
    images, labels = load_split("val", data_dir, download_missing=download, val_size=val_size)  # checks val_size too
    seen = held_out(meta, val_size)
    if seen is False:
        kept = recorded_val_size(meta)
        raise UserError(
            f"{weights} was trained on the last {val_size:,} training images (it held out {kept:,}): a temperature fitted "
            "there would be far too low for new images; pass --images FILE, labelled images of your own that it was not "
            "trained on (a pickle or .npz), or calibrate weights trained with --val-size"
        )
    return images, labels, f"the last {val_size:,} training images (the validation split)", seen


def _own_images(path: str | os.PathLike) -> tuple:
    """(images, labels, what they are, held out) of a labelled file given with --images."""
    inputs = read_inputs([os.fspath(path)], strict=True)
    if not inputs.labelled.all():
        raise UserError(f"--images {path}: {int((~inputs.labelled).sum()):,} of its {len(inputs.labels):,} images carry no "
                        "label; give a pickle or .npz with labels (its 'labels' or 'y')")  # fmt: skip
    return inputs.images, inputs.labels, f"{len(inputs.labels):,} labelled images from {path}", None


def calibrate(
    weights: str | os.PathLike,
    out: str | os.PathLike,
    *,
    images: str | os.PathLike | None = None,
    data_dir: str | None = None,
    download: bool = True,
    val_size: int | None = None,
    device: str = "auto",
    batch_size: int = 200,
    force: bool = False,
    progress: bool = True,
) -> dict:
    """Fit T on held-out images (the validation split, or the labelled file `images`) and save a copy of `weights`
    at `out` that records it. Weights trained on the validation images, and a T outside T_RANGE, are refused."""
    weights, out = Path(weights), Path(out)
    if out.exists() and out.resolve() == weights.resolve():
        raise UserError("--out must differ from --weights; calibrating writes a new file and keeps the original")
    if out.exists() and not force:
        raise UserError(f"{out} already exists; pass --force to replace it (the old file is not kept)")
    loaded, model, dev = open_weights(weights, None, device)
    if loaded.format not in ("fp32", "fp16"):
        raise UserError(f"{weights} is a {loaded.format} file; calibrate the .pt weights it came from, then export that copy")
    if images is not None:
        x, labels, what, seen = _own_images(images)
    else:
        x, labels, what, seen = _validation(weights, loaded.meta, data_dir, download, val_size)
    tta, shift = recipe_views(loaded.meta)  # the views evaluate and predict average, so T fits what they see
    logits, _ = batched_logits(model, x, device=dev, batch_size=batch_size, tta=tta, tta_shift=shift,
                               progress=progress, desc="calibrate")  # fmt: skip
    temperature = fit_temperature(logits, labels)
    before, after = calibration_figures(logits, labels), calibration_figures(logits, labels, temperature)
    low, high = T_RANGE
    if not low <= temperature <= high:
        raise UserError(
            f"the fitted temperature {temperature:.4g} is outside {low}..{high} (NLL {before['nll']:.4f} -> "
            f"{after['nll']:.4f} on {what}): these are likely images the net was trained on, or too few; nothing was written"
        )
    record = {
        "images": what, "n": len(labels), "tta": tta, "tta_shift": shift, "held_out_in_training": seen,
        "before": before, "after": after, "source_sha256": loaded.sha256,
    }  # fmt: skip
    extra = carried_over(loaded.meta)
    digest = save_weights(
        out, loaded.model, loaded.arch, metrics=loaded.meta.get("metrics"), recipe=loaded.meta.get("recipe"),
        history=loaded.meta.get("history"), extra={**extra, "temperature": temperature, "calibration": record},
        half=loaded.format == "fp16", overwrite=force,
    )  # fmt: skip
    caveat = UNRECORDED if images is None and seen is None else None
    return {"weights": str(weights), "out": str(out), "sha256": digest, "temperature": temperature, **record,
            "views": views_text(tta, shift), "caveat": caveat}  # fmt: skip


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
        "--val-size", type=positive_int,
        help=f"fit on the last N training images (default: as many as the weights held out, else {VAL_SIZE})",
    )  # fmt: skip
    parser.add_argument("--images", help="fit on this labelled pickle or .npz of your own held-out images instead")
    parser.add_argument("--batch-size", type=positive_int, default=200)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def cmd_calibrate(args: argparse.Namespace) -> dict:
    """Run `resnet5m calibrate` and report the fit."""
    result = calibrate(
        args.weights, args.out, images=args.images, data_dir=args.data_dir, download=args.download, val_size=args.val_size,
        device=args.device, batch_size=args.batch_size, force=args.force, progress=not args.json,
    )  # fmt: skip
    if not args.json:
        before, after = result["before"], result["after"]
        print(f"fitted on {result['images']}, never CIFAR-10's test split; logits{result['views'] or ' of one view'}")
        if result["caveat"]:
            print(f"caveat    {result['caveat']}")
        print(f"temperature {result['temperature']:.4f}")
        print(f"NLL       {before['nll']:.4f} -> {after['nll']:.4f}  (on the images it was fitted on)")
        print(f"ECE       {100 * before['ece']:.2f}% -> {100 * after['ece']:.2f}%  ({ECE_BINS} bins)")
        print(f"wrote     {result['out']}  (sha256 {result['sha256'][:16]}...); evaluate and predict apply its temperature")
    return result
