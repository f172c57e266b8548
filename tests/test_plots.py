"""Every plot returns a Figure and writes a PNG when asked; text summaries say what they should."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from resnet5m import plots
from resnet5m.data import CLASSES
from resnet5m.evaluate import EvalResult

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_history(epochs: int = 4, val: bool = True) -> list[dict]:
    rows = []
    for e in range(1, epochs + 1):
        row = {"epoch": e, "train_loss": 2.0 / e, "train_acc": 0.2 * e / epochs + 0.5, "lr": 0.1, "size": 32}
        row.update(seconds=1.0, images_per_s=100.0)
        if val:
            row.update(val_loss=2.2 / e, val_acc=0.18 * e / epochs + 0.5)
        rows.append(row)
    return rows


@pytest.fixture
def confusion() -> np.ndarray:
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 6, (10, 10))
    counts[np.arange(10), np.arange(10)] = 80
    counts[3, 5] = 30  # cat -> dog, the largest mistake
    return counts


@pytest.fixture
def per_class() -> dict[str, float]:
    return {c: 0.8 + 0.01 * i for i, c in enumerate(CLASSES)}


def assert_png(path: Path) -> None:
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_training_curves_single_run(tmp_path: Path) -> None:
    fig = plots.plot_training_curves(make_history(), save=tmp_path / "sub" / "curves.png")
    assert isinstance(fig, Figure)
    assert_png(tmp_path / "sub" / "curves.png")
    loss_ax, acc_ax = fig.axes
    assert len(loss_ax.lines) == 2 and len(acc_ax.lines) == 2  # train and val
    assert acc_ax.lines[0].get_ydata()[-1] == pytest.approx(70.0)  # fractions drawn as percent


def test_training_curves_without_val_and_compare_runs() -> None:
    fig = plots.plot_training_curves({"shipped": make_history(), "new": make_history(2, val=False)})
    loss_ax, _ = fig.axes
    assert len(loss_ax.lines) == 3
    assert {t.get_text() for t in loss_ax.get_legend().get_texts()} == {"shipped train", "shipped val", "new train"}


def test_training_curves_empty_history(tmp_path: Path) -> None:
    fig = plots.plot_training_curves([], save=tmp_path / "empty.png")
    assert isinstance(fig, Figure)
    assert_png(tmp_path / "empty.png")
    assert "no training history" in fig.axes[0].texts[0].get_text()


def test_no_png_without_save(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, confusion: np.ndarray) -> None:
    monkeypatch.chdir(tmp_path)
    plots.plot_confusion_matrix(confusion)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("normalize", [True, False])
def test_confusion_matrix(tmp_path: Path, confusion: np.ndarray, normalize: bool) -> None:
    fig = plots.plot_confusion_matrix(confusion.tolist(), normalize=normalize, save=tmp_path / "cm.png")
    assert isinstance(fig, Figure)
    assert_png(tmp_path / "cm.png")
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert len(texts) == 100 and texts[3 * 10 + 5] == "30"


def test_top_confusions(confusion: np.ndarray) -> None:
    pairs = plots.top_confusions(confusion, k=3)
    assert pairs[0] == ("cat", "dog", 30)
    assert len(pairs) == 3 and all(t != p for t, p, _ in pairs)
    assert plots.top_confusions(np.eye(10, dtype=int) * 5) == []  # no mistakes, no pairs


def test_plot_top_confusions(tmp_path: Path, confusion: np.ndarray) -> None:
    fig = plots.plot_top_confusions(confusion, k=5, save=tmp_path / "top.png")
    assert isinstance(fig, Figure)
    assert_png(tmp_path / "top.png")
    assert fig.axes[0].get_yticklabels()[0].get_text() == "cat → dog"
    assert isinstance(plots.plot_top_confusions(np.eye(10) * 5), Figure)


def test_per_class_accuracy(tmp_path: Path, per_class: dict[str, float]) -> None:
    fig = plots.plot_per_class_accuracy(per_class, reference=plots.ORIGINAL_ACCURACY, save=tmp_path / "pc.png")
    assert isinstance(fig, Figure)
    assert_png(tmp_path / "pc.png")
    assert len(fig.axes[0].patches) == 10


def test_per_class_accuracy_compare_runs(per_class: dict[str, float]) -> None:
    other = {c: v - 0.1 for c, v in per_class.items()}
    fig = plots.plot_per_class_accuracy({"shipped": per_class, "new": other})
    assert len(fig.axes[0].patches) == 20


def test_predictions_grid(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (50, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.arange(50) % 10
    predictions = labels.clone()
    predictions[:5] = (labels[:5] + 1) % 10  # five mistakes
    fig = plots.plot_predictions(images, labels, predictions, n=16, save=tmp_path / "grid.png")
    assert isinstance(fig, Figure)
    assert_png(tmp_path / "grid.png")
    assert len(fig.axes) == 16
    mistakes = plots.plot_predictions(images.numpy(), labels.numpy(), predictions.numpy(), only_mistakes=True)
    titles = [ax.get_title() for ax in mistakes.axes if ax.get_title()]
    assert len(titles) == 5
    assert all(ax.title.get_color() == plots.MISTAKE for ax in mistakes.axes if ax.get_title())


def test_predictions_grid_without_mistakes() -> None:
    labels = np.arange(10)
    fig = plots.plot_predictions(np.zeros((10, 3, 32, 32), np.uint8), labels, labels, only_mistakes=True)
    assert "no mistakes" in fig.axes[0].texts[0].get_text()


def make_result(accuracy: float, n: int) -> EvalResult:
    return EvalResult(accuracy, 0.5, n, {c: accuracy for c in CLASSES}, [], torch.zeros(n), 1.0, True)


def test_accuracy_summary() -> None:
    text = plots.accuracy_summary(make_result(0.93, 1017))
    assert "93.00% ± 0.80" in text and "1,017 images" in text and "flip TTA" in text
    assert "92.94%" in text and "+0.06 points" in text
    assert "original" not in plots.accuracy_summary(make_result(0.9, 100), reference=None)


def test_per_class_table(per_class: dict[str, float]) -> None:
    table = plots.per_class_table(per_class).splitlines()
    assert len(table) == 11 and table[1].split() == ["airplane", "80.0"]
    two = plots.per_class_table({"shipped": per_class, "new": per_class}).splitlines()
    assert two[0].split() == ["class", "shipped", "new"] and two[-1].split() == ["truck", "89.0", "89.0"]


def test_top_k_bars_show_each_image_and_its_most_likely_classes(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    probs = np.full((3, 10), 0.02)
    probs[:, 3] = 0.82  # cat first for every image
    fig = plots.plot_top_k(images, probs, ["a.png", "b.png", "c.png"], k=3, save=tmp_path / "top.png")
    bars = fig.axes[1]
    top = max(bars.get_yticklabels(), key=lambda t: t.get_position()[1])  # the bar drawn highest
    assert top.get_text() == "cat" and len(bars.patches) == 3
    assert (tmp_path / "top.png").stat().st_size > 0
    assert len(plots.plot_top_k(images[:0], probs[:0], []).axes) == 1  # the empty case says so
