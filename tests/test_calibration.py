"""Calibration: ECE and NLL in evaluate, temperature scaling (`resnet5m calibrate`), the stored temperature applied."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_checkpoint import randomized

from resnet5m.calibration import calibration_figures, fit_temperature
from resnet5m.cli import main
from resnet5m.data import BATCHES_DIR, TRAIN_FILES, load_split
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
    """A tiny net made overconfident (its classifier scaled up), saved as trained with the last VAL images held out."""
    torch.manual_seed(0)
    model = randomized(build_model("tiny"))
    with torch.no_grad():
        model.linear.weight.mul_(20)
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    save_weights(path, model, "tiny", extra={"data": {"train_images": 1000 - VAL, "val_images": VAL}})
    return path


def noisy_answers(weights: Path, images: torch.Tensor, wrong: float = 0.3) -> torch.Tensor:
    """The net's own answers (flip TTA, as calibrate sees it), a fraction `wrong` of them changed: it is right 70%
    of the time, far less often than its scaled-up logits claim, so the fitted T is above 1."""
    model = load_weights(weights).model.eval()
    answers = evaluate(model, images, torch.zeros(len(images), dtype=torch.long), tta=True, progress=False).predictions
    changed = torch.rand(len(images), generator=torch.Generator().manual_seed(0)) < wrong
    return torch.where(changed, (answers + 1) % 10, answers)


@pytest.fixture(scope="module")
def val_dir(sharp_weights: Path, cifar_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """conftest's generated CIFAR-10, the labels of its last VAL training images (the val split) from noisy_answers."""
    root = tmp_path_factory.mktemp("val")
    shutil.copytree(cifar_dir / BATCHES_DIR, root / BATCHES_DIR)
    last = root / BATCHES_DIR / TRAIN_FILES[-1]
    with open(last, "rb") as f:
        batch = pickle.load(f)
    images = torch.from_numpy(batch[b"data"]).reshape(-1, 3, 32, 32)
    batch[b"labels"] = noisy_answers(sharp_weights, images).tolist()
    with open(last, "wb") as f:
        pickle.dump(batch, f)
    return root


def run_json(argv: list[str], capsys: pytest.CaptureFixture) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_calibrate_fits_on_validation_stores_and_evaluate_applies(sharp_weights, val_dir, tmp_path, capsys) -> None:
    out = tmp_path / "calibrated.pt"
    source_digest = sha256_of(sharp_weights)
    argv = ["calibrate", "--weights", str(sharp_weights), "--out", str(out), "--data-dir", str(val_dir), "--val-size", str(VAL)]
    result = run_json(argv, capsys)
    assert result["after"]["nll"] < result["before"]["nll"] and result["after"]["ece"] < result["before"]["ece"]
    assert result["temperature"] > 1 and result["images"] == "the last 200 training images (the validation split)"
    assert result["held_out_in_training"] is True and result["caveat"] is None
    assert sha256_of(sharp_weights) == source_digest  # the source is never rewritten
    meta = load_weights(out).meta
    assert meta["temperature"] == result["temperature"] and meta["calibration"]["n"] == VAL
    assert meta["data"] == {"train_images": 1000 - VAL, "val_images": VAL}  # the source's metadata is carried over

    images, labels = load_split("val", val_dir, val_size=VAL)
    model = load_weights(out).model
    refit = evaluate(model, images, labels, tta=True, temperature=meta["temperature"], progress=False)
    assert refit.loss == pytest.approx(result["after"]["nll"], rel=1e-4)  # the same views and precision as calibrate

    test_argv = ["evaluate", "--data-dir", str(val_dir)]
    before, after = (run_json([*test_argv, "--weights", str(w)], capsys) for w in (sharp_weights, out))
    assert after["temperature"] == meta["temperature"] and before["temperature"] == 1.0
    assert after["accuracy"] == before["accuracy"] and after["nll"] != before["nll"]
    assert main([*test_argv, "--weights", str(out)]) == 0
    assert f"temperature {meta['temperature']:.3f} (calibrated)" in capsys.readouterr().out


def test_calibrate_prints_what_it_fitted_on_and_the_caveat_only_when_due(sharp_weights, val_dir, tmp_path, capsys) -> None:
    argv = ["calibrate", "--weights", str(sharp_weights), "--out", str(tmp_path / "c.pt"), "--data-dir", str(val_dir)]
    assert main(argv) == 0  # --val-size defaults to what the weights held out
    out = capsys.readouterr().out
    assert "fitted on the last 200 training images" in out and "never CIFAR-10's test split" in out and "caveat" not in out
    unrecorded = tmp_path / "unrecorded.pt"
    model = load_weights(sharp_weights).model
    save_weights(unrecorded, model, "tiny")  # no record of the training split
    argv[2] = str(unrecorded)
    assert main([*argv, "--val-size", str(VAL), "--force"]) == 0
    assert "caveat    the weights do not record their training split" in capsys.readouterr().out


def test_weights_trained_on_the_validation_images_are_refused(sharp_weights, cifar_dir, tmp_path, capsys) -> None:
    seen = tmp_path / "seen.pt"
    save_weights(seen, load_weights(sharp_weights).model, "tiny", extra={"data": {"train_images": 1000, "val_images": 0}})
    out = tmp_path / "c.pt"
    assert main(["calibrate", "--weights", str(seen), "--out", str(out), "--data-dir", str(cifar_dir), "--val-size", "100"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "was trained on the last 100 training images (it held out 0)" in err
    assert "pass --images FILE" in err and not out.exists()


def _npz(path: Path, images: torch.Tensor, labels: torch.Tensor | None) -> Path:
    arrays = {"data": images.permute(0, 2, 3, 1).numpy()} | ({"labels": labels.numpy()} if labels is not None else {})
    np.savez(path, **arrays)
    return path


def test_calibrate_on_your_own_labelled_images(sharp_weights, cifar_dir, tmp_path, capsys) -> None:
    images, _ = load_split("test", cifar_dir)
    own = _npz(tmp_path / "held_out.npz", images, noisy_answers(sharp_weights, images))
    argv = ["calibrate", "--weights", str(sharp_weights), "--out", str(tmp_path / "c.pt"), "--images", str(own)]
    result = run_json(argv, capsys)
    assert result["images"] == f"200 labelled images from {own}" and result["n"] == 200 and result["temperature"] > 1
    assert result["held_out_in_training"] is None and result["caveat"] is None
    unlabelled = _npz(tmp_path / "unlabelled.npz", images, None)
    assert main(["calibrate", "--weights", str(sharp_weights), "--out", str(tmp_path / "d.pt"), "--images", str(unlabelled)]) == 2
    assert "200 of its 200 images carry no label" in capsys.readouterr().err and not (tmp_path / "d.pt").exists()


def test_a_temperature_outside_the_sane_range_is_not_written(cifar_dir, tmp_path, capsys) -> None:
    """Labels that are a net's own answers, as on images it was trained on: its NLL falls towards 0 with T."""
    torch.manual_seed(1)
    mild = tmp_path / "mild.pt"  # not scaled up: unsure of its answers, like a net trained with label smoothing
    save_weights(mild, randomized(build_model("tiny")), "tiny")
    images, _ = load_split("test", cifar_dir)
    memorized = _npz(tmp_path / "memorized.npz", images, noisy_answers(mild, images, wrong=0))
    out = tmp_path / "c.pt"
    assert main(["calibrate", "--weights", str(mild), "--out", str(out), "--images", str(memorized), "--json"]) == 2  # no bar
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "is outside 0.05..20.0" in err and "nothing was written" in err
    assert not out.exists()


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
