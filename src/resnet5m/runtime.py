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


# oneDNN's instruction-set limits (ONEDNN_MAX_CPU_ISA, or its older name DNNL_MAX_CPU_ISA) that still allow native
# bf16 kernels: AVX512_CORE_BF16 and every level above it. Below it (AVX2, AVX512_CORE, ...) bf16 is emulated.
BF16_ISA_LIMITS = {
    "ALL", "DEFAULT", "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX10_1_512", "AVX512_CORE_AMX", "AVX10_1_512_AMX",
    "AVX512_CORE_AMX_FP16", "AVX10_1_512_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2",
}  # fmt: skip


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 dot-product instructions (AVX512-BF16 or AMX-BF16), from torch's cpuinfo probe.

    torch.ops.mkldnn._is_mkldnn_bf16_supported() is no test: it also answers True on plain AVX-512, where oneDNN
    emulates bf16 at about half the fp32 speed. Read from /proc/cpuinfo where torch lacks the probe.
    """
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if all(probe is not None for probe in probes):
        return any(probe() for probe in probes)
    try:
        flags = set(open("/proc/cpuinfo").read().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def onednn_isa_limit() -> str | None:
    """The instruction-set limit oneDNN was given through the environment, upper-cased; None when unset."""
    value = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    return value.strip().upper() if value else None


def cpu_precision() -> tuple[str, str]:
    """(precision, reason) that auto picks on the CPU: bf16 only where it runs natively, else fp32.

    Decided from the CPU's flags plus oneDNN's limit rather than by timing two convolutions: it costs nothing,
    gives the same answer every run (a timing on a busy 2-core machine would not), and can be tested.
    Measured on an AVX512-BF16 host with the limit lowered (docs/results.md): emulated bf16 ran at 0.3-0.5x fp32.
    """
    if not cpu_has_native_bf16():
        return "fp32", "this CPU has no native bf16 (bf16 would be emulated and slower)"
    limit = onednn_isa_limit()
    if limit is not None and limit not in BF16_ISA_LIMITS:
        return "fp32", f"ONEDNN_MAX_CPU_ISA={limit} keeps oneDNN below its native bf16 kernels"
    return "bf16", "this CPU has native bf16"


def auto_precision(device: torch.device) -> tuple[str, str]:
    """(precision, reason) that auto picks on a device."""
    if device.type == "cpu":
        return cpu_precision()
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if major >= 8:
            return "bf16", f"this card has native bf16 (compute capability {major}.{minor})"
        return "fp16", f"this card has no native bf16 (compute capability {major}.{minor}): fp16 with loss scaling"
    return "fp32", f"{device.type} trains in fp32"


def resolve_precision(device: torch.device, precision: str = "auto") -> str:
    """The precision a run uses on a device: an explicit choice as given; auto picks per device.

    auto: bf16 on CPUs with native bf16 (AVX512-BF16, AMX) and on CUDA cards with native bf16 (Ampere and newer:
    A100, L4, H100); fp16 with loss scaling on older CUDA cards (Colab's T4, V100, P100), whose bf16 is emulated or
    refused; fp32 on other CPUs and on MPS.
    """
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision '{precision}'; use one of {', '.join(PRECISIONS)}")
    return precision if precision != "auto" else auto_precision(device)[0]


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


def configure_cuda(deterministic: bool) -> None:
    """cuDNN's kernel choice: autotuned for speed, or deterministic so that a resumed run is bitwise the straight one.

    Autotuning (benchmark) may pick a different kernel in the resumed process, and some of cuDNN's fastest
    weight-gradient kernels accumulate with atomics in a varying order; either changes the last bits. The other
    backward kernels of these nets are exact: global average pooling is a mean, and every max-pool input gets at most
    one gradient, so their atomic adds never meet. torch.use_deterministic_algorithms is not set: it would refuse ops
    whose atomics are harmless here.
    """
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
