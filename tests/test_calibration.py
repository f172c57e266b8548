"""Calibration: ECE and NLL in evaluate, temperature scaling (`resnet5m calibrate`), the stored temperature applied."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_checkpoint import randomized

from resnet5m.calibration import calibration_figures, fit_temperature
from resnet5m.cli import main
from resnet5m.data import load_split
from resnet5m.evaluate import evaluate, expected_calibration_error, reliability_bins
from resnet5m.files import sha256_of
from resnet5m.model import build_model
from resnet5m.weights import load_weights, save_weights

VAL = 200  # the last 200 of the 1,000 generated training images


def overconfident_logits(n: int = 2000, scale: float = 4.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels drawn from softmax(base), logits scale * base: calibrated at T = scale."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 10, generator=g) * 1.5
    labels = torch.multinomial(base.softmax(1), 1, generator=g).flatten()
    return base * scale, labels


def test_ece_of_known_bins() -> None:
    confidences = torch.tensor([0.9, 0.9, 0.9, 0.9, 0.3, 1.0])
    correct = torch.tensor([True, True, True, False, False, True])
    # bins: 0.9 -> (0.8667, 0.9333]: accuracy 3/4, gap 0.15 over 4 images; 0.3 -> gap 0.3; 1.0 (last bin) -> gap 0
    assert expected_calibration_error(confidences, correct) == pytest.approx((4 * 0.15 + 0.3) / 6)
    counts, _, _ = reliability_bins(confidences, correct)
    assert counts.sum() == 6 and counts[-1] == 1 and counts[13] == 4


def test_fitted_temperature_recovers_the_scale_and_lowers_nll_and_ece() -> None:
    logits, labels = overconfident_logits()
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(4.0, rel=0.1)
    before, after = calibration_figures(logits, labels), calibration_figures(logits, labels, t)
    assert after["nll"] < before["nll"] and after["ece"] < before["ece"] / 2
    assert after["nll"] == pytest.approx(F.cross_entropy(logits / t, labels).item())


def test_evaluate_reports_ece_and_nll_and_applies_a_temperature(cifar_dir: Path) -> None:
    images, labels = load_split("test", cifar_dir)
    model = randomized(build_model("tiny"))
    plain = evaluate(model, images, labels, progress=False, precision="fp32")
    hot = evaluate(model, images, labels, progress=False, precision="fp32", temperature=3.0)
    assert torch.equal(plain.predictions, hot.predictions) and plain.accuracy == hot.accuracy
    assert hot.loss != plain.loss and hot.to_dict()["nll"] == hot.loss and hot.to_dict()["temperature"] == 3.0
    assert 0 <= plain.to_dict()["ece"] <= 1 and plain.confidences.shape == (200,)
    assert hot.confidences.max() < plain.confidences.max()


@pytest.fixture(scope="module")
def sharp_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny net made overconfident (its classifier scaled up), saved as trained on all the training images."""
    torch.manual_seed(0)
    model = randomized(build_model("tiny"))
    with torch.no_grad():
        model.linear.weight.mul_(20)
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    save_weights(path, model, "tiny", extra={"data": {"train_images": 1000, "val_images": 0}})
    return path


def run_json(argv: list[str], capsys: pytest.CaptureFixture) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_calibrate_fits_on_validation_stores_and_evaluate_applies(sharp_weights, cifar_dir, tmp_path, capsys) -> None:
    out = tmp_path / "calibrated.pt"
    source_digest = sha256_of(sharp_weights)
    argv = ["calibrate", "--weights", str(sharp_weights), "--out", str(out), "--data-dir", str(cifar_dir), "--val-size", str(VAL)]
    result = run_json(argv, capsys)
    assert result["after"]["nll"] < result["before"]["nll"] and result["after"]["ece"] < result["before"]["ece"]
    assert result["temperature"] > 1 and result["images"].startswith("training images 800..999 (the last 200")
    assert result["held_out_in_training"] is False and "seen in training" in result["caveat"]
    assert sha256_of(sharp_weights) == source_digest  # the source is never rewritten
    meta = load_weights(out).meta
    assert meta["temperature"] == result["temperature"] and meta["calibration"]["n"] == VAL
    assert meta["data"] == {"train_images": 1000, "val_images": 0}  # the source's metadata is carried over

    images, labels = load_split("train", cifar_dir)
    model = load_weights(out).model
    refit = evaluate(model, images[-VAL:], labels[-VAL:], tta=True, temperature=meta["temperature"], progress=False)
    assert refit.loss == pytest.approx(result["after"]["nll"], rel=1e-4)  # the same views and precision as calibrate

    test_argv = ["evaluate", "--data-dir", str(cifar_dir)]
    before, after = (run_json([*test_argv, "--weights", str(w)], capsys) for w in (sharp_weights, out))
    assert after["temperature"] == meta["temperature"] and before["temperature"] == 1.0
    assert after["accuracy"] == before["accuracy"] and after["nll"] != before["nll"]
    assert main([*test_argv, "--weights", str(out)]) == 0
    assert f"temperature {meta['temperature']:.3f} (calibrated)" in capsys.readouterr().out


def test_calibrate_prints_what_it_fitted_on_and_the_caveat_only_when_due(cifar_dir: Path, tmp_path: Path, capsys) -> None:
    held_out = tmp_path / "held_out.pt"
    save_weights(held_out, build_model("tiny"), "tiny", extra={"data": {"train_images": 800, "val_images": VAL}})
    argv = ["calibrate", "--weights", str(held_out), "--out", str(tmp_path / "c.pt"), "--data-dir", str(cifar_dir)]
    assert main([*argv, "--val-size", str(VAL)]) == 0
    out = capsys.readouterr().out
    assert "fitted on training images 800..999" in out and "never the test split" in out and "caveat" not in out
    assert main([*argv, "--val-size", str(VAL), "--force", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["held_out_in_training"] is True


def test_calibrate_refuses_to_overwrite(sharp_weights: Path, cifar_dir: Path, tmp_path: Path, capsys) -> None:
    taken = tmp_path / "taken.pt"
    taken.write_bytes(b"keep me")
    base = ["calibrate", "--weights", str(sharp_weights), "--data-dir", str(cifar_dir), "--val-size", str(VAL)]
    for out, flag in ((taken, None), (sharp_weights, "--force")):
        assert main([*base, "--out", str(out), *([flag] if flag else [])]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and ("--force" in err or "must differ" in err)
    assert taken.read_bytes() == b"keep me"
    assert main([*base, "--out", str(tmp_path / "x.pt"), "--val-size", "1000"]) == 2
    assert "--val-size must be in 1..999" in capsys.readouterr().err


def test_reliability_diagram(cifar_dir: Path, tmp_path: Path) -> None:
    from matplotlib.figure import Figure

    from resnet5m import plots

    images, labels = load_split("test", cifar_dir)
    model = randomized(build_model("tiny"))
    before = evaluate(model, images, labels, progress=False)
    after = evaluate(model, images, labels, progress=False, temperature=2.0)
    fig = plots.plot_reliability(before, save=tmp_path / "reliability.png")
    assert isinstance(fig, Figure) and (tmp_path / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    assert fig.axes[0].get_title().startswith("ECE ") and len(fig.axes) == 2  # diagram and histogram
    both = plots.plot_reliability({"before": before, "after": after})
    assert len(both.axes) == 4 and both.axes[1].get_title().startswith("after: ECE")
