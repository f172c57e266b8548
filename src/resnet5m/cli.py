"""The `resnet5m` command line: info, evaluate, predict, demo, calibrate, robustness, export, publish, train, design, sweep,
doctor."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from .argtypes import nonnegative_int, positive_int
from .data import DATA_DIR_HELP, VAL_SIZE
from .errors import UserError
from .runtime import PRECISIONS
from .weights import default_weights, open_weights


def cmd_info(args: argparse.Namespace) -> dict:
    from .model import build_model, count_params, macs_per_image

    model = build_model(args.arch, allow_over_limit=True)
    params = count_params(model)
    buffers = sum(b.numel() for b in model.buffers() if b.is_floating_point())
    info = {
        "arch": args.arch,
        "config": model.config.to_dict(),
        "params": params,
        "fp32_mb": round((params + buffers) * 4 / 1e6, 2),
        "fp16_mb": round((params + buffers) * 2 / 1e6, 2),
        "macs_per_image": macs_per_image(model),
    }
    if not args.json:
        shown = {k: v for k, v in info["config"].items() if k not in ("kind", "num_classes")}
        if shown.get("block") == "basic":  # the default goes unsaid: a BasicBlock net's line reads as it did before specs
            del shown["block"]
        shape = ", ".join(f"{k} {v}" for k, v in shown.items())
        print(f"arch            {info['arch']}  ({shape})")
        print(f"parameters      {params:,}")
        print(f"size fp32/fp16  {info['fp32_mb']} MB / {info['fp16_mb']} MB")
        print(f"multiply-adds   {info['macs_per_image'] / 1e6:,.1f} M per 32x32 image")
    return info


def cmd_evaluate(args: argparse.Namespace) -> dict:
    from .calibration import held_out, recorded_val_size
    from .data import load_split
    from .evaluate import ECE_BINS, evaluate, recipe_views, temperature_of
    from .runtime import resolve_precision

    weights = Path(args.weights) if args.weights else default_weights(args.arch or "seed")
    loaded, model, device = open_weights(weights, args.arch, args.device)
    val_size = args.val_size or recorded_val_size(loaded.meta) or VAL_SIZE
    images, labels = load_split(args.split, args.data_dir, download_missing=args.download, val_size=val_size)
    if args.limit:
        images, labels = images[: args.limit], labels[: args.limit]
    # --no-tta means one view: the recipe's shifted views only come with TTA on (an explicit --tta-shift still counts).
    shift = args.tta_shift if args.tta_shift is not None else recipe_views(loaded.meta)[1] if args.tta else 0
    precision = "fp32" if loaded.precision == "fp32" else args.precision  # graph and int8 models run as stored
    result = evaluate(
        model, images, labels, device=device, batch_size=args.batch_size, tta=args.tta, tta_shift=shift,
        precision=precision, progress=not args.json, temperature=temperature_of(loaded.meta),
    )  # fmt: skip
    out = {
        "arch": loaded.arch,
        "format": loaded.format,
        "weights": str(weights),
        "weights_sha256": loaded.sha256,
        "split": args.split,
        "device": str(device),
        "precision": resolve_precision(device, precision),
    }
    out.update(result.to_dict())
    if args.split == "val":
        out.update(val_size=val_size, held_out_in_training=held_out(loaded.meta, val_size))
    if not args.json:
        print(f"weights   {weights}  ({loaded.format}, arch {loaded.arch}, sha256 {loaded.sha256[:16]}...)")
        if args.split == "val" and out["held_out_in_training"] is not True:
            seen = "were trained on some of" if out["held_out_in_training"] is False else "do not record whether they held out"
            print(f"note      these weights {seen} the last {val_size:,} training images: not a validation figure")
        print(
            f"{args.split} accuracy  {100 * result.accuracy:.2f}% ± {100 * result.stderr:.2f} on {result.n:,} images"
            f"{result.views}; loss {result.loss:.4f}"
        )
        scaled = f", temperature {result.temperature:.3f} (calibrated)" if result.temperature != 1 else ""
        print(f"calibration  ECE {100 * result.ece:.2f}% ({ECE_BINS} bins){scaled}")
        print("per class  " + "  ".join(f"{name} {100 * acc:.1f}" for name, acc in result.per_class.items()))
        print(f"speed     {result.images_per_s:.0f} images/s on {device} ({out['precision']})")
    return out


def version_text() -> str:
    """Two lines for bug reports: the package, torch, torchvision and Python versions; the accelerators torch sees."""
    import platform

    import torch
    import torchvision

    from . import __version__

    if torch.cuda.is_available():
        cuda = f"CUDA {torch.version.cuda}: {torch.cuda.device_count()} device(s), {torch.cuda.get_device_name(0)}"
    else:
        cuda = "CUDA: not available" + ("" if torch.version.cuda else " (CPU-only torch build)")
    mps = "MPS: available" if torch.backends.mps.is_available() else "MPS: not available"
    versions = f"torch {torch.__version__}, torchvision {torchvision.__version__}, Python {platform.python_version()}"
    return f"resnet5m {__version__} ({versions})\n{cuda}; {mps}"


class VersionAction(argparse.Action):
    """--version, computed only when asked: it imports torchvision and queries the GPU driver."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object, option: str | None = None):
        print(version_text())
        parser.exit()


def _module_commands() -> list[tuple[str, str, Callable, Callable]]:
    """(name, help, add-arguments function, command function) of the subcommands that live in their own modules."""
    from .calibration import add_calibrate_arguments, cmd_calibrate
    from .config import add_train_arguments
    from .demo import add_demo_arguments, cmd_demo
    from .design import add_design_arguments, cmd_design
    from .doctor import add_doctor_arguments, cmd_doctor
    from .export import add_export_arguments, cmd_export
    from .predict import add_predict_arguments, cmd_predict
    from .publish import add_publish_arguments, cmd_publish
    from .robustness import add_robustness_arguments, cmd_robustness
    from .sweep import add_sweep_arguments, cmd_sweep
    from .train import cmd_train

    return [
        ("export", "write weights as fp16, int8, TorchScript or ONNX for small-storage deployment",
         add_export_arguments, cmd_export),
        ("publish", "measure weights on the test split once and write a copy that records it",
         add_publish_arguments, cmd_publish),
        ("predict", "classify your own images: files, folders, globs, arrays, CIFAR-style pickles",
         add_predict_arguments, cmd_predict),
        ("demo", "an interactive page in the browser: upload an image, see its top-5 classes and Grad-CAM",
         add_demo_arguments, cmd_demo),
        ("calibrate", "fit a softmax temperature on the validation split and write a calibrated copy",
         add_calibrate_arguments, cmd_calibrate),
        ("robustness", "test accuracy under generated corruptions (noise, blur, JPEG, ...), 5 severities each",
         add_robustness_arguments, cmd_robustness),
        ("train", "train a network, with checkpoints and resume", add_train_arguments, cmd_train),
        ("design", "every ResNet shape under the parameter budget: parameters, multiply-adds, front",
         add_design_arguments, cmd_design),
        ("sweep", "train candidate shapes on an equal small budget and rank them on validation",
         add_sweep_arguments, cmd_sweep),
        ("doctor", "can this machine run resnet5m, and how fast: versions, devices, a few timed steps per precision",
         add_doctor_arguments, cmd_doctor),
    ]  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="resnet5m", description="Small ResNets for CIFAR-10.")
    parser.add_argument("--version", action=VersionAction, help="print the versions and the devices torch sees, then exit")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="parameters, size and multiply-adds of an architecture")
    p.add_argument("--arch", default="seed")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("evaluate", help="accuracy of trained weights on CIFAR-10")
    p.add_argument("--weights", help="a .pt file (default: the shipped weights/resnet5m_<arch>.pt)")
    p.add_argument("--arch", help="architecture (default: read from the weights file)")
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    p.add_argument(
        "--download",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="download CIFAR-10 when it is missing (default: on)",
    )
    p.add_argument("--split", choices=("test", "val", "train"), default="test",
                   help="test; val: the last --val-size training images, held out by `train --val-size`; or train")  # fmt: skip
    p.add_argument("--val-size", type=positive_int,
                   help=f"images in the val split (default: as the weights were trained, else {VAL_SIZE})")  # fmt: skip
    p.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="average each image's logits with its mirror image's, as training validates (default: on)",
    )
    p.add_argument(
        "--tta-shift",
        type=nonnegative_int,
        help="also average copies shifted by N pixels (default: as the weights' recipe, else 0)",
    )
    p.add_argument("--batch-size", type=positive_int, default=200)
    p.add_argument("--limit", type=positive_int, help="evaluate only the first N images (default: all)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="auto: bf16 where the CPU or GPU has native bf16, fp16 on older GPUs (T4), else fp32 (default: auto)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_evaluate)

    for name, text, add_arguments, run in _module_commands():
        p = sub.add_parser(name, help=text)
        add_arguments(p)
        p.set_defaults(func=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        out = args.func(args)
    except UserError as e:
        print(f"resnet5m: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("resnet5m: interrupted", file=sys.stderr)
        return 130
    if getattr(args, "json", False):
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
