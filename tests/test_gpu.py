"""CUDA paths, run only where a GPU is visible: `python -m pytest -m gpu tests/test_gpu.py`.

The training, evaluation, resume and rank checks are `resnet5m doctor`'s own, so a GPU machine without pytest runs
the same checks through `resnet5m doctor` (.ci/gpu does that first).
"""

import pytest
import torch
from test_ddp import run_one_process

from resnet5m import doctor
from resnet5m.config import TrainConfig
from resnet5m.evaluate import evaluate
from resnet5m.synthetic import write_cifar
from resnet5m.train import Trainer, train

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
CUDA = torch.device("cuda", 0)


def config(cifar_dir, out, **kw) -> TrainConfig:
    base = dict(arch="tiny", epochs=2, batch_size=100, val_size=200, data_dir=str(cifar_dir), out=str(out),
                quiet=True, download=False, device="cuda")  # fmt: skip
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_cifar(tmp_path_factory.mktemp("gpu-data"), per_batch=1024, n_test=512)


@pytest.mark.parametrize("precision", doctor.precisions_for(CUDA) if torch.cuda.is_available() else [])
def test_fast_net_steps_in_each_precision(data, tmp_path, precision):
    check = doctor.check_training(CUDA, precision, data, tmp_path, steps=5, batch_size=512)
    assert check.ok and check.images_per_s > 0, check


def test_evaluate_pass(data):
    check = doctor.check_evaluate(CUDA, data)
    assert check.ok, check


def test_resume_is_bitwise_with_deterministic_kernels(data, tmp_path):
    check = doctor.check_resume(CUDA, data, tmp_path)
    assert check.ok, check.detail


def test_fp16_resume_is_bitwise_on_the_gpu(cifar_dir, tmp_path):
    kw = dict(precision="fp16", epochs=3, seed=2, deterministic=True)
    train(config(cifar_dir, tmp_path / "straight", **kw))
    first = Trainer(config(cifar_dir, tmp_path / "cut", **kw))
    first.history.append(first.one_epoch())
    first.epoch += 1
    first.save_checkpoint()
    del first
    train(config(cifar_dir, tmp_path / "cut", resume=True, **kw))
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert a["scaler"] == b["scaler"] and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


@pytest.mark.parametrize("arch", ["tiny", "fast"])
def test_compiled_training_and_evaluation(cifar_dir, tmp_path, arch):
    kw = dict(batch_size=50, subset=200) if arch == "fast" else {}
    trainer = Trainer(config(cifar_dir, tmp_path, arch=arch, compile=True, **kw))
    history = trainer.run()
    assert all(torch.isfinite(torch.tensor(row["train_loss"])) for row in history)
    res = evaluate(trainer.model, *trainer.val, device=trainer.device, tta=True, tta_shift=1, progress=False)
    assert res.n == 200 and 0 <= res.accuracy <= 1


def test_one_process_torchrun_goes_through_ddp_and_syncbn_over_nccl(cifar_dir, tmp_path):
    seen = run_one_process(cifar_dir, tmp_path, "cuda")
    assert seen == {"backend": "nccl", "net": "DistributedDataParallel", "world": 1, "sync_bn": True,
                    "initialized_after": False}  # fmt: skip


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_two_ranks_over_nccl(data, tmp_path):
    check = doctor.check_ranks(2, "cuda", data, tmp_path)
    assert check.ok, check.detail
