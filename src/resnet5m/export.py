"""Small-storage deployment: write weights as fp16, int8, TorchScript or ONNX.

`resnet5m export` writes one format; `resnet5m evaluate` reads each of them back through
weights.load_any; `python -m resnet5m.export_table` measures size, accuracy and CPU speed of every
format and prints the markdown table kept in the README.

Formats:
- fp16: our checkpoint format with half-precision storage; loads back as an fp32 eager model.
- int8: post-training static quantization (quantize.py: torch.ao.quantization FX graph mode, x86 engine),
  saved as the quantized state dict plus its recipe in a plain dict (weights_only loadable); the loader
  rebuilds the graph from the float architecture and loads the int8 weights and scales into it.
- torchscript: a traced fp32 graph (torch.jit), runs without this package.
- onnx: an fp32 ONNX graph with a dynamic batch axis, runs with onnxruntime.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import inspect
import io
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from .argtypes import positive_int
from .errors import UserError
from .files import atomic_save, sha256_of, staged, write_bytes
from .quantize import calibration_split, check_inputs, quantize_int8, quiet
from .weights import (
    INT8_FORMAT,
    INT8_FORMAT_VERSION,
    META_KEY,
    ONNX_HINT,
    LoadedWeights,
    carried_over,
    default_weights,
    load_any,
    load_weights,
    save_weights,
)

if TYPE_CHECKING:
    import onnx

FORMATS = ("fp16", "int8", "torchscript", "onnx")
SUFFIXES = {"fp16": ".pt", "int8": ".pt", "torchscript": ".ts", "onnx": ".onnx"}
GRAPH_TOLERANCE = 1e-3  # max abs logit difference allowed for the fp32 graph formats
# Default output folder, in the working folder: not next to the source, which is often the repository's tracked weights/.
EXPORTS_DIR = Path("exports")


# ---------------------------------------------------------------- metadata and file handling


def _metadata(fmt: str, loaded: LoadedWeights, source: Path) -> dict:
    """What an exported file says about itself: enough for evaluate to name it and trace it back."""
    return {
        "format": "resnet5m-export",
        "export_format": fmt,
        "arch": loaded.arch,
        "config": loaded.model.config.to_dict(),
        "source": source.name,
        "source_sha256": loaded.sha256,
        "metrics": loaded.meta.get("metrics", {}),
        # The source's test-time views and temperature, so that evaluate/predict run an export as its source.
        "recipe": loaded.meta.get("recipe"),
        "temperature": loaded.meta.get("temperature"),
        "torch_version": str(torch.__version__),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def default_out(weights: Path, fmt: str) -> Path:
    """weights/resnet5m_seed.pt -> exports/resnet5m_seed_int8.pt."""
    return EXPORTS_DIR / f"{weights.stem}_{fmt}{SUFFIXES[fmt]}"


def _check_out(out: Path, source: Path, force: bool) -> None:
    if out.exists() and out.resolve() == source.resolve():
        raise UserError(f"--out {out} is the source weights file; choose another path")
    if out.exists() and not force:
        raise UserError(f"{out} already exists; pass --force to overwrite it")


def _compare(reference: nn.Module, candidate: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """Max abs logit difference and top-1 agreement between two models on x, in fp32."""
    with torch.inference_mode():
        a = reference(x).float()
        b = candidate(x).float()
    return (a - b).abs().max().item(), (a.argmax(1) == b.argmax(1)).double().mean().item()


# ---------------------------------------------------------------- writers, one per format


def _write_fp16(loaded: LoadedWeights, tmp: Path, meta: dict) -> nn.Module:
    # The source's history and own records (training command, seed, ...) too, so the copy can stand in for it.
    save_weights(
        tmp, loaded.model, loaded.arch, metrics=loaded.meta.get("metrics"), recipe=loaded.meta.get("recipe"),
        history=loaded.meta.get("history"), extra={**carried_over(loaded.meta), "export": meta}, half=True, overwrite=True,
    )  # fmt: skip
    return load_weights(tmp).model.eval()


def _write_int8(loaded: LoadedWeights, tmp: Path, meta: dict, calibration: torch.Tensor, backend: str) -> nn.Module:
    quantized = quantize_int8(loaded.model, calibration, backend)
    recipe = {"api": "torch.ao.quantization.quantize_fx", "qconfig_mapping": f"default:{backend}", "backend": backend}
    payload = {
        "format": INT8_FORMAT,
        "format_version": INT8_FORMAT_VERSION,
        "arch": loaded.arch,
        "config": loaded.model.config.to_dict(),
        "quantization": {**recipe, "calibration_images": len(calibration)},
        "state_dict": quantized.state_dict(),
        "export": meta,
    }
    atomic_save(payload, tmp, overwrite=True)
    return load_any(tmp).model  # check the file, not the in-memory graph


def _write_torchscript(loaded: LoadedWeights, tmp: Path, meta: dict) -> nn.Module:
    with quiet(), torch.no_grad():
        traced = torch.jit.trace(loaded.model.eval(), check_inputs(2))
        archive = io.BytesIO()  # in memory, then staged: torch's own zip writer hides a full disk (see atomic_save)
        torch.jit.save(traced, archive, _extra_files={META_KEY: json.dumps(meta)})
    write_bytes(tmp, archive)
    return load_any(tmp).model


def _onnx_dynamo(model: nn.Module, example: torch.Tensor, names: dict) -> onnx.ModelProto:
    """The torch.export-based exporter (needs onnxscript; torch >= 2.13 runs it on the fast and best nets)."""
    dynamic = ({0: torch.export.Dim("batch")},)
    return torch.onnx.export(model, (example,), dynamo=True, dynamic_shapes=dynamic, **names).model_proto


def _onnx_torchscript(model: nn.Module, example: torch.Tensor, names: dict) -> onnx.ModelProto:
    """The TorchScript-based exporter, in every torch this project supports (newer ones need dynamo=False)."""
    import onnx

    axes = {"input": {0: "batch"}, "logits": {0: "batch"}}
    chosen = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    buffer = io.BytesIO()
    torch.onnx.export(model, (example,), buffer, dynamic_axes=axes, opset_version=17, **chosen, **names)
    return onnx.load_from_string(buffer.getvalue())


def _first_line(e: Exception) -> str:
    """The exception's type and first line, without the terminal colours some exporter messages carry."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
    return f"{type(e).__name__}: {(text.splitlines() or [''])[0][:200]}"


def _write_onnx(loaded: LoadedWeights, tmp: Path, meta: dict) -> nn.Module | None:
    """Export with the torch.export-based exporter when onnxscript is present, else (or when it fails, as in
    torch before 2.13) with the TorchScript-based one."""
    try:
        import onnx
    except ImportError as e:
        raise UserError(f"exporting ONNX needs the onnx package: {ONNX_HINT}") from e
    model, example = loaded.model.eval(), check_inputs(2)  # batch 2: a batch of 1 would be specialized
    names = {"input_names": ["input"], "output_names": ["logits"]}
    proto, failed = None, ""  # failed: why the torch.export-based exporter did not give the graph
    # Both build the graph in memory; write_bytes below writes it (the exporters' own writes would not be staged).
    with quiet(), contextlib.redirect_stdout(io.StringIO()):  # the exporters print their progress
        if _has_module("onnxscript"):
            try:
                proto = _onnx_dynamo(model, example, names)
                meta["onnx_exporter"] = "torch.export (dynamo=True)"
            except Exception as e:  # exporter failures come as many types (version mismatches, unsupported ops)
                failed = f"the torch.export exporter failed ({_first_line(e)})"
        if proto is None:
            try:
                proto = _onnx_torchscript(model, example, names)
            except Exception as e:
                first = f"{failed}; " if failed else ""
                raise UserError(f"ONNX export failed: {first}the TorchScript-based exporter failed ({_first_line(e)})") from e
            meta["onnx_exporter"] = "; ".join(filter(None, ["TorchScript-based (dynamo=False)", failed]))
    onnx.helper.set_model_props(proto, {META_KEY: json.dumps(meta)})
    onnx.checker.check_model(proto)
    write_bytes(tmp, proto.SerializeToString())
    if not _has_module("onnxruntime"):
        return None  # written and checked, but cannot be run here
    return load_any(tmp).model


def _has_module(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------- export


@dataclass
class ExportResult:
    """What one export wrote and how close it is to the eager fp32 source."""

    format: str
    path: str
    size_bytes: int
    sha256: str
    source_sha256: str
    max_abs_diff: float | None  # None when the file could not be run here (ONNX without onnxruntime)
    top1_agreement: float | None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def export(
    weights: str | os.PathLike,
    fmt: str,
    out: str | os.PathLike | None = None,
    *,
    arch: str | None = None,
    force: bool = False,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    calib_images: int = 512,
    backend: str = "x86",
) -> ExportResult:
    """Export a weights file to fmt; the file appears only after it loaded back and matched its source."""
    if fmt not in FORMATS:
        raise UserError(f"unknown format '{fmt}'; choose one of: {', '.join(FORMATS)}")
    source = Path(weights)
    out = Path(out) if out else default_out(source, fmt)
    _check_out(out, source, force)
    loaded = load_weights(source, arch=arch)
    loaded.model.eval()
    meta = _metadata(fmt, loaded, source)
    check, notes = check_inputs(), []
    if fmt == "int8":
        check, calibration = calibration_split(data_dir, calib_images, len(check), download)
        notes.append(f"calibrated on {len(calibration)} training images, {backend} engine")
    with staged(out) as tmp:
        if fmt == "fp16":
            exported = _write_fp16(loaded, tmp, meta)
        elif fmt == "int8":
            exported = _write_int8(loaded, tmp, meta, calibration, backend)
        elif fmt == "torchscript":
            exported = _write_torchscript(loaded, tmp, meta)
        else:
            exported = _write_onnx(loaded, tmp, meta)
            notes.append(f"exporter: {meta['onnx_exporter']}")
        diff, agree = _compare(loaded.model, exported, check) if exported is not None else (None, None)
        if exported is None:
            notes.append("not run: onnxruntime is not installed, only onnx.checker passed")
        if fmt in ("torchscript", "onnx") and diff is not None and diff > GRAPH_TOLERANCE:
            raise UserError(f"the {fmt} export differs from the eager model by {diff:.2e} (> {GRAPH_TOLERANCE}); not written")
    return ExportResult(fmt, str(out), out.stat().st_size, sha256_of(out), loaded.sha256, diff, agree, notes)


# ---------------------------------------------------------------- `resnet5m export`


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `resnet5m export`."""
    parser.add_argument("--weights", help="source .pt file (default: the shipped weights/resnet5m_<arch>.pt)")
    parser.add_argument("--arch", help="architecture (default: read from the weights file)")
    parser.add_argument("--format", required=True, choices=FORMATS, help="what to write")
    parser.add_argument("--out", help=f"output path (default: {EXPORTS_DIR}/<weights stem>_<format>.pt/.ts/.onnx)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --out")
    parser.add_argument("--data-dir", help="int8 only: folder holding cifar-10-batches-py/ for calibration")
    parser.add_argument(
        "--download", action=argparse.BooleanOptionalAction, default=True, help="int8 only: download CIFAR-10 when missing"
    )
    parser.add_argument("--calib-images", type=positive_int, default=512, help="int8 only: training images used for calibration")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def cmd_export(args: argparse.Namespace) -> dict:
    """Run `resnet5m export` and report what was written."""
    weights = Path(args.weights) if args.weights else default_weights(args.arch or "seed")
    result = export(
        weights, args.format, args.out, arch=args.arch, force=args.force, data_dir=args.data_dir,
        download=args.download, calib_images=args.calib_images,
    )  # fmt: skip
    if not args.json:
        diff = "not run" if result.max_abs_diff is None else f"{result.max_abs_diff:.2e}"
        agree = "" if result.top1_agreement is None else f", top-1 agreement {100 * result.top1_agreement:.1f}%"
        print(f"wrote     {result.path}  ({result.format}, {result.size_bytes / 1e6:.2f} MB, sha256 {result.sha256[:16]}...)")
        print(f"vs fp32   max abs logit difference {diff}{agree}")
        for note in result.notes:
            print(f"note      {note}")
    return result.to_dict()
