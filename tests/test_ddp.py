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
