"""Reading any weights format back: our checkpoint (fp32/fp16), int8 files, TorchScript and ONNX.

Every command reads weights through `load_any` (or `open_weights`, which also places the model on its device);
`detect_format` tells the formats apart by content.
The int8 loader rebuilds the quantized graph (see quantize.int8_from_state) instead of unpickling code,
and no file is loaded beyond tensors and plain containers. The format identifiers written by
export.py live here too, next to the code that reads them.
"""

from __future__ import annotations

import contextlib
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from ..files import sha256_of
from ..model import config_from_dict, get_config
from ..quantize import int8_from_state, quiet
from ..runtime import pick_device, prepare
from .read import read_checkpoint, weights_from

INT8_FORMAT = "resnet5m-int8"
INT8_FORMAT_VERSION = 1
META_KEY = "resnet5m.json"  # TorchScript extra file and ONNX metadata key holding our metadata
ONNX_HINT = "pip install onnx onnxscript onnxruntime (or pip install 'resnet5m[onnx]')"
CPU_ONLY = ("int8", "onnx")  # quantized kernels and our onnxruntime session run on the CPU only


class OnnxModule(nn.Module):
    """An onnxruntime session behind the nn.Module call convention: normalized NCHW float -> logits."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        super().__init__()
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise UserError(f"{path} is an ONNX model; running it needs onnxruntime: {ONNX_HINT}") from e
        options = ort.SessionOptions()
        # the same thread count as torch, so the formats compare fairly and share the CPU politely
        options.intra_op_num_threads = threads or torch.get_num_threads()
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for bad files
            raise UserError(f"{path} is not a valid ONNX model ({type(e).__name__}); export it again") from e
        self.input_name = self.session.get_inputs()[0].name
        self.meta = _parse_meta(self.session.get_modelmeta().custom_metadata_map.get(META_KEY))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.session.run(None, {self.input_name: x.detach().float().cpu().contiguous().numpy()})[0]
        return torch.from_numpy(logits).to(x.device)


@dataclass
class LoadedModel:
    """A runnable model from any supported file, with what the file said about itself."""

    model: nn.Module
    arch: str
    sha256: str
    format: str  # fp32, fp16, int8, torchscript or onnx
    meta: dict = field(default_factory=dict)

    @property
    def precision(self) -> str:
        """Eager checkpoints may use bf16 autocast; graph and int8 models run as stored, in fp32."""
        return "auto" if self.format in ("fp32", "fp16") else "fp32"

    @property
    def cpu_only(self) -> bool:
        return self.format in CPU_ONLY


def _parse_meta(text: str | None) -> dict:
    try:
        meta = json.loads(text) if text else {}
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}


def detect_format(path: str | os.PathLike) -> str:
    """'torchscript', 'onnx' or 'torch' (a torch.save file: our checkpoint or an int8 file), by content."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file {path} not found; pass --weights PATH to an existing file")
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK\x03\x04"):
        with contextlib.suppress(zipfile.BadZipFile), zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            # torch.jit.save archives hold compiled code and constants; torch.save ones only data.pkl
            if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
                return "torchscript"
        return "torch"
    if path.suffix.lower() == ".onnx" or head[:1] == b"\x08":  # ModelProto starts with field 1, ir_version
        return "onnx"
    if head[:1] == b"\x80" or path.suffix.lower() in (".pt", ".pth"):
        return "torch"  # a legacy (non-zip) torch.save pickle, or a damaged .pt that the checkpoint loader explains
    raise UserError(
        f"{path} is not a file resnet5m can run: expected a weights .pt (fp32/fp16/int8), a TorchScript .ts or an .onnx model"
    )


def _check_arch(arch: str | None, meta: dict, path: Path) -> str:
    known = meta.get("arch") or "unknown"
    if arch and known != "unknown" and arch != known:
        raise UserError(f"{path} holds arch '{known}', not '{arch}'; pass --arch {known} or drop --arch")
    return arch or known


def _load_int8(obj: dict, path: Path, arch: str | None, sha256: str) -> LoadedModel:
    if obj.get("format_version", 0) > INT8_FORMAT_VERSION:
        raise UserError(f"{path} is an int8 file of a newer resnet5m (format {obj['format_version']}); upgrade resnet5m")
    config = config_from_dict(obj["config"]) if "config" in obj else get_config(obj["arch"])
    backend = obj.get("quantization", {}).get("backend", "x86")
    meta = {k: v for k, v in obj.items() if k != "state_dict"}
    model = int8_from_state(obj["state_dict"], config, backend)
    return LoadedModel(model, _check_arch(arch, meta, path), sha256, "int8", meta)


def _load_torch_file(path: Path, arch: str | None, device: torch.device | str) -> LoadedModel:
    with quiet():  # read once, on the CPU (int8 kernels live there); the caller moves the model
        obj, digest = read_checkpoint(path)
    if isinstance(obj, dict) and obj.get("format") == INT8_FORMAT:
        return _load_int8(obj, path, arch, digest)
    loaded = weights_from(obj, path, digest, arch=arch, device=device)
    fmt = loaded.meta.get("export", {}).get("export_format", "fp32")
    return LoadedModel(loaded.model, loaded.arch, loaded.sha256, fmt, loaded.meta)


def _load_torchscript(path: Path, arch: str | None, device: torch.device | str) -> LoadedModel:
    extra = {META_KEY: ""}
    try:
        with quiet():
            model = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except RuntimeError as e:
        raise UserError(f"{path} is not a loadable TorchScript archive ({type(e).__name__}); export it again") from e
    meta = _parse_meta(extra[META_KEY] or None)
    return LoadedModel(model, _check_arch(arch, meta, path), sha256_of(path), "torchscript", meta)


def load_any(path: str | os.PathLike, arch: str | None = None, device: torch.device | str = "cpu") -> LoadedModel:
    """Load our checkpoint (fp32/fp16), an int8 file, a TorchScript archive or an ONNX model.

    int8 and ONNX models stay on the CPU whatever device is asked for (see LoadedModel.cpu_only).
    No file is unpickled beyond tensors and plain containers (torch.load with weights_only=True).
    """
    path = Path(path)
    if arch is not None:
        get_config(arch)  # a mistyped --arch is named as such, not as a mismatch with the file
    kind = detect_format(path)
    if kind == "torchscript":
        return _load_torchscript(path, arch, device)
    if kind == "onnx":
        model = OnnxModule(path)
        return LoadedModel(model, _check_arch(arch, model.meta, path), sha256_of(path), "onnx", model.meta)
    return _load_torch_file(path, arch, device)


def open_weights(weights: str | os.PathLike, arch: str | None, device: str) -> tuple[LoadedModel, nn.Module, torch.device]:
    """Load any weights format and place it on the device it can run on: (file, runnable model, device)."""
    dev = pick_device(device)
    loaded = load_any(weights, arch=arch)  # our .pt (fp32/fp16), int8, TorchScript or ONNX; prepare() moves it
    if loaded.cpu_only and dev.type != "cpu":  # int8 kernels and our onnxruntime session exist on the CPU only
        if device != "auto":
            raise UserError(f"{Path(weights)} is a {loaded.format} model, which runs on the CPU only; use --device cpu")
        dev = pick_device("cpu")
    return loaded, prepare(loaded.model, dev), dev
