"""Accuracy, loss, per-class accuracy and the confusion matrix of a model on a split."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .data import CLASSES, model_input
from .model import ResNet, fold_batchnorm
from .runtime import autocast


@dataclass
class EvalResult:
    """What one evaluation measured. `predictions` is kept for plots, not for JSON."""

    accuracy: float
    loss: float
    n: int
    per_class: dict[str, float]
    confusion: list[list[int]]  # rows: true class, columns: predicted class
    predictions: torch.Tensor
    seconds: float
    tta: bool
    tta_shift: int = 0

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


def recipe_views(meta: dict) -> tuple[bool, int]:
    """(flip TTA, shift) that a weights file's training recipe validated with; files without one: (True, 0)."""
    recipe = meta.get("recipe") or {}
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
) -> EvalResult:
    """Evaluate on uint8 images (N, 3, 32, 32) with int64 labels (N,), fed to the model at size x size pixels."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    net = fold_batchnorm(model).to(memory_format=torch.channels_last) if isinstance(model, ResNet) else model
    n = len(labels)
    predictions = torch.empty(n, dtype=torch.int64)
    total_loss = 0.0
    start = time.perf_counter()
    steps = range(0, n, batch_size)
    for i in tqdm(steps, desc="evaluate", unit="batch", disable=not progress, leave=False):
        x = model_input(images[i : i + batch_size].to(device), size)
        y = labels[i : i + batch_size].to(device)
        with autocast(device, precision):
            logits = predict_logits(net, x, tta, tta_shift).float()
        total_loss += F.cross_entropy(logits, y, reduction="sum").item()
        predictions[i : i + batch_size] = logits.argmax(1).cpu()
    seconds = time.perf_counter() - start
    model.train(was_training)

    k = len(CLASSES)
    confusion = torch.bincount(labels.cpu() * k + predictions, minlength=k * k).view(k, k)
    support = confusion.sum(1).clamp(min=1)
    per_class = (confusion.diag().double() / support).tolist()
    return EvalResult(
        accuracy=(predictions == labels.cpu()).double().mean().item() if n else float("nan"),
        loss=total_loss / max(n, 1),
        n=n,
        per_class=dict(zip(CLASSES, per_class, strict=True)),
        confusion=confusion.tolist(),
        predictions=predictions,
        seconds=seconds,
        tta=tta,
        tta_shift=tta_shift,
    )
