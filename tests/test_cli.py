import json
import subprocess
import sys

import pytest
import torch
from test_checkpoint import OriginalResNet, randomized

from resnet5m.cli import main
from resnet5m.model import build_model
from resnet5m.weights import save_weights


def run_json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_version_names_the_packages_and_devices(capsys, monkeypatch):
    import torchvision

    import resnet5m

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"resnet5m {resnet5m.__version__} (torch {torch.__version__}, ")
    assert f"torchvision {torchvision.__version__}" in lines[0] and "CUDA" in lines[1] and "MPS" in lines[1]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Test GPU")
    with pytest.raises(SystemExit):
        main(["--version"])
    assert "2 device(s), Test GPU" in capsys.readouterr().out


def test_info_prints_the_seed_parameter_count(capsys):
    assert main(["info", "--arch", "seed"]) == 0
    assert "4,771,146" in capsys.readouterr().out
    info = run_json(capsys, ["info", "--arch", "seed", "--json"])
    assert info["params"] == 4_771_146 and info["macs_per_image"] > 800e6 and 9 < info["fp16_mb"] < 10


def test_info_takes_specs_and_names_a_bottleneck(capsys):
    assert main(["info", "--arch", "resnet:5,4,3@64,128,256"]) == 0
    basic = capsys.readouterr().out.splitlines()[0]
    assert basic.endswith("(blocks [5, 4, 3], widths [64, 128, 256])")  # the default block goes unsaid
    info = run_json(capsys, ["info", "--arch", "bottleneck:1,1@8,16", "--json"])
    assert info["config"]["block"] == "bottleneck" and info["arch"] == "bottleneck:1,1@8,16"
    assert main(["info", "--arch", "bottleneck:1,1@8,16"]) == 0
    assert "block bottleneck" in capsys.readouterr().out


def test_evaluate_original_format_json(tmp_path, cifar_dir, capsys):
    torch.save(randomized(OriginalResNet()).state_dict(), tmp_path / "orig.pt")
    out = run_json(capsys, ["evaluate", "--weights", str(tmp_path / "orig.pt"), "--data-dir", str(cifar_dir), "--json"])
    assert out["arch"] == "seed" and out["n"] == 200 and len(out["weights_sha256"]) == 64
    assert 0 <= out["accuracy"] <= 1 and out["loss"] > 0 and set(out["per_class"]) >= {"airplane", "truck"}
    assert sum(map(sum, out["confusion"])) == 200


def test_evaluate_our_format_with_tta_and_train_split(tmp_path, cifar_dir, capsys):
    save_weights(tmp_path / "w.pt", build_model("tiny"), "tiny")
    argv = ["evaluate", "--weights", str(tmp_path / "w.pt"), "--data-dir", str(cifar_dir), "--json"]
    out = run_json(capsys, argv + ["--tta", "--split", "train", "--limit", "300"])
    assert out["arch"] == "tiny" and out["n"] == 300 and out["tta"] is True and out["split"] == "train"


def test_no_tta_means_one_view_even_when_the_recipe_shifts(tmp_path, cifar_dir, capsys, monkeypatch):
    monkeypatch.setattr("resnet5m.runtime.cpu_has_native_bf16", lambda: True)
    save_weights(tmp_path / "w.pt", build_model("tiny"), "tiny", recipe={"tta": True, "tta_shift": 1})
    argv = ["evaluate", "--weights", str(tmp_path / "w.pt"), "--data-dir", str(cifar_dir), "--limit", "50"]
    default = run_json(capsys, argv + ["--json"])
    assert default["tta"] is True and default["tta_shift"] == 1  # the recipe's 6 views
    plain = run_json(capsys, argv + ["--json", "--no-tta"])
    assert plain["tta"] is False and plain["tta_shift"] == 0
    assert main(argv + ["--no-tta"]) == 0 and "TTA" not in capsys.readouterr().out
    shifted = run_json(capsys, argv + ["--json", "--no-tta", "--tta-shift", "2"])  # asked for explicitly
    assert shifted["tta"] is False and shifted["tta_shift"] == 2
    assert run_json(capsys, argv + ["--json", "--precision", "fp32"])["precision"] == "fp32"
    assert default["precision"] == "bf16"  # auto on a CPU with native bf16


def test_evaluate_human_output(tmp_path, cifar_dir, capsys):
    save_weights(tmp_path / "w.pt", build_model("tiny"), "tiny")
    assert main(["evaluate", "--weights", str(tmp_path / "w.pt"), "--data-dir", str(cifar_dir)]) == 0
    assert "test accuracy" in capsys.readouterr().out


@pytest.mark.parametrize(
    "make, argv_extra, message",
    [
        (None, [], "not found; pass --weights"),
        (lambda p: p.write_bytes(b"junk"), [], "not a PyTorch checkpoint"),
        (lambda p: torch.save(build_model("tiny"), p), [], "pickled Python object"),
        (lambda p: torch.save(build_model("tiny"), p, pickle_protocol=4), [], "pickled with protocol 4"),
        (lambda p: torch.save(build_model("tiny").state_dict(), p), ["--arch", "seed"], "does not fit arch 'seed'"),
        (lambda p: torch.save(build_model("tiny").state_dict(), p), ["--arch", "nope"], "unknown arch 'nope'"),
        (lambda p: torch.save(build_model("tiny").state_dict(), p), ["--data-dir", "/nonexistent", "--no-download"],
         "CIFAR-10 not found in /nonexistent"),
        (lambda p: torch.save(build_model("tiny").state_dict(), p), ["--device", "cuda:7"], "cuda"),
    ],
)  # fmt: skip
def test_bad_input_gives_one_line(tmp_path, cifar_dir, capsys, make, argv_extra, message):
    path = tmp_path / "w.pt"
    if make:
        make(path)
    argv = ["evaluate", "--weights", str(path), "--data-dir", str(cifar_dir), *argv_extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.startswith("resnet5m: error:") and len(err.splitlines()) == 1


UNKNOWN_FATS = "unknown arch 'fats'; choose one of: seed, tiny, fast, best, or a spec such as resnet:5,4,3@64,128,256"


@pytest.mark.parametrize(
    "argv",
    [
        ["info", "--arch", "fats"],
        ["evaluate", "--arch", "fats"],  # before looking for shipped weights of that name
        ["evaluate", "--arch", "fats", "--weights", "{ts}"],  # a TorchScript file records an arch of its own
        ["export", "--arch", "fats", "--format", "fp16"],
        ["export", "--arch", "fats", "--format", "fp16", "--weights", "{pt}"],
    ],
)
def test_unknown_arch_is_named_with_the_choices(tmp_path, capsys, argv):
    from resnet5m.export import export

    save_weights(tmp_path / "w.pt", build_model("tiny"), "tiny")
    export(tmp_path / "w.pt", "torchscript", tmp_path / "w.ts")
    argv = [a.format(pt=tmp_path / "w.pt", ts=tmp_path / "w.ts") for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"resnet5m: error: {UNKNOWN_FATS}\n"


def test_unknown_arch_in_the_benchmarks(capsys):
    from resnet5m import bench

    assert bench.main(["pipeline", "--arch", "fats"]) == 2
    assert bench.main(["time-to-accuracy", "--arch", "fats"]) == 2
    line = f"resnet5m.bench: error: {UNKNOWN_FATS}"
    assert capsys.readouterr().err.splitlines() == [line, line]


def test_wrong_arch_for_a_file_suggests_its_own(tmp_path, capsys):
    save_weights(tmp_path / "fast.pt", build_model("fast"), "fast")
    assert main(["evaluate", "--arch", "seed", "--weights", str(tmp_path / "fast.pt")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.rstrip().endswith("the file records arch 'fast': pass --arch fast or drop --arch")


def test_real_process_prints_no_traceback(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    proc = subprocess.run([sys.executable, "-m", "resnet5m", "evaluate", "--weights", str(tmp_path / "junk.pt")],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1


def test_the_package_imports_without_torchvision():
    # torchvision takes about 2 s to import; every command would pay it, though few resize or download images.
    code = "import sys, resnet5m.cli; print([m for m in sys.modules if m.split('.')[0] == 'torchvision'])"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


@pytest.mark.parametrize("protocol", [2, 4])
def test_pickled_model_is_one_stderr_line_in_a_real_process(tmp_path, protocol):
    # torch warns about protocol 4 before failing; only our line may reach the user
    torch.save(build_model("tiny"), tmp_path / "pickled.pt", pickle_protocol=protocol)
    argv = [sys.executable, "-m", "resnet5m", "evaluate", "--weights", str(tmp_path / "pickled.pt")]
    proc = subprocess.run(argv, capture_output=True, text=True)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("resnet5m: error:") and "torch.save(model.state_dict(), path)" in proc.stderr


def test_train_then_evaluate_round_trip(tmp_path, cifar_dir, capsys):
    out = tmp_path / "run"
    argv = ["train", "--arch", "tiny", "--epochs", "1", "--batch-size", "100", "--val-size", "200",
            "--data-dir", str(cifar_dir), "--out", str(out), "--quiet", "--no-tta"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "val loss" in printed and f"saved weights to {out / 'resnet5m_tiny.pt'}" in printed
    result = run_json(capsys, ["evaluate", "--weights", str(out / "resnet5m_tiny.pt"), "--data-dir", str(cifar_dir), "--json"])
    assert result["arch"] == "tiny" and result["n"] == 200
    assert main(argv) == 2 and "--resume" in capsys.readouterr().err


def test_evaluate_split_val_scores_the_run_on_its_own_validation_images(tmp_path, cifar_dir, capsys):
    out = tmp_path / "run"
    argv = ["train", "--arch", "tiny", "--epochs", "1", "--batch-size", "100", "--val-size", "150", "--precision", "fp32",
            "--data-dir", str(cifar_dir), "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    weights = out / "resnet5m_tiny.pt"
    evaluate = ["evaluate", "--weights", str(weights), "--data-dir", str(cifar_dir), "--split", "val", "--precision", "fp32"]
    result = run_json(capsys, [*evaluate, "--json"])  # --val-size: as the weights held out
    history = torch.load(weights, weights_only=True)["history"]
    assert result["n"] == 150 and result["val_size"] == 150 and result["held_out_in_training"] is True
    assert result["accuracy"] == history[-1]["val_acc"]  # the figure training reported for its last epoch
    assert main([*evaluate, "--val-size", "300"]) == 0  # 150 of them were trained on
    note = "note      these weights were trained on some of the last 300 training images: not a validation figure"
    assert note in capsys.readouterr().out


def test_help_states_each_default_once(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: $RESNET5M_DATA, else ./data)" in text and "(default: None)" not in text


def test_export_table_says_its_accuracy_is_of_one_view():
    from resnet5m.export_table import markdown_table

    row = {"format": "fp32", "size_mb": 1.0, "accuracy": 0.9, "latency_ms": 1.0, "images_per_s": 10.0, "max_abs_diff": None}
    assert "| test accuracy, one view (%) |" in markdown_table([row]).splitlines()[0]
