"""The precision policy per device and the torchrun rank -> GPU mapping, with torch.cuda's answers patched."""

import pytest
import torch

from resnet5m import runtime
from resnet5m.errors import UserError


@pytest.fixture
def fake_cuda(monkeypatch):
    """A machine with 4 CUDA cards of a settable compute capability; set_device calls are recorded."""
    state = {"capability": (8, 0), "current": []}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: state["capability"])
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: state["current"].append(torch.device(device)))
    return state


@pytest.mark.parametrize(
    "device, capability, expected",
    [
        ("cpu", None, "bf16"),
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


def test_scaler_only_for_fp16_and_unknown_precision_is_one_line():
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
