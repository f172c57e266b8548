"""Training: one config in, the per-epoch history out; checkpoints every epoch, exact resume.

The data set lives as one uint8 tensor on the training device. Each epoch's permutation and augmentation
parameters are drawn up front from a CPU generator (so a resumed run draws them again exactly) and reach the
device in one copy; each step then only indexes there. The loop asks the device for nothing per step: losses
and accuracies add up on the device, and a non-finite loss is looked at every SYNC_EVERY steps. Under
`torchrun` the same code runs data-parallel: every rank draws the same plan and takes its own rows of each
global batch.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from . import augment
from .averaging import EMA, Lookahead, ema_warmup
from .config import TrainConfig, check_config, command_line, config_from_args, parse_progressive, weights_name
from .data import load_split, model_input
from .distill import Teacher, distillation_loss
from .distributed import Dist, init_distributed, leave, sum_over_ranks, sync_from_rank0
from .errors import UserError
from .evaluate import evaluate, views_text
from .model import build_model
from .optim import batchnorms, make_optimizer, make_scheduler
from .runfolder import CHECKPOINT, RUN_FORMAT, read_run, write_run
from .runtime import auto_precision, autocast, configure_cuda, grad_scaler, pick_device, prepare, resolve_precision
from .text import plural
from .weights import save_weights

FIT_IMAGES = 5000  # training images a data-dependent initialisation looks at
SYNC_EVERY = 50  # steps between looks at the divergence flag: the loop's only host sync within an epoch
NEVER = 2**62  # the divergence flag's "no bad step yet"


def shard_totals(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, d: Dist, **kwargs) -> tuple[float, float, int]:
    """(loss, accuracy, n) over all ranks, each rank evaluating its own 1/world of the images."""
    res = evaluate(model, images[d.rank :: d.world], labels[d.rank :: d.world], **kwargs)
    correct = round(res.accuracy * res.n) if res.n else 0
    loss_sum, correct, n = sum_over_ranks([res.loss * res.n, correct, res.n], d)
    return loss_sum / max(n, 1), correct / max(n, 1), int(n)


def split_data(cfg: TrainConfig) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor] | None]:
    """(train images, labels) and the held-out (val images, labels), or None when val_size is 0."""
    images, labels = load_split("train", cfg.data_dir, download_missing=cfg.download)
    if cfg.val_size < 0 or cfg.val_size >= len(labels):
        raise UserError(f"--val-size must be in 0..{len(labels) - 1}, got {cfg.val_size}")
    n_train = len(labels) - cfg.val_size
    val = (images[n_train:], labels[n_train:]) if cfg.val_size else None
    train = (images[:n_train], labels[:n_train])
    if cfg.subset:
        train = (train[0][: cfg.subset], train[1][: cfg.subset])
    return train, val


class Tally:
    """An epoch's running figures, kept on the device: loss sum, correct count, first step with a non-finite loss."""

    def __init__(self, device: torch.device) -> None:
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.bad_step = torch.full((), NEVER, dtype=torch.int64, device=device)
        self.bad_loss = torch.zeros((), device=device)

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, step: int) -> None:
        loss = loss.detach()
        self.loss_sum += loss * len(labels)
        self.correct += (logits.argmax(1) == labels).sum()
        first = ~torch.isfinite(loss) & (self.bad_step == NEVER)
        self.bad_step = torch.where(first, step, self.bad_step)
        self.bad_loss = torch.where(first, loss, self.bad_loss)

    def check(self, epoch: int) -> None:
        """Stop with one line naming the epoch and step, if any loss so far was not finite (a host sync)."""
        step = int(self.bad_step)
        if step != NEVER:
            raise UserError(
                f"training diverged: loss is {self.bad_loss.item()} at epoch {epoch + 1}, step {step + 1}; "
                "lower --lr or check the data"
            )

    def sums(self) -> list[float]:
        """[loss sum, correct count], read from the device at once."""
        return torch.stack([self.loss_sum, self.correct.to(self.loss_sum.dtype)]).tolist()


class Trainer:
    """Holds the state of one run: model, optimizer, schedule, weight averages, data and history."""

    def __init__(self, cfg: TrainConfig) -> None:
        check_config(cfg)
        self.cfg = cfg
        self.device = pick_device(cfg.device)
        self.precision = resolve_precision(self.device, cfg.precision)  # what auto means on this device
        self.dist = init_distributed(self.device)
        if cfg.batch_size % self.dist.world:  # DDP averages rank gradients with equal weight: shards must be equal
            world = self.dist.world
            raise UserError(f"--batch-size {cfg.batch_size} does not divide by the {world} ranks; give a multiple of {world}")
        if cfg.sync_bn and self.dist.active and self.device.type != "cuda":
            raise UserError("--sync-bn needs CUDA GPUs (SyncBatchNorm has no CPU kernel); drop it for CPU runs")
        if self.device.type == "cuda":
            configure_cuda(cfg.deterministic)
        self.out = Path(cfg.out)
        # Before the data and the seed: a missing teacher fails at once, and its loading draws nothing the run sees.
        teacher = Teacher(cfg.teacher, self.device) if cfg.teacher else None
        self.teacher_sha256 = teacher.sha256 if teacher else None
        self.teacher = None if cfg.kd_cache else teacher  # the one that runs on each batch
        torch.manual_seed(cfg.seed)
        self.model = prepare(build_model(cfg.arch), self.device)
        for m in batchnorms(self.model):
            m.momentum = cfg.bn_momentum
        (self.train_x, self.train_y), self.val = split_data(cfg)
        if hasattr(self.model, "fit_to_data") and not cfg.resume:  # data-dependent init (fast net's whitening)
            self.model.fit_to_data(model_input(self.train_x[:FIT_IMAGES], 32).to(self.device))
        # Padded once; each step gathers its crops from here. Kept on the training device.
        self.padded = augment.reflect_pad(self.train_x, cfg.crop_pad).to(self.device)
        self.train_y = self.train_y.to(self.device)
        self.soft = self.cache_teacher(teacher) if cfg.kd_cache else None  # (n, 2 flips, classes) with --kd-cache
        n = len(self.train_y)
        # Alternating flips: every image is seen both ways within any two epochs, which random flips
        # leave to chance (half of the images would show the same side twice); matters most for short runs.
        self.first_flip = torch.rand(n, generator=torch.Generator().manual_seed(cfg.seed)) < 0.5
        self.steps_per_epoch = max(n // cfg.batch_size, 1)  # drop the ragged last batch (BatchNorm needs > 1 image)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.sizes = parse_progressive(cfg.progressive, cfg.epochs)
        self.optimizer = make_optimizer(self.model, cfg)
        self.scheduler = make_scheduler(self.optimizer, cfg, self.steps_per_epoch)
        self.scaler = grad_scaler(self.device, self.precision)  # fp16 only: scaled losses keep small gradients
        self.ema = EMA(self.model, cfg.ema_decay) if cfg.ema else None
        self.lookahead = Lookahead(self.model, self.steps_per_epoch, self.total_steps) if cfg.lookahead else None
        self.history: list[dict] = []
        self.epoch = 0  # epochs completed
        self.net: nn.Module = self.model
        if self.dist.active:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # SyncBatchNorm swaps the BN modules of self.model in place; it shares their parameters and buffers.
            net = nn.SyncBatchNorm.convert_sync_batchnorm(self.model) if cfg.sync_bn else self.model
            self.net = nn.parallel.DistributedDataParallel(net, device_ids=ids)
        if cfg.compile:
            self.net = torch.compile(self.net)

    def cache_teacher(self, teacher: Teacher) -> torch.Tensor:
        """The teacher's logits for every training image, as is and mirrored, computed here once (and said how fast)."""
        start = time.perf_counter()
        soft = teacher.cached_logits(self.train_x, self.precision)
        if self.dist.main:  # also when quiet: a one-off cost that a run's timing should show
            seconds = time.perf_counter() - start
            print(f"teacher logits cached: {2 * len(soft):,} views in {seconds:.1f} s ({2 * len(soft) / seconds:.0f} images/s)",
                  flush=True)  # fmt: skip
        return soft

    # --- checkpoints -------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "format": RUN_FORMAT,
            "config": asdict(self.cfg),
            "arch": self.cfg.arch,
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.model.state_dict() if self.ema else None,
            "lookahead": self.lookahead.model.state_dict() if self.lookahead else None,
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "teacher_sha256": self.teacher_sha256,
            "rng": self.rng_state(),
            "history": self.history,
        }

    def rng_state(self) -> dict:
        # Augmentations draw from CPU generators; the CUDA state is kept too, for anything drawn on the card.
        state = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def save_checkpoint(self) -> None:
        if self.dist.main:
            write_run(self.out, self.state(), self.history)

    def load_checkpoint(self) -> None:
        state = read_run(self.out, self.cfg, self.device)
        if state.get("teacher_sha256") != self.teacher_sha256:
            raise UserError(f"cannot resume {self.out}: --teacher {self.cfg.teacher} is not the file this run was distilled "
                            f"from (sha256 {state.get('teacher_sha256')}); pass that file")  # fmt: skip
        before = state["history"][-1].get("precision") if state["history"] else None
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema:
            self.ema.model.load_state_dict(state["ema"])
        if self.lookahead:
            self.lookahead.model.load_state_dict(state["lookahead"])
        if self.scaler and state.get("scaler"):  # a run resumed in fp16 after bf16 starts a fresh scaler
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"].cpu())
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"].cpu(), self.device)
        self.epoch, self.history = state["epoch"], state["history"]
        if before and before != self.precision and self.dist.main:
            print(f"resuming in {self.precision} a run trained in {before} so far: it goes on, but not bitwise as it "
                  "would have (each epoch's precision is in its history)", flush=True)  # fmt: skip

    # --- one epoch -----------------------------------------------------------------------------
    def epoch_plan(self, epoch: int) -> dict[str, torch.Tensor]:
        """This rank's image indices and augmentation parameters for every step of an epoch: (steps, rows) each.

        Drawn on the CPU in the order a per-step draw would take (so runs and resumes repeat exactly), then packed
        into one tensor and copied to the device once (pinned and asynchronous on CUDA), not once per step.
        """
        cfg = self.cfg
        g = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)  # per epoch: resume-exact
        n = len(self.train_y)
        perm = torch.randperm(n, generator=g)
        b = min(cfg.batch_size, n)
        steps = []
        for step in range(self.steps_per_epoch):
            idx = perm[step * b : (step + 1) * b]
            params = augment.draw_params(len(idx), cfg.crop_pad, cfg.cutout, g)
            if cfg.alternate_flip:
                params["flip"] = self.first_flip[idx] ^ bool(epoch % 2)
            if not cfg.flip:
                params["flip"].zero_()
            steps.append({"idx": idx, **{k: v for k, v in params.items() if v.numel()}})  # no cutout: no centres
        names = list(steps[0])
        packed = torch.stack([torch.stack([s[k].long() for k in names], -1) for s in steps])  # (steps, b, fields)
        packed = packed[:, self.dist.rank :: self.dist.world]  # this rank's rows of each global batch
        if self.device.type == "cuda":
            packed = packed.pin_memory()
        packed = packed.to(self.device, non_blocking=True)
        return {k: packed[..., i] for i, k in enumerate(names)}

    def batch(self, plan: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(augmented uint8 images, labels) of one step, gathered on the device."""
        idx = plan["idx"][step]
        params = {k: v[step] for k, v in plan.items() if k != "idx"}
        params["flip"] = params["flip"].bool()
        return augment.apply(self.padded[idx], params, self.cfg.cutout), self.train_y[idx]

    def step(self, plan: dict[str, torch.Tensor], i: int, size: int, frozen: nn.Parameter | None, tally: Tally) -> None:
        """Optimizer step i of an epoch's plan, at size x size pixels. Nothing in it waits for the device."""
        cfg = self.cfg
        images, y = self.batch(plan, i)
        x = model_input(images, size)
        with autocast(self.device, self.precision):
            logits = self.net(x)
            target = self.soft_target(plan, i, images, x, size)
        loss = distillation_loss(logits.float(), target, y, weight=cfg.kd_weight, temperature=cfg.kd_temperature,
                                 label_smoothing=cfg.label_smoothing)  # fmt: skip
        self.optimizer.zero_grad(set_to_none=True)
        (self.scaler.scale(loss) if self.scaler else loss).backward()
        if frozen is not None:
            frozen.grad = None  # the optimizers skip a parameter without a gradient (DDP-safe, unlike requires_grad)
        self.update()
        tally.add(loss, logits, y, i)

    def soft_target(
        self, plan: dict[str, torch.Tensor], i: int, images: torch.Tensor, x: torch.Tensor, size: int
    ) -> torch.Tensor | None:
        """The teacher's logits for step i's batch (None without a teacher): looked up in the cache, or computed."""
        if self.soft is not None:
            return self.soft[plan["idx"][i], plan["flip"][i]]  # (B, classes): each image's row, by its flip
        if self.teacher is None:
            return None
        # The teacher sees the same augmented batch at full size: at a progressive epoch's 16 px it is far less right.
        return self.teacher(x if size == 32 else model_input(images, 32))

    def update(self) -> None:
        """Apply the gradients, then advance the schedule and the weight averages by one step."""
        if self.scaler:
            # Skips the step when fp16 gradients overflowed, and lowers the scale. Deciding that reads the overflow
            # flag on the host: GradScaler's one sync per step, the cost of fp16 (bf16 and fp32 have none).
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        with warnings.catch_warnings():  # a skipped first step makes torch warn about the call order; the order is right
            warnings.filterwarnings("ignore", re.escape("Detected call of `lr_scheduler.step()` before `optimizer.step()`"))
            self.scheduler.step()
        done = self.scheduler.last_epoch  # optimizer steps taken, this one included (LambdaLR counts steps)
        if self.ema:
            self.ema.update(ema_warmup(self.cfg.ema_decay, done - 1))
        if self.lookahead:
            self.lookahead.step(done)

    def train_epoch(self, epoch: int, size: int) -> dict:
        """One pass over the training images at size x size pixels; returns the epoch's figures."""
        cfg = self.cfg
        self.net.train()
        # airbench94's choice: the whitening layer's shift is learned early on, then held.
        frozen = self.model.whiten.bias if cfg.whiten_bias_epochs and epoch >= cfg.whiten_bias_epochs else None
        tally = Tally(self.device)
        start = time.perf_counter()
        plan = self.epoch_plan(epoch)
        bar = dict(desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step", disable=cfg.quiet or not self.dist.main, leave=False)
        for i in tqdm(range(self.steps_per_epoch), **bar):
            self.step(plan, i, size, frozen, tally)
            if (i + 1) % SYNC_EVERY == 0:
                tally.check(epoch)
        tally.check(epoch)
        if self.lookahead:
            self.lookahead.epoch_end(self.scheduler.last_epoch)
        if self.dist.active:
            for module in (self.model, self.ema and self.ema.model, self.lookahead and self.lookahead.model):
                if module is not None:  # BN statistics (and their averages): rank 0's, so all ranks validate and save the same
                    sync_from_rank0(module)
        seen = self.steps_per_epoch * plan["idx"].shape[1]
        loss_sum, correct, seen = sum_over_ranks([*tally.sums(), seen], self.dist)
        seconds = time.perf_counter() - start
        return {"train_loss": loss_sum / seen, "train_acc": correct / seen, "seconds": seconds, "images_per_s": seen / seconds}

    def eval_model(self) -> nn.Module:
        return self.ema.model if self.ema else self.model

    def run(self) -> list[dict]:
        cfg = self.cfg
        if cfg.resume:
            self.load_checkpoint()
        elif (self.out / CHECKPOINT).exists():
            raise UserError(f"{self.out} already holds a run; pass --resume to continue it or choose another --out")
        if self.dist.main:
            world = f" x {self.dist.world} ranks" if self.dist.world > 1 else ""
            why = f" (auto: {auto_precision(self.device)[1]})" if cfg.precision == "auto" else ""
            print(f"training {cfg.arch} on {self.device}{world}, precision {self.precision}{why}", flush=True)
        try:
            while self.epoch < cfg.epochs:
                self.history.append(self.one_epoch())
                self.epoch += 1
                self.save_checkpoint()
        except KeyboardInterrupt:
            if self.dist.main:
                print(
                    f"\ninterrupted in epoch {self.epoch + 1}; the last checkpoint ({plural(self.epoch, 'epoch')}) is in "
                    f"{self.out / CHECKPOINT}; continue with --resume",
                    file=sys.stderr,
                )
            raise
        return self.history

    def one_epoch(self) -> dict:
        epoch, size = self.epoch, self.sizes[self.epoch]
        row = {"epoch": epoch + 1, "size": size, "lr": self.optimizer.param_groups[0]["lr"], "precision": self.precision}
        row.update(self.train_epoch(epoch, size))
        row["lr_end"] = self.optimizer.param_groups[0]["lr"]  # "lr" is the first step's: 0 at the start of a warmup
        if self.val is not None:
            # Validated at the epoch's training size: a net trained at 16 px scores far lower at 32 px until
            # its full-size epochs (BN statistics and object scale), which would hide its progress.
            cfg = self.cfg
            loss, acc, _ = shard_totals(self.eval_model(), *self.val, self.dist, device=self.device, tta=cfg.tta,
                                        tta_shift=cfg.tta_shift, precision=self.precision, progress=False, size=size)  # fmt: skip
            row.update(val_loss=loss, val_acc=acc)
        if self.dist.main:
            val = f"  val loss {row['val_loss']:.4f} acc {100 * row['val_acc']:.2f}%" if "val_acc" in row else ""
            print(
                f"epoch {epoch + 1:3d}/{self.cfg.epochs} {size}px  train loss {row['train_loss']:.4f} "
                f"acc {100 * row['train_acc']:.2f}%{val}  lr {row['lr']:.3g}->{row['lr_end']:.3g}  {row['seconds']:.0f}s "
                f"{row['images_per_s']:.0f} img/s",
                flush=True,
            )
        return row


def finished_run(cfg: TrainConfig) -> list[dict] | None:
    """The history of a run resumed after all its epochs, with its weights saved (said in one line); else None.

    Such a run is left alone: nothing is trained, evaluated or saved again, so its weights keep their sha256.
    """
    out = Path(cfg.out)
    weights = out / weights_name(cfg.arch)
    if not (cfg.resume and weights.is_file() and (out / CHECKPOINT).is_file()):
        return None
    state = read_run(out, cfg, torch.device("cpu"))  # another recipe is refused here, as on any resume
    if state["epoch"] < cfg.epochs:
        return None
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, once
        print(f"{out} already finished ({plural(state['epoch'], 'epoch')}); its weights are {weights}, left as they are",
              flush=True)  # fmt: skip
    return state["history"]


def train(cfg: TrainConfig) -> list[dict]:
    """Train (or resume) a run as configured; save final weights in the run folder; return the history."""
    history = finished_run(cfg)
    if history is not None:
        return history
    trainer = Trainer(cfg)
    history = trainer.run()
    metrics: dict = {}
    if history and "val_acc" in history[-1]:
        metrics.update(val_acc=history[-1]["val_acc"], val_n=cfg.val_size)
    if cfg.test:
        images, labels = load_split("test", cfg.data_dir, download_missing=cfg.download)
        loss, acc, n = shard_totals(trainer.eval_model(), images, labels, trainer.dist, device=trainer.device, tta=cfg.tta,
                                    tta_shift=cfg.tta_shift, precision=trainer.precision, progress=not cfg.quiet)  # fmt: skip
        metrics.update(test_acc=acc, test_n=n, test_loss=loss)
        if trainer.dist.main:
            print(f"test accuracy {100 * acc:.2f}% on {n:,} images{views_text(cfg.tta, cfg.tta_shift)}", flush=True)
    if trainer.dist.main:
        path = trainer.out / weights_name(cfg.arch)
        extra = {
            "command": command_line(cfg),
            "seed": cfg.seed,
            "data": {"train_images": len(trainer.train_y), "val_images": cfg.val_size},
        }
        digest = save_weights(
            path,
            trainer.eval_model(),
            cfg.arch,
            metrics=metrics,
            # the precision used, not "auto"; the teacher by content, not only by path
            recipe={**asdict(cfg), "precision": trainer.precision, "teacher_sha256": trainer.teacher_sha256},
            history=history,
            extra=extra,
            overwrite=True,
        )
        print(f"saved weights to {path} (sha256 {digest})", flush=True)
    leave(trainer.dist)
    return history


def cmd_train(args: argparse.Namespace) -> dict:
    cfg = config_from_args(args)
    history = train(cfg)
    return {"history": history}
