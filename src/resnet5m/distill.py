"""Knowledge distillation: a trained teacher's softened predictions as a second target for the student.

loss = (1 - a) * CE(student, labels; label smoothing) + a * T^2 * KL(softmax(teacher / T) || softmax(student / T))

(Hinton, Vinyals and Dean, 2015). T^2 keeps the soft term's gradients on the scale of the hard term's as T grows.
The teacher sees the student's own augmented batch, in eval mode, without gradients, under the same autocast;
or, with --kd-cache, each training image and its mirror image once, before training (`Teacher.cached_logits`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .data import model_input
from .errors import UserError
from .model import ResNet, fold_batchnorm
from .runtime import autocast, prepare
from .weights import LoadedModel, load_any


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor | None, labels: torch.Tensor, *, weight: float, temperature: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:  # fmt: skip
    """The batch-mean loss above for fp32 logits (B, classes); without a teacher (or at weight 0) the plain CE."""
    hard = F.cross_entropy(student, labels, label_smoothing=label_smoothing)
    if teacher is None or weight == 0:
        return hard
    t = temperature
    soft = F.kl_div(F.log_softmax(student / t, 1), F.log_softmax(teacher.float() / t, 1), reduction="batchmean", log_target=True)
    return (1 - weight) * hard + weight * t * t * soft


class Teacher(nn.Module):
    """A trained network, or an ensemble of them, from weights files `evaluate` reads, frozen in eval mode.

    paths: one file, or several joined by commas, whose logits are averaged (an ensemble of the
    members). sha256 is the file's, or the members' joined by commas.
    """

    def __init__(self, paths: str | os.PathLike, device: torch.device) -> None:
        super().__init__()
        files = [p.strip() for p in str(paths).split(",") if p.strip()]
        if not files:
            raise UserError("--teacher is empty; give the weights file of a trained network")
        members = [_member(path, device) for path in files]
        self.nets = nn.ModuleList(net for net, _ in members)
        self.sha256 = ",".join(loaded.sha256 for _, loaded in members)
        self.metas = [loaded.meta for _, loaded in members]  # what each file records (its training split, ...)

    @torch.no_grad()  # not inference_mode: the logits are a target that the loss's backward keeps
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.nets) == 1:
            return self.nets[0](x)
        return torch.stack([net(x).float() for net in self.nets]).mean(0)  # in fp32: bf16 would round the mean

    def train(self, mode: bool = True) -> Teacher:  # noqa: ARG002 - always eval: its BN statistics are part of it
        return super().train(False)

    @torch.no_grad()
    def cached_logits(self, images: torch.Tensor, precision: str, batch_size: int = 500) -> torch.Tensor:
        """fp32 logits (N, 2, classes) of uint8 images (N, 3, 32, 32): [:, 0] as they are, [:, 1] mirrored.

        The targets of --kd-cache: a step looks up its images' row by flip and skips the teacher's forward pass. Crops
        and cutout are not seen: the teacher's answer for the whole image stands in for each crop's.
        """
        device = next(self.parameters()).device
        rows = []
        for chunk in images.split(batch_size):
            x = model_input(chunk.to(device), 32)
            with autocast(device, precision):
                rows.append(torch.stack([self(x), self(x.flip(3))], 1).float())
        return torch.cat(rows)


def _member(path: str, device: torch.device) -> tuple[nn.Module, LoadedModel]:
    """(the frozen eval-mode network of one teacher file on the device, the file as loaded)."""
    if not Path(path).is_file():  # said here: load_any's own message would point at --weights
        raise UserError(f"--teacher {path}: no such file; give the weights file of a trained network")
    loaded = load_any(path)
    if loaded.cpu_only and device.type != "cpu":
        raise UserError(f"teacher {path} is a {loaded.format} model, which runs on the CPU only; "
                        "give an fp32 or fp16 weights file as --teacher")  # fmt: skip
    net = loaded.model.eval()
    # BatchNorm folded into the convs: the same eval-mode numerics, about 14% faster on the CPU.
    return prepare(fold_batchnorm(net) if isinstance(net, ResNet) else net, device).requires_grad_(False), loaded
