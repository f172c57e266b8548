import json
import math

import pytest
import torch

from resnet5m.config import TrainConfig, parse_progressive
from resnet5m.errors import UserError
from resnet5m.optim import lr_factor
from resnet5m.runfolder import CHECKPOINT, HISTORY
from resnet5m.train import Trainer, train


def config(cifar_dir, out, **kw) -> TrainConfig:
    base = dict(arch="tiny", epochs=2, batch_size=100, lr=0.1, val_size=200, data_dir=str(cifar_dir),
                out=str(out), quiet=True, download=False)  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def test_fast_net_whitening_is_fitted_from_the_training_images(cifar_dir, tmp_path):
    trainer = Trainer(config(cifar_dir, tmp_path, arch="fast", batch_size=50, subset=100))
    filters = trainer.model.whiten.weight
    assert filters.abs().sum() > 0 and torch.equal(filters[:12], -filters[12:])
    assert "whiten.weight" in trainer.model.state_dict() and not filters.requires_grad  # fixed, never trained
    assert not any(p is filters for g in trainer.optimizer.param_groups for p in g["params"])


def test_smoke_training_learns(cifar_dir, tmp_path):
    history = train(config(cifar_dir, tmp_path, epochs=4, test=True))
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_acc"] > 0.5  # chance is 0.1
    saved = torch.load(tmp_path / "resnet5m_tiny.pt", weights_only=True)
    assert saved["metrics"]["test_n"] == 200 and saved["metrics"]["test_acc"] > 0.5
    assert saved["recipe"]["epochs"] == 4 and len(saved["history"]) == 4


def test_history_file_fields(cifar_dir, tmp_path):
    train(config(cifar_dir, tmp_path, epochs=1, progressive="16:1"))
    (row,) = json.loads((tmp_path / HISTORY).read_text())
    assert set(row) >= {"epoch", "size", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "seconds", "images_per_s"}
    assert row["size"] == 16 and row["epoch"] == 1


def test_no_validation_when_val_size_is_zero(cifar_dir, tmp_path):
    history = train(config(cifar_dir, tmp_path, epochs=1, val_size=0))
    assert "val_acc" not in history[0]


def tensors(part: dict) -> list[torch.Tensor]:
    """The tensors of a checkpoint part: a state dict, or an optimizer's per-parameter state (momenta)."""
    if "param_groups" in part:
        return [t for state in part["state"].values() for t in state.values()]
    return list(part.values())


@pytest.mark.parametrize(
    "kw, averaged",
    [
        (dict(epochs=3, ema=True, cutout=8, progressive="16:1", seed=3), "ema"),
        # 8 steps an epoch: the lookahead starts at step 25 (epoch 4), so cutting after epoch 4 splits it.
        (dict(epochs=5, lookahead=True, alternate_flip=True, bn_momentum=0.4, seed=4), "lookahead"),
        (dict(epochs=3, optimizer="muon", muon_lr=0.1, bn_bias_lr_scale=4, seed=5), "optimizer"),
    ],
)
def test_resume_is_bitwise_identical(cifar_dir, tmp_path, kw, averaged):
    train(config(cifar_dir, tmp_path / "straight", **kw))

    first = Trainer(config(cifar_dir, tmp_path / "cut", **kw))
    for _ in range(kw["epochs"] - 1):  # all but one epoch, then the process "dies"
        first.history.append(first.one_epoch())
        first.epoch += 1
    first.save_checkpoint()
    del first
    train(config(cifar_dir, tmp_path / "cut", resume=True, **kw))

    a = torch.load(tmp_path / "straight" / CHECKPOINT, weights_only=True)
    b = torch.load(tmp_path / "cut" / CHECKPOINT, weights_only=True)
    for part in ("model", averaged):
        for i, (x, y) in enumerate(zip(tensors(a[part]), tensors(b[part]), strict=True)):
            assert torch.equal(x, y), f"{part}: tensor {i} differs"
    assert a["history"][-1]["val_loss"] == b["history"][-1]["val_loss"]


def test_lookahead_ends_each_epoch_on_the_average(cifar_dir, tmp_path):
    trainer = Trainer(config(cifar_dir, tmp_path, epochs=5, lookahead=True))
    assert trainer.lookahead.first == 25  # first multiple of 5 after 3 epochs of 8 steps
    steps = []
    real = trainer.lookahead.average.update
    trainer.lookahead.average.update = lambda decay=None: (steps.append(decay), real(decay))
    for _ in range(5):
        trainer.one_epoch()
        trainer.epoch += 1
    assert len(steps) == 4 and steps[0] == 0.0  # steps 25, 30, 35, 40; the first copies the weights
    assert 0 < steps[1] < steps[2] < steps[3] < 1  # the decay grows over the run
    live, avg = trainer.model.state_dict(), trainer.lookahead.model.state_dict()
    assert all(torch.equal(live[k], avg[k]) for k in live if live[k].is_floating_point())
    with pytest.raises(UserError, match="choose one"):
        Trainer(config(cifar_dir, tmp_path / "both", ema=True, lookahead=True))


def test_interrupt_keeps_the_last_checkpoint(cifar_dir, tmp_path, monkeypatch):
    trainer = Trainer(config(cifar_dir, tmp_path, epochs=3))
    real = trainer.train_epoch

    def interrupted(epoch, size):
        if epoch == 1:
            raise KeyboardInterrupt
        return real(epoch, size)

    monkeypatch.setattr(trainer, "train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert state["epoch"] == 1
    assert len(train(config(cifar_dir, tmp_path, epochs=3, resume=True))) == 3


def test_existing_run_is_not_overwritten(cifar_dir, tmp_path):
    train(config(cifar_dir, tmp_path, epochs=1))
    before = (tmp_path / CHECKPOINT).read_bytes()
    with pytest.raises(UserError, match="already holds a run; pass --resume"):
        train(config(cifar_dir, tmp_path, epochs=1))
    assert (tmp_path / CHECKPOINT).read_bytes() == before


def test_resume_refuses_a_changed_recipe(cifar_dir, tmp_path):
    train(config(cifar_dir, tmp_path, epochs=1))
    with pytest.raises(UserError, match="recipe differs in lr"):
        train(config(cifar_dir, tmp_path, epochs=1, lr=0.5, resume=True))


def test_resume_without_checkpoint(cifar_dir, tmp_path):
    with pytest.raises(UserError, match="nothing to resume"):
        train(config(cifar_dir, tmp_path, resume=True))


def test_divergence_names_epoch_and_step(cifar_dir, tmp_path):
    with pytest.raises(UserError, match=r"loss is (nan|inf) at epoch 1, step \d+"):
        train(config(cifar_dir, tmp_path, lr=1e12, warmup_epochs=0, precision="fp32"))


def flips_seen(trainer: Trainer, epoch: int) -> dict[int, bool]:
    """Image index -> whether it came out mirrored, for every image of one epoch (crop_pad 0)."""
    originals = {bytes(x.numpy()): i for i, x in enumerate(trainer.train_x)}
    mirrored = {bytes(x.flip(-1).numpy()): i for i, x in enumerate(trainer.train_x)}
    seen = {}
    plan = trainer.epoch_plan(epoch)
    for step in range(trainer.steps_per_epoch):
        for x in trainer.batch(plan, step)[0]:
            key = bytes(x.numpy())
            seen[originals[key] if key in originals else mirrored[key]] = key not in originals
    return seen


def test_alternate_flip_shows_every_image_both_ways_in_two_epochs(cifar_dir, tmp_path):
    trainer = Trainer(config(cifar_dir, tmp_path, crop_pad=0, alternate_flip=True, batch_size=200))
    first, second, third = (flips_seen(trainer, e) for e in range(3))
    assert len(first) == 800 and 300 < sum(first.values()) < 500  # a random half, drawn once
    assert all(second[i] != first[i] for i in first) and third == first
    random_flips = Trainer(config(cifar_dir, tmp_path / "r", crop_pad=0, batch_size=200))
    a, b = flips_seen(random_flips, 0), flips_seen(random_flips, 1)
    assert 0 < sum(a[i] == b[i] for i in a) < 800  # at random, some images repeat their side


def test_whitening_bias_is_held_after_its_epochs(cifar_dir, tmp_path):
    trainer = Trainer(config(cifar_dir, tmp_path, arch="fast", batch_size=50, subset=100, epochs=2, whiten_bias_epochs=1))
    bias = trainer.model.whiten.bias
    trainer.train_epoch(0, 32)
    learned = bias.detach().clone()
    assert learned.abs().sum() > 0  # moved from its zero init in epoch 1
    trainer.train_epoch(1, 32)
    assert torch.equal(bias, learned)
    with pytest.raises(UserError, match="whiten-bias-epochs"):
        Trainer(config(cifar_dir, tmp_path / "seed", whiten_bias_epochs=1))
    with pytest.raises(UserError, match="lr-start"):
        Trainer(config(cifar_dir, tmp_path / "end", lr_end=1.5))


def test_lr_schedule_shape():
    # 100 steps (0..99), 10 of warmup: step 0 at the start value, step 10 at the peak, step 99 at the end value.
    assert lr_factor(0, 100, 10, "linear") == 0.0
    assert lr_factor(5, 100, 10, "linear") == pytest.approx(0.5)
    assert lr_factor(10, 100, 10, "linear") == 1.0
    assert lr_factor(10 + 89 // 2, 100, 10, "linear") == pytest.approx(1 - 44 / 89)
    assert lr_factor(54, 100, 10, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 44 / 89)))
    assert lr_factor(99, 100, 10, "linear") == 0.0 and lr_factor(99, 100, 10, "cosine") == 0.0
    # Warmup from 20% of the peak, decay to 7% of it (airbench's triangle): first and last step exactly.
    for schedule in ("linear", "cosine"):
        assert lr_factor(0, 100, 10, schedule, 0.2, 0.07) == pytest.approx(0.2)
        assert lr_factor(99, 100, 10, schedule, 0.2, 0.07) == pytest.approx(0.07)
        assert lr_factor(0, 100, 0, schedule, 0.2, 0.07) == 1.0  # no warmup: the first step at the peak


def test_trainer_first_and_last_step_use_lr_start_and_lr_end(cifar_dir, tmp_path):
    trainer = Trainer(config(cifar_dir, tmp_path, epochs=2, lr=0.1, lr_start=0.2, lr_end=0.05))
    lrs = []
    trainer.optimizer.register_step_pre_hook(lambda opt, args, kwargs: lrs.append(opt.param_groups[0]["lr"]))
    trainer.run()
    assert len(lrs) == trainer.total_steps == 16
    assert lrs[0] == pytest.approx(0.1 * 0.2) and lrs[-1] == pytest.approx(0.1 * 0.05) and max(lrs) == pytest.approx(0.1)


def test_progressive_spec():
    assert parse_progressive("16:2,24:1", 5) == [16, 16, 24, 32, 32]
    assert parse_progressive("", 2) == [32, 32]
    with pytest.raises(UserError, match="SIZE:EPOCHS"):
        parse_progressive("16-2", 5)


def test_no_weight_decay_on_batchnorm_and_bias(cifar_dir, tmp_path):
    trainer = Trainer(config(cifar_dir, tmp_path))
    decay, no_decay = trainer.optimizer.param_groups
    assert all(p.ndim > 1 for p in decay["params"]) and decay["weight_decay"] > 0
    assert all(p.ndim == 1 for p in no_decay["params"]) and no_decay["weight_decay"] == 0


def test_fast_net_learns_batchnorm_shifts_only_at_their_own_lr(cifar_dir, tmp_path):
    trainer = Trainer(config(cifar_dir, tmp_path, arch="fast", batch_size=50, subset=100, bn_bias_lr_scale=64))
    bns = [m for m in trainer.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    decay, other, shifts = trainer.optimizer.param_groups
    assert {id(p) for p in shifts["params"]} == {id(m.bias) for m in bns}
    assert shifts["lr"] == pytest.approx(64 * other["lr"]) and shifts["weight_decay"] == 0
    frozen = {id(m.weight) for m in bns}  # BN scales stay 1: in no group
    assert not frozen & {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert [p.numel() for p in other["params"]] == [24]  # the whitening bias
    trainer.run()
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in bns)


def test_command_line_reproduces_the_recipe():
    import argparse
    import shlex

    from resnet5m.config import PRESETS, add_train_arguments, command_line, config_from_args, recipe

    cfg = recipe("fast", lr=0.4, tta=False, progressive="24:5", out="runs/x", quiet=True)
    assert cfg.epochs == PRESETS["fast"]["epochs"] and cfg.batch_size == PRESETS["fast"]["batch_size"]
    assert command_line(cfg) == "resnet5m train --arch fast --lr 0.4 --progressive 24:5 --no-tta --out runs/x"
    assert command_line(TrainConfig(out="r")) == "resnet5m train --arch seed --out r"
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    for original in (cfg, recipe("seed", epochs=3, ema=True, out="r"), recipe("tiny", batch_size=8, out="r")):
        parsed = config_from_args(parser.parse_args(shlex.split(command_line(original))[2:]))
        assert parsed == TrainConfig(**{**vars(original), "quiet": False})  # quiet is runtime, not recorded
    with pytest.raises(TypeError):
        recipe("fast", no_such_field=1)


def test_ema_moves_towards_the_live_weights():
    from resnet5m.averaging import EMA
    from resnet5m.model import build_model

    model = build_model("tiny")
    ema = EMA(model, decay=0.75)
    before = model.linear.weight.detach().clone()
    with torch.no_grad():
        model.linear.weight.add_(1.0)
        model.bn1.num_batches_tracked.fill_(7)
    ema.update()
    assert torch.allclose(ema.model.linear.weight, before + 0.25)
    assert ema.model.bn1.num_batches_tracked.item() == 7


# fp16 convolution backward has no fast CPU kernel (~100x slower than bf16), so these runs are a few 16-px steps.
FP16 = dict(precision="fp16", subset=96, batch_size=32, progressive="16:3")


def test_fp16_with_loss_scaling_trains_resumes_bitwise_and_is_recorded(cifar_dir, tmp_path):
    kw = dict(FP16, epochs=3, seed=6)
    train(config(cifar_dir, tmp_path / "straight", **kw))
    first = Trainer(config(cifar_dir, tmp_path / "cut", **kw))
    assert first.scaler is not None and first.precision == "fp16"
    first.history.append(first.one_epoch())
    first.epoch += 1
    first.save_checkpoint()
    del first
    history = train(config(cifar_dir, tmp_path / "cut", resume=True, **kw))
    a = torch.load(tmp_path / "straight" / CHECKPOINT, weights_only=True)
    b = torch.load(tmp_path / "cut" / CHECKPOINT, weights_only=True)
    assert a["scaler"] == b["scaler"] and a["scaler"]["scale"] > 0
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [row["precision"] for row in history] == ["fp16"] * 3 and history[-1]["train_loss"] < history[0]["train_loss"]
    weights = torch.load(tmp_path / "cut" / "resnet5m_tiny.pt", weights_only=True)
    assert weights["recipe"]["precision"] == "fp16"


def test_scaler_skips_an_overflowing_step_without_stopping_the_run(cifar_dir, tmp_path):
    trainer = Trainer(config(cifar_dir, tmp_path, **FP16, epochs=1))
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**100)  # scaled fp16 gradients overflow
    before = trainer.model.linear.weight.detach().clone()
    row = trainer.one_epoch()  # finite loss, non-finite gradients: the steps are skipped, not a "diverged" stop
    assert trainer.scaler.get_scale() == 2.0 ** (100 - trainer.steps_per_epoch)  # halved at every skipped step
    assert torch.equal(before, trainer.model.linear.weight) and math.isfinite(row["train_loss"])


def test_resume_may_change_precision_and_history_shows_it(cifar_dir, tmp_path, capsys):
    kw = dict(FP16, epochs=2, progressive="16:2")
    first = Trainer(config(cifar_dir, tmp_path, **{**kw, "precision": "bf16"}))  # say, an A100 session
    first.history.append(first.one_epoch())
    first.epoch += 1
    first.save_checkpoint()
    history = train(config(cifar_dir, tmp_path, **kw, resume=True))  # then a T4 session
    assert [row["precision"] for row in history] == ["bf16", "fp16"]
    assert "resuming in fp16 a run trained in bf16" in capsys.readouterr().out


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_resolved_in_history_and_weights(cifar_dir, tmp_path, monkeypatch, capsys, native):
    monkeypatch.setattr("resnet5m.runtime.cpu_has_native_bf16", lambda: native)
    history = train(config(cifar_dir, tmp_path, epochs=1))
    expected = "bf16" if native else "fp32"  # auto on the CPU: bf16 only where it is native
    assert history[0]["precision"] == expected
    assert torch.load(tmp_path / "resnet5m_tiny.pt", weights_only=True)["recipe"]["precision"] == expected
    why = "this CPU has native bf16" if native else "this CPU has no native bf16 (bf16 would be emulated and slower)"
    assert f"precision {expected} (auto: {why})" in capsys.readouterr().out


def test_short_ema_run_is_not_the_initialisation(cifar_dir, tmp_path):
    from resnet5m.averaging import ema_warmup
    from resnet5m.evaluate import evaluate

    assert ema_warmup(0.999, 0) == pytest.approx(0.1) and ema_warmup(0.999, 10_000) == 0.999
    trainer = Trainer(config(cifar_dir, tmp_path, epochs=2, ema=True, seed=1))  # 16 steps
    history = trainer.run()
    raw = evaluate(trainer.model, *trainer.val, tta=True, progress=False).accuracy
    # Without the warm-up this average is ~99% the random init and validates at chance (0.09 here). It is not
    # always above the raw weights on this toy problem (its BN statistics lag), so the margin is loose.
    assert history[-1]["val_acc"] > 0.4 and history[-1]["val_acc"] >= raw - 0.1


def test_spec_archs_get_file_safe_run_folders_and_weights_names():
    from resnet5m.config import weights_name

    assert TrainConfig(arch="resnet:1,1@16,32").out == "runs/resnet_1-1_16-32"
    assert TrainConfig(arch="fast").out == "runs/fast" and weights_name("seed") == "resnet5m_seed.pt"
    assert weights_name("bottleneck:3,4,6@48,96,192") == "resnet5m_bottleneck_3-4-6_48-96-192.pt"


def test_validation_totals_need_no_float64_on_the_training_device(monkeypatch):
    # MPS has no float64: the totals of a validation pass are summed on the CPU (or as NCCL needs, on CUDA).
    import importlib

    from resnet5m.distributed import Dist
    from resnet5m.evaluate import EvalResult

    def fake_evaluate(model, images, labels, **kwargs):
        return EvalResult(accuracy=0.75, loss=0.5, n=len(labels), per_class={}, confusion=[], predictions=labels,
                          seconds=1.0, tta=False, tta_shift=0)  # fmt: skip

    train_module = importlib.import_module("resnet5m.train")  # the module, not its train()
    monkeypatch.setattr(train_module, "evaluate", fake_evaluate)
    made = []
    real_tensor = torch.tensor
    monkeypatch.setattr(torch, "tensor", lambda *a, **k: (made.append(k.get("device")), real_tensor(*a, **k))[1])
    images, labels = torch.zeros(8, 3, 32, 32, dtype=torch.uint8), torch.zeros(8, dtype=torch.int64)
    loss, acc, n = train_module.shard_totals(None, images, labels, Dist(), device=torch.device("mps"))
    assert (loss, acc, n) == (0.5, 0.75, 8)
    assert all(d is None or torch.device(d).type == "cpu" for d in made)  # nothing built on the training device


def test_a_finished_run_is_left_alone_when_resumed(cifar_dir, tmp_path, capsys):
    from resnet5m.cli import main
    from resnet5m.files import sha256_of

    argv = ["train", "--arch", "tiny", "--epochs", "1", "--batch-size", "100", "--val-size", "200", "--quiet",
            "--data-dir", str(cifar_dir), "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert "lr 0->0.2 " in first  # the first and last step's: a warmup starts at 0, which alone said nothing
    weights, checkpoint = tmp_path / "resnet5m_tiny.pt", tmp_path / CHECKPOINT
    before = {p: (sha256_of(p), p.stat().st_mtime_ns) for p in (weights, checkpoint)}
    assert main([*argv, "--resume"]) == 0
    out = capsys.readouterr().out
    assert out.strip() == f"{tmp_path} already finished (1 epoch); its weights are {weights}, left as they are"
    assert {p: (sha256_of(p), p.stat().st_mtime_ns) for p in (weights, checkpoint)} == before  # nothing re-saved
    assert main([*argv, "--resume", "--epochs", "2"]) == 2  # a longer run is another recipe, refused as before
    assert "the recipe differs in epochs" in capsys.readouterr().err


def test_the_parameter_limit_says_the_command_line_has_no_opt_out(cifar_dir, tmp_path, capsys):
    from resnet5m.cli import main

    argv = ["train", "--arch", "resnet:5,5,5@128,256,512", "--data-dir", str(cifar_dir), "--out", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "over the project's 5,000,000 limit" in err and "the command line has no opt-out" in err
    assert "pass allow_over_limit=True" not in err
