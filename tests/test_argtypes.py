"""Numeric flags out of their range stop at argparse with one error line, in every command line of the package."""

import argparse

import pytest

from resnet5m import bench, cli, export_table
from resnet5m.argtypes import fraction, nonnegative_int, positive_int

GE1 = "must be an integer >= 1, got"


@pytest.mark.parametrize(
    "main, argv, message",
    [
        (cli.main, ["evaluate", "--limit", "0"], f"argument --limit: {GE1} 0"),
        (cli.main, ["evaluate", "--limit", "-5"], f"argument --limit: {GE1} -5"),
        (cli.main, ["evaluate", "--limit", "ten"], "argument --limit: expected an integer, got 'ten'"),
        (cli.main, ["evaluate", "--batch-size", "0"], f"argument --batch-size: {GE1} 0"),
        (cli.main, ["evaluate", "--tta-shift", "-1"], "argument --tta-shift: must be an integer >= 0, got -1"),
        (cli.main, ["export", "--format", "int8", "--calib-images", "0"], f"argument --calib-images: {GE1} 0"),
        (bench.main, ["pipeline", "--batch-size", "-2"], f"argument --batch-size: {GE1} -2"),
        (bench.main, ["pipeline", "--size", "0"], f"argument --size: {GE1} 0"),
        (bench.main, ["pipeline", "--steps", "0"], f"argument --steps: {GE1} 0"),
        (bench.main, ["time-to-accuracy", "--target", "1.5"], "argument --target: must be a fraction in (0, 1], got 1.5"),
        (bench.main, ["time-to-accuracy", "--target", "0"], "argument --target: must be a fraction in (0, 1], got 0"),
        (bench.main, ["time-to-accuracy", "--epochs", "0"], f"argument --epochs: {GE1} 0"),
        (export_table.main, ["--weights", "w.pt", "--limit", "0"], f"argument --limit: {GE1} 0"),
        (export_table.main, ["--weights", "w.pt", "--threads", "-1"], "argument --threads: must be an integer >= 0, got -1"),
        (export_table.main, ["--weights", "w.pt", "--calib-images", "0"], f"argument --calib-images: {GE1} 0"),
        (export_table.main, ["--weights", "w.pt", "--latency-runs", "0"], f"argument --latency-runs: {GE1} 0"),
        (export_table.main, ["--weights", "w.pt", "--throughput-runs", "0"], f"argument --throughput-runs: {GE1} 0"),
    ],
)
def test_out_of_range_flags_are_usage_errors(capsys, main, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].endswith(message) and "Traceback" not in err


def test_the_helpers_accept_their_range():
    assert positive_int("1") == 1 and positive_int("+7") == 7
    assert nonnegative_int("0") == 0
    assert fraction("1") == 1.0 and fraction("0.94") == 0.94
    for check, text in ((positive_int, "1.5"), (nonnegative_int, "-1"), (fraction, "nan"), (fraction, "x")):
        with pytest.raises(argparse.ArgumentTypeError):
            check(text)
