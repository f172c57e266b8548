"""The export measurement table: size, accuracy and CPU speed of every export format.

`python -m resnet5m.export_table --weights W --data-dir DIR` exports W to each format, loads every file
back and prints the markdown table kept in the README.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .argtypes import nonnegative_int, positive_int
from .data import DATA_DIR_HELP, normalize
from .errors import UserError
from .export import FORMATS, default_out, export
from .weights import load_any


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
    """Test accuracy of one view (no test-time flips or shifts), one-image latency (median, ms), batch images/s, on the CPU."""
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
    limit: int | None = None,
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
        out = Path(out_dir) / default_out(Path(weights), fmt).name
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
    # One view per image: the formats are compared on the same forward pass, without evaluate's test-time views.
    header = ("format", "file size (MB)", "test accuracy, one view (%)", "latency, 1 image (ms)",
              "throughput, batch 256 (images/s)")  # fmt: skip
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
    views = "one view each (`resnet5m evaluate` adds the recipe's test-time views); MB = 10^6 bytes"
    return f"torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s) ({cpu}), {n} test images, {views}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m resnet5m.export_table",
        description="Export to every format and print size/accuracy/speed as markdown.",
    )
    parser.add_argument("--weights", required=True, help="source .pt file")
    parser.add_argument("--data-dir", help=DATA_DIR_HELP)
    parser.add_argument("--out-dir", help="keep the exported files here (overwritten); default: a temporary folder")
    parser.add_argument("--formats", default=",".join(FORMATS), help="comma-separated subset of " + ",".join(FORMATS))
    parser.add_argument("--no-bf16", action="store_true", help="skip the bf16-autocast row of the fp32 checkpoint")
    parser.add_argument(
        "--threads", type=nonnegative_int, default=0, help="torch/onnxruntime CPU threads (default: torch's default)"
    )
    parser.add_argument("--calib-images", type=positive_int, default=512)
    parser.add_argument("--limit", type=positive_int, help="use only the first N test images (default: all)")
    parser.add_argument("--latency-runs", type=positive_int, default=30)
    parser.add_argument("--throughput-runs", type=positive_int, default=3)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of markdown")
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
        print(f"resnet5m.export_table: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rows))
    else:
        n = next((r["n"] for r in rows if "n" in r), 0)
        print(f"<!-- python -m resnet5m.export_table; {_environment(n)} -->")
        print(markdown_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
