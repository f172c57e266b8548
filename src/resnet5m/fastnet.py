"""`fast`: a residual network shaped for few multiply-adds per image (CPU training speed).

A fixed 2x2 patch-whitening convolution (its filters computed from the training images, not
learned) decorrelates the input; then each stage is conv3x3 -> 2x2 max-pool -> BN -> GELU, plus a
residual conv3x3-BN-GELU at the pooled size. Pooling right after the widening conv (as in the
public CIFAR-10 speed-run networks) runs the costlier convolutions at a quarter of the pixels; a
global max-pool and a bias-free linear layer, scaled down, make the head.

Two choices from those speed runs (Keller Jordan's airbench ablations) shorten training: every conv
starts as an identity map on the channels it can (dirac init), so the untrained net passes its input
through; and BatchNorm learns only its shift (the scale stays 1, which the conv weights can absorb),
which pairs with a larger learning rate for those shifts (`TrainConfig.bn_bias_lr_scale`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class FastConfig:
    """Stage widths, whitening patch size and the scale of the output logits."""

    widths: tuple[int, ...] = (64, 256, 256)
    patch: int = 2
    logit_scale: float = 0.125
    num_classes: int = 10

    def to_dict(self) -> dict:
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        return {"kind": "fast", **d}

    @classmethod
    def from_dict(cls, d: dict) -> FastConfig:
        return cls(tuple(d["widths"]), int(d["patch"]), float(d["logit_scale"]), int(d.get("num_classes", 10)))

    def build(self) -> FastNet:
        return FastNet(self)


def identity_conv(c_in: int, c_out: int) -> nn.Conv2d:
    """conv3x3 without bias (BN follows) whose first min(c_in, c_out) filters start as the identity."""
    conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
    with torch.no_grad():
        nn.init.dirac_(conv.weight[: min(c_in, c_out), :])
    return conv


def shift_only_bn(c: int) -> nn.BatchNorm2d:
    """BatchNorm whose scale is frozen at 1: only the shift (bias) is learned."""
    bn = nn.BatchNorm2d(c)
    bn.weight.requires_grad_(False)
    return bn


class ConvBN(nn.Module):
    """conv3x3 -> BN -> GELU."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = identity_conv(c_in, c_out)
        self.bn = shift_only_bn(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.bn(self.conv(x)))


class PoolStage(nn.Module):
    """Widen at full size, halve the size, then one residual conv at the pooled size."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = identity_conv(c_in, c_out)
        self.bn = shift_only_bn(c_out)
        self.residual = ConvBN(c_out, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.bn(F.max_pool2d(self.conv(x), 2)))  # (B, C, H/2, W/2)
        return x + self.residual(x)


class Whiten(nn.Module):
    """A fixed patch x patch convolution that whitens image patches: 2 * 3 * patch**2 output channels.

    The filters are the eigenvectors of the training patches' covariance, each scaled by 1/sqrt of its
    eigenvalue, plus their negatives (so the GELU after it drops no direction). They are a buffer:
    set once from data by `fit`, saved and loaded with the weights, never trained. The bias is learned.
    """

    def __init__(self, patch: int) -> None:
        super().__init__()
        d = 3 * patch * patch
        self.patch = patch
        self.register_buffer("weight", torch.zeros(2 * d, 3, patch, patch))
        self.bias = nn.Parameter(torch.zeros(2 * d))

    @torch.no_grad()
    def fit(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the filters from normalized float images (N, 3, H, W) on any device.

        The fit runs on the CPU in float64 (MPS has no float64, and eigh there is unsupported), then the
        filters move to this layer's device and dtype.
        """
        p = self.patch
        patches = images.detach().to("cpu", torch.float64).unfold(2, p, 1).unfold(3, p, 1)  # (N, 3, H-p+1, W-p+1, p, p)
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, 3 * p * p)  # rows in conv-weight order
        cov = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)
        filters = (eigenvectors.T / (eigenvalues + eps).sqrt()[:, None]).reshape(-1, 3, p, p)
        self.weight.copy_(torch.cat([filters, -filters]).to(self.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias)


class FastNet(nn.Module):
    """Whitening -> pooled residual stages -> global max-pool -> scaled linear."""

    def __init__(self, config: FastConfig) -> None:
        super().__init__()
        self.config = config
        self.whiten = Whiten(config.patch)
        widths = (self.whiten.bias.numel(), *config.widths)
        self.stages = nn.Sequential(*[PoolStage(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)])
        self.linear = nn.Linear(widths[-1], config.num_classes, bias=False)

    def fit_to_data(self, images: torch.Tensor) -> None:
        """Data-dependent initialisation from normalized training images: the whitening filters."""
        self.whiten.fit(images)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, 3, H, W) -> logits (B, num_classes); H, W >= 2 ** len(widths) + patch - 1.
        # The small logit scale keeps early high-learning-rate steps from saturating the softmax.
        # Global max-pool as max_pool2d, not amax: compiled amax backward under bf16/fp16 autocast gives NaN
        # gradients (torch 2.14 Inductor; pytorch/pytorch#186799). Same forward; ties send their gradient to one input.
        out = F.adaptive_max_pool2d(self.stages(F.gelu(self.whiten(x))), 1).flatten(1)  # (B, C)
        return self.linear(out) * self.config.logit_scale
