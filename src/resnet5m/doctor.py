"""`resnet5m doctor`: can this machine run the project, and how fast.

Versions, devices and the precision `auto` picks (and why); then, on every device at hand, a few real training steps
of the fast net in each precision the device supports, one evaluation pass, a save -> resume round trip that must
come back bitwise, and on CUDA a run through DDP over NCCL (two ranks with two or more GPUs). It trains on generated
images (resnet5m.synthetic), so it needs no CIFAR-10 and nothing beyond torch, torchvision and numpy: a GPU machine
runs it first, and the notebook's setup prints its one-line summary.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .argtypes import positive_int
from .config import TrainConfig, recipe
from .data import load_split
from .errors import UserError
from .evaluate import evaluate
from .model import build_model
from .runfolder import CHECKPOINT
from .runtime import auto_precision, pick_device, prepare
from .synthetic import write_cifar
from .train import Trainer, train


@dataclass
class Check:
    """One check's outcome: `ok` is None when it was skipped."""

    name: str
    device: str
    ok: bool | None
    detail: str = ""
    images_per_s: float | None = None


def cpu_name() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what platform reports."""
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def versions() -> dict:
    """Python, torch, torchvision, numpy, CUDA and cuDNN versions (None where absent)."""
    import numpy
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
    }


def devices_at_hand() -> list[torch.device]:
    """The CPU, the first CUDA card and MPS, where present."""
    found = [torch.device("cpu")]
    if torch.cuda.is_available():
        found.append(torch.device("cuda", 0))
    if torch.backends.mps.is_available():
        found.append(torch.device("mps"))
    return found


def describe(device: torch.device) -> dict:
    """Name, and for a CUDA card its compute capability and memory, of a device."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return {"device": str(device), "name": props.name, "capability": f"{props.major}.{props.minor}",
                "memory_gib": round(props.total_memory / 2**30, 1)}  # fmt: skip
    if device.type == "cpu":
        return {"device": "cpu", "name": cpu_name(), "threads": torch.get_num_threads()}
    return {"device": str(device), "name": device.type}


def precisions_for(device: torch.device) -> list[str]:
    """The precisions worth training in on a device.

    CPU: fp32 and bf16 (fp16 convolution backward has no fast CPU kernel: about 100x slower). CUDA: fp32, fp16 with
    loss scaling, and bf16 from compute capability 8.0 on. MPS: fp32.
    """
    if device.type == "cpu":
        return ["fp32", "bf16"]
    if device.type == "cuda":
        return ["fp32", "fp16"] + (["bf16"] if torch.cuda.get_device_capability(device)[0] >= 8 else [])
    return ["fp32"]


def summary_line(device: torch.device | None = None) -> str:
    """One line for the notebook's setup: the device, the precision auto picks there, and why."""
    device = device or pick_device()
    info = describe(device)
    if device.type == "cuda":
        what = f"{info['name']}, {info['memory_gib']} GiB, compute capability {info['capability']}"
    elif device.type == "cpu":
        what = f"{info['name']}, {info['threads']} threads"
    else:
        what = info["name"]
    precision, why = auto_precision(device)
    line = f"device {device} ({what}); precision {precision}: {why}"
    if device.type == "cpu":
        line += "; no GPU: training is slow here (in Colab: Runtime > Change runtime type > T4 GPU)"
    return line


def quietly(fn: Callable, *args, **kwargs):
    """Run fn with its prints (the training lines) swallowed: the doctor reports its own table."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)


def check_training(device: torch.device, precision: str, data: Path, out: Path, steps: int, batch_size: int) -> Check:
    """`steps` real training steps of the fast net's recipe, timed after one warm-up epoch of as many."""
    cfg = recipe("fast", epochs=2, batch_size=batch_size, subset=steps * batch_size, val_size=0, device=str(device),
                 precision=precision, data_dir=str(data), out=str(out), quiet=True, download=False)  # fmt: skip
    trainer = quietly(Trainer, cfg)
    trainer.train_epoch(0, 32)  # kernel choice and autotuning happen here
    row = trainer.train_epoch(1, 32)
    ok = math.isfinite(row["train_loss"])
    return Check(f"train fast {precision}", str(device), ok, f"loss {row['train_loss']:.3f}", row["images_per_s"])


def check_evaluate(device: torch.device, data: Path) -> Check:
    """One evaluation pass of a fresh fast net over the generated test images, with the fast recipe's 6 views."""
    images, labels = load_split("test", data)
    torch.manual_seed(0)
    model = prepare(build_model("fast"), device)
    result = evaluate(model, images, labels, device=device, tta=True, tta_shift=1, progress=False)
    ok = result.n == len(labels) and 0 <= result.accuracy <= 1
    return Check("evaluate fast", str(device), ok, f"{result.n} images, 6 views", result.images_per_s)


def check_resume(device: torch.device, data: Path, out: Path) -> Check:
    """Two epochs straight, and one epoch + save + resume for the second: the weights must be bitwise equal."""
    kw = dict(arch="tiny", epochs=2, batch_size=32, subset=128, val_size=32, data_dir=str(data), quiet=True,
              download=False, device=str(device), deterministic=True)  # fmt: skip
    quietly(train, TrainConfig(**kw, out=str(out / "straight")))
    first = quietly(Trainer, TrainConfig(**kw, out=str(out / "cut")))
    first.history.append(quietly(first.one_epoch))
    first.epoch += 1
    first.save_checkpoint()
    quietly(train, TrainConfig(**kw, out=str(out / "cut"), resume=True))
    a, b = (torch.load(out / run / CHECKPOINT, weights_only=True)["model"] for run in ("straight", "cut"))
    same = all(torch.equal(a[k], b[k]) for k in a)
    return Check("save -> resume", str(device), same, "bitwise identical" if same else "the resumed weights differ")


def _rank_main(rank: int, world: int, port: int, device_type: str, data: str, out: str) -> None:
    """One rank of check_ranks, in its own process: the environment torchrun would give it, then a real run."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))  # fmt: skip
    torch.set_num_threads(1)
    cuda = device_type == "cuda"
    cfg = TrainConfig(arch="tiny", epochs=1, batch_size=32 * world, subset=128, val_size=32, data_dir=data, out=out,
                      quiet=True, download=False, device=device_type, sync_bn=cuda, deterministic=True)  # fmt: skip
    quietly(train, cfg)


RANKS_TIMEOUT_S = 300  # a 2-rank tiny run takes seconds; a process group can hang (seen once at teardown, torch 2.5)


def check_ranks(world: int, device_type: str, data: Path, out: Path, timeout_s: float = RANKS_TIMEOUT_S) -> Check:
    """A data-parallel run of `world` ranks (NCCL on CUDA, with SyncBatchNorm; gloo on the CPU) through DDP.

    Ranks still running after timeout_s are stopped and the check fails: a hung rank must not hang the doctor.
    """
    import torch.multiprocessing as mp

    with socket.socket() as s:  # a free port on the loopback for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = "nccl" if device_type == "cuda" else "gloo"
    name = f"{world}-rank {backend}"
    args = (world, port, device_type, str(data), str(out))
    context = mp.start_processes(_rank_main, args=args, nprocs=world, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    try:
        while not context.join(timeout=0.5):
            if time.monotonic() > deadline:
                hung = ", ".join(str(rank) for rank, p in enumerate(context.processes) if p.is_alive())
                for p in context.processes:
                    p.kill()
                    p.join()
                detail = f"rank {hung} still running after {timeout_s:g} s: stopped (a hung process group)"
                return Check(name, device_type, False, detail)
    except Exception as e:  # a rank's failure comes back as a ProcessRaisedException with its traceback
        return Check(name, device_type, False, f"{type(e).__name__}: {str(e).strip().splitlines()[-1]}")
    saved = (out / "resnet5m_tiny.pt").is_file()
    return Check(name, device_type, saved, "DDP run saved its weights" if saved else "no weights saved")


def run_one(name: str, device: torch.device | str, check: Callable[..., Check], *args) -> Check:
    """check(*args); an exception inside it is that check's failure, not the end of the doctor."""
    start = time.perf_counter()
    try:
        return check(*args)
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        return Check(name, str(device), False, f"{type(e).__name__} after {time.perf_counter() - start:.0f}s: {first}")


def run_checks(steps: int = 3) -> dict:
    """Every check on every device at hand; the report as a dict (its "ok" is False when any check failed)."""
    checks: list[Check] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for device in devices_at_hand():
            batch = 64 if device.type == "cpu" else 512
            data = write_cifar(root / f"data-{device.type}", per_batch=max(steps * batch // 5, 64), n_test=batch)
            for precision in precisions_for(device):
                out = root / f"train-{device.type}-{precision}"
                checks.append(run_one(f"train fast {precision}", device, check_training, device, precision, data, out,
                                      steps, batch))  # fmt: skip
            checks.append(run_one("evaluate fast", device, check_evaluate, device, data))
            checks.append(run_one("save -> resume", device, check_resume, device, data, root / f"resume-{device.type}"))
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if gpus:
            world = min(gpus, 2)
            checks.append(run_one(f"{world}-rank nccl", "cuda", check_ranks, world, "cuda", root / "data-cuda", root / "ranks"))
        else:
            checks.append(Check("2-rank nccl", "cuda", None, "skipped: no CUDA GPU"))
    ran = [c for c in checks if c.ok is not None]
    return {
        "versions": versions(),
        "devices": [describe(d) for d in devices_at_hand()],
        "auto": {str(d): dict(zip(("precision", "why"), auto_precision(d), strict=True)) for d in devices_at_hand()},
        "checks": [asdict(c) for c in checks],
        "ok": all(c.ok for c in ran),
    }


def table(report: dict) -> str:
    """The report as text: versions, devices, auto precision, then one row per check."""
    v = report["versions"]
    cuda = f"CUDA {v['cuda']}" + (f" (cuDNN {v['cudnn']})" if v["cudnn"] else " build, no GPU visible")
    if not v["cuda"]:
        cuda = "CUDA: none (CPU-only torch build)"
    lines = [
        f"versions   Python {v['python']}, torch {v['torch']}, torchvision {v['torchvision']}, numpy {v['numpy']}, {cuda}",
        *(f"device     {d['device']}: " + ", ".join(f"{k} {val}" for k, val in d.items() if k != "device")
          for d in report["devices"]),
        *(f"auto       {name}: {a['precision']} ({a['why']})" for name, a in report["auto"].items()),
        "",
        f"{'check':<20} {'device':<8} {'result':<8} {'images/s':>9}  detail",
    ]  # fmt: skip
    for c in report["checks"]:
        result = "skipped" if c["ok"] is None else "ok" if c["ok"] else "FAILED"
        speed = f"{c['images_per_s']:9.0f}" if c["images_per_s"] else " " * 9
        lines.append(f"{c['name']:<20} {c['device']:<8} {result:<8} {speed}  {c['detail']}")
    failed = [c["name"] for c in report["checks"] if c["ok"] is False]
    ran = sum(c["ok"] is not None for c in report["checks"])
    lines.append(f"{len(failed)} of {ran} checks failed: {', '.join(failed)}" if failed else f"all {ran} checks passed")
    return "\n".join(lines)


def add_doctor_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=positive_int, default=3, help="timed training steps per precision (default: 3)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def cmd_doctor(args: argparse.Namespace) -> dict:
    report = run_checks(args.steps)
    if not args.json:
        print(table(report))
    if not report["ok"]:
        if args.json:
            print(json.dumps(report))
        failed = ", ".join(f"{c['name']} on {c['device']}" for c in report["checks"] if c["ok"] is False)
        raise UserError(f"doctor: failed {failed}; see the table above (or --json) for why")
    return report
