"""The demo served in a subprocess answers a few concurrent clients right, none refused (resnet5m.demo_load)."""

from __future__ import annotations

import json

import pytest

from resnet5m import demo_load as dl


def test_a_small_load_is_answered_right_and_none_refused(capsys):
    pytest.importorskip("gradio")
    assert dl.main(["--clients", "3", "--requests", "2"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["requests"], summary["right"], summary["all_right"]) == (6, 6, True)
    assert summary["wrong"] == summary["refused"] == summary["failed"] == 0 and summary["problems"] == []
    assert 0 < summary["latency_p50_s"] <= summary["latency_p95_s"]
    rss = summary["server_rss_mb"]
    assert 100 < rss["before"] <= rss["peak"] and rss["after"] <= rss["peak"]  # MB: torch and Gradio are loaded
    assert summary["queue"] == {"concurrency_limit": 2, "max_size": 16}


def test_weights_the_server_would_refuse_are_a_one_line_error(capsys):
    pytest.importorskip("gradio")
    assert dl.main(["--arch", "tiny", "--clients", "1", "--requests", "1"]) == 2
    assert capsys.readouterr().err.startswith("python -m resnet5m.demo_load: error: no shipped weights resnet5m_tiny.pt")


def test_the_percentiles_are_nearest_rank():
    values = [float(v) for v in range(1, 21)]
    assert (dl.percentile(values, 50), dl.percentile(values, 95), dl.percentile([3.0], 95)) == (10.0, 19.0, 3.0)
    assert dl.percentile([], 50) is None
