"""`.ci/gpu-distill`, shrunk to a few CPU steps on generated data: its runs, its decision rule and what comes back.

The GPU session it is for has minutes, no pytest and no second try, so every step is run here once: the distilled
selection run, the gate that decides the final run before any test figure exists (both ways), the final run on all
training images, the self-distilled best net, and the fp16 weights that carry their history home.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = "--device cpu --subset 64 --epochs 1 --progressive= --batch-size 32 --val-size 100 --precision fp32"


def _run(cifar_dir: Path, out: Path, *steps: str, target: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "RESNET5M_DISTILL_ARGS": TINY, "SEED_TARGET": target}
    return subprocess.run(["bash", str(ROOT / ".ci" / "gpu-distill"), str(cifar_dir), str(out), *steps], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)  # fmt: skip


def test_gpu_distill_runs_each_step_and_decides_the_final_run_on_validation(cifar_dir, tmp_path):
    out = tmp_path / "out"
    proc = _run(cifar_dir, out, "seed-kd", "seed-final", "best-kd", target="0")
    log = (out / "log.txt").read_text()
    assert proc.returncode == 0, log[-3000:]
    assert "0 step(s) failed" in log
    kd = json.loads((out / "seed_kd_history.json").read_text())
    assert len(kd) == 1 and 0 <= kd[-1]["val_acc"] <= 1
    assert "training on all 50,000" in log  # the gate at 0 lets any validation figure through
    final = torch.load(out / "seed_final_fp16.pt", weights_only=True)
    assert final["arch"] == "seed" and final["data"]["val_images"] == 0 and len(final["history"]) == 1
    assert "--teacher weights/resnet5m_best.pt" in final["command"]
    best = torch.load(out / "best_kd_fp16.pt", weights_only=True)
    assert best["arch"] == "best" and best["recipe"]["teacher"] == "weights/teachers/best-45k.pt"
    assert best["data"]["val_images"] == 100
    assert sorted(p.name for p in out.iterdir()) == [
        "best_kd_fp16.pt", "best_kd_history.json", "log.txt", "seed_final_fp16.pt", "seed_final_history.json",
        "seed_kd_history.json",
    ]  # fmt: skip

    # The baseline without a teacher; then, with an aim no accuracy reaches, the final run is skipped, and that is no
    # failure; a step that does not exist is one.
    again = _run(cifar_dir, out, "seed", "seed-final", "seed-best", target="1.01")
    log = (out / "log.txt").read_text()
    assert "--teacher" not in log.split("\n== ")[-1].splitlines()[0]  # the header of the last run, the baseline's
    assert len(json.loads((out / "seed_history.json").read_text())) == 1
    assert "seed-final: not run; seed-kd validation" in log
    assert "unknown step 'seed-best'" in log
    assert again.returncode == 1
