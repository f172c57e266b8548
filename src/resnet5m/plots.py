"""Figures and small text tables for the notebook: training curves, confusion, per-class accuracy, predictions,
calibration, robustness and Grad-CAM.

Every plot builds a standalone `matplotlib.figure.Figure` (no pyplot state, so nothing piles up in
tests or scripts and no GUI backend is needed) and returns it; `save=PATH` also writes a PNG.
In Jupyter, show one with `display(fig)`.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from numpy.typing import ArrayLike

from .data import CLASSES
from .evaluate import ECE_BINS, EvalResult, reliability_bins
from .files import write_bytes
from .gradcam import Explained
from .model import PARAM_LIMIT

ORIGINAL_ACCURACY = 0.9294  # the original project's reported CIFAR-10 test accuracy for the seed network
MISTAKE = "#d62728"
CORRECT = "#2ca02c"

History = Sequence[Mapping[str, float]]


def _finish(fig: Figure, save: str | os.PathLike | None) -> Figure:
    if save is not None:
        path = Path(save)
        image = io.BytesIO()  # rendered in memory, then staged: a full disk never leaves half a PNG
        fig.savefig(image, format=path.suffix[1:] or "png", dpi=120)
        write_bytes(path, image)
    return fig


def _runs(data: Mapping | Sequence, is_single) -> dict:
    """Normalize one run's data or a {label: data} mapping of several runs to a {label: data} dict."""
    return {"": data} if is_single(data) else dict(data)


def _empty(fig: Figure, text: str) -> None:
    ax = fig.add_subplot()
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


# --- training curves ------------------------------------------------------------------------------
def plot_training_curves(history: History | Mapping[str, History], *, save: str | os.PathLike | None = None) -> Figure:
    """Loss and accuracy per epoch, train (solid) and validation (dashed, when recorded).

    history: the rows saved in a weights file (`LoadedWeights.meta["history"]`), or {label: rows} to
    compare runs in one figure.
    """
    runs = _runs(history, lambda h: not isinstance(h, Mapping))
    fig = Figure(figsize=(11, 4), layout="constrained")
    if not any(runs.values()):
        _empty(fig, "no training history recorded in this weights file")
        return _finish(fig, save)
    ax_loss, ax_acc = fig.subplots(1, 2)
    for i, (label, rows) in enumerate(runs.items()):
        color = f"C{i}"
        prefix = f"{label} " if label else ""
        epochs = [r["epoch"] for r in rows]
        for split, style in (("train", "-"), ("val", "--")):
            if not rows or f"{split}_loss" not in rows[0]:
                continue  # runs with --val-size 0 have no validation columns
            # Markers keep a one-epoch run visible, where a line alone would draw nothing.
            line = {"color": color, "label": f"{prefix}{split}", "marker": "o", "markersize": 3}
            ax_loss.plot(epochs, [r[f"{split}_loss"] for r in rows], style, **line)
            ax_acc.plot(epochs, [100 * r[f"{split}_acc"] for r in rows], style, **line)
    for ax, name in ((ax_loss, "loss"), (ax_acc, "accuracy (%)")):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend()
    ax_loss.set_title("loss")
    ax_acc.set_title("accuracy")
    return _finish(fig, save)


# --- confusion ------------------------------------------------------------------------------------
def plot_confusion_matrix(
    confusion: Sequence[Sequence[int]] | np.ndarray,
    classes: Sequence[str] = CLASSES,
    *,
    normalize: bool = True,
    title: str = "confusion matrix",
    save: str | os.PathLike | None = None,
) -> Figure:
    """Rows: true class, columns: predicted class; cells show counts (coloured by row share when normalize)."""
    counts = np.asarray(confusion, dtype=np.int64)
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    values = shares if normalize else counts
    fig = Figure(figsize=(7.5, 6.5), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap="Blues", vmin=0)
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of the true class" if normalize else "images")
    ticks = range(len(classes))
    ax.set_xticks(ticks, classes, rotation=45, ha="right")
    ax.set_yticks(ticks, classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    threshold = values.max() / 2 if values.size else 0
    for (row, col), count in np.ndenumerate(counts):
        ink = "white" if values[row, col] > threshold else "black"  # readable on dark and light cells
        ax.text(col, row, str(count), ha="center", va="center", fontsize=7, color=ink)
    return _finish(fig, save)


def top_confusions(
    confusion: Sequence[Sequence[int]] | np.ndarray, k: int = 10, classes: Sequence[str] = CLASSES
) -> list[tuple[str, str, int]]:
    """The k most frequent mistakes as (true class, predicted class, count), largest first, zeros left out."""
    counts = np.asarray(confusion, dtype=np.int64).copy()
    np.fill_diagonal(counts, 0)
    order = np.argsort(-counts, axis=None, kind="stable")[:k]
    pairs = [np.unravel_index(i, counts.shape) for i in order]
    return [(classes[t], classes[p], int(counts[t, p])) for t, p in pairs if counts[t, p] > 0]


def plot_top_confusions(
    confusion: Sequence[Sequence[int]] | np.ndarray,
    k: int = 10,
    classes: Sequence[str] = CLASSES,
    *,
    save: str | os.PathLike | None = None,
) -> Figure:
    """Horizontal bars of the k most confused (true -> predicted) class pairs."""
    pairs = top_confusions(confusion, k, classes)
    fig = Figure(figsize=(7, 0.4 * max(len(pairs), 3) + 1), layout="constrained")
    if not pairs:
        _empty(fig, "no mistakes")
        return _finish(fig, save)
    ax = fig.add_subplot()
    labels = [f"{true} → {pred}" for true, pred, _ in pairs]
    ax.barh(range(len(pairs)), [n for *_, n in pairs], color=MISTAKE)
    ax.set_yticks(range(len(pairs)), labels)
    ax.invert_yaxis()  # largest on top
    ax.set_xlabel("test images (true → predicted)")
    ax.set_title(f"the {len(pairs)} most confused class pairs")
    ax.grid(axis="x", alpha=0.3)
    return _finish(fig, save)


# --- per-class accuracy ---------------------------------------------------------------------------
def plot_per_class_accuracy(
    per_class: Mapping[str, float] | Mapping[str, Mapping[str, float]],
    *,
    reference: float | None = None,
    reference_label: str = "original project",
    save: str | os.PathLike | None = None,
) -> Figure:
    """Accuracy of each class as bars; {label: per_class} draws grouped bars to compare runs.

    reference: an overall accuracy (e.g. ORIGINAL_ACCURACY) drawn as a dotted horizontal line.
    """
    runs = _runs(per_class, lambda d: all(not isinstance(v, Mapping) for v in d.values()))
    classes = list(next(iter(runs.values()), {}))
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / max(len(runs), 1)
    x = np.arange(len(classes))
    for i, (label, accs) in enumerate(runs.items()):
        values = [100 * accs.get(c, float("nan")) for c in classes]
        bars = ax.bar(x + (i - (len(runs) - 1) / 2) * width, values, width, label=label or None, color=f"C{i}")
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    if reference is not None:
        ax.axhline(100 * reference, color="black", linestyle=":", label=f"{reference_label} {100 * reference:.2f}%")
    ax.set_xticks(x, classes, rotation=30, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title("per-class accuracy")
    if len(runs) > 1 or reference is not None:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: bars near 90% fill the axes
    return _finish(fig, save)


# --- predictions ----------------------------------------------------------------------------------
def _to_hwc(images: ArrayLike) -> np.ndarray:
    """uint8 (N, 3, H, W) tensor or array -> (N, H, W, 3) array for imshow."""
    return np.asarray(images).transpose(0, 2, 3, 1)


def plot_predictions(
    images: ArrayLike,
    labels: ArrayLike,
    predictions: ArrayLike,
    classes: Sequence[str] = CLASSES,
    *,
    n: int = 32,
    only_mistakes: bool = False,
    seed: int = 0,
    cols: int = 8,
    save: str | os.PathLike | None = None,
) -> Figure:
    """A grid of test images titled 'predicted (true)'; mistakes get a red title and frame.

    images: uint8 (N, 3, 32, 32); labels, predictions: (N,) class indices, e.g. EvalResult.predictions.
    A seeded random sample of n images (of the mistakes only, when only_mistakes) is shown.
    """
    labels = np.asarray(labels)
    predictions = np.asarray(predictions)
    pool = np.flatnonzero(labels != predictions) if only_mistakes else np.arange(len(labels))
    chosen = np.sort(np.random.default_rng(seed).permutation(pool)[:n])
    rows = max(-(-len(chosen) // cols), 1)
    fig = Figure(figsize=(1.4 * cols, 1.6 * rows), layout="constrained")
    if len(chosen) == 0:
        _empty(fig, "no mistakes to show" if only_mistakes else "no images")
        return _finish(fig, save)
    pixels = _to_hwc(np.asarray(images)[chosen])
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, idx, img in zip(axes, chosen, pixels, strict=False):
        true, pred = int(labels[idx]), int(predictions[idx])
        color = CORRECT if true == pred else MISTAKE
        ax.imshow(img, interpolation="nearest")
        ax.set_title(f"{classes[pred]}\n({classes[true]})", fontsize=7, color=color)
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_edgecolor(color)
            spine.set_linewidth(1 if true == pred else 3)
    for ax in axes[len(chosen) :]:
        ax.set_axis_off()
    wrong = int((labels[chosen] != predictions[chosen]).sum())
    fig.suptitle(f"predicted (true): {len(chosen) - wrong} right, {wrong} wrong (red)", fontsize=9)
    return _finish(fig, save)


# --- text summaries -------------------------------------------------------------------------------
def accuracy_summary(result: EvalResult, reference: float | None = ORIGINAL_ACCURACY, split: str = "test") -> str:
    """'test accuracy 92.10% ± 0.27 on 10,000 images ...' with the gap to the reference in points and standard errors."""
    line = f"{split} accuracy {100 * result.accuracy:.2f}% ± {100 * result.stderr:.2f} (standard error) on {result.n:,} images"
    line += result.views
    if reference is not None and result.n:
        gap = result.accuracy - reference
        sigmas = abs(gap) / result.stderr if result.stderr > 0 else float("inf")
        line += (
            f"\noriginal project: {100 * reference:.2f}%; difference {100 * gap:+.2f} points "
            f"({sigmas:.1f} standard errors of this measurement)"
        )
    return line


def per_class_table(per_class: Mapping[str, float] | Mapping[str, Mapping[str, float]]) -> str:
    """A fixed-width text table of per-class accuracy (%), one column per run."""
    runs = _runs(per_class, lambda d: all(not isinstance(v, Mapping) for v in d.values()))
    names = list(runs) if len(runs) > 1 or "" not in runs else ["accuracy"]
    classes = list(next(iter(runs.values()), {}))
    width = max([len(n) for n in names] + [8])
    lines = ["class".ljust(12) + "".join(n.rjust(width + 2) for n in names)]
    for c in classes:
        cells = "".join(f"{100 * accs.get(c, float('nan')):.1f}".rjust(width + 2) for accs in runs.values())
        lines.append(c.ljust(12) + cells)
    return "\n".join(lines)


# --- architecture search --------------------------------------------------------------------------
REFERENCE_STYLE = {"original": ("*", MISTAKE), "ResNet-18": ("D", "black")}  # note -> (marker, colour)


def _references(ax, rows: Sequence[Mapping], x: str, y: str, y_scale: float = 1e6, label_spec: bool = True) -> None:
    """Mark the rows with a reference note (the original, ResNet-18) with their own marker, in the legend by note."""
    for row in rows:
        marker, color = REFERENCE_STYLE.get(row.get("note") or "", (None, None))
        if marker:
            point = (row[x] / 1e6, row[y] / y_scale)
            ax.scatter(*point, marker=marker, s=140, color=color, zorder=5, label=row["note"])
            if label_spec:
                ax.annotate(row["spec"], point, textcoords="offset points", xytext=(6, -12), fontsize=7)


def plot_design_map(rows: Sequence[Mapping], *, max_params: float = PARAM_LIMIT, save: str | os.PathLike | None = None) -> Figure:
    """Parameters against multiply-adds per 32x32 image for every shape of a design map (`resnet5m design`).

    rows: dicts with spec, params, macs, front (bool) and note ('original', 'ResNet-18' or ''), as
    design.design_map returns them. The front (most parameters per log-spaced multiply-add bin, see design.py)
    is drawn as a line; the original and ResNet-18 are marked; the dashed line is the parameter budget.
    """
    fig = Figure(figsize=(9, 5.5), layout="constrained")
    if not rows:
        _empty(fig, "no shapes")
        return _finish(fig, save)
    ax = fig.add_subplot()
    macs = np.array([r["macs"] for r in rows]) / 1e6
    params = np.array([r["params"] for r in rows]) / 1e6
    ax.scatter(macs, params, s=2, color="0.7", alpha=0.3, rasterized=True, label=f"{len(rows):,} shapes")
    front = sorted((r for r in rows if r.get("front")), key=lambda r: r["macs"])
    ax.plot([r["macs"] / 1e6 for r in front], [r["params"] / 1e6 for r in front], "o-", color="C0", markersize=4,
            label="front: most parameters per multiply-add bin")  # fmt: skip
    for r in front:
        if r.get("images_per_s"):  # measured with --measure
            ax.annotate(f"{r['images_per_s']:.0f} img/s", (r["macs"] / 1e6, r["params"] / 1e6), textcoords="offset points",
                        xytext=(0, 6), fontsize=7, ha="center", color="C0")  # fmt: skip
    _references(ax, rows, "macs", "params")
    ax.axhline(max_params / 1e6, color="black", linestyle="--", linewidth=1, label=f"budget {max_params / 1e6:g}M")
    ax.set_xscale("log")
    ax.set_xlabel("multiply-adds per 32x32 image (M, log scale)")
    ax.set_ylabel("parameters (M)")
    ax.set_title("ResNet shapes: parameters against compute")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right", fontsize=8)
    return _finish(fig, save)


def plot_sweep(rows: Sequence[Mapping], *, named: int = 3, save: str | os.PathLike | None = None) -> Figure:
    """Validation accuracy against parameters and against multiply-adds for the candidates of `resnet5m sweep`.

    rows: dicts with spec, params, macs, val_acc and note ('original' is highlighted), as sweep.csv holds them.
    Every point is labelled with its rank; the top `named` and the original also with their spec, since a dozen
    full specs in one cluster overprint each other.
    """
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    if not rows:
        _empty(fig, "no candidates trained")
        return _finish(fig, save)
    ranked = sorted(rows, key=lambda r: -r["val_acc"])
    texts = [f"{i}. {r['spec']}" if i <= named or r.get("note") else str(i) for i, r in enumerate(ranked, 1)]
    axes = fig.subplots(1, 2, sharey=True)
    for ax, key, label in zip(axes, ("params", "macs"), ("parameters (M)", "multiply-adds per 32x32 image (M)"), strict=True):
        ax.scatter([r[key] / 1e6 for r in ranked], [100 * r["val_acc"] for r in ranked], color="C0", zorder=3)
        for r, text in zip(ranked, texts, strict=True):
            ax.annotate(text, (r[key] / 1e6, 100 * r["val_acc"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
        _references(ax, rows, key, "val_acc", y_scale=0.01, label_spec=False)  # every point is labelled already
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[1].set_xscale("log")
    axes[0].set_ylabel("validation accuracy (%)")
    if any(r.get("note") for r in rows):
        axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle("sweep: validation accuracy of each candidate (labels: rank)")
    return _finish(fig, save)


# --- calibration ----------------------------------------------------------------------------------
def plot_reliability(
    results: EvalResult | Mapping[str, EvalResult], *, bins: int = ECE_BINS, save: str | os.PathLike | None = None
) -> Figure:
    """Reliability diagram: accuracy against mean confidence per confidence bin, with the share of images in each.

    results: an EvalResult (it keeps each image's confidence), or {label: result} to compare, e.g. before and
    after calibration. A perfectly calibrated model follows the diagonal; bars below it mean overconfidence.
    """
    runs = _runs(results, lambda r: isinstance(r, EvalResult))
    fig = Figure(figsize=(6 + 3 * (len(runs) - 1), 6.5), layout="constrained")
    axes = fig.subplots(2, len(runs), squeeze=False, sharex=True, height_ratios=(3, 1))
    edges = np.linspace(0, 1, bins + 1)
    for col, (label, result) in enumerate(runs.items()):
        if result.confidences is None or result.labels is None:
            raise ValueError("this EvalResult keeps no confidences: make it with evaluate()")
        correct = result.predictions == result.labels
        counts, mean_conf, accuracy = (t.numpy() for t in reliability_bins(result.confidences, correct, bins))
        ax, hist = axes[0, col], axes[1, col]
        filled = counts > 0
        ax.bar(edges[:-1][filled], accuracy[filled], width=1 / bins, align="edge", edgecolor="black", label="accuracy")
        # hatched, not filled: where accuracy exceeds confidence the gap overlaps the accuracy bar, and stays readable
        ax.bar(edges[:-1][filled], (mean_conf - accuracy)[filled], bottom=accuracy[filled], width=1 / bins, align="edge",
               fill=False, hatch="///", edgecolor=MISTAKE, label="gap to mean confidence")  # fmt: skip
        ax.plot([0, 1], [0, 1], "k:", label="perfect calibration")
        name = f"{label}: " if label else ""
        ax.set_title(f"{name}ECE {100 * result.ece:.2f}%, T = {result.temperature:.3g}")
        ax.set_ylabel("accuracy")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.legend(loc="upper left", fontsize=8)
        hist.bar(edges[:-1], counts / max(counts.sum(), 1), width=1 / bins, align="edge", color="gray")
        hist.set_xlabel("confidence (top-1 probability)")
        hist.set_ylabel("share")
    return _finish(fig, save)


# --- robustness -----------------------------------------------------------------------------------
def plot_robustness(result: Mapping | Mapping[str, Mapping], *, save: str | os.PathLike | None = None) -> Figure:
    """Accuracy against severity, one line per corruption, the clean accuracy at severity 0.

    result: what `resnet5m robustness --json` prints (robustness.robustness()), or {label: result} to compare
    weights, one panel each.
    """
    runs = _runs(result, lambda r: "per_corruption" in r)
    fig = Figure(figsize=(6 * len(runs), 4.5), layout="constrained")
    axes = fig.subplots(1, len(runs), squeeze=False, sharey=True)[0]
    for ax, (label, run) in zip(axes, runs.items(), strict=True):
        for i, (name, accs) in enumerate(run["per_corruption"].items()):
            marker = "os^vD<>ph"[i % 9]  # ten corruptions would share colours; markers keep them apart
            ax.plot(range(len(accs) + 1), [100 * run["clean"]] + [100 * a for a in accs], marker=marker, label=name)
        mean = 100 * run["mean_corruption_accuracy"]
        ax.axhline(mean, color="black", linestyle=":", label=f"mean over corruptions {mean:.1f}%")
        ax.set_title(f"{label + ': ' if label else ''}clean {100 * run['clean']:.1f}%")
        ax.set_xlabel("severity (0: clean)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (%)")
    axes[-1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return _finish(fig, save)


# --- Grad-CAM -------------------------------------------------------------------------------------
def plot_gradcam_grid(explained: Explained, classes: Sequence[str] = CLASSES, *, save: str | os.PathLike | None = None) -> Figure:
    """One column per image: the image, its Grad-CAM towards the predicted class, and towards the true class.

    explained: gradcam.explain_mistakes(...) (or any gradcam.Explained); heatmaps are drawn over the image.
    """
    n = len(explained.indices)
    fig = Figure(figsize=(1.5 * max(n, 3), 5), layout="constrained")
    if n == 0:
        _empty(fig, "no images to explain")
        return _finish(fig, save)
    axes = fig.subplots(3, n, squeeze=False)
    pixels = _to_hwc(explained.images)
    for j in range(n):
        pred, true = classes[explained.predictions[j]], classes[explained.labels[j]]
        verdict = MISTAKE if pred != true else CORRECT
        rows = (
            (None, f"#{explained.indices[j]}", "black"),
            (explained.cam_predicted[j], f"pred: {pred}", verdict),
            (explained.cam_true[j], f"true: {true}", "black"),
        )
        for ax, (heat, title, color) in zip(axes[:, j], rows, strict=True):
            ax.imshow(pixels[j], interpolation="nearest")
            if heat is not None:
                ax.imshow(heat, cmap="jet", alpha=0.5, vmin=0, vmax=1, interpolation="bilinear")
            ax.set_title(title, fontsize=7, color=color)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("Grad-CAM: where the network found evidence for the predicted class (middle row) and the true class (bottom)")
    return _finish(fig, save)


def plot_top_k(
    images: ArrayLike,
    probs: ArrayLike,
    names: Sequence[str],
    *,
    k: int = 3,
    classes: Sequence[str] = CLASSES,
    save: str | os.PathLike | None = None,
) -> Figure:
    """Each image (uint8 (N, 3, H, W)) beside bars of its k most likely classes, e.g. for `resnet5m predict` results."""
    images, probs = np.asarray(images), np.asarray(probs)
    fig = Figure(figsize=(6.5, 1.3 * max(len(images), 1)), layout="constrained")
    if not len(images):
        _empty(fig, "no images")
        return _finish(fig, save)
    axes = fig.subplots(len(images), 2, squeeze=False, width_ratios=[1, 3])
    for (ax_image, ax_bars), image, p, name in zip(axes, images, probs, names, strict=True):
        top = np.argsort(p)[::-1][:k]  # most likely first, drawn at the top
        ax_image.imshow(image.transpose(1, 2, 0))
        ax_image.set_axis_off()
        ax_image.set_title(str(name)[-28:], fontsize=7)
        ax_bars.barh(range(len(top))[::-1], p[top], color="tab:blue")
        ax_bars.set_yticks(range(len(top))[::-1], [classes[c] for c in top], fontsize=8)
        ax_bars.set_xlim(0, 1)
        for y, c in zip(range(len(top))[::-1], top, strict=True):
            ax_bars.text(min(p[c] + 0.02, 0.85), y, f"{100 * p[c]:.1f}%", va="center", fontsize=8)
    axes[-1, 1].set_xlabel("probability")
    return _finish(fig, save)
