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
    """Stage widths, whitening patch size, the scale of the output logits and the convs of each residual branch."""

    widths: tuple[int, ...] = (64, 256, 256)
    patch: int = 2
    logit_scale: float = 0.125
    num_classes: int = 10
    depth: int = 1  # conv-BN-GELU layers in each stage's residual branch (airbench96 uses 2)

    def to_dict(self) -> dict:
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        return {"kind": "fast", **d}

    @classmethod
    def from_dict(cls, d: dict) -> FastConfig:
        num_classes, depth = int(d.get("num_classes", 10)), int(d.get("depth", 1))  # files before `depth`: 1
        return cls(tuple(d["widths"]), int(d["patch"]), float(d["logit_scale"]), num_classes, depth)

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
    """Widen at full size, halve the size, then a residual branch of `depth` convs at the pooled size."""

    def __init__(self, c_in: int, c_out: int, depth: int = 1) -> None:
        super().__init__()
        self.conv = identity_conv(c_in, c_out)
        self.bn = shift_only_bn(c_out)
        # One conv is a bare ConvBN, so the fast net's state-dict keys (residual.conv, residual.bn) stay as shipped.
        self.residual = ConvBN(c_out, c_out) if depth == 1 else nn.Sequential(*(ConvBN(c_out, c_out) for _ in range(depth)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.bn(F.max_pool2d(self.conv(x), 2)))  # (B, C, H/2, W/2)
        return x + self.residual(x)


def whitening_conv(patch: int) -> nn.Conv2d:
    """A fixed patch x patch convolution that whitens image patches: 2 * 3 * patch**2 output channels.

    Its filters, set by `fit_whitening`, are never trained (requires_grad off); its bias is learned. A plain
    nn.Conv2d, not a subclass or a functional conv: int8 export (FX quantization) quantizes torch.nn modules
    as modules, whereas it traces into anything else and leaves packed weights that a weights-only file cannot hold.
    """
    conv = nn.Conv2d(3, 2 * 3 * patch * patch, patch)
    conv.weight.requires_grad_(False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
    return conv


@torch.no_grad()
def fit_whitening(conv: nn.Conv2d, images: torch.Tensor, eps: float = 5e-4) -> None:
    """Set the whitening filters from normalized float images (N, 3, H, W) on any device.

    The filters are the eigenvectors of the training patches' covariance, each scaled by 1/sqrt of its
    eigenvalue, plus their negatives (so the GELU after it drops no direction). The fit runs on the CPU in
    float64 (MPS has no float64, and eigh there is unsupported), then the filters move to the conv's device.
    """
    p = conv.kernel_size[0]
    patches = images.detach().to("cpu", torch.float64).unfold(2, p, 1).unfold(3, p, 1)  # (N, 3, H-p+1, W-p+1, p, p)
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, 3 * p * p)  # rows in conv-weight order
    cov = patches.T @ patches / len(patches)
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)
    filters = (eigenvectors.T / (eigenvalues + eps).sqrt()[:, None]).reshape(-1, 3, p, p)
    conv.weight.copy_(torch.cat([filters, -filters]).to(conv.weight))


class FastNet(nn.Module):
    """Whitening -> pooled residual stages -> global max-pool -> scaled linear."""

    def __init__(self, config: FastConfig) -> None:
        super().__init__()
        self.config = config
        self.whiten = whitening_conv(config.patch)
        widths = (self.whiten.bias.numel(), *config.widths)
        self.stages = nn.Sequential(*[PoolStage(a, b, config.depth) for a, b in zip(widths[:-1], widths[1:], strict=True)])
        self.linear = nn.Linear(widths[-1], config.num_classes, bias=False)

    def fit_to_data(self, images: torch.Tensor) -> None:
        """Data-dependent initialisation from normalized training images: the whitening filters."""
        fit_whitening(self.whiten, images)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, 3, H, W) -> logits (B, num_classes); H, W >= 2 ** len(widths) + patch - 1.
        # The small logit scale keeps early high-learning-rate steps from saturating the softmax.
        # Global max-pool as max_pool2d, not amax: compiled amax backward under bf16/fp16 autocast gives NaN
        # gradients (torch 2.14 Inductor; pytorch/pytorch#186799). Same forward; ties send their gradient to one input.
        out = F.adaptive_max_pool2d(self.stages(F.gelu(self.whiten(x))), 1).flatten(1)  # (B, C)
        return self.linear(out) * self.config.logit_scale
