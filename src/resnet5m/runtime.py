"""Device selection and mixed precision, shared by training and evaluation."""

from __future__ import annotations

import contextlib
import os

import torch
from torch import nn

from .errors import UserError

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def local_rank() -> int | None:
    """The process's GPU slot on its machine under torchrun (LOCAL_RANK), else None."""
    value = os.environ.get("LOCAL_RANK")
    return int(value) if value not in (None, "") else None


def pick_device(name: str | None = None) -> torch.device:
    """The requested device, or the best available one: CUDA, then MPS, then CPU.

    Under torchrun a bare `cuda` (or auto on a CUDA machine) becomes cuda:$LOCAL_RANK, and that card is
    made current, so K ranks on one machine use K cards instead of all sharing cuda:0.
    """
    if name in (None, "", "auto"):
        if torch.cuda.is_available():
            return bind_rank(torch.device("cuda"))
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
    return bind_rank(device) if device.type == "cuda" else device


def bind_rank(device: torch.device) -> torch.device:
    """cuda -> cuda:$LOCAL_RANK under torchrun (an explicit index is kept), made the current card."""
    rank = local_rank()
    if device.index is None and rank is not None:
        if rank >= torch.cuda.device_count():
            raise UserError(
                f"LOCAL_RANK {rank} but only {torch.cuda.device_count()} CUDA GPU(s) are visible; "
                "start torchrun with --nproc_per_node at most the number of GPUs"
            )
        device = torch.device("cuda", rank)
    if device.index is not None:
        torch.cuda.set_device(device)
    return device


def native_bf16(device: torch.device) -> bool:
    """True where bf16 runs natively: the CPU (AVX-512/AMX or emulated cheaply) and CUDA cards of compute capability >= 8.0."""
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    return False


def resolve_precision(device: torch.device, precision: str = "auto") -> str:
    """The precision a run uses on a device: an explicit choice as given; auto picks per device.

    auto: bf16 on the CPU and on CUDA cards with native bf16 (Ampere and newer: A100, L4, H100); fp16 with
    loss scaling on older CUDA cards (Colab's T4, V100, P100), whose bf16 is emulated or refused; fp32 on MPS.
    """
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision '{precision}'; use one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if native_bf16(device) else "fp16"
    return "bf16" if device.type == "cpu" else "fp32"


def autocast(device: torch.device, precision: str = "auto") -> contextlib.AbstractContextManager:
    """The autocast context of the resolved precision (none for fp32)."""
    resolved = resolve_precision(device, precision)
    if resolved == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[resolved])


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """A loss scaler for fp16 training (its small exponent range underflows small gradients); None otherwise."""
    if resolve_precision(device, precision) != "fp16":
        return None
    return torch.amp.GradScaler(device.type)


def prepare(model: nn.Module, device: torch.device) -> nn.Module:
    """Move a model to the device in channels_last layout (faster convolutions on CPU and GPU)."""
    return model.to(device=device, memory_format=torch.channels_last)
