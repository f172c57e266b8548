"""The sweep: equal-budget training of candidates, ranked on validation; skips finished ones, resumes cut ones."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import pytest
from matplotlib.figure import Figure

from resnet5m import plots
from resnet5m.cli import main
from resnet5m.design import write_csv
from resnet5m.errors import UserError
from resnet5m.model import ARCHS, build_model
from resnet5m.runfolder import CHECKPOINT
from resnet5m.sweep import SWEEP_COLUMNS, candidate_config, measured_sweeps, read_specs, read_sweep_csv, sweep, top_specs
from resnet5m.train import Trainer
from resnet5m.weights import load_weights, save_weights

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SPECS = ["resnet:1,1@16,32", "bottleneck:1,1@8,16"]
BUDGET = {"subset": 200, "val_size": 100, "batch_size": 100}


def sweep_argv(specs: Path, cifar_dir: Path, out: Path, epochs: int = 1) -> list[str]:
    return ["sweep", "--specs", str(specs), "--epochs", str(epochs), "--subset", "200", "--val-size", "100",
            "--batch-size", "100", "--size", "16", "--data-dir", str(cifar_dir), "--out", str(out)]  # fmt: skip


def progress(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("[")]


def test_sweep_ranks_writes_csv_and_plot_then_skips_finished_runs(cifar_dir, tmp_path, capsys):
    specs = tmp_path / "specs.txt"
    specs.write_text("# tiny candidates\n" + "\n".join(f"{s}   # a comment" for s in SPECS) + "\n\n")
    out = tmp_path / "sweep"
    assert main(sweep_argv(specs, cifar_dir, out)) == 0
    lines = progress(capsys.readouterr().out)
    assert [line.split()[:2] for line in lines] == [["[1/2]", SPECS[0]], ["[2/2]", SPECS[1]]]
    assert all(line.endswith("trained") for line in lines)
    with open(out / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == SWEEP_COLUMNS and {r["spec"] for r in rows} == set(SPECS)
    accs = [float(r["val_acc"]) for r in rows]
    assert accs == sorted(accs, reverse=True) and all(float(r["seconds"]) > 0 for r in rows)
    assert (out / "sweep.png").read_bytes()[:8] == PNG_MAGIC
    weights = sorted(out.glob("*/resnet5m_*.pt"))
    assert [p.parent.name for p in weights] == ["bottleneck_1-1_8-16", "resnet_1-1_16-32"]
    saved = load_weights(weights[0])
    assert saved.meta["recipe"]["test"] is False and "test_acc" not in saved.meta["metrics"]  # the test split is never read
    assert saved.meta["recipe"]["progressive"] == "16:1" and saved.meta["history"][0]["size"] == 16

    stamps = [p.stat().st_mtime_ns for p in weights]
    assert main(sweep_argv(specs, cifar_dir, out)) == 0
    again = progress(capsys.readouterr().out)
    assert all(line.endswith("done before") for line in again) and len(again) == 2
    assert [p.stat().st_mtime_ns for p in weights] == stamps
    with open(out / "sweep.csv") as f:
        assert list(csv.DictReader(f)) == rows  # re-read from the weights files, the same rows

    with pytest.raises(UserError, match="trained with another recipe .*epochs"):
        sweep(SPECS, out, epochs=2, size=16, data_dir=str(cifar_dir), **BUDGET)


def test_an_interrupted_candidate_resumes(cifar_dir, tmp_path, capsys):
    cfg = candidate_config(SPECS[0], tmp_path, epochs=2, size=32, data_dir=str(cifar_dir), **BUDGET)
    first = Trainer(cfg)  # epoch 1 of 2 done and checkpointed, then the process "dies"
    first.history.append(first.one_epoch())
    first.epoch += 1
    first.save_checkpoint()
    capsys.readouterr()
    (row,) = sweep([SPECS[0]], tmp_path, epochs=2, data_dir=str(cifar_dir), **BUDGET)
    assert progress(capsys.readouterr().out)[0].endswith("resumed")
    (weights,) = (tmp_path / "resnet_1-1_16-32").glob("resnet5m_*.pt")
    history = load_weights(weights).meta["history"]
    assert [h["epoch"] for h in history] == [1, 2] and row["val_acc"] == history[-1]["val_acc"]
    assert (tmp_path / "resnet_1-1_16-32" / CHECKPOINT).is_file()


def test_bad_candidates_fail_before_any_training(cifar_dir, tmp_path):
    with pytest.raises(UserError, match="bad arch spec 'resnet:1@8,8'"):
        sweep(["resnet:1,1@8,16", "resnet:1@8,8"], tmp_path, data_dir=str(cifar_dir))
    with pytest.raises(UserError, match="5,000,000 limit"):
        sweep(["resnet:2,2,2,2@64,128,256,512"], tmp_path, data_dir=str(cifar_dir))
    with pytest.raises(UserError, match="listed twice"):
        sweep(["resnet:1,1@8,16", "resnet:1, 1@8, 16"], tmp_path, data_dir=str(cifar_dir))
    with pytest.raises(UserError, match="--val-size must be >= 1"):
        sweep(["resnet:1,1@8,16"], tmp_path, val_size=0)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(UserError, match="lists no specs"):
        read_specs(tmp_path / "empty.txt")


def test_top_k_is_the_original_and_front_shapes():
    specs = top_specs(3)
    assert specs[0] == ARCHS["seed"].spec and len(specs) == 4


def test_plot_sweep_highlights_the_original(tmp_path):
    rows = [
        {"spec": "resnet:5,4,3@64,128,256", "params": 4_771_146, "macs": 874e6, "val_acc": 0.8, "note": "original"},
        {"spec": "resnet:1,1,2@64,320,320", "params": 4_999_370, "macs": 608e6, "val_acc": 0.82, "note": ""},
    ]
    fig = plots.plot_sweep(rows, save=tmp_path / "s.png")
    assert isinstance(fig, Figure) and (tmp_path / "s.png").read_bytes()[:8] == PNG_MAGIC
    assert "original" in fig.axes[0].get_legend_handles_labels()[1]
    assert [a.get_text() for a in fig.axes[0].texts] == ["1. resnet:1,1,2@64,320,320", "2. resnet:5,4,3@64,128,256"]
    more = [*rows, *({"spec": f"resnet:1,1@{w},{w}", "params": 1e6, "macs": 1e8, "val_acc": 0.5 + w / 1e3, "note": ""}
                     for w in (16, 32))]  # fmt: skip
    assert [a.get_text() for a in plots.plot_sweep(more, named=1).axes[1].texts] == [
        "1. resnet:1,1,2@64,320,320", "2. resnet:5,4,3@64,128,256", "3", "4"]  # fmt: skip
    assert isinstance(plots.plot_sweep([]), Figure)


def test_sweep_csv_reads_back_with_numbers(tmp_path):
    row = {"spec": "resnet:1,1@16,32", "params": 123456, "macs": 7890123, "val_acc": 0.4321, "val_loss": 1.5,
           "seconds": 0.125, "images_per_s": 812.5, "note": ""}  # fmt: skip
    write_csv([row, {**row, "spec": ARCHS["seed"].spec, "note": "original"}], tmp_path / "sweep.csv", SWEEP_COLUMNS)
    assert read_sweep_csv(tmp_path / "sweep.csv") == [row, {**row, "spec": ARCHS["seed"].spec, "note": "original"}]
    (tmp_path / "bad.csv").write_text("spec,params\nresnet:1,1@16,32,lots\n")
    with pytest.raises(UserError, match="cannot read sweep results .*bad.csv"):
        read_sweep_csv(tmp_path / "bad.csv")


def test_the_measured_map_ships_with_the_package():
    # The committed sweep (docs/results.md): at least 12 shapes, 3- and 4-stage, the original among them, ranked.
    rows = measured_sweeps()["sweep-16px"]
    assert len(rows) >= 12 and [r["val_acc"] for r in rows] == sorted((r["val_acc"] for r in rows), reverse=True)
    assert ARCHS["seed"].spec in [r["spec"] for r in rows if r["note"] == "original"]
    assert {len(r["spec"].split("@")[1].split(",")) for r in rows} >= {3, 4}
    assert all(r["params"] < 5_000_000 and 0 < r["val_acc"] < 1 for r in rows)


def test_sweep_distils_every_candidate_from_a_teacher(cifar_dir, tmp_path):
    specs = tmp_path / "specs.txt"
    specs.write_text(SPECS[0] + "\n")
    teacher = tmp_path / "teacher.pt"
    save_weights(teacher, build_model("tiny"), "tiny")
    argv = sweep_argv(specs, cifar_dir, tmp_path / "sweep") + ["--teacher", str(teacher), "--kd-weight", "0.3", "--kd-cache"]
    assert main(argv) == 0
    recipe = load_weights(next((tmp_path / "sweep").glob("*/resnet5m_*.pt"))).meta["recipe"]
    assert recipe["teacher_sha256"] == hashlib.sha256(teacher.read_bytes()).hexdigest()
    assert recipe["kd_weight"] == 0.3 and recipe["kd_cache"] is True
