"""Device selection and mixed precision, shared by training and evaluation."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from .errors import UserError

PRECISIONS = ("auto", "bf16", "fp32")


def pick_device(name: str | None = None) -> torch.device:
    """The requested device, or the best available one: CUDA, then MPS, then CPU."""
    if name in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise UserError(f"unknown device '{name}'; use auto, cpu, cuda, cuda:N or mps") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps was asked for but MPS is not available; use --device cpu or auto")
    return device


def autocast(device: torch.device, precision: str = "auto") -> contextlib.AbstractContextManager:
    """bf16 autocast on CPU and CUDA (the fast path on both); fp32 on MPS or when asked."""
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision '{precision}'; use one of {', '.join(PRECISIONS)}")
    if precision == "fp32" or device.type not in ("cpu", "cuda"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def prepare(model: nn.Module, device: torch.device) -> nn.Module:
    """Move a model to the device in channels_last layout (faster convolutions on CPU and GPU)."""
    return model.to(device=device, memory_format=torch.channels_last)
