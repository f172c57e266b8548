"""`resnet5m doctor` on this CPU: its table, its JSON, its exit status, and the checks it is made of."""

import json
import multiprocessing
import time

import torch

from resnet5m import doctor
from resnet5m.cli import main
from resnet5m.synthetic import write_cifar


def test_doctor_table_and_json_on_the_cpu(capsys):
    assert main(["doctor", "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "versions   Python" in out and "auto       cpu: " in out and out.rstrip().endswith("checks passed")
    for row in ("train fast fp32      cpu      ok", "train fast bf16      cpu      ok", "evaluate fast        cpu      ok",
                "save -> resume       cpu      ok", "2-rank nccl          cuda     skipped"):  # fmt: skip
        assert row in out, row
    assert main(["doctor", "--steps", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["versions"]["torch"] == torch.__version__
    trained = [c for c in report["checks"] if c["name"].startswith("train")]
    assert [c["name"] for c in trained] == ["train fast fp32", "train fast bf16"] and all(c["images_per_s"] > 0 for c in trained)


def test_a_failed_check_makes_doctor_exit_non_zero(capsys, monkeypatch):
    def broken(device, data, out):
        raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore lines")

    monkeypatch.setattr(doctor, "check_resume", broken)
    assert main(["doctor", "--steps", "1"]) == 2
    captured = capsys.readouterr()
    assert "save -> resume       cpu      FAILED" in captured.out
    assert "RuntimeError after 0s: CUDA error: an illegal" in captured.out
    assert "doctor: failed save -> resume on cpu" in captured.err


def test_two_gloo_ranks_train_through_ddp(tmp_path):
    # The multi-rank check, over gloo on the CPU; with two GPUs doctor runs it over NCCL.
    data = write_cifar(tmp_path / "data", per_batch=32, n_test=32)
    check = doctor.check_ranks(2, "cpu", data, tmp_path / "run")
    assert check.ok, check.detail
    assert check.name == "2-rank gloo" and (tmp_path / "run" / "checkpoint.pt").is_file()


def test_hung_ranks_are_stopped_and_fail_the_check(tmp_path):
    # Spawning a rank and importing torch there takes longer than this timeout: the ranks are "hung" here.
    data = write_cifar(tmp_path / "data", per_batch=32, n_test=32)
    start = time.monotonic()
    check = doctor.check_ranks(2, "cpu", data, tmp_path / "run", timeout_s=0.5)
    assert not check.ok and check.detail == "rank 0, 1 still running after 0.5 s: stopped (a hung process group)"
    assert time.monotonic() - start < 30
    assert not multiprocessing.active_children()  # both stopped and reaped


def test_summary_line_names_device_precision_and_why(monkeypatch):
    monkeypatch.setattr("resnet5m.runtime.cpu_has_native_bf16", lambda: False)
    line = doctor.summary_line(torch.device("cpu"))
    assert line.startswith("device cpu (") and "precision fp32: this CPU has no native bf16" in line and "T4 GPU" in line
