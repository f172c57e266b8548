"""The design map: every ResNet shape under a parameter budget, scored without building it.

Parameters and multiply-adds come from model.resnet_costs, which is exact and linear in the block counts,
so a whole ladder of widths times every block count is scored with one matrix product per width choice.

The front. Accuracy is not known here, so the front is a capacity envelope: the multiply-adds axis is cut
into bins of equal width on a log scale (BINS_PER_DECADE per factor of 10), and each bin contributes the
shape with the most parameters, where shapes within NEAR_TIE of that count are equally large and the one with
the fewest layers (then fewest multiply-adds) wins: above ~100 M multiply-adds most bins hold dozens of
shapes within 1% of the budget, and the shallowest is the simplest of them (less per-layer overhead).
It answers "at about this compute per image, how large a net fits under the budget?", from nets whose width
sits at low resolution (few multiply-adds) to early-wide ones (many). A Pareto front (no other shape with
at least as many parameters for at most as many multiply-adds) would stop at the cheapest shape near the
budget and leave out every costlier one.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import augment
from .argtypes import nonnegative_int, positive_int
from .config import recipe
from .data import model_input
from .errors import UserError
from .files import write_text
from .model import ARCHS, BLOCKS, PARAM_LIMIT, ResNetConfig, build_model, get_config, resnet_costs, resnet_macs, resnet_params
from .runtime import autocast, prepare

DEFAULT_LADDER = (32, 64, 96, 128, 192, 256, 320, 384, 512)
BINS_PER_DECADE = 16
NEAR_TIE = 0.01  # shapes within 1% of a bin's largest parameter count count as equally large
RESNET18 = ResNetConfig((2, 2, 2, 2), (64, 128, 256, 512))  # CIFAR ResNet-18 (3x3 stem, no max-pool): 11.17M
REFERENCES = {ARCHS["seed"]: "original", RESNET18: "ResNet-18"}
COLUMNS = ("spec", "block", "stages", "depth", "params", "macs", "front", "over", "note", "images_per_s")


def enumerate_shapes(
    max_params: float = PARAM_LIMIT,
    stages: Sequence[int] = (3, 4),
    blocks_max: int = 6,
    widths: Sequence[int] = DEFAULT_LADDER,
    block: str = "basic",
) -> list[dict]:
    """Every shape with 1..blocks_max blocks per stage and non-decreasing widths from the ladder, under max_params."""
    if block not in BLOCKS:
        raise UserError(f"unknown block '{block}'; use one of: {', '.join(BLOCKS)}")
    ladder = sorted(set(widths))
    rows = []
    for n_stages in stages:
        counts = np.array(list(itertools.product(range(1, blocks_max + 1), repeat=n_stages)), dtype=np.int64)
        for ws in itertools.combinations_with_replacement(ladder, n_stages):
            (params0, macs0), per_block = resnet_costs(ws, block)
            per = np.array(per_block, dtype=np.int64)  # (stages, 2): parameters and multiply-adds of one more block
            params = params0 + counts @ per[:, 0]
            keep = np.flatnonzero(params < max_params)
            macs = macs0 + counts[keep] @ per[:, 1]
            for i, m in zip(keep.tolist(), macs.tolist(), strict=True):
                rows.append(shape_row(ResNetConfig(tuple(counts[i].tolist()), ws, block=block), int(params[i]), m))
    return rows


def shape_row(config: ResNetConfig, params: int | None = None, macs: int | None = None) -> dict:
    """One shape of the map: spec, layer count, parameters, multiply-adds per 32x32 image, reference note.

    params and macs: when already computed (in bulk, by enumerate_shapes).
    """
    return {
        "spec": config.spec,
        "block": config.block,
        "stages": len(config.blocks),
        # conv layers on the main path + the linear head: 18 for ResNet-18, 50 for ResNet-50's shape
        "depth": (3 if config.block == "bottleneck" else 2) * sum(config.blocks) + 2,
        "params": resnet_params(config) if params is None else params,
        "macs": resnet_macs(config) if macs is None else macs,
        "front": False,
        "note": REFERENCES.get(config, ""),
    }


def design_map(max_params: float = PARAM_LIMIT, **kwargs) -> list[dict]:
    """enumerate_shapes plus the original and ResNet-18 (whatever the limits: they are the references), front marked."""
    rows = enumerate_shapes(max_params, **kwargs)
    present = {r["spec"] for r in rows}
    rows += [shape_row(config) for config in REFERENCES if config.spec not in present]
    for row in rows:
        row["over"] = row["params"] >= max_params
    mark_front([r for r in rows if not r["over"]])
    return rows


def mark_front(rows: list[dict]) -> None:
    """Set row["front"] on one shape per log-spaced multiply-add bin: of the shapes within NEAR_TIE of the bin's
    largest parameter count, the one with the fewest layers (then the fewest multiply-adds; see the module doc)."""
    bins: dict[int, list[dict]] = {}
    for row in rows:
        bins.setdefault(math.floor(BINS_PER_DECADE * math.log10(row["macs"])), []).append(row)
    for members in bins.values():
        largest = max(r["params"] for r in members)
        near = [r for r in members if r["params"] >= (1 - NEAR_TIE) * largest]
        min(near, key=lambda r: (r["depth"], r["macs"], -r["params"], r["spec"]))["front"] = True


def sample_front(rows: list[dict], k: int, max_params: float = PARAM_LIMIT) -> list[dict]:
    """k front shapes spread evenly in multiply-adds, among those using at least half the budget (the candidates)."""
    front = sorted((r for r in rows if r["front"] and max_params / 2 <= r["params"] < max_params), key=lambda r: r["macs"])
    if k >= len(front):
        return front
    picks = np.linspace(0, len(front) - 1, k).round().astype(int)  # the front has ~one shape per bin: even in log-MACs
    return [front[i] for i in sorted(set(picks.tolist()))]


def sort_rows(rows: list[dict], by: str) -> list[dict]:
    """by 'macs': cheapest first; by 'params': largest first (ties: the other key, cheaper first). Shapes over the
    budget (ResNet-18, a reference) come last."""
    if by == "macs":
        return sorted(rows, key=lambda r: (r["over"], r["macs"], -r["params"]))
    return sorted(rows, key=lambda r: (r["over"], -r["params"], r["macs"]))


def train_speed(config: ResNetConfig | str, batch_size: int = 256, size: int = 32, steps: int = 3) -> float:
    """Training images per second on this CPU: the training step of the seed recipe (crop and flip, bf16
    autocast forward, label-smoothed loss, backward, Nesterov SGD) on random images, after one warm-up step."""
    from .optim import make_optimizer  # training machinery only when something is measured

    device = torch.device("cpu")
    cfg = recipe("seed")
    torch.manual_seed(0)
    model = prepare(build_model(config, allow_over_limit=True), device)  # only timed: shapes of a --max-params over 5M too
    optimizer = make_optimizer(model, cfg)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch_size, 3, 32, 32), dtype=torch.uint8, generator=g)
    padded, labels = augment.reflect_pad(images, cfg.crop_pad), torch.randint(0, 10, (batch_size,), generator=g)

    def step() -> None:
        x = model_input(augment.apply(padded, augment.draw_params(batch_size, cfg.crop_pad, 0, g), 0), size)
        with autocast(device, "bf16"):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up: oneDNN picks its kernels on the first call
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch_size / (time.perf_counter() - start)


def format_table(rows: Sequence[dict]) -> str:
    """A fixed-width text table of shapes."""
    lines = [f"{'spec':<36} {'depth':>5} {'params':>11} {'M MACs':>8} {'img/s':>6}  note"]
    for r in rows:
        note = ", ".join(filter(None, [r["note"], "over budget" if r.get("over") else "", "front" if r["front"] else ""]))
        speed = f"{r['images_per_s']:.0f}" if r.get("images_per_s") else "-"
        lines.append(f"{r['spec']:<36} {r['depth']:>5} {r['params']:>11,} {r['macs'] / 1e6:>8,.1f} {speed:>6}  {note}")
    return "\n".join(lines)


def write_csv(rows: Sequence[dict], path: str | Path, columns: Sequence[str]) -> None:
    """rows as a CSV file with these columns (missing values empty)."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, text.getvalue())


def cmd_design(args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    rows = design_map(args.max_params, stages=args.stages, blocks_max=args.blocks_max, widths=args.widths, block=args.block)
    seconds = time.perf_counter() - start
    for row in sample_front(rows, args.measure, args.max_params) if args.measure else []:
        row["images_per_s"] = round(train_speed(get_config(row["spec"])), 1)
        if not args.json:
            print(f"measured {row['spec']}: {row['images_per_s']:.0f} training images/s", flush=True)
    summary = _summary(rows, args, seconds)
    rows = sort_rows([r for r in rows if r["front"] or r["note"]] if args.front else rows, args.sort)
    if args.csv:
        write_csv(rows, args.csv, COLUMNS)
    if args.plot:
        from .plots import plot_design_map

        plot_design_map(rows, max_params=args.max_params, save=args.plot)
    if not args.json:
        print(summary)
        shown = rows[: args.top] + [r for r in rows[args.top :] if r["note"] or r.get("images_per_s")]
        print(format_table(shown))
        for path in filter(None, (args.csv, args.plot)):
            print(f"wrote {path}")
    return {"max_params": args.max_params, "count": len(rows), "rows": rows}


def _summary(rows: list[dict], args: argparse.Namespace, seconds: float) -> str:
    under = sum(not r["over"] for r in rows)
    order = "fewest multiply-adds first" if args.sort == "macs" else "most parameters first"
    shown = f"the top {min(args.top, len(rows))} ({order}) and the references"
    return (
        f"{under:,} {args.block}-block shapes under {args.max_params:,.0f} parameters "
        f"({'/'.join(map(str, args.stages))} stages, 1..{args.blocks_max} blocks, widths {'/'.join(map(str, args.widths))}; "
        f"{'front only; ' if args.front else ''}{seconds:.2f} s); {shown}:"
    )


def _ladder(text: str) -> tuple[int, ...]:
    """'32,64,128' or '32/64/128' -> (32, 64, 128): the widths a stage may take."""
    try:
        widths = tuple(int(v) for v in text.replace("/", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a list of widths such as 32,64,128") from None
    if min(widths) < 1:
        raise argparse.ArgumentTypeError("widths must be >= 1")
    return widths


def add_design_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-params", type=float, default=PARAM_LIMIT, help="parameter budget (default: 5e6)")
    p.add_argument("--stages", type=int, nargs="+", choices=(1, 2, 3, 4, 5), default=[3, 4], help="stage counts (default: 3 4)")
    p.add_argument("--blocks-max", type=positive_int, default=6, help="blocks per stage run 1..N (default: 6)")
    p.add_argument("--widths", type=_ladder, default=DEFAULT_LADDER, help="width ladder, non-decreasing per stage "
                   f"(default: {','.join(map(str, DEFAULT_LADDER))})")  # fmt: skip
    p.add_argument("--block", choices=tuple(BLOCKS), default="basic", help="residual block (default: basic)")
    p.add_argument("--sort", choices=("params", "macs"), default="params",
                   help="params: most parameters first; macs: fewest multiply-adds first (default: params)")  # fmt: skip
    p.add_argument("--top", type=positive_int, default=20, help="rows in the printed table (default: 20)")
    p.add_argument("--front", action="store_true", help="only the front (most parameters per multiply-add bin)")
    p.add_argument("--csv", help="write every row to this CSV file")
    p.add_argument("--plot", help="write the map (parameters against multiply-adds) to this PNG")
    p.add_argument("--json", action="store_true", help="print one JSON object with every row")
    p.add_argument("--measure", type=nonnegative_int, default=0, metavar="K",
                   help="time training images/s on this CPU for K front shapes (a few bf16 steps each; default: 0)")  # fmt: skip
