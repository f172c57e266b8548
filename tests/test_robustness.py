"""Corruptions (robustness.py): shapes, determinism, severity; `resnet5m robustness --json`; the robustness plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from matplotlib.figure import Figure

from resnet5m import plots
from resnet5m.cli import main
from resnet5m.model import build_model
from resnet5m.robustness import CORRUPTIONS, SEVERITIES, corrupt, table
from resnet5m.weights import save_weights

REQUIRED = {"gaussian_noise", "gaussian_blur", "jpeg", "contrast", "brightness", "pixelate", "rotate"}


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    smooth = torch.rand(6, 3, 8, 8, generator=g).repeat_interleave(4, 2).repeat_interleave(4, 3)  # blocks: blur and JPEG show
    return (smooth * 255).to(torch.uint8)


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_each_corruption_keeps_shape_is_deterministic_and_grows_with_severity(name: str, images: torch.Tensor) -> None:
    state = torch.get_rng_state()
    outputs = [corrupt(images, name, s) for s in range(1, SEVERITIES + 1)]
    assert torch.equal(torch.get_rng_state(), state)  # seeded noise leaves the caller's generator alone
    assert all(o.shape == images.shape and o.dtype == torch.uint8 for o in outputs)
    assert torch.equal(corrupt(images, name, 3), outputs[2])
    change = [(o.float() - images.float()).abs().mean().item() for o in outputs]
    assert change[0] > 0 and change[-1] > change[0]


def test_the_required_corruptions_are_there() -> None:
    assert set(CORRUPTIONS) >= REQUIRED and all(len(levels) == SEVERITIES for _, levels in CORRUPTIONS.values())


def test_robustness_command_json(cifar_dir: Path, tmp_path: Path, capsys) -> None:
    torch.manual_seed(0)
    save_weights(tmp_path / "tiny.pt", build_model("tiny"), "tiny")
    argv = ["robustness", "--weights", str(tmp_path / "tiny.pt"), "--data-dir", str(cifar_dir), "--limit", "16"]
    assert main([*argv, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"clean", "mean_corruption_accuracy", "per_corruption"} <= set(result) and result["n"] == 16
    assert set(result["per_corruption"]) == set(CORRUPTIONS)
    assert all(len(accs) == SEVERITIES and all(0 <= a <= 1 for a in accs) for accs in result["per_corruption"].values())
    flat = [a for accs in result["per_corruption"].values() for a in accs]
    assert result["mean_corruption_accuracy"] == pytest.approx(sum(flat) / len(flat))
    lines = table(result).splitlines()
    assert lines[0].split() == ["corruption", "1", "2", "3", "4", "5", "mean"] and lines[-1].startswith("all corruptions")
    assert len(lines) == len(CORRUPTIONS) + 3  # header, clean, one per corruption, the overall mean

    fig = plots.plot_robustness({"tiny": result, "again": result}, save=tmp_path / "robustness.png")
    assert isinstance(fig, Figure) and (tmp_path / "robustness.png").read_bytes()[:4] == b"\x89PNG"
    assert len(fig.axes[0].lines) == len(CORRUPTIONS) + 1  # one per corruption and the mean
    assert len(plots.plot_robustness(result).axes) == 1
