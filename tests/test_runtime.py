"""The precision policy per device and the torchrun rank -> GPU mapping, with torch.cuda's answers patched."""

import contextlib

import pytest
import torch

from resnet5m import runtime
from resnet5m.errors import UserError


@pytest.fixture
def fake_cuda(monkeypatch):
    """A machine with 4 CUDA cards of a settable compute capability; set_device calls are recorded."""
    state = {"capability": (8, 0), "current": []}
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: state["capability"])
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: state["current"].append(torch.device(device)))
    return state


@pytest.mark.parametrize(
    "device, capability, expected",
    [
        ("cpu", None, "bf16"),  # on a CPU with native bf16 (the fixture's)
        ("cuda", (7, 5), "fp16"),  # T4: no native bf16
        ("cuda", (7, 0), "fp16"),  # V100
        ("cuda", (8, 0), "bf16"),  # A100
        ("cuda", (9, 0), "bf16"),  # H100/H200
        ("mps", None, "fp32"),
    ],
)
def test_auto_precision_per_device(fake_cuda, device, capability, expected):
    fake_cuda["capability"] = capability
    assert runtime.resolve_precision(torch.device(device), "auto") == expected
    for explicit in ("bf16", "fp16", "fp32"):  # an explicit choice is kept as given
        assert runtime.resolve_precision(torch.device(device), explicit) == explicit


@pytest.mark.parametrize(
    "native, limit, expected, why",
    [
        (True, None, "bf16", "this CPU has native bf16"),
        (True, "AVX512_CORE_BF16", "bf16", "this CPU has native bf16"),
        (True, "avx512_core_amx", "bf16", "this CPU has native bf16"),
        (True, "AVX512_CORE", "fp32", "ONEDNN_MAX_CPU_ISA=AVX512_CORE keeps oneDNN below its native bf16 kernels"),
        (True, "AVX2", "fp32", "ONEDNN_MAX_CPU_ISA=AVX2 keeps oneDNN below its native bf16 kernels"),
        (False, None, "fp32", "this CPU has no native bf16 (bf16 would be emulated and slower)"),
        (False, "ALL", "fp32", "this CPU has no native bf16 (bf16 would be emulated and slower)"),
    ],
)
def test_auto_on_the_cpu_is_bf16_only_where_it_is_native(monkeypatch, native, limit, expected, why):
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    if limit is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", limit)
    cpu = torch.device("cpu")
    assert runtime.auto_precision(cpu) == (expected, why)
    assert runtime.resolve_precision(cpu, "auto") == expected and runtime.resolve_precision(cpu, "bf16") == "bf16"
    assert runtime.autocast(cpu, "auto").__class__ is (torch.autocast if expected == "bf16" else contextlib.nullcontext)


def test_native_bf16_probe_reads_the_cpu_flags(monkeypatch, tmp_path):
    # Where torch has no cpuinfo probe, /proc/cpuinfo's flags decide: AVX512-BF16 or AMX-BF16, not plain AVX-512.
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.delattr(torch.cpu, name, raising=False)
    real_open, info = open, tmp_path / "cpuinfo"

    def fake_open(path, *args, **kwargs):
        return real_open(info if path == "/proc/cpuinfo" else path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", fake_open)
    for flags, expected in (("fpu avx2 avx512f avx512bw", False), ("avx512f avx512_bf16", True), ("amx_tile amx_bf16", True)):
        info.write_text(f"processor : 0\nflags : {flags}\n")
        assert runtime.cpu_has_native_bf16() is expected


def test_scaler_only_for_fp16_and_unknown_precision_is_one_line(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    cpu = torch.device("cpu")
    assert runtime.grad_scaler(cpu, "auto") is None and runtime.grad_scaler(cpu, "bf16") is None
    assert isinstance(runtime.grad_scaler(cpu, "fp16"), torch.amp.GradScaler)
    assert runtime.autocast(cpu, "fp16").fast_dtype == torch.float16
    assert runtime.autocast(cpu, "auto").fast_dtype == torch.bfloat16
    with pytest.raises(UserError, match="unknown precision 'half'; use one of auto, bf16, fp16, fp32"):
        runtime.resolve_precision(cpu, "half")


def test_torchrun_rank_binds_its_own_gpu(fake_cuda, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert runtime.pick_device("auto") == torch.device("cuda")  # one process: the current card
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert runtime.pick_device("auto") == torch.device("cuda", 2)
    assert runtime.pick_device("cuda") == torch.device("cuda", 2)
    assert runtime.pick_device("cuda:1") == torch.device("cuda", 1)  # an explicit card wins
    assert fake_cuda["current"] == [torch.device("cuda", 2)] * 2 + [torch.device("cuda", 1)]
    monkeypatch.setenv("LOCAL_RANK", "4")
    with pytest.raises(UserError, match="LOCAL_RANK 4 but only 4 CUDA GPU"):
        runtime.pick_device("auto")
    assert runtime.pick_device("cpu") == torch.device("cpu")  # CPU ranks (gloo) ignore it


def test_deterministic_cuda_means_fixed_kernels_without_autotuning(monkeypatch):
    from resnet5m.config import TrainConfig
    from resnet5m.runfolder import recipe_changes

    for flag in ("benchmark", "deterministic"):  # restored after the test
        monkeypatch.setattr(torch.backends.cudnn, flag, getattr(torch.backends.cudnn, flag))
    for deterministic in (True, False):
        runtime.configure_cuda(deterministic)
        assert torch.backends.cudnn.deterministic is deterministic and torch.backends.cudnn.benchmark is not deterministic
    # A runtime choice, like the device: a run may resume with or without it.
    assert recipe_changes({"deterministic": False}, TrainConfig(deterministic=True)) == []
