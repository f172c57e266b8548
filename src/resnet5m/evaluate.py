"""Accuracy, loss, calibration, per-class accuracy and the confusion matrix of a model on a split."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .data import CLASSES, model_input
from .model import ResNet, fold_batchnorm
from .runtime import autocast

ECE_BINS = 15  # equal-width confidence bins of the expected calibration error, as in Guo et al. (2017)


@dataclass
class EvalResult:
    """What one evaluation measured. `predictions`, `confidences` and `labels` are kept for plots, not for JSON.

    loss is the mean cross-entropy of the true class, i.e. the negative log-likelihood (NLL), after dividing
    the logits by `temperature`; `ece` is the expected calibration error over ECE_BINS confidence bins.
    """

    accuracy: float
    loss: float
    n: int
    per_class: dict[str, float]
    confusion: list[list[int]]  # rows: true class, columns: predicted class
    predictions: torch.Tensor
    seconds: float
    tta: bool
    tta_shift: int = 0
    ece: float = float("nan")
    temperature: float = 1.0
    confidences: torch.Tensor | None = None  # top-1 softmax probability of each image
    labels: torch.Tensor | None = None

    @property
    def images_per_s(self) -> float:
        return self.n / self.seconds if self.seconds > 0 else float("nan")

    @property
    def views(self) -> str:
        """How the test-time views were averaged, for printing: '', ' with flip TTA', ..."""
        return views_text(self.tta, self.tta_shift)

    @property
    def stderr(self) -> float:
        """Binomial standard error of the accuracy."""
        return (self.accuracy * (1 - self.accuracy) / max(self.n, 1)) ** 0.5

    def to_dict(self) -> dict:
        return {
            "accuracy": self.accuracy,
            "accuracy_stderr": self.stderr,
            "n": self.n,
            "loss": self.loss,
            "nll": self.loss,
            "ece": self.ece,
            "temperature": self.temperature,
            "per_class": self.per_class,
            "confusion": self.confusion,
            "tta": self.tta,
            "tta_shift": self.tta_shift,
            "seconds": round(self.seconds, 3),
            "images_per_s": round(self.images_per_s, 1),
        }


def views_text(tta: bool, shift: int) -> str:
    """'', ' with flip TTA', ' with flip + 1-px shift TTA', ...: the averaged test-time views, for printing."""
    parts = (["flip"] if tta else []) + ([f"{shift}-px shift"] if shift else [])
    return f" with {' + '.join(parts)} TTA" if parts else ""


def recorded(meta: dict, key: str) -> object:
    """A field of the training run's metadata: at a file's top level, or in an export's record of its source."""
    value = meta.get(key)
    return value if value is not None else (meta.get("export") or {}).get(key)


def recipe_views(meta: dict) -> tuple[bool, int]:
    """(flip TTA, shift) that a weights file's training recipe validated with; files without one: (True, 0)."""
    recipe = recorded(meta, "recipe") or {}
    return bool(recipe.get("tta", True)), int(recipe.get("tta_shift", 0))


def shifted(x: torch.Tensor, shift: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch moved `shift` pixels up-left and down-right (reflect-padded borders), shapes unchanged."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (shift,) * 4, mode="reflect")
    return padded[..., 2 * shift :, 2 * shift :], padded[..., :h, :w]


def predict_logits(model: nn.Module, x: torch.Tensor, tta: bool = False, shift: int = 0) -> torch.Tensor:
    """Logits for a normalized batch, averaged over test-time views.

    tta adds the mirror image; shift > 0 adds, for each of those, two copies moved diagonally by that
    many pixels (the random crops of training move images by up to 4).
    """
    views = [x, x.flip(3)] if tta else [x]
    if shift:
        views += [v for view in views for v in shifted(view, shift)]
    return torch.stack([model(v) for v in views]).mean(0)


@torch.inference_mode()
def batched_logits(
    model: nn.Module,
    images: torch.Tensor,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 200,
    tta: bool = False,
    tta_shift: int = 0,
    precision: str = "auto",
    progress: bool = True,
    size: int = 32,
    desc: str = "evaluate",
) -> tuple[torch.Tensor, float]:
    """fp32 logits (N, classes) on the CPU for uint8 images (N, 3, 32, 32), averaged over the views; and the seconds taken."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    net = fold_batchnorm(model).to(memory_format=torch.channels_last) if isinstance(model, ResNet) else model
    parts = []
    start = time.perf_counter()
    for i in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch", disable=not progress, leave=False):
        x = model_input(images[i : i + batch_size].to(device), size)
        with autocast(device, precision):
            parts.append(predict_logits(net, x, tta, tta_shift).float().cpu())
    seconds = time.perf_counter() - start
    model.train(was_training)
    return (torch.cat(parts) if parts else torch.empty(0, len(CLASSES))), seconds


def reliability_bins(
    confidences: torch.Tensor, correct: torch.Tensor, bins: int = ECE_BINS
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per equal-width confidence bin (0, 1/bins], ..., (1 - 1/bins, 1]: image count, mean confidence, accuracy."""
    confidences = confidences.double().flatten()
    index = (confidences * bins).ceil().long().clamp(1, bins) - 1
    counts = torch.bincount(index, minlength=bins).double()
    mean_conf = torch.bincount(index, weights=confidences, minlength=bins) / counts.clamp(min=1)
    accuracy = torch.bincount(index, weights=correct.double().flatten(), minlength=bins) / counts.clamp(min=1)
    return counts, mean_conf, accuracy


def expected_calibration_error(confidences: torch.Tensor, correct: torch.Tensor, bins: int = ECE_BINS) -> float:
    """The |accuracy - mean confidence| gap of each confidence bin, weighted by its share of the images."""
    counts, mean_conf, accuracy = reliability_bins(confidences, correct, bins)
    return (counts * (accuracy - mean_conf).abs()).sum().item() / max(counts.sum().item(), 1)


def temperature_of(meta: dict) -> float:
    """The softmax temperature a weights file records (`resnet5m calibrate`); 1.0 when it records none."""
    return float(recorded(meta, "temperature") or 1.0)


def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 200,
    tta: bool = False,
    tta_shift: int = 0,
    precision: str = "auto",
    progress: bool = True,
    size: int = 32,
    temperature: float = 1.0,
) -> EvalResult:
    """Evaluate on uint8 images (N, 3, 32, 32) with int64 labels (N,), fed to the model at size x size pixels.

    temperature divides the logits before the softmax: it changes loss and ECE, never the predictions.
    """
    logits, seconds = batched_logits(
        model, images, device=device, batch_size=batch_size, tta=tta, tta_shift=tta_shift, precision=precision,
        progress=progress, size=size,
    )  # fmt: skip
    return result_from_logits(logits / temperature, labels.cpu(), seconds, tta=tta, tta_shift=tta_shift, temperature=temperature)


def result_from_logits(
    logits: torch.Tensor, labels: torch.Tensor, seconds: float, *, tta: bool, tta_shift: int, temperature: float = 1.0
) -> EvalResult:
    """Every figure of an EvalResult from (already temperature-scaled) logits and the true labels."""
    n = len(labels)
    confidences, predictions = logits.softmax(1).max(1)
    correct = predictions == labels
    k = len(CLASSES)
    confusion = torch.bincount(labels * k + predictions, minlength=k * k).view(k, k)
    support = confusion.sum(1).clamp(min=1)
    per_class = (confusion.diag().double() / support).tolist()
    return EvalResult(
        accuracy=correct.double().mean().item() if n else float("nan"),
        loss=F.cross_entropy(logits, labels, reduction="sum").item() / max(n, 1),
        n=n,
        per_class=dict(zip(CLASSES, per_class, strict=True)),
        confusion=confusion.tolist(),
        predictions=predictions,
        seconds=seconds,
        tta=tta,
        tta_shift=tta_shift,
        ece=expected_calibration_error(confidences, correct) if n else math.nan,
        temperature=temperature,
        confidences=confidences,
        labels=labels,
    )
