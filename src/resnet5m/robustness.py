"""Accuracy under generated corruptions, 5 severities each, in the spirit of CIFAR-10-C (Hendrycks & Dietterich, 2019).

Each corruption is a torchvision.transforms.v2 operation (JPEG: Pillow's encoder) on the uint8 test images with a fixed parameter
per severity (CIFAR-10-C's where it has the same corruption). Everything is deterministic: the noise is
drawn from a seeded generator state and the rotation sign alternates image by image, so two runs on the
same images give the same figures.
"""

from __future__ import annotations

import argparse
import io
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF
from tqdm.auto import tqdm

from .argtypes import positive_int
from .data import DATA_DIR_HELP, load_split
from .evaluate import evaluate, recipe_views, views_text
from .weights import default_weights, open_weights

SEED = 0


def _float(images: torch.Tensor) -> torch.Tensor:
    return TF.to_dtype(images, torch.float32, scale=True)


def _uint8(images: torch.Tensor) -> torch.Tensor:
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


def gaussian_noise(images: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    """Additive noise of standard deviation sigma (pixel range 0..1), clipped."""
    with torch.random.fork_rng(devices=[]):  # v2's noise draws from the global generator: seed it, then restore it
        torch.manual_seed(seed)
        return _uint8(TF.gaussian_noise(_float(images), sigma=sigma))


def gaussian_blur(images: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    """Gaussian blur of standard deviation sigma pixels, the kernel reaching 3 sigma."""
    size = 2 * math.ceil(3 * sigma) + 1
    return TF.gaussian_blur(images, [size, size], [sigma, sigma])


def jpeg(images: torch.Tensor, quality: float, seed: int) -> torch.Tensor:
    """JPEG compression at the given quality (1..100), through Pillow.

    Not v2.JPEG: it encodes with torchvision.io, whose image codecs torchvision 0.29 deprecates (a warning per call).
    """
    from PIL import Image

    out = torch.empty_like(images)
    for i, image in enumerate(images.permute(0, 2, 3, 1).numpy()):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=int(quality))
        out[i] = torch.from_numpy(np.asarray(Image.open(buffer).convert("RGB")).copy()).permute(2, 0, 1)
    return out


def contrast(images: torch.Tensor, factor: float, seed: int) -> torch.Tensor:
    """Pixels pulled towards the image's mean grey: factor 1 is the image, 0 a flat grey."""
    return TF.adjust_contrast(images, factor)


def brightness(images: torch.Tensor, factor: float, seed: int) -> torch.Tensor:
    """Pixels multiplied by factor, clipped at white."""
    return TF.adjust_brightness(images, factor)


def pixelate(images: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Shrunk to fraction of the side (antialiased), then blown back up to 32 px as blocks."""
    side = images.shape[-1]
    small = TF.resize(images, [round(fraction * side)] * 2, antialias=True)
    return TF.resize(small, [side, side], interpolation=InterpolationMode.NEAREST)


def rotate(images: torch.Tensor, degrees: float, seed: int) -> torch.Tensor:
    """Rotated by +degrees (even images) or -degrees (odd ones) about the centre; corners filled with black."""
    out = images.clone()
    for start, sign in ((0, 1), (1, -1)):
        out[start::2] = TF.rotate(images[start::2], sign * degrees, interpolation=InterpolationMode.BILINEAR)
    return out


Corruption = Callable[[torch.Tensor, float, int], torch.Tensor]
# name -> (the operation, its parameter at severities 1..5)
CORRUPTIONS: dict[str, tuple[Corruption, tuple[float, ...]]] = {
    "gaussian_noise": (gaussian_noise, (0.04, 0.06, 0.08, 0.09, 0.10)),  # CIFAR-10-C's sigmas
    "gaussian_blur": (gaussian_blur, (0.4, 0.6, 0.7, 0.8, 1.0)),  # CIFAR-10-C's sigmas
    "jpeg": (jpeg, (80, 65, 58, 50, 40)),  # CIFAR-10-C's qualities
    "contrast": (contrast, (0.75, 0.5, 0.4, 0.3, 0.15)),  # CIFAR-10-C's factors
    "brightness": (brightness, (1.1, 1.2, 1.3, 1.45, 1.6)),  # about CIFAR-10-C's +0.05..+0.3 in value on a mid-grey image
    "pixelate": (pixelate, (0.95, 0.9, 0.85, 0.75, 0.65)),  # CIFAR-10-C's fractions
    "rotate": (rotate, (5, 10, 15, 20, 25)),  # degrees; flips and crops are all training shows the nets
}
SEVERITIES = 5


def corrupt(images: torch.Tensor, name: str, severity: int, seed: int = SEED) -> torch.Tensor:
    """uint8 images (N, 3, H, W) under one corruption at severity 1..5; the same call gives the same pixels."""
    operation, levels = CORRUPTIONS[name]
    return operation(images, levels[severity - 1], seed + severity)


def robustness(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    progress: bool = True,
    **evaluate_kwargs: object,
) -> dict:
    """Clean accuracy, the accuracy under each corruption at each severity, and their mean."""
    runs = [(name, s) for name in CORRUPTIONS for s in range(1, SEVERITIES + 1)]
    clean = evaluate(model, images, labels, progress=False, **evaluate_kwargs).accuracy
    per_corruption: dict[str, list[float]] = {name: [] for name in CORRUPTIONS}
    # A small sample's runs are evaluated together, a batch's worth at a time: 36 passes over 20 images each would
    # spend their time on tiny batches and on folding the BatchNorm 36 times.
    batch = int(evaluate_kwargs.get("batch_size", 200))
    group = max(1, batch // max(len(images), 1))
    bar = tqdm(total=len(runs), desc="robustness", unit="run", disable=not progress, leave=False)
    for start in range(0, len(runs), group):
        chunk = runs[start : start + group]
        corrupted = torch.cat([corrupt(images, name, severity) for name, severity in chunk])
        result = evaluate(model, corrupted, labels.repeat(len(chunk)), progress=False, **evaluate_kwargs)
        correct = (result.predictions == result.labels).view(len(chunk), -1).double().mean(1)
        for (name, _), accuracy in zip(chunk, correct.tolist(), strict=True):
            per_corruption[name].append(accuracy)
        bar.update(len(chunk))
    bar.close()
    accuracies = [a for accs in per_corruption.values() for a in accs]
    return {
        "clean": clean,
        "mean_corruption_accuracy": sum(accuracies) / len(accuracies),
        "per_corruption": per_corruption,
        "parameters": {name: list(levels) for name, (_, levels) in CORRUPTIONS.items()},
        "seed": SEED,
    }


def table(result: dict) -> str:
    """Accuracy (%) per corruption and severity, with each row's mean."""
    head = f"{'corruption':<15}" + "".join(f"{s:>7}" for s in range(1, SEVERITIES + 1)) + f"{'mean':>8}"
    lines = [head, f"{'clean':<15}{100 * result['clean']:>7.2f}"]
    for name, accs in result["per_corruption"].items():
        cells = "".join(f"{100 * a:>7.2f}" for a in accs)
        lines.append(f"{name:<15}{cells}{100 * sum(accs) / len(accs):>8.2f}")
    lines.append(f"{'all corruptions':<{15 + 7 * SEVERITIES}}{100 * result['mean_corruption_accuracy']:>8.2f}")
    return "\n".join(lines)


def add_robustness_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `resnet5m robustness`."""
    parser.add_argument("--weights", help="any format evaluate reads (default: the shipped weights/resnet5m_<arch>.pt)")
    parser.add_argument("--arch", help="architecture (default: read from the weights file)")
    parser.add_argument("--data-dir", help=DATA_DIR_HELP)
    parser.add_argument(
        "--download", action=argparse.BooleanOptionalAction, default=True, help="download CIFAR-10 when it is missing"
    )
    parser.add_argument("--limit", type=positive_int, help="use only the first N test images (default: all)")
    parser.add_argument("--batch-size", type=positive_int, default=200)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def cmd_robustness(args: argparse.Namespace) -> dict:
    """Run `resnet5m robustness` on the test split."""
    weights = Path(args.weights) if args.weights else default_weights(args.arch or "seed")
    loaded, model, device = open_weights(weights, args.arch, args.device)
    images, labels = load_split("test", args.data_dir, download_missing=args.download)
    images, labels = images[: args.limit], labels[: args.limit]
    tta, shift = recipe_views(loaded.meta)
    settings = {"device": device, "batch_size": args.batch_size, "tta": tta, "tta_shift": shift, "precision": loaded.precision}
    result = robustness(model, images, labels, progress=not args.json, **settings)
    out = {"arch": loaded.arch, "format": loaded.format, "weights": str(weights), "n": len(labels), **result}
    if not args.json:
        print(f"weights   {weights}  ({loaded.format}, arch {loaded.arch}); {len(labels):,} test images{views_text(tta, shift)}")
        print(table(result))
    return out
