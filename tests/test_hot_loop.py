"""The training loop never waits on the device: no host sync per step, nothing per step built on the CPU.

A GPU runs a fast-net step in a few milliseconds; a sync drains its queue and the host can no longer run ahead.
Two CPU-side proofs: steps on the `meta` device (where any read of a value, or a stray CPU tensor, raises), and a
count of the device-to-host reads (`aten._local_scalar_dense`) over real epochs.
"""

import importlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from resnet5m.config import TrainConfig
from resnet5m.errors import UserError
from resnet5m.model import build_model
from resnet5m.train import SYNC_EVERY, Tally, Trainer
from resnet5m.weights import save_weights

TRAIN = importlib.import_module("resnet5m.train")  # the module: the package's `train` name is the function

TEACHER = "teacher.pt"  # a teacher file, written into each test's tmp_path by config()
RECIPES = {
    "ema": dict(ema=True, cutout=8, alternate_flip=True),
    "lookahead+muon": dict(lookahead=True, optimizer="muon", muon_lr=0.1, bn_bias_lr_scale=4),
    "teacher": dict(teacher=TEACHER, progressive="16:1"),  # at 16 px the teacher gets its own 32-px input
    "teacher, cached": dict(teacher=TEACHER, kd_cache=True),
}


def config(cifar_dir, out, **kw) -> TrainConfig:
    base = dict(arch="tiny", epochs=2, batch_size=8, lr=0.05, val_size=0, data_dir=str(cifar_dir), out=str(out),
                quiet=True, download=False, precision="fp32")  # fmt: skip
    if kw.get("teacher") == TEACHER:
        kw["teacher"] = str(out / TEACHER)
        save_weights(kw["teacher"], build_model("tiny"), "tiny", overwrite=True)
    return TrainConfig(**{**base, **kw})


class CrossDeviceCopies(TorchDispatchMode):
    """Counts copies whose source and result live on different devices (a CPU tensor sent to the device)."""

    def __init__(self) -> None:
        super().__init__()
        self.copies = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default):
            source = args[1] if func is torch.ops.aten.copy_.default else args[0]
            if isinstance(source, torch.Tensor) and isinstance(out, torch.Tensor) and source.device != out.device:
                self.copies += 1
        return out


class SyncCounter(TorchDispatchMode):
    """Counts the reads of a tensor's value into Python (.item(), bool(t), int(t), .tolist() of a device tensor)."""

    def __init__(self) -> None:
        super().__init__()
        self.syncs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.syncs += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("recipe", RECIPES)
def test_steps_run_on_the_meta_device(cifar_dir, tmp_path, recipe):
    # lookahead starts after 3 epochs of steps: with 100 steps an epoch, step 300 on it runs inside this test.
    trainer = Trainer(config(cifar_dir, tmp_path, device="meta", epochs=4, **RECIPES[recipe]))
    assert trainer.padded.is_meta and next(trainer.model.parameters()).is_meta
    plan = trainer.epoch_plan(0)
    assert all(t.is_meta for t in plan.values())
    tally = Tally(trainer.device)
    trainer.scheduler.last_epoch = 3 * trainer.steps_per_epoch - 12  # so that the lookahead's first steps come up
    with CrossDeviceCopies() as copies:
        for i in range(20):
            trainer.step(plan, i, trainer.sizes[0], None, tally)
    assert copies.copies == 0  # the plan, mean/std and the running figures are on the device already
    assert tally.loss_sum.is_meta and tally.bad_step.is_meta
    with pytest.raises(RuntimeError, match="meta"):
        tally.check(0)  # the only read: every SYNC_EVERY steps, not in a step


@pytest.mark.parametrize("recipe", RECIPES)
def test_an_epoch_reads_the_device_once_per_sync_interval(cifar_dir, tmp_path, recipe, monkeypatch):
    # Every 5 steps rather than 50 here, so that 26 steps show it (dispatch-mode steps are slow). With the real
    # interval a 125-step epoch reads 3 times, where the loop used to read the loss at every step.
    monkeypatch.setattr(TRAIN, "SYNC_EVERY", 5)
    trainer = Trainer(config(cifar_dir, tmp_path, subset=26 * 8, **RECIPES[recipe]))
    steps = trainer.steps_per_epoch
    assert steps == 26 and SYNC_EVERY == 50
    with SyncCounter() as counter:
        row = trainer.train_epoch(0, trainer.sizes[0])
    # int(flag) at steps 5, 10, ..., 25 and at the end (the epoch's sums are read with .tolist(), not counted on the CPU)
    assert counter.syncs == steps // 5 + 1, counter.syncs
    assert 0 < row["train_loss"] < 10


def test_a_nan_loss_stops_within_the_sync_interval_naming_its_step(cifar_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(TRAIN, "SYNC_EVERY", 10)
    trainer = Trainer(config(cifar_dir, tmp_path))
    real = torch.nn.functional.cross_entropy
    calls = []

    def poisoned(*args, **kwargs):  # the loss of step 7 (1-based) and every later one is NaN
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) >= 7 else loss

    monkeypatch.setattr("resnet5m.distill.F.cross_entropy", poisoned)
    with pytest.raises(UserError, match=r"training diverged: loss is nan at epoch 1, step 7; lower --lr"):
        trainer.train_epoch(0, 32)
    assert len(calls) == 10  # found at the first look, after step 10
