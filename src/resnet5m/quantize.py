"""int8 post-training static quantization, and the rebuild of a saved int8 model.

torch.ao.quantization FX graph mode with the x86 engine: weights per-channel symmetric int8, activations
per-tensor uint8. A saved int8 model is its quantized state dict; int8_from_state rebuilds the graph by
re-running prepare_fx/convert_fx on the float architecture and loads the saved weights and scales into it,
so no pickled code is ever loaded.

Also home to the two helpers every format module shares: `quiet` and `check_inputs`.
"""

from __future__ import annotations

import contextlib
import copy
import os
import warnings
from collections.abc import Callable, Iterator

import torch
from torch import nn

from .data import normalize
from .errors import UserError
from .model import ArchConfig, build_model


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the deprecation and calibration notices of the APIs we use on purpose.

    torch.jit, torch.ao.quantization, quantized tensors and the TorchScript-based ONNX exporter all
    warn that they are deprecated in torch 2.14 but still work; the rebuild of an int8 graph runs
    observers that never saw data, whose default qparams the saved ones overwrite right after.
    """
    with warnings.catch_warnings():
        for message, category in (
            (r"`torch\.jit\.\w+` is deprecated", FutureWarning),
            (r"torch\.ao\.quantization is deprecated", DeprecationWarning),
            (r"You are using the legacy TorchScript-based ONNX export", DeprecationWarning),
            (r"The feature will be removed", DeprecationWarning),
            (r"Please use quant_min and quant_max", UserWarning),
            (r"must run observer before calling calculate_qparams", UserWarning),
            (r"TypedStorage is deprecated", UserWarning),
            (r"torch\.quantize_per_tensor, torch\.quantize_per_channel and other quantized tensor creation", UserWarning),
        ):
            warnings.filterwarnings("ignore", message=message, category=category)
        yield


def check_inputs(n: int = 16) -> torch.Tensor:
    """A fixed normalized-scale batch for comparing an export with its eager source (and for tracing)."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 32, 32, generator=g)


def _quantization_api() -> tuple[Callable, Callable, Callable]:
    try:
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
    except ImportError as e:
        raise UserError(
            f"this PyTorch ({torch.__version__}) lacks torch.ao.quantization FX mode, which int8 files need; "
            "use the fp16, TorchScript or ONNX format"
        ) from e
    return get_default_qconfig_mapping, prepare_fx, convert_fx


def _use_engine(backend: str) -> None:
    # The engine is global: it picks the int8 kernels used for packing weights and at inference.
    if backend not in torch.backends.quantized.supported_engines:
        raise UserError(
            f"int8 needs the '{backend}' quantized engine, which this PyTorch/CPU lacks "
            f"(have: {', '.join(torch.backends.quantized.supported_engines)}); use the fp16 or ONNX format"
        )
    torch.backends.quantized.engine = backend


def _prepared(model: nn.Module, backend: str) -> nn.Module:
    """The float model with conv-BN-ReLU fused and observers inserted (FX graph mode)."""
    get_default_qconfig_mapping, prepare_fx, _ = _quantization_api()
    _use_engine(backend)
    with quiet():
        return prepare_fx(model.eval(), get_default_qconfig_mapping(backend), example_inputs=(check_inputs(2),))


def _converted(prepared: nn.Module) -> nn.Module:
    _, _, convert_fx = _quantization_api()
    with quiet():
        return convert_fx(prepared)


def quantize_int8(model: nn.Module, calibration: torch.Tensor, backend: str = "x86", batch_size: int = 128) -> nn.Module:
    """Post-training static int8 quantization of a float model, calibrated on normalized images.

    Weights are per-channel symmetric int8, activations per-tensor uint8 with histogram-calibrated
    ranges (the backend's default qconfig mapping); the result runs on the CPU only.
    """
    # prepare_fx folds BatchNorm into the convolutions; work on a copy so the float model stays intact
    prepared = _prepared(copy.deepcopy(model), backend)
    with torch.no_grad():  # observers record ranges in forward; inference_mode would freeze their buffers
        for i in range(0, len(calibration), batch_size):
            prepared(calibration[i : i + batch_size])
    return _converted(prepared).eval()


def int8_from_state(state: dict[str, torch.Tensor], config: ArchConfig, backend: str = "x86") -> nn.Module:
    """Rebuild a quantized graph for config and load saved int8 weights and scales into it."""
    with quiet():
        model = _converted(_prepared(build_model(config, allow_over_limit=True), backend))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"int8 weights do not fit arch {config.to_dict()}: {first}") from e
    return model.eval()


def calibration_images(data_dir: str | os.PathLike | None, n: int, download: bool = False, seed: int = 0) -> torch.Tensor:
    """n normalized training images drawn at random (seeded), for int8 calibration."""
    from .data import load_split

    images, _ = load_split("train", data_dir, download_missing=download)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(images), generator=g)[: max(1, n)]
    return normalize(images[idx])


def calibration_split(
    data_dir: str | os.PathLike | None, n: int, n_check: int, download: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(check, calibration) training images: held-out images make a fairer int8 check than Gaussian
    noise, which falls outside the calibrated activation ranges. Tiny data sets share both roles."""
    drawn = calibration_images(data_dir, n + n_check, download)
    if len(drawn) <= n_check:
        return drawn, drawn
    return drawn[:n_check], drawn[n_check:]
