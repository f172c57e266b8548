"""`.ci/gpu` on a machine without pytest (as the lent GPU machine is): `resnet5m doctor` runs first and reports.

Here there is no GPU either: the stand-in python fails every CUDA step at once (they are counted as failures), so that
the test only spends time on doctor. What matters is that doctor ran before anything needed pytest, and that the
missing pytest is said, not counted as a failure.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_gpu_starts_with_doctor_and_needs_no_pytest(cifar_dir, tmp_path):
    python = tmp_path / "python-without-pytest"
    python.write_text(
        "#!/bin/sh\n"
        '[ "$1" = -c ] && case "$2" in *pytest*) exit 1;; esac\n'  # no pytest
        'case "$*" in *cuda*) echo "no CUDA GPU here" >&2; exit 3;; esac\n'  # the CUDA steps fail at once
        f'exec {sys.executable} "$@"\n'
    )
    python.chmod(0o755)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": str(python), "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(["bash", str(ROOT / ".ci" / "gpu"), str(cifar_dir), str(out), "0"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    log = (out / "log.txt").read_text()
    assert "pytest is not installed: the GPU tests' checks ran as resnet5m doctor" in log
    assert not (out / "pytest.txt").exists()
    report = json.loads((out / "doctor.jsonl").read_text().splitlines()[-1])  # after the step's "== " header
    assert report["ok"] is True and any(c["name"] == "save -> resume" and c["ok"] for c in report["checks"])
    steps = [line for line in proc.stdout.splitlines() if line.startswith("== ")]  # every step's header, in order
    assert "resnet5m doctor --json" in steps[2]  # after --version and nvidia-smi, before any CUDA work
    assert proc.returncode > 0  # the CUDA steps fail on this GPU-less machine, and are counted
