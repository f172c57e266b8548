"""`resnet5m predict`: classify your own images (files, folders, globs, arrays, CIFAR-style pickles).

The model sees what `resnet5m evaluate` feeds it: the test-time views of the weights' recipe, the same
precision, and the softmax temperature the file records (`resnet5m calibrate`). Results go to a table,
JSON lines (--json) or a CSV (--csv) in the `ID,Labels` layout of CIFAR-10 course competitions.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .argtypes import positive_int
from .data import CLASSES
from .errors import UserError
from .evaluate import batched_logits, recipe_views, temperature_of, views_text
from .files import write_text
from .inputs import Inputs, read_inputs
from .runtime import resolve_precision
from .text import plural
from .weights import LoadedModel, default_weights, open_weights

TABLE_ROWS_WITH_CSV = 10  # the CSV holds every row; the terminal gets a preview


@dataclass
class Predictions:
    """Class probabilities for every input image, and how they were computed."""

    inputs: Inputs
    probs: torch.Tensor  # (N, classes), after the temperature
    seconds: float
    device: str
    precision: str
    views: str
    temperature: float

    @property
    def predicted(self) -> torch.Tensor:
        """The top-1 class index of every image."""
        return self.probs.argmax(1)

    def top_k(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(probabilities, class indices), each (N, k), most likely first."""
        return self.probs.topk(min(k, self.probs.shape[1]), dim=1)

    def accuracy(self) -> tuple[float, int] | None:
        """Accuracy on the images whose input carried a label, and their count; None when none did."""
        mask = self.inputs.labelled
        n = int(mask.sum())
        return ((self.predicted[mask] == self.inputs.labels[mask]).double().mean().item(), n) if n else None


def predict(
    inputs: Inputs, weights: Path, *, arch: str | None = None, device: str = "auto", batch_size: int = 200, progress: bool = True
) -> Predictions:
    """Run a weights file of any format on the inputs, as `resnet5m evaluate` would run it."""
    loaded, model, dev = open_weights(weights, arch, device)
    return predict_with(loaded, model, dev, inputs, batch_size=batch_size, progress=progress)


def predict_with(
    loaded: LoadedModel, model: nn.Module, device: torch.device, inputs: Inputs, *, batch_size: int = 200, progress: bool = False
) -> Predictions:
    """predict() with weights already opened by weights.open_weights(): for callers that keep a model across calls (the demo)."""
    tta, shift = recipe_views(loaded.meta)
    precision = loaded.precision  # graph and int8 models run as stored; eager ones under evaluate's default autocast
    logits, seconds = batched_logits(
        model, inputs.images, device=device, batch_size=batch_size, tta=tta, tta_shift=shift, precision=precision,
        progress=progress and len(inputs.images) > batch_size, desc="predict",
    )  # fmt: skip
    temperature = temperature_of(loaded.meta)
    probs = (logits / temperature).softmax(1)
    views = views_text(tta, shift)
    return Predictions(inputs, probs, seconds, str(device), resolve_precision(device, precision), views, temperature)


def table(pred: Predictions, k: int, rows: int | None = None) -> str:
    """A fixed-width table: input, top-1 class and probability, the top-k classes with theirs."""
    probs, classes = pred.top_k(k)
    names = [str(i) for i in pred.inputs.ids[:rows]]
    width = min(max([len(n) for n in names] + [5]), 48)
    lines = [f"{'input':<{width}}  {'class':<10}  {'prob':>6}  top-{probs.shape[1]}"]
    for name, p, c in zip(names, probs.tolist(), classes.tolist(), strict=False):
        name = name if len(name) <= width else "…" + name[-(width - 1) :]  # the end of a long path tells files apart
        top = ", ".join(f"{CLASSES[ci]} {100 * pi:.1f}" for pi, ci in zip(p, c, strict=True))
        lines.append(f"{name:<{width}}  {CLASSES[c[0]]:<10}  {100 * p[0]:5.1f}%  {top}")
    return "\n".join(lines)


def json_lines(pred: Predictions, k: int) -> list[str]:
    """One JSON object per input image."""
    probs, classes = pred.top_k(k)
    lines = []
    for i, (p, c) in enumerate(zip(probs.tolist(), classes.tolist(), strict=True)):
        obj = {"index": i, "id": pred.inputs.ids[i], "label": c[0], "class": CLASSES[c[0]], "probability": p[0]}
        obj["top_k"] = [{"label": ci, "class": CLASSES[ci], "probability": pi} for pi, ci in zip(p, c, strict=True)]
        if pred.inputs.labels[i] >= 0:
            obj["true_label"] = int(pred.inputs.labels[i])
        lines.append(json.dumps(obj))
    return lines


def check_csv_path(path: Path, force: bool) -> None:
    """Refuse to replace an existing CSV unless forced: checked before the model runs."""
    if path.exists() and not force:
        raise UserError(f"{path} already exists; pass --force to overwrite it or choose another --csv")
    if path.is_dir():
        raise UserError(f"--csv {path} is a folder; give a file name such as {path / 'predictions.csv'}")


def write_csv(pred: Predictions, path: Path, labels: str = "index", probs: bool = False) -> None:
    """ID,Labels rows (class index or name), plus one probability column per class with probs; written atomically."""
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["ID", "Labels"] + (list(CLASSES) if probs else []))
    for i, (label, row) in enumerate(zip(pred.predicted.tolist(), pred.probs.tolist(), strict=True)):
        cells = [f"{p:.6f}" for p in row] if probs else []
        writer.writerow([pred.inputs.ids[i], CLASSES[label] if labels == "name" else label, *cells])
    write_text(path, text.getvalue())


def summary(pred: Predictions) -> list[str]:
    """Notes on what was read and how fast it ran; accuracy when the inputs carried labels."""
    n, inputs = len(pred.probs), pred.inputs
    lines = [f"skipped   {path}: {reason}" for path, reason in inputs.skipped]
    if inputs.resized:
        lines.append(f"resized   {inputs.resized:,} image(s) to 32x32 (antialiased)")
    if pred.temperature != 1:
        lines.append(f"calibrated  probabilities at the temperature {pred.temperature:.3f} stored in the weights")
    speed = n / pred.seconds if pred.seconds > 0 else float("nan")
    where = f"on {pred.device} ({pred.precision}){pred.views}"
    lines.append(f"speed     {n:,} images in {pred.seconds:.2f} s, {speed:,.0f} images/s {where}")
    if (acc := pred.accuracy()) is not None:
        lines.append(f"accuracy  {100 * acc[0]:.2f}% on the {acc[1]:,} images whose input carried labels")
    return lines


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `resnet5m predict`."""
    kinds = "image files, folders (recursive), globs, .npy/.npz arrays, CIFAR-style pickles"
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help=kinds)
    parser.add_argument("--weights", help="any format evaluate reads (default: the shipped weights/resnet5m_<arch>.pt)")
    parser.add_argument("--arch", help="architecture (default: read from the weights file)")
    parser.add_argument("--top-k", type=positive_int, default=3, help="classes listed per image (default: 3)")
    parser.add_argument("--csv", type=Path, help="also write ID,Labels rows to this file")
    parser.add_argument("--labels", choices=("index", "name"), default="index", help="CSV labels as class indices or names")
    parser.add_argument("--probs", action="store_true", help="CSV: add one probability column per class")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --csv")
    parser.add_argument("--strict", action="store_true", help="stop at an unreadable file instead of skipping it")
    parser.add_argument("--batch-size", type=positive_int, default=200)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    # dest is not `json`: the objects are printed here, one per line, not as one object by main()
    parser.add_argument("--json", dest="json_lines", action="store_true", help="print one JSON object per image")


def cmd_predict(args: argparse.Namespace) -> None:
    """Run `resnet5m predict`."""
    if args.top_k > len(CLASSES):
        raise UserError(f"--top-k must be at most {len(CLASSES)}, the number of classes")
    if args.csv:
        check_csv_path(args.csv, args.force)
    weights = Path(args.weights) if args.weights else default_weights(args.arch or "seed")
    inputs = read_inputs(args.inputs, strict=args.strict)
    pred = predict(inputs, weights, arch=args.arch, device=args.device, batch_size=args.batch_size, progress=not args.json_lines)
    if args.json_lines:
        print("\n".join(json_lines(pred, args.top_k)))
    else:
        rows = TABLE_ROWS_WITH_CSV if args.csv else None
        print(table(pred, args.top_k, rows))
        if rows and len(pred.probs) > rows:
            print(f"… {len(pred.probs) - rows:,} more rows in {args.csv}")
    if args.csv:
        write_csv(pred, args.csv, args.labels, args.probs)
    notes = summary(pred) + ([f"wrote     {args.csv} ({plural(len(pred.probs), 'row')})"] if args.csv else [])
    print("\n".join(notes), file=sys.stderr if args.json_lines else sys.stdout)
