"""Grad-CAM (gradcam.py) on the tiny and fast nets, and the overlay grid of mistakes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from resnet5m import gradcam, plots
from resnet5m.errors import UserError
from resnet5m.model import build_model

pytest.importorskip("pytorch_grad_cam")


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_target_layers() -> None:
    tiny, fast = build_model("tiny"), build_model("fast")
    assert gradcam.target_layer(tiny) is tiny.layer3[-1]
    assert gradcam.target_layer(fast) is fast.stages[-1]
    with pytest.raises(UserError, match="eager resnet5m network"):
        gradcam.target_layer(torch.nn.Linear(3, 10))


@pytest.mark.parametrize("arch", ["tiny", "fast"])
def test_heatmaps_have_the_image_size_and_range(arch: str, images: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = build_model(arch).train()
    if arch == "fast":
        model.fit_to_data(torch.randn(64, 3, 32, 32))  # unfitted whitening filters are zero: every map would be flat
    before = {k: v.clone() for k, v in model.state_dict().items()}
    heat = gradcam.gradcam(model, images, [0, 1, 2, 3, 4, 5])
    assert heat.shape == (6, 32, 32) and heat.min() >= 0 and heat.max() <= 1 and heat.max() > 0
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # left as found
    assert not np.allclose(heat, gradcam.gradcam(model, images, [9] * 6))  # another class, another map


def test_explain_mistakes_and_the_grid(images: torch.Tensor, tmp_path: Path) -> None:
    model = build_model("tiny")
    labels = torch.arange(6)
    predictions = torch.tensor([0, 2, 2, 5, 4, 1])  # mistakes at 1, 3 and 5
    explained = gradcam.explain_mistakes(model, images, labels, predictions, n=2)
    assert len(explained.indices) == 2 and set(explained.indices) <= {1, 3, 5}
    assert explained.cam_predicted.shape == explained.cam_true.shape == (2, 32, 32)
    assert (explained.predictions != explained.labels).all()
    fig = plots.plot_gradcam_grid(explained, save=tmp_path / "cam.png")
    assert isinstance(fig, Figure) and (tmp_path / "cam.png").read_bytes()[:4] == b"\x89PNG"
    assert len(fig.axes) == 6 and fig.axes[2].get_title().startswith("pred: ")  # row by row: images, then predicted
    none = gradcam.explain_mistakes(model, images, labels, labels)
    assert "no images" in plots.plot_gradcam_grid(none).axes[0].texts[0].get_text()
