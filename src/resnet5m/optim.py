"""The optimizer of a run and its learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import TrainConfig
from .muon import Muon


def lr_factor(step: int, total: int, warmup: int, schedule: str, start: float = 0.0, end: float = 0.0) -> float:
    """Multiplier of the peak learning rate at step 0..total-1: linear warmup from exactly `start` at step 0
    to the peak at step `warmup`, then linear or cosine decay to exactly `end` at the last step (total - 1)."""
    if step < warmup:
        return start + (1 - start) * step / warmup
    progress = min((step - warmup) / max(total - 1 - warmup, 1), 1.0)
    remaining = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress  # 1 -> 0
    return end + (1 - end) * remaining


def batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer of a model."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Nesterov SGD over the trainable tensors: weight decay on weights only (not on 1-d BatchNorm
    scales and biases), and BatchNorm biases at lr * bn_bias_lr_scale. With --optimizer muon the conv
    filters form a Muon group of their own (muon.py)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    # A third group only when its lr differs, so checkpoints of two-group runs still resume.
    scaled = set()
    if cfg.bn_bias_lr_scale != 1.0:
        scaled = {id(m.bias) for m in batchnorms(model)}
    filters = [p for p in trainable if p.ndim == 4] if cfg.optimizer == "muon" else []
    muon = {id(p) for p in filters}
    groups = [
        {"params": [p for p in trainable if p.ndim > 1 and id(p) not in muon], "weight_decay": cfg.weight_decay},
        {"params": [p for p in trainable if p.ndim <= 1 and id(p) not in scaled], "weight_decay": 0.0},
    ]
    if scaled:
        bn_biases = [p for p in trainable if id(p) in scaled]
        groups.append({"params": bn_biases, "weight_decay": 0.0, "lr": cfg.lr * cfg.bn_bias_lr_scale})
    if not filters:
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    groups.append({"params": filters, "orthogonal": True, "lr": cfg.muon_lr, "momentum": cfg.muon_momentum})
    return Muon(groups, lr=cfg.lr, momentum=cfg.momentum)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The per-step schedule of cfg: warmup over cfg.warmup_epochs, then decay to cfg.lr_end at the last step."""
    total, warmup = steps_per_epoch * cfg.epochs, round(cfg.warmup_epochs * steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, warmup, cfg.schedule, cfg.lr_start, cfg.lr_end)
    )
