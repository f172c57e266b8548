"""Small-storage deployment: export weights as fp16, int8, TorchScript or ONNX, load any of them back.

`resnet5m export` writes one format; `resnet5m evaluate` reads each of them through `load_any`;
`python -m resnet5m.export table` measures size, accuracy and CPU speed of every format and
prints the markdown table kept in the README.

Formats:
- fp16: our checkpoint format with half-precision storage; loads back as an fp32 eager model.
- int8: post-training static quantization (torch.ao.quantization FX graph mode, x86 engine),
  saved as the quantized state dict plus its recipe in a plain dict (weights_only loadable).
  The loader rebuilds the graph by re-running prepare_fx/convert_fx on the float architecture
  and loads the saved int8 weights and scales into it, so no pickled code is ever loaded.
- torchscript: a traced fp32 graph (torch.jit), runs without this package.
- onnx: an fp32 ONNX graph with a dynamic batch axis, runs with onnxruntime.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import LoadedWeights, atomic_save, load_weights, save_weights, sha256_of, staged
from .data import normalize
from .errors import UserError
from .model import ResNetConfig, build_model, get_config

FORMATS = ("fp16", "int8", "torchscript", "onnx")
SUFFIXES = {"fp16": ".pt", "int8": ".pt", "torchscript": ".ts", "onnx": ".onnx"}
INT8_FORMAT = "resnet5m-int8"
INT8_FORMAT_VERSION = 1
META_KEY = "resnet5m.json"  # TorchScript extra file and ONNX metadata key holding our metadata
GRAPH_TOLERANCE = 1e-3  # max abs logit difference allowed for the fp32 graph formats
ONNX_HINT = "pip install onnx onnxscript onnxruntime (or pip install 'resnet5m[onnx]')"
CPU_ONLY = ("int8", "onnx")  # quantized kernels and our onnxruntime session run on the CPU only


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
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
        "torch_version": str(torch.__version__),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def default_out(weights: Path, fmt: str) -> Path:
    """resnet5m_seed.pt -> resnet5m_seed_int8.pt, next to the source."""
    return weights.with_name(f"{weights.stem}_{fmt}{SUFFIXES[fmt]}")


def _check_out(out: Path, source: Path, force: bool) -> None:
    if out.exists() and out.resolve() == source.resolve():
        raise UserError(f"--out {out} is the source weights file; choose another path")
    if out.exists() and not force:
        raise UserError(f"{out} already exists; pass --force to overwrite it")


def _check_inputs(n: int = 16) -> torch.Tensor:
    """A fixed normalized-scale batch for comparing an export with its eager source."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 32, 32, generator=g)


def _compare(reference: nn.Module, candidate: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """Max abs logit difference and top-1 agreement between two models on x, in fp32."""
    with torch.inference_mode():
        a = reference(x).float()
        b = candidate(x).float()
    return (a - b).abs().max().item(), (a.argmax(1) == b.argmax(1)).double().mean().item()


# ---------------------------------------------------------------- int8


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
    with _quiet():
        return prepare_fx(model.eval(), get_default_qconfig_mapping(backend), example_inputs=(_check_inputs(2),))


def _converted(prepared: nn.Module) -> nn.Module:
    _, _, convert_fx = _quantization_api()
    with _quiet():
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


def int8_from_state(state: dict[str, torch.Tensor], config: ResNetConfig, backend: str = "x86") -> nn.Module:
    """Rebuild a quantized graph for config and load saved int8 weights and scales into it."""
    with _quiet():
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


def _calibration_split(
    data_dir: str | os.PathLike | None, n: int, n_check: int, download: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(check, calibration) training images: held-out images make a fairer int8 check than Gaussian
    noise, which falls outside the calibrated activation ranges. Tiny data sets share both roles."""
    drawn = calibration_images(data_dir, n + n_check, download)
    if len(drawn) <= n_check:
        return drawn, drawn
    return drawn[:n_check], drawn[n_check:]


# ---------------------------------------------------------------- writers, one per format


def _write_fp16(loaded: LoadedWeights, tmp: Path, meta: dict) -> nn.Module:
    save_weights(
        tmp, loaded.model, loaded.arch, metrics=loaded.meta.get("metrics"), recipe=loaded.meta.get("recipe"),
        extra={"export": meta}, half=True, overwrite=True,
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
    with _quiet(), torch.no_grad():
        traced = torch.jit.trace(loaded.model.eval(), _check_inputs(2))
        torch.jit.save(traced, str(tmp), _extra_files={META_KEY: json.dumps(meta)})
    return load_any(tmp).model


def _write_onnx(loaded: LoadedWeights, tmp: Path, meta: dict) -> nn.Module | None:
    """Export with the torch.export-based exporter when onnxscript is present, else the TorchScript one."""
    try:
        import onnx
    except ImportError as e:
        raise UserError(f"exporting ONNX needs the onnx package: {ONNX_HINT}") from e
    model, example = loaded.model.eval(), _check_inputs(2)  # batch 2: a batch of 1 would be specialized
    names = {"input_names": ["input"], "output_names": ["logits"]}
    dynamo = _has_module("onnxscript")
    meta["onnx_exporter"] = "torch.export (dynamo=True)" if dynamo else "TorchScript-based (dynamo=False)"
    try:
        with _quiet(), contextlib.redirect_stdout(io.StringIO()):  # the exporter prints its progress
            if dynamo:
                dynamic = ({0: torch.export.Dim("batch")},)
                torch.onnx.export(model, (example,), str(tmp), dynamo=True, dynamic_shapes=dynamic, external_data=False, **names)
            else:
                axes = {"input": {0: "batch"}, "logits": {0: "batch"}}
                torch.onnx.export(model, (example,), str(tmp), dynamo=False, dynamic_axes=axes, opset_version=17, **names)
    except Exception as e:  # exporter failures come as many types (version mismatches, unsupported ops)
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise UserError(f"ONNX export failed with the {meta['onnx_exporter']} exporter ({type(e).__name__}: {first})") from e
    proto = onnx.load(str(tmp))
    onnx.helper.set_model_props(proto, {META_KEY: json.dumps(meta)})
    onnx.checker.check_model(proto)
    onnx.save(proto, str(tmp))
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
    check, notes = _check_inputs(), []
    if fmt == "int8":
        check, calibration = _calibration_split(data_dir, calib_images, len(check), download)
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


# ---------------------------------------------------------------- loading any format


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
        raise UserError(f"{path} holds arch '{known}', not '{arch}'; drop --arch or pass the matching file")
    return arch or known


def _load_int8(obj: dict, path: Path, arch: str | None) -> LoadedModel:
    if obj.get("format_version", 0) > INT8_FORMAT_VERSION:
        raise UserError(f"{path} is an int8 file of a newer resnet5m (format {obj['format_version']}); upgrade resnet5m")
    config = ResNetConfig.from_dict(obj["config"]) if "config" in obj else get_config(obj["arch"])
    backend = obj.get("quantization", {}).get("backend", "x86")
    meta = {k: v for k, v in obj.items() if k != "state_dict"}
    model = int8_from_state(obj["state_dict"], config, backend)
    return LoadedModel(model, _check_arch(arch, meta, path), sha256_of(path), "int8", meta)


def _load_torch_file(path: Path, arch: str | None, device: torch.device | str) -> LoadedModel:
    try:
        with _quiet():
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # let load_weights produce its specific error message
        obj = None
    if isinstance(obj, dict) and obj.get("format") == INT8_FORMAT:
        return _load_int8(obj, path, arch)
    loaded = load_weights(path, arch=arch, device=device)
    fmt = loaded.meta.get("export", {}).get("export_format", "fp32")
    return LoadedModel(loaded.model, loaded.arch, loaded.sha256, fmt, loaded.meta)


def _load_torchscript(path: Path, arch: str | None, device: torch.device | str) -> LoadedModel:
    extra = {META_KEY: ""}
    try:
        with _quiet():
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
    kind = detect_format(path)
    if kind == "torchscript":
        return _load_torchscript(path, arch, device)
    if kind == "onnx":
        model = OnnxModule(path)
        return LoadedModel(model, _check_arch(arch, model.meta, path), sha256_of(path), "onnx", model.meta)
    return _load_torch_file(path, arch, device)


# ---------------------------------------------------------------- `resnet5m export`


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `resnet5m export`."""
    parser.add_argument("--weights", help="source .pt file (default: the shipped weights/resnet5m_<arch>.pt)")
    parser.add_argument("--arch", help="architecture (default: read from the weights file)")
    parser.add_argument("--format", required=True, choices=FORMATS, help="what to write")
    parser.add_argument("--out", help="output path (default: <weights stem>_<format>.pt/.ts/.onnx next to the weights)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --out")
    parser.add_argument("--data-dir", help="int8 only: folder holding cifar-10-batches-py/ for calibration")
    parser.add_argument(
        "--download", action=argparse.BooleanOptionalAction, default=True, help="int8 only: download CIFAR-10 when missing"
    )
    parser.add_argument("--calib-images", type=int, default=512, help="int8 only: training images used for calibration")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def cmd_export(args: argparse.Namespace) -> dict:
    """Run `resnet5m export` and report what was written."""
    from .cli import default_weights

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


# ---------------------------------------------------------------- `python -m resnet5m.export table`


def _median_seconds(fn: Callable[[], Any], runs: int, warmup: int = 2) -> float:
    for _ in range(warmup):  # first calls pick kernels and allocate
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    precision: str = "fp32",
    latency_runs: int = 30,
    throughput_runs: int = 3,
    batch_size: int = 256,
) -> dict:
    """Test accuracy, one-image latency (median, ms) and batch throughput (images/s) on the CPU."""
    from .evaluate import evaluate
    from .runtime import autocast, prepare

    cpu = torch.device("cpu")
    model = prepare(model, cpu).eval()
    result = evaluate(model, images, labels, device=cpu, batch_size=batch_size, precision=precision, progress=False)
    reps = -(-batch_size // len(images))
    batch = normalize(images.repeat(reps, 1, 1, 1)[:batch_size]).contiguous(memory_format=torch.channels_last)
    one = batch[:1].contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast(cpu, precision):
        latency = _median_seconds(lambda: model(one), latency_runs)
        per_batch = _median_seconds(lambda: model(batch), throughput_runs, warmup=1)
    return {
        "accuracy": result.accuracy,
        "n": result.n,
        "latency_ms": 1000 * latency,
        "images_per_s": batch_size / per_batch,
    }


def table_rows(
    weights: str | os.PathLike,
    data_dir: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    *,
    formats: tuple[str, ...] = FORMATS,
    bf16: bool = True,
    calib_images: int = 512,
    limit: int = 0,
    latency_runs: int = 30,
    throughput_runs: int = 3,
) -> list[dict]:
    """Export weights to each format under out_dir (overwriting) and measure every file."""
    from .data import load_split

    images, labels = load_split("test", data_dir)
    if limit:
        images, labels = images[:limit], labels[:limit]
    runs = {"latency_runs": latency_runs, "throughput_runs": throughput_runs}
    source = load_any(weights)
    rows = [{"format": f"{source.format} (source)", "path": str(weights), **measure(source.model, images, labels, **runs)}]
    if bf16:
        bf16_row = measure(source.model, images, labels, precision="bf16", **runs)
        rows.append({"format": f"{source.format} (source), bf16 autocast", "path": str(weights), **bf16_row})
    for fmt in formats:
        out = Path(out_dir) / f"{Path(weights).stem}_{fmt}{SUFFIXES[fmt]}"
        try:
            result = export(weights, fmt, out, force=True, data_dir=data_dir, calib_images=calib_images)
            loaded = load_any(out)
        except UserError as e:  # e.g. ONNX without onnx/onnxruntime: the row says why
            rows.append({"format": fmt, "path": str(out), "error": str(e)})
            continue
        row = {"format": fmt, "path": str(out), "max_abs_diff": result.max_abs_diff}
        rows.append(row | measure(loaded.model, images, labels, precision="fp32", **runs))  # bf16 has its own row
    for row in rows:
        if "error" not in row:
            row["size_mb"] = Path(row["path"]).stat().st_size / 1e6
    return rows


def markdown_table(rows: list[dict]) -> str:
    """Rows from table_rows as a markdown table."""
    header = ("format", "file size (MB)", "test accuracy (%)", "latency, 1 image (ms)", "throughput, batch 256 (images/s)")
    lines = ["| " + " | ".join((*header, "max abs logit diff vs source")) + " |", "| --- |" + " ---: |" * 5]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['format']} | – | – | – | – | {r['error']} |")
            continue
        diff = "–" if r.get("max_abs_diff") is None else f"{r['max_abs_diff']:.1e}"
        cells = (f"{r['size_mb']:.2f}", f"{100 * r['accuracy']:.2f}", f"{r['latency_ms']:.1f}", f"{r['images_per_s']:.0f}", diff)
        lines.append(f"| {r['format']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _environment(n: int) -> str:
    cpu = platform.processor() or platform.machine()
    return f"torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s) ({cpu}), {n} test images; MB = 10^6 bytes"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resnet5m.export", description="Measure the export formats.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("table", help="export to every format and print size/accuracy/speed as markdown")
    p.add_argument("--weights", required=True, help="source .pt file")
    p.add_argument("--data-dir", help="folder holding cifar-10-batches-py/ (default: $RESNET5M_DATA, else ./data)")
    p.add_argument("--out-dir", help="keep the exported files here (overwritten); default: a temporary folder")
    p.add_argument("--formats", default=",".join(FORMATS), help="comma-separated subset of " + ",".join(FORMATS))
    p.add_argument("--no-bf16", action="store_true", help="skip the bf16-autocast row of the fp32 checkpoint")
    p.add_argument("--threads", type=int, default=0, help="torch/onnxruntime CPU threads (default: torch's default)")
    p.add_argument("--calib-images", type=int, default=512)
    p.add_argument("--limit", type=int, default=0, help="use only the first N test images")
    p.add_argument("--latency-runs", type=int, default=30)
    p.add_argument("--throughput-runs", type=int, default=3)
    p.add_argument("--json", action="store_true", help="print the rows as JSON instead of markdown")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    formats = tuple(f for f in args.formats.split(",") if f)
    try:
        unknown = [f for f in formats if f not in FORMATS]
        if unknown:
            raise UserError(f"unknown format(s) {', '.join(unknown)}; choose from {', '.join(FORMATS)}")
        with tempfile.TemporaryDirectory() as tmp:
            rows = table_rows(
                args.weights, args.data_dir, args.out_dir or tmp, formats=formats, bf16=not args.no_bf16,
                calib_images=args.calib_images, limit=args.limit, latency_runs=args.latency_runs,
                throughput_runs=args.throughput_runs,
            )  # fmt: skip
    except UserError as e:
        print(f"resnet5m.export: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rows))
    else:
        n = next((r["n"] for r in rows if "n" in r), 0)
        print(f"<!-- python -m resnet5m.export table; {_environment(n)} -->")
        print(markdown_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
