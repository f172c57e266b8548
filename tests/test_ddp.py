import json
import os
import subprocess
import sys
import textwrap

import torch

SCRIPT = """
import importlib, json, sys, torch, torch.distributed as dist
from resnet5m.errors import UserError

T = importlib.import_module("resnet5m.train")
evaluated = []  # images each rank validated
real_evaluate = T.evaluate
T.evaluate = lambda model, images, labels, **kw: (evaluated.append(len(labels)), real_evaluate(model, images, labels, **kw))[1]
cfg = T.TrainConfig(arch="tiny", epochs=2, batch_size=100, val_size=200, data_dir=sys.argv[1], out=sys.argv[2],
                    quiet=True, download=False, device="cpu", ema=True)
trainer = T.Trainer(cfg)
trainer.run()
rank = dist.get_rank()
torch.save({"model": trainer.model.state_dict(), "ema": trainer.ema.model.state_dict()}, f"{sys.argv[2]}/rank{rank}.pt")
errors = []
for bad in (dict(batch_size=101), dict(sync_bn=True)):
    try:
        T.Trainer(T.TrainConfig(**{**vars(cfg), "out": sys.argv[2] + "/bad", **bad}))
    except UserError as e:
        errors.append(str(e))
with open(f"{sys.argv[2]}/rank{rank}.json", "w") as f:
    json.dump({"evaluated": evaluated, "errors": errors, "history": trainer.history}, f)
dist.barrier()  # neither rank tears the group down while the other still talks to it
dist.destroy_process_group()
"""


def test_two_process_gloo_ranks_agree(cifar_dir, tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent(SCRIPT))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(script), str(cifar_dir), str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[:3000] + "\n...\n" + proc.stderr[-1500:]
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for part in ("model", "ema"):  # the EMA's BatchNorm statistics too: each rank averaged its own batches
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and all(torch.equal(ckpt["model"][k], a["model"][k]) for k in a["model"])
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for info in ranks:
        assert info["evaluated"] == [100, 100]  # half of the 200 validation images, each epoch
        assert "does not divide by the 2 ranks" in info["errors"][0] and "--sync-bn needs CUDA" in info["errors"][1]
    assert ranks[0]["history"][-1]["val_acc"] == ranks[1]["history"][-1]["val_acc"]  # all-reduced: one figure


# One process under torchrun: WORLD_SIZE=1, yet the run must join the group and go through DDP (and SyncBN on CUDA),
# then leave the group it created, so that torch does not warn at exit. tests/test_gpu.py runs it over NCCL.
ONE_PROCESS = """
import importlib, json, sys, torch, torch.distributed as dist

T = importlib.import_module("resnet5m.train")  # the module: resnet5m.train is also the name of its train()

device, out = sys.argv[1], sys.argv[3]
seen = {}
real_run = T.Trainer.run


def run(self):
    seen.update(backend=dist.get_backend(), net=type(self.net).__name__, world=self.dist.world,
                sync_bn=any(isinstance(m, torch.nn.SyncBatchNorm) for m in self.model.modules()))
    return real_run(self)


T.Trainer.run = run
T.train(T.TrainConfig(arch="tiny", epochs=1, batch_size=100, val_size=200, data_dir=sys.argv[2], out=out, quiet=True,
                      download=False, device=device, sync_bn=device == "cuda"))
seen["initialized_after"] = dist.is_initialized()
with open(f"{out}/seen.json", "w") as f:
    json.dump(seen, f)
"""


def run_one_process(cifar_dir, tmp_path, device: str) -> dict:
    """torchrun --nproc_per_node=1 of ONE_PROCESS on a device; what it saw."""
    script = tmp_path / "one.py"
    script.write_text(ONE_PROCESS)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
           str(script), device, str(cifar_dir), str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "destroy_process_group() was not called" not in proc.stderr
    assert (tmp_path / "resnet5m_tiny.pt").is_file()
    return json.loads((tmp_path / "seen.json").read_text())


def test_one_process_torchrun_goes_through_ddp_and_leaves_the_group(cifar_dir, tmp_path):
    seen = run_one_process(cifar_dir, tmp_path, "cpu")
    assert seen == {"backend": "gloo", "net": "DistributedDataParallel", "world": 1, "sync_bn": False,
                    "initialized_after": False}  # fmt: skip
