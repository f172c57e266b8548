"""Every file the package writes goes through one staged write: on a full disk or a read-only folder each writer
says so in one line naming the file, the free space and the fix, keeps the previous file and leaves no partial one.

The disk is conftest's `disk_fills_after`: real files that fail with ENOSPC (or another errno) after N bytes,
as a full disk does. torch.save's own zip writer turns that failure into RuntimeError("unexpected pos ...").
"""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_checkpoint import randomized

from resnet5m import design, plots
from resnet5m.cli import build_parser, main
from resnet5m.errors import UserError
from resnet5m.model import build_model
from resnet5m.runfolder import write_run
from resnet5m.weights import save_weights

OLD = b"the previous file"
HISTORY = [{"epoch": 1, "train_loss": 2.0, "train_acc": 0.2, "val_loss": 1.9, "val_acc": 0.3, "lr": 0.1}]


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet5m_tiny.pt"
    save_weights(path, randomized(build_model("tiny")), "tiny", extra={"data": {"train_images": 800, "val_images": 200}})
    return path


def _cli(argv: list[str]) -> Callable[[], None]:
    """A command as `resnet5m` runs it, its UserError raised rather than printed (main prints it as one line)."""

    def run() -> None:
        args = build_parser().parse_args(argv)
        args.func(args)

    return run


def writers(weights: Path, folder: Path) -> dict[str, tuple[Path, Callable[[], None]]]:
    """name -> (the file it replaces, a call that writes it)."""
    rows = [{"spec": "resnet:1,1@8,16", "params": 10_000, "macs": 1e6, "val_acc": 0.5, "seconds": 1.0, "note": ""}]
    image = folder / "cat.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    labelled = folder / "labelled.npz"
    rng = np.random.default_rng(0)
    np.savez(labelled, data=rng.integers(0, 256, (50, 32, 32, 3), dtype=np.uint8), labels=rng.integers(0, 10, 50))
    out = {
        "checkpoint": folder / "run" / "checkpoint.pt",
        "weights": folder / "w.pt",
        "figure": folder / "curves.png",
        "predict csv": folder / "predictions.csv",
        "sweep csv": folder / "sweep.csv",
        "sweep figure": folder / "sweep.png",
        "export fp16": folder / "w_fp16.pt",
        "export torchscript": folder / "w.ts",
        "calibrate": folder / "calibrated.pt",
    }
    calls = {
        "checkpoint": lambda: write_run(out["checkpoint"].parent, {"model": build_model("tiny").state_dict()}, HISTORY),
        "weights": lambda: save_weights(out["weights"], build_model("tiny"), "tiny", overwrite=True),
        "figure": lambda: plots.plot_training_curves(HISTORY, save=out["figure"]),
        "predict csv": _cli(["predict", str(image), "--weights", str(weights), "--csv", str(out["predict csv"]), "--force"]),
        "sweep csv": lambda: design.write_csv(rows, out["sweep csv"], ["spec", "params", "val_acc"]),
        "sweep figure": lambda: plots.plot_sweep(rows, save=out["sweep figure"]),
        "export fp16": _cli(
            ["export", "--weights", str(weights), "--format", "fp16", "--out", str(out["export fp16"]), "--force"]
        ),
        "export torchscript": _cli(
            ["export", "--weights", str(weights), "--format", "torchscript", "--out", str(out["export torchscript"]), "--force"]
        ),
        "calibrate": _cli(["calibrate", "--weights", str(weights), "--out", str(out["calibrate"]), "--images", str(labelled),
                           "--force", "--json"]),  # fmt: skip
    }
    if importlib.util.find_spec("onnx") and importlib.util.find_spec("onnxscript"):
        out["export onnx"] = folder / "w.onnx"
        calls["export onnx"] = _cli(["export", "--weights", str(weights), "--format", "onnx", "--out", str(out["export onnx"]),
                                     "--force"])  # fmt: skip
    return {name: (out[name], calls[name]) for name in calls}


WRITERS = ["checkpoint", "weights", "figure", "predict csv", "sweep csv", "sweep figure", "export fp16", "export torchscript",
           "export onnx", "calibrate"]  # fmt: skip


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.startswith(".") and p.name.endswith(".tmp"))


@pytest.mark.parametrize("name", WRITERS)
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_failed_write_is_one_line_and_keeps_the_previous_file(
    name, code, weights, tmp_path, disk_fills_after
) -> None:  # fmt: skip
    cases = writers(weights, tmp_path)
    if name not in cases:
        pytest.skip("ONNX export needs the onnx and onnxscript packages")
    path, write = cases[name]
    write()  # it works on a disk with room, and this is the file it replaces
    path.write_bytes(OLD)
    disk_fills_after(10 if code == errno.ENOSPC else 0, code)  # a CSV of one row is short
    with pytest.raises(UserError) as info:
        write()
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"could not write {path}: {os.strerror(code)} (")
    assert re.search(r"\(\d+\.\d\d [MG]B free in ", message)
    advice = "free some space or choose another --out" if code == errno.ENOSPC else "choose another --out you can write to"
    assert advice in message and f"an existing {path.name} is left unchanged" in message
    assert path.read_bytes() == OLD and _leftovers(tmp_path) == []


def test_the_history_beside_a_checkpoint_is_kept_when_the_disk_fills_between_them(tmp_path, disk_fills_after) -> None:
    run = tmp_path / "run"
    write_run(run, {"epoch": 1}, HISTORY)
    before = (run / "history.json").read_bytes()
    checkpoint = len((run / "checkpoint.pt").read_bytes())
    disk_fills_after(checkpoint + 10)  # room for the new checkpoint, not for the history after it
    with pytest.raises(UserError, match=f"could not write {run / 'history.json'}: No space left"):
        write_run(run, {"epoch": 1}, HISTORY + HISTORY)
    assert (run / "history.json").read_bytes() == before and json.loads(before) == HISTORY and _leftovers(run) == []


def test_a_training_run_on_a_full_disk_stops_in_one_line(cifar_dir, tmp_path, disk_fills_after, capsys) -> None:
    out = tmp_path / "run"
    disk_fills_after(5000)
    argv = ["train", "--arch", "tiny", "--epochs", "1", "--subset", "64", "--batch-size", "32", "--val-size", "50", "--quiet",
            "--data-dir", str(cifar_dir), "--out", str(out)]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"resnet5m: error: could not write {out / 'checkpoint.pt'}: No space left")
    assert not out.exists() or _leftovers(out) == [] and not (out / "checkpoint.pt").exists()
