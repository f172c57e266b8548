"""Train candidate shapes with one recipe and an equal small budget; rank them on validation accuracy.

Every candidate is the seed recipe with the same epochs, resolution, training subset and validation split,
trained by `train()` in DIR/<safe name> (its epoch lines go to DIR/<safe name>/train.log); the test split is
never read. Reruns go on where a sweep stopped: a candidate whose weights file exists is not trained again
(its row is read back from the file's metadata), and one with only a checkpoint resumes from it.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
from dataclasses import replace
from pathlib import Path

from .argtypes import nonnegative_int, positive_int
from .config import TrainConfig, recipe
from .data import DATA_DIR_HELP
from .design import REFERENCES, design_map, sample_front, write_csv
from .errors import UserError
from .model import ARCHS, build_model, count_params, get_config, macs_per_image, safe_name
from .runfolder import CHECKPOINT, recipe_changes
from .weights import read_checkpoint

SWEEP_COLUMNS = ("spec", "params", "macs", "val_acc", "val_loss", "seconds", "images_per_s", "note")
LOG = "train.log"
# Measured sweeps shipped with the package (their commands: docs/results.md), so the notebook shows them anywhere.
RESULTS = Path(__file__).parent / "results"


def read_specs(path: str | Path) -> list[str]:
    """The arch specs (or names) of a file, one a line; blank lines and '#' comments are skipped."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise UserError(f"cannot read --specs {path}: {e.strerror}") from e
    specs = [line.split("#")[0].strip() for line in lines]
    specs = [s for s in specs if s]
    if not specs:
        raise UserError(f"{path} lists no specs; write one a line, e.g. resnet:5,4,3@64,128,256")
    return specs


def top_specs(k: int) -> list[str]:
    """The original (the baseline) and k shapes spread along the default design map's front."""
    original = ARCHS["seed"].spec
    front = [r["spec"] for r in sample_front(design_map(), k)]
    return [original] + [s for s in front if s != original]


def candidate_config(spec: str, out: Path, epochs: int, size: int, **overrides) -> TrainConfig:
    """The seed recipe for one candidate: its arch, the sweep's budget, its own run folder, no test split."""
    progressive = f"{size}:{epochs}" if size < 32 else ""
    cfg = recipe(
        "seed", epochs=epochs, progressive=progressive, out=str(out / safe_name(spec)), quiet=True, test=False, **overrides
    )
    return replace(cfg, arch=spec)  # the seed preset whatever the arch, so every candidate trains alike


def arch_costs(spec: str) -> tuple[int, int]:
    """(parameters, multiply-adds per 32x32 image) of a candidate; over the 5M limit is a UserError, before any training."""
    model = build_model(get_config(spec))
    return count_params(model), macs_per_image(model)


def weights_file(run: Path) -> Path | None:
    """The final weights train() wrote in a run folder (one resnet5m_<arch>.pt), or None before it finished."""
    return next(iter(sorted(run.glob("resnet5m_*.pt"))), None)


def run_candidate(cfg: TrainConfig) -> str:
    """Train, resume or skip one candidate; say which."""
    run = Path(cfg.out)
    if weights_file(run) is not None:
        return "done before"
    resume = (run / CHECKPOINT).exists()
    run.mkdir(parents=True, exist_ok=True)
    from .train import train  # the training machinery only when something trains

    with open(run / LOG, "a") as log, contextlib.redirect_stdout(log):
        train(replace(cfg, resume=resume))
    return "resumed" if resume else "trained"


def candidate_row(cfg: TrainConfig, costs: tuple[int, int]) -> dict:
    """The sweep row of a finished candidate, read from its weights file (which must hold this recipe)."""
    path = weights_file(Path(cfg.out))
    meta, _ = read_checkpoint(path)
    changed = recipe_changes(meta.get("recipe", {}), cfg)
    if changed:
        raise UserError(f"{path} was trained with another recipe (differs in {', '.join(changed)}); choose another --out")
    history = meta["history"]
    seconds = sum(h["seconds"] for h in history)
    return {
        "spec": cfg.arch,
        "params": costs[0],
        "macs": costs[1],
        "val_acc": history[-1]["val_acc"],
        "val_loss": history[-1]["val_loss"],
        "seconds": round(seconds, 3),  # a tiny candidate can train in well under 0.1 s
        "images_per_s": round(sum(h["images_per_s"] * h["seconds"] for h in history) / max(seconds, 1e-9), 1),
        "note": REFERENCES.get(get_config(cfg.arch), ""),
    }


def sweep(specs: list[str], out: str | Path, epochs: int = 3, size: int = 32, **overrides) -> list[dict]:
    """Train every candidate (or take its finished run), rank by validation accuracy; write sweep.csv and sweep.png.

    overrides: TrainConfig fields set for every candidate (subset, val_size, batch_size, lr, data_dir, ...).
    """
    out = Path(out)
    if overrides.get("val_size", 5000) < 1:
        raise UserError("a sweep ranks on the validation split: --val-size must be >= 1")
    folders = [safe_name(s) for s in specs]
    if len(set(folders)) < len(folders):
        raise UserError(f"a candidate is listed twice: {', '.join(s for s in specs if folders.count(safe_name(s)) > 1)}")
    costs = {spec: arch_costs(spec) for spec in specs}  # every spec checked before hours of training
    rows = []
    for i, spec in enumerate(specs, 1):
        cfg = candidate_config(spec, out, epochs, size, **overrides)
        status = run_candidate(cfg)
        rows.append(candidate_row(cfg, costs[spec]))
        print(f"[{i}/{len(specs)}] {progress_text(rows[-1])}  {status}", flush=True)
    ranked = sorted(rows, key=lambda r: -r["val_acc"])
    write_csv(ranked, out / "sweep.csv", SWEEP_COLUMNS)
    from .plots import plot_sweep  # matplotlib only once there is something to draw

    plot_sweep(ranked, save=out / "sweep.png")
    return ranked


def read_sweep_csv(path: str | Path) -> list[dict]:
    """The rows of a sweep.csv as `sweep` wrote them, numbers as numbers."""
    kinds = {"params": int, "macs": int, "val_acc": float, "val_loss": float, "seconds": float, "images_per_s": float}
    try:
        with open(path, newline="") as f:
            return [{k: kinds.get(k, str)(v) for k, v in row.items()} for row in csv.DictReader(f)]
    except (OSError, ValueError, TypeError) as e:
        raise UserError(f"cannot read sweep results {path}: {e}; rerun `resnet5m sweep` to write them again") from e


def measured_sweeps() -> dict[str, list[dict]]:
    """The sweeps measured for this project ({file stem: rows}), from the package's results folder."""
    return {path.stem: read_sweep_csv(path) for path in sorted(RESULTS.glob("*.csv"))}


def progress_text(row: dict) -> str:
    """One candidate's result on one line."""
    note = f"  ({row['note']})" if row["note"] else ""
    return (
        f"{row['spec']}  {row['params'] / 1e6:.2f}M params  {row['macs'] / 1e6:,.0f}M MACs  "
        f"val {100 * row['val_acc']:.2f}% (loss {row['val_loss']:.4f})  {row['seconds']:.0f} s  "
        f"{row['images_per_s']:.0f} img/s{note}"
    )


def cmd_sweep(args: argparse.Namespace) -> dict:
    specs = read_specs(args.specs) if args.specs else top_specs(args.top)
    given = {"batch_size": args.batch_size, "lr": args.lr, "teacher": args.teacher, "kd_weight": args.kd_weight,
             "kd_temperature": args.kd_temperature, "kd_cache": args.kd_cache or None}  # fmt: skip
    overrides = {k: v for k, v in given.items() if v is not None}  # left out: the seed recipe's
    ranked = sweep(specs, args.out, args.epochs, args.size, subset=args.subset, val_size=args.val_size,
                   data_dir=args.data_dir, **overrides)  # fmt: skip
    print("ranked on validation accuracy:")
    for i, row in enumerate(ranked, 1):
        print(f"{i:3d}. {progress_text(row)}")
    print(f"wrote {Path(args.out) / 'sweep.csv'} and {Path(args.out) / 'sweep.png'}")
    return {"rows": ranked}


def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--specs", help="file of candidates, one arch spec a line (e.g. resnet:5,4,3@64,128,256); '#' comments")
    which.add_argument("--top", type=positive_int, metavar="K", help="the original and K shapes along `resnet5m design`'s front")
    p.add_argument("--epochs", type=positive_int, default=3, help="epochs per candidate (default: 3)")
    p.add_argument("--subset", type=nonnegative_int, default=0, help="train on the first N training images (default: 0, all)")
    p.add_argument("--size", type=int, choices=range(8, 33), default=32, metavar="PX",
                   help="train (and validate) every epoch at PX x PX, 8..32 (default: 32)")  # fmt: skip
    p.add_argument("--val-size", type=positive_int, default=5000, help="held-out training images to rank on (default: 5000)")
    p.add_argument("--batch-size", type=positive_int, help="batch size (default: the seed recipe's)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: the seed recipe's)")
    p.add_argument("--teacher", help="distil every candidate from these weights (see `resnet5m train --teacher`)")
    p.add_argument("--kd-weight", type=float, help="with --teacher: weight of its soft targets (default: train's)")
    p.add_argument("--kd-temperature", type=float, help="with --teacher: temperature of its soft targets (default: train's)")
    p.add_argument("--kd-cache", action="store_true", help="with --teacher: its logits computed once per candidate (see train)")
    p.add_argument("--out", required=True, help="sweep folder: one run folder per candidate, sweep.csv and sweep.png")
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
