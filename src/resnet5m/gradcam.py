"""Grad-CAM heatmaps (Selvaraju et al., 2017): which pixels pushed the network towards a class.

Computed by the `grad-cam` package (pytorch_grad_cam; `pip install 'resnet5m[explain]'`) at the last
feature map before global pooling: the seed ResNet's last BasicBlock, the fast net's last stage. Eager
weights only: TorchScript, ONNX and int8 graphs have no module hooks or gradients to read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .data import model_input
from .errors import UserError
from .fastnet import FastNet
from .model import ResNet

EXPLAIN_HINT = "pip install grad-cam (or pip install 'resnet5m[explain]')"


def target_layer(model: nn.Module) -> nn.Module:
    """The last feature map before global pooling: a ResNet's last BasicBlock, a fast net's last stage."""
    if isinstance(model, ResNet):
        return getattr(model, f"layer{len(model.config.blocks)}")[-1]
    if isinstance(model, FastNet):
        return model.stages[-1]
    raise UserError(f"Grad-CAM needs an eager resnet5m network (from a .pt file), not a {type(model).__name__}")


def gradcam(model: nn.Module, images: torch.Tensor, classes: Sequence[int], device: torch.device | str = "cpu") -> np.ndarray:
    """Heatmaps (N, 32, 32) in [0, 1] of uint8 images (N, 3, 32, 32), each for its entry of classes, computed in fp32."""
    try:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError as e:
        raise UserError(f"Grad-CAM needs the grad-cam package: {EXPLAIN_HINT}") from e
    was_training = model.training
    model.eval()
    x = model_input(images.to(device)).contiguous()
    targets = [ClassifierOutputTarget(int(c)) for c in classes]
    try:
        with torch.enable_grad(), GradCAM(model=model, target_layers=[target_layer(model)]) as cam:
            return cam(input_tensor=x, targets=targets)
    finally:
        model.train(was_training)


def overlay(image: torch.Tensor | np.ndarray, heat: np.ndarray, scale: int = 8) -> np.ndarray:
    """A heatmap (H, W) in [0, 1] over a uint8 image (3, H, W): uint8 RGB (H*scale, W*scale, 3).

    Drawn as plots.plot_gradcam_grid draws it: the pixels enlarged as blocks, the heatmap smooth, jet at half opacity.
    """
    from matplotlib import colormaps

    pixels = torch.as_tensor(np.asarray(image)).permute(1, 2, 0).float() / 255
    pixels = pixels.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    size = (heat.shape[0] * scale, heat.shape[1] * scale)
    smooth = torch.nn.functional.interpolate(torch.as_tensor(heat, dtype=torch.float32)[None, None], size=size, mode="bilinear")
    colours = torch.from_numpy(colormaps["jet"](smooth[0, 0].clamp(0, 1).numpy())[..., :3]).float()
    return (255 * (0.5 * pixels + 0.5 * colours)).round().byte().numpy()


@dataclass
class Explained:
    """Heatmaps for chosen images: towards the predicted class and towards the true one."""

    indices: np.ndarray  # positions in the evaluated images
    images: np.ndarray  # uint8 (n, 3, 32, 32)
    labels: np.ndarray
    predictions: np.ndarray
    cam_predicted: np.ndarray  # (n, 32, 32) in [0, 1]
    cam_true: np.ndarray


def explain_mistakes(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    predictions: torch.Tensor,
    *,
    n: int = 8,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> Explained:
    """Grad-CAM of a seeded sample of n misclassified images, for the predicted and for the true class."""
    wrong = torch.nonzero(predictions.cpu() != labels.cpu()).flatten().numpy()
    chosen = np.sort(np.random.default_rng(seed).permutation(wrong)[:n])
    picked = images[chosen]
    true, pred = labels.cpu()[chosen].numpy(), predictions.cpu()[chosen].numpy()
    if not len(chosen):
        empty = np.zeros((0, *images.shape[-2:]), dtype=np.float32)
        return Explained(chosen, picked.numpy(), true, pred, empty, empty)
    cam_pred, cam_true = (gradcam(model, picked, classes.tolist(), device) for classes in (pred, true))
    return Explained(chosen, picked.numpy(), true, pred, cam_pred, cam_true)
