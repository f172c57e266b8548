"""The design map: analytic costs in bulk, references, the front, the CLI table/CSV/JSON/plot, speed timing."""

from __future__ import annotations

import csv
import json
import math
import random
import time

import pytest
from matplotlib.figure import Figure

from resnet5m import plots
from resnet5m.cli import main
from resnet5m.design import (
    BINS_PER_DECADE,
    NEAR_TIE,
    RESNET18,
    design_map,
    enumerate_shapes,
    sample_front,
    train_speed,
)
from resnet5m.model import build_model, count_params, get_config, macs_per_image, resnet_macs, resnet_params

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SMALL = ["--max-params", "1e5", "--stages", "3", "--blocks-max", "2", "--widths", "8,16,32"]  # a map of a few dozen


@pytest.fixture(scope="module")
def default_map() -> tuple[list[dict], float]:
    start = time.perf_counter()
    rows = design_map()
    return rows, time.perf_counter() - start


def test_the_default_map_is_fast_and_under_budget_but_for_resnet18(default_map):
    rows, seconds = default_map
    assert seconds < 2.0 and len(rows) > 100_000
    notes = {r["note"]: r for r in rows if r["note"]}
    assert notes["original"]["spec"] == "resnet:5,4,3@64,128,256" and notes["original"]["params"] == 4_771_146
    assert notes["ResNet-18"]["params"] == 11_173_962 and notes["ResNet-18"]["over"] and notes["ResNet-18"]["depth"] == 18
    assert all(r["params"] < 5_000_000 for r in rows if r["note"] != "ResNet-18")
    assert {r["stages"] for r in rows} == {3, 4}


def test_bulk_costs_match_the_per_shape_formulas(default_map):
    rows, _ = default_map
    for row in random.Random(0).sample(rows, 50):
        config = get_config(row["spec"])
        assert (row["params"], row["macs"]) == (resnet_params(config), resnet_macs(config))
        assert list(config.widths) == sorted(config.widths) and max(config.blocks) <= 6


@pytest.mark.parametrize("block", ["basic", "bottleneck"])
def test_bulk_costs_match_built_models(block):
    rows = enumerate_shapes(2e5, stages=(3, 4), blocks_max=2, widths=(8, 16), block=block)
    assert len(rows) == 2**3 * 4 + 2**4 * 5  # every block count and non-decreasing width choice fits
    for row in random.Random(1).sample(rows, 4):
        model = build_model(row["spec"])
        assert (row["params"], row["macs"]) == (count_params(model), macs_per_image(model))


def test_the_front_holds_the_largest_shape_of_each_bin(default_map):
    rows, _ = default_map
    under = [r for r in rows if not r["over"]]
    bins: dict[int, list[dict]] = {}
    for r in under:
        bins.setdefault(math.floor(BINS_PER_DECADE * math.log10(r["macs"])), []).append(r)
    front = [r for r in under if r["front"]]
    assert len(front) == len(bins)
    for members in bins.values():
        (chosen,) = [r for r in members if r["front"]]
        assert chosen["params"] >= (1 - NEAR_TIE) * max(r["params"] for r in members)
    picks = sample_front(rows, 5)
    assert len(picks) == 5 and all(p["front"] and p["params"] >= 2_500_000 for p in picks)
    assert [p["macs"] for p in picks] == sorted(p["macs"] for p in picks)


def test_design_table_csv_and_plot(tmp_path, capsys):
    argv = ["design", *SMALL, "--top", "3", "--csv", str(tmp_path / "map.csv"), "--plot", str(tmp_path / "map.png")]
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert "shapes under 100,000 parameters" in out[0] and out[1].split()[:3] == ["spec", "depth", "params"]
    shown = [line.split()[0] for line in out[2:-2]]
    assert len(shown) == 3 + 2 and set(shown[-2:]) == {"resnet:5,4,3@64,128,256", RESNET18.spec}  # top 3, the references
    with open(tmp_path / "map.csv") as f:
        rows = list(csv.DictReader(f))
    params = [int(r["params"]) for r in rows if r["over"] == "False"]
    assert params == sorted(params, reverse=True) and len(rows) > 5  # every row, most parameters first
    assert (tmp_path / "map.png").read_bytes()[:8] == PNG_MAGIC


def test_design_json_front_sorted_by_macs(capsys):
    assert main(["design", *SMALL, "--front", "--sort", "macs", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = out["rows"]
    assert out["count"] == len(rows) and all(r["front"] or r["note"] for r in rows)
    macs = [r["macs"] for r in rows if not r["over"]]
    assert macs == sorted(macs) and {r["note"] for r in rows[-2:]} == {"original", "ResNet-18"}  # over this budget: last


def test_design_measures_k_front_shapes(capsys):
    assert main(["design", *SMALL, "--measure", "1", "--top", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("measured resnet:") and "training images/s" in out.splitlines()[0]


def test_train_speed_times_training_steps():
    assert train_speed(get_config("resnet:1,1@8,16"), batch_size=8, size=16, steps=1) > 0


def test_bad_design_flags_are_usage_errors(capsys):
    for argv in (["--widths", "32,x"], ["--stages", "7"], ["--blocks-max", "0"], ["--block", "wide"]):
        with pytest.raises(SystemExit):
            main(["design", *argv])
    assert "usage" in capsys.readouterr().err


def test_plot_design_map_marks_the_front_and_references(default_map, tmp_path):
    rows, _ = default_map
    fig = plots.plot_design_map(rows[::50] + [r for r in rows if r["front"] or r["note"]], save=tmp_path / "m.png")
    assert isinstance(fig, Figure) and (tmp_path / "m.png").read_bytes()[:8] == PNG_MAGIC
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert {"original", "ResNet-18"} <= set(labels) and any(label.startswith("front") for label in labels)
    assert isinstance(plots.plot_design_map([]), Figure)
