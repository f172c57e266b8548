import hashlib
import json
import tempfile

import torch

from resnet5m.bench import main
from resnet5m.cli import main as cli_main
from resnet5m.data import load_split
from resnet5m.model import build_model
from resnet5m.weights import load_weights, save_weights


def test_pipeline_reports_step_times(capsys):
    assert main(["pipeline", "--arch", "tiny", "--batch-size", "16", "--steps", "1", "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model_step_s"] > 0 and out["augment_s"] > 0 and out["size"] == 32


def test_time_to_accuracy_prints_one_json_line(cifar_dir, tmp_path, capsys):
    argv = ["time-to-accuracy", "--arch", "tiny", "--epochs", "2", "--data-dir", str(cifar_dir), "--out", str(tmp_path)]
    assert main(argv + ["--target", "0.5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1, lines  # train's own messages go to stderr
    out = json.loads(lines[0])
    assert out["test_n"] == 200 and out["epochs"] == 2 and out["wall_s"] >= out["train_s"] > 0
    assert out["reached"] == (out["test_acc"] >= 0.5)
    assert out["time_to_target_s"] == (out["wall_s"] if out["reached"] else None)
    assert out["command"].startswith("resnet5m train --arch tiny --epochs 2 --val-size 0")
    assert (tmp_path / "resnet5m_tiny.pt").is_file()
    assert main(argv + ["--target", "0.99"]) == 2  # the run folder is kept, so a second run is refused
    assert "already holds a run" in capsys.readouterr().err


def test_time_to_accuracy_names_no_removed_folder(cifar_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the run folder is made, and removed, in here
    assert main(["time-to-accuracy", "--arch", "tiny", "--epochs", "1", "--data-dir", str(cifar_dir)]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert "epoch   1/1" in captured.err and "test accuracy" in captured.err  # train's lines still come
    assert "saved weights" not in captured.err and "resnet5m-bench-" not in captured.err + captured.out
    assert out["command"] == "resnet5m train --arch tiny --epochs 1 --val-size 0"
    assert list(tmp_path.iterdir()) == []


def test_time_to_accuracy_takes_the_gpu_overrides(cifar_dir, tmp_path, capsys):
    argv = ["time-to-accuracy", "--arch", "tiny", "--epochs", "1", "--batch-size", "50", "--lr", "0.1", "--no-compile"]
    assert main(argv + ["--data-dir", str(cifar_dir), "--out", str(tmp_path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert "--batch-size 50 --lr 0.1" in out["command"] and out["compile"] is False
    recipe = load_weights(tmp_path / "resnet5m_tiny.pt").meta["recipe"]
    assert (recipe["batch_size"], recipe["lr"], recipe["compile"]) == (50, 0.1, False)


def test_time_to_accuracy_distils_with_the_teacher_given(cifar_dir, tmp_path, capsys):
    teacher = tmp_path / "teacher.pt"
    save_weights(teacher, build_model("tiny"), "tiny")
    argv = ["time-to-accuracy", "--arch", "tiny", "--epochs", "1", "--teacher", str(teacher), "--kd-weight", "0.25",
            "--kd-cache", "--data-dir", str(cifar_dir), "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert f"--teacher {teacher} --kd-weight 0.25 --kd-cache" in json.loads(captured.out)["command"]
    assert "teacher logits cached: " in captured.err  # the one-off pass is part of the wall-clock, and said
    recipe = load_weights(tmp_path / "run" / "resnet5m_tiny.pt").meta["recipe"]
    assert recipe["teacher_sha256"] == hashlib.sha256(teacher.read_bytes()).hexdigest() and recipe["kd_cache"] is True


def test_teacher_check_scores_a_teacher_and_an_ensemble_on_validation(cifar_dir, tmp_path, capsys):
    trained = tmp_path / "trained"
    argv = ["time-to-accuracy", "--arch", "tiny", "--epochs", "2", "--data-dir", str(cifar_dir), "--out", str(trained)]
    assert main(argv) == 0  # trained on all 1,000 images: no validation split held out
    capsys.readouterr()

    def check(teacher: str) -> dict:
        assert main(["teacher", "--teacher", teacher, "--val-size", "300", "--data-dir", str(cifar_dir)]) == 0
        return json.loads(capsys.readouterr().out)

    one = check(f"{trained}/resnet5m_tiny.pt")
    # A second member whose head says class k loudly outvotes the trained one: the ensemble answers k for every image.
    # k is a class whose share of the labels differs from the trained net's accuracy, so that the figure shows the
    # members' logits were averaged, on any host and precision.
    labels = load_split("val", cifar_dir, val_size=300)[1]
    share = {k: round((labels == k).float().mean().item(), 6) for k in range(10)}
    k = next(k for k in range(10) if share[k] not in (one["val_acc"], one["val_acc_mirrored"]))
    loud, untrained = build_model("tiny"), tmp_path / "untrained.pt"
    with torch.no_grad():
        loud.linear.bias[k] = 1e4
    save_weights(untrained, loud, "tiny")
    ensemble = check(f"{trained}/resnet5m_tiny.pt,{untrained}")
    assert one["members"] == 1 and ensemble["members"] == 2 and one["val_n"] == 300 and one["images_per_s"] > 0
    assert one["held_out"] == [False] and ensemble["held_out"] == [False, None]  # the untrained file says nothing
    evaluate = ["evaluate", "--weights", f"{trained}/resnet5m_tiny.pt", "--split", "val", "--val-size", "300", "--no-tta"]
    assert cli_main(evaluate + ["--data-dir", str(cifar_dir), "--json"]) == 0
    one_view = json.loads(capsys.readouterr().out)
    assert abs(one["val_acc"] - one_view["accuracy"]) <= 2 / 300  # BatchNorm folded: an argmax tie may flip
    assert ensemble["val_acc"] == ensemble["val_acc_mirrored"] == share[k]
