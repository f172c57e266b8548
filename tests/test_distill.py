"""Knowledge distillation: the loss against hand-computed values, alpha 0 as the plain loss, resume with a teacher,
and the cached teacher logits of --kd-cache."""

import hashlib
import math
import shutil

import pytest
import torch
import torch.nn.functional as F

from resnet5m.config import TrainConfig
from resnet5m.data import model_input
from resnet5m.distill import Teacher, distillation_loss
from resnet5m.errors import UserError
from resnet5m.model import build_model
from resnet5m.runfolder import CHECKPOINT
from resnet5m.runtime import autocast
from resnet5m.train import Trainer, train
from resnet5m.weights import save_weights


def test_loss_against_hand_computed_values():
    student = torch.tensor([[2.0, 0.0, -1.0]])
    teacher = torch.tensor([[1.0, 1.0, 0.0]])
    label = torch.tensor([0])
    a, t, eps = 0.25, 2.0, 0.1
    # By hand: softmax(z) = exp(z) / sum(exp(z)); CE with smoothing = sum_k q_k * -log p_k, q = (1-eps) one-hot + eps/3.
    p = [math.exp(v) / sum(math.exp(u) for u in (2.0, 0.0, -1.0)) for v in (2.0, 0.0, -1.0)]
    q = [1 - eps + eps / 3, eps / 3, eps / 3]
    hard = -sum(qk * math.log(pk) for qk, pk in zip(q, p, strict=True))
    ps = [math.exp(v / t) / sum(math.exp(u / t) for u in (2.0, 0.0, -1.0)) for v in (2.0, 0.0, -1.0)]
    pt = [math.exp(v / t) / sum(math.exp(u / t) for u in (1.0, 1.0, 0.0)) for v in (1.0, 1.0, 0.0)]
    kl = sum(b * math.log(b / s) for b, s in zip(pt, ps, strict=True))
    expected = (1 - a) * hard + a * t * t * kl
    got = distillation_loss(student, teacher, label, weight=a, temperature=t, label_smoothing=eps)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert distillation_loss(student, student, label, weight=1.0, temperature=t).item() == pytest.approx(0, abs=1e-7)


def test_weight_zero_is_exactly_the_plain_loss():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(8, 10, generator=g), torch.randn(8, 10, generator=g)
    labels = torch.randint(0, 10, (8,), generator=g)
    plain = F.cross_entropy(student, labels, label_smoothing=0.2)
    assert torch.equal(distillation_loss(student, teacher, labels, weight=0.0, temperature=4.0, label_smoothing=0.2), plain)
    assert torch.equal(distillation_loss(student, None, labels, weight=0.5, temperature=4.0, label_smoothing=0.2), plain)


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory, cifar_dir):
    out = tmp_path_factory.mktemp("teacher")
    train(TrainConfig(arch="tiny", epochs=2, batch_size=100, val_size=200, data_dir=str(cifar_dir), out=str(out),
                      quiet=True, download=False))  # fmt: skip
    return out / "resnet5m_tiny.pt"


def config(cifar_dir, out, teacher, **kw) -> TrainConfig:
    base = dict(arch="tiny", epochs=3, batch_size=100, val_size=200, data_dir=str(cifar_dir), out=str(out), quiet=True,
                download=False, teacher=str(teacher), kd_weight=0.7, kd_temperature=3.0, seed=7)  # fmt: skip
    return TrainConfig(**{**base, **kw})


def test_distilled_resume_is_bitwise_and_the_recipe_names_the_teacher(cifar_dir, tmp_path, teacher_file):
    history = train(config(cifar_dir, tmp_path / "straight", teacher_file))
    first = Trainer(config(cifar_dir, tmp_path / "cut", teacher_file))
    for _ in range(2):
        first.history.append(first.one_epoch())
        first.epoch += 1
    first.save_checkpoint()
    del first
    train(config(cifar_dir, tmp_path / "cut", teacher_file, resume=True))
    a = torch.load(tmp_path / "straight" / CHECKPOINT, weights_only=True)
    b = torch.load(tmp_path / "cut" / CHECKPOINT, weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    saved = torch.load(tmp_path / "cut" / "resnet5m_tiny.pt", weights_only=True)["recipe"]
    assert saved["teacher_sha256"] == hashlib.sha256(teacher_file.read_bytes()).hexdigest()
    assert saved["kd_weight"] == 0.7 and saved["kd_temperature"] == 3.0
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    # The teacher really takes part: a different weight gives different weights.
    other = train(config(cifar_dir, tmp_path / "other", teacher_file, kd_weight=0.0, epochs=1))
    assert other[0]["train_loss"] != history[0]["train_loss"]


def test_resume_refuses_another_teacher(cifar_dir, tmp_path, teacher_file):
    mine = tmp_path / "teacher.pt"
    shutil.copy(teacher_file, mine)
    first = Trainer(config(cifar_dir, tmp_path / "run", mine, epochs=2))
    first.history.append(first.one_epoch())
    first.epoch += 1
    first.save_checkpoint()
    with pytest.raises(UserError, match="recipe differs in teacher"):  # another path
        train(config(cifar_dir, tmp_path / "run", teacher_file, epochs=2, resume=True))
    save_weights(mine, build_model("tiny"), "tiny", overwrite=True)  # the same path, another network
    with pytest.raises(UserError, match="is not the file this run was distilled from"):
        train(config(cifar_dir, tmp_path / "run", mine, epochs=2, resume=True))
    with pytest.raises(UserError, match="--teacher .*nope.pt: no such file; give the weights file"):
        Trainer(config(cifar_dir, tmp_path / "none", tmp_path / "nope.pt"))
    with pytest.raises(UserError, match="--kd-weight must be in 0..1"):
        Trainer(config(cifar_dir, tmp_path / "bad", teacher_file, kd_weight=1.5))


def test_the_teacher_sees_full_size_images_in_progressive_epochs(cifar_dir, tmp_path, teacher_file, monkeypatch):
    seen = []
    forward = Teacher.forward
    monkeypatch.setattr(Teacher, "forward", lambda self, x: seen.append(tuple(x.shape[-2:])) or forward(self, x))
    trainer = Trainer(config(cifar_dir, tmp_path, teacher_file, epochs=2, progressive="16:1", subset=200))
    trainer.one_epoch()
    assert trainer.sizes == [16, 32] and set(seen) == {(32, 32)} and len(seen) == trainer.steps_per_epoch


def test_cached_targets_are_the_teachers_logits_of_each_image_and_its_mirror(cifar_dir, tmp_path, teacher_file, monkeypatch):
    calls = []
    forward = Teacher.forward
    monkeypatch.setattr(Teacher, "forward", lambda self, x: calls.append(len(x)) or forward(self, x))
    trainer = Trainer(config(cifar_dir, tmp_path, teacher_file, epochs=1, subset=300, kd_cache=True))
    teacher = Teacher(teacher_file, trainer.device)
    with autocast(trainer.device, trainer.precision), torch.no_grad():
        x = model_input(trainer.train_x, 32)
        plain, mirrored = teacher(x).float(), teacher(x.flip(3)).float()
    assert trainer.soft.shape == (300, 2, 10) and trainer.teacher is None
    assert torch.allclose(trainer.soft[:, 0], plain, atol=1e-5) and torch.allclose(trainer.soft[:, 1], mirrored, atol=1e-5)
    plan = trainer.epoch_plan(0)
    idx, flip = plan["idx"][0], plan["flip"][0]
    assert 0 < int(flip.sum()) < len(flip)  # both kinds of row in the batch
    looked_up = trainer.soft_target(plan, 0, None, None, 32)
    expected = torch.stack([(mirrored if f else plain)[i] for i, f in zip(idx.tolist(), flip.tolist(), strict=True)])
    assert torch.allclose(looked_up, expected, atol=1e-5)
    calls.clear()  # the cache's pass and the reference above
    trainer.one_epoch()
    assert calls == []  # the teacher never ran on a batch


def test_cached_distillation_resumes_bitwise_and_is_recorded(cifar_dir, tmp_path, teacher_file):
    kw = dict(subset=600, kd_cache=True)
    train(config(cifar_dir, tmp_path / "straight", teacher_file, **kw))
    first = Trainer(config(cifar_dir, tmp_path / "cut", teacher_file, **kw))
    first.history.append(first.one_epoch())
    first.epoch += 1
    first.save_checkpoint()
    del first
    train(config(cifar_dir, tmp_path / "cut", teacher_file, resume=True, **kw))
    a = torch.load(tmp_path / "straight" / CHECKPOINT, weights_only=True)
    b = torch.load(tmp_path / "cut" / CHECKPOINT, weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    saved = torch.load(tmp_path / "cut" / "resnet5m_tiny.pt", weights_only=True)["recipe"]
    assert saved["kd_cache"] is True and saved["teacher_sha256"] == hashlib.sha256(teacher_file.read_bytes()).hexdigest()
    live = train(config(cifar_dir, tmp_path / "live", teacher_file, subset=600))  # the same run, teacher on each batch
    assert live[-1]["train_loss"] != a["history"][-1]["train_loss"]
    with pytest.raises(UserError, match="--kd-cache caches a teacher's logits: give --teacher"):
        Trainer(config(cifar_dir, tmp_path / "none", "", kd_cache=True))


def test_an_ensemble_teacher_gives_its_members_mean_logits(cifar_dir, tmp_path, teacher_file):
    other = tmp_path / "other.pt"
    save_weights(other, build_model("tiny"), "tiny")  # an untrained member: far from the trained one
    x = model_input(torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8), 32)
    cpu = torch.device("cpu")
    one, two = Teacher(teacher_file, cpu), Teacher(other, cpu)
    both = Teacher(f"{teacher_file}, {other}", cpu)  # spaces after the comma are allowed
    assert torch.allclose(both(x), (one(x) + two(x)) / 2, atol=1e-6) and not torch.allclose(both(x), one(x), atol=1e-3)
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (teacher_file, other)]
    assert one.sha256 == digest[0] and both.sha256 == ",".join(digest)
    history = train(config(cifar_dir, tmp_path / "run", f"{teacher_file},{other}", epochs=1, subset=200, kd_cache=True))
    assert math.isfinite(history[0]["train_loss"])
    assert torch.load(tmp_path / "run" / "resnet5m_tiny.pt", weights_only=True)["recipe"]["teacher_sha256"] == both.sha256
    with pytest.raises(UserError, match="--teacher .*gone.pt: no such file"):
        Teacher(f"{teacher_file},{tmp_path / 'gone.pt'}", cpu)
