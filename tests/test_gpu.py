"""CUDA paths, run only where a GPU is visible: `python -m pytest -m gpu tests/test_gpu.py`."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from resnet5m.config import TrainConfig
from resnet5m.evaluate import evaluate
from resnet5m.train import Trainer, train

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def config(cifar_dir, out, **kw) -> TrainConfig:
    base = dict(arch="tiny", epochs=2, batch_size=100, val_size=200, data_dir=str(cifar_dir), out=str(out),
                quiet=True, download=False, device="cuda")  # fmt: skip
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("precision", ["auto", "bf16", "fp16", "fp32"])
def test_training_steps_in_each_precision(cifar_dir, tmp_path, precision):
    history = train(config(cifar_dir, tmp_path, precision=precision))
    assert history[-1]["train_loss"] < history[0]["train_loss"] and history[-1]["val_acc"] > 0.3
    assert history[0]["precision"] in ("bf16", "fp16", "fp32")


def test_fp16_resume_is_bitwise_on_the_gpu(cifar_dir, tmp_path):
    kw = dict(precision="fp16", epochs=3, seed=2)
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


def test_one_process_ddp_over_nccl(cifar_dir, tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent("""
        import sys, torch.distributed as dist
        from resnet5m.config import TrainConfig
        from resnet5m.train import train
        train(TrainConfig(arch="tiny", epochs=1, batch_size=100, val_size=200, data_dir=sys.argv[1], out=sys.argv[2],
                          quiet=True, download=False, device="cuda", sync_bn=True))
        assert dist.get_backend() == "nccl"
        dist.destroy_process_group()
    """))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
           str(script), str(cifar_dir), str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "resnet5m_tiny.pt").is_file()
