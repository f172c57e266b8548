"""Publishing trained weights: measure them once on the test split and write a copy that records it.

`resnet5m train` saves weights with their recipe, history and validation figures; the test split is
never looked at during a run (unless --test). Publishing is the one place the test figure is taken
and written into the file that ships in `weights/`, so the file states its own accuracy and on how
many images it was measured. It also prints the file's entry for the manifest of shipped weights
(weights/manifest.json in the package), which every download of a shipped file is checked against.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from .data import DATA_DIR_HELP, load_split
from .errors import UserError
from .evaluate import evaluate, recipe_views
from .runtime import pick_device, prepare
from .weights import MANIFEST, carried_over, entry_for, load_weights, save_weights


def publish(
    weights: str | os.PathLike,
    out: str | os.PathLike,
    *,
    data_dir: str | None = None,
    download: bool = True,
    tta: bool = True,
    device: str = "auto",
    force: bool = False,
) -> dict:
    """Evaluate `weights` on the test split and save a copy at `out` with the test figures in its metrics."""
    weights, out = Path(weights), Path(out)
    if out.exists() and not force:
        raise UserError(f"{out} already exists; pass --force to replace it (the old file is not kept)")
    if out.resolve() == weights.resolve():
        raise UserError("--out must differ from --weights; publishing writes a new file")
    loaded = load_weights(weights)
    images, labels = load_split("test", data_dir, download_missing=download)
    dev = pick_device(device)
    precision = "auto"  # as `resnet5m evaluate` runs by default; the recipe's precision is that of its training card
    model = prepare(loaded.model, dev)
    shift = recipe_views(loaded.meta)[1] if tta else 0  # the shifted views the recipe validated with
    res = evaluate(model, images, labels, device=dev, tta=tta, tta_shift=shift, precision=precision, progress=False)
    meta = loaded.meta
    metrics = {**meta.get("metrics", {}), "test_acc": res.accuracy, "test_n": res.n, "test_loss": res.loss, "test_tta": tta}
    metrics["test_tta_shift"] = shift
    if tta:  # the plain figure too, for readers comparing with results reported without TTA
        metrics["test_acc_no_tta"] = evaluate(model, images, labels, device=dev, precision=precision, progress=False).accuracy
    extra = carried_over(meta)
    extra["trained"] = meta.get("created")
    digest = save_weights(
        out,
        loaded.model,
        loaded.arch,
        metrics=metrics,
        recipe=meta.get("recipe"),
        history=meta.get("history"),
        extra=extra,
        overwrite=force,
    )
    out_meta = {"weights": str(out), "sha256": digest, "source_sha256": loaded.sha256, "arch": loaded.arch, "views": res.views}
    return {**out_meta, **metrics, "manifest": {loaded.arch: entry_for(out, loaded.arch).to_dict()}}


def add_publish_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", required=True, help="weights written by resnet5m train (<run>/resnet5m_<arch>.pt)")
    parser.add_argument("--out", required=True, help="where to write the published copy, e.g. weights/resnet5m_seed.pt")
    parser.add_argument("--data-dir", help=DATA_DIR_HELP)
    parser.add_argument("--download", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True, help="flip TTA (default: on)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--force", action="store_true", help="replace an existing --out")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def cmd_publish(args: argparse.Namespace) -> dict:
    out = publish(
        args.weights, args.out, data_dir=args.data_dir, download=args.download, tta=args.tta, device=args.device,
        force=args.force,
    )  # fmt: skip
    if not args.json:
        print(f"test accuracy {100 * out['test_acc']:.2f}% on {out['test_n']:,} images{out['views']}")
        print(f"wrote {out['weights']} (sha256 {out['sha256']})")
        (name,) = out["manifest"]
        action = "replace the entry" if name in MANIFEST else "add the entry"
        print(f"to ship it, copy it to weights/ and {action} in src/resnet5m/weights/manifest.json:")
        print(json.dumps(out["manifest"], indent=2)[2:-2])  # the entry without the enclosing braces, ready to paste
    return out
