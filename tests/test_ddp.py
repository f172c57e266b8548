import os
import subprocess
import sys
import textwrap

import torch

SCRIPT = """
import sys, torch, torch.distributed as dist
from resnet5m.train import Trainer, TrainConfig
cfg = TrainConfig(arch="tiny", epochs=2, batch_size=100, val_size=200, data_dir=sys.argv[1], out=sys.argv[2],
                  quiet=True, download=False, device="cpu")
trainer = Trainer(cfg)
trainer.run()
torch.save(trainer.model.state_dict(), f"{sys.argv[2]}/rank{dist.get_rank()}.pt")
dist.destroy_process_group()
"""


def test_two_process_gloo_ranks_agree(cifar_dir, tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent(SCRIPT))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(script), str(cifar_dir), str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and all(torch.equal(ckpt["model"][k], a[k]) for k in a)
