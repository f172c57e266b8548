"""Export formats: each round-trips through `resnet5m export` (export.py, quantize.py) and `resnet5m evaluate`
(weights/formats.py) on generated data; the measurement table (export_table.py) runs on all of them."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import write_cifar
from test_checkpoint import randomized

from resnet5m import export as ex
from resnet5m import export_table, quantize
from resnet5m.cli import main
from resnet5m.data import load_split, normalize
from resnet5m.errors import UserError
from resnet5m.evaluate import evaluate
from resnet5m.files import sha256_of
from resnet5m.model import build_model
from resnet5m.weights import formats, load_weights, save_weights

N_TEST = 40


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A smaller generated copy than conftest's cifar_dir: 120 training and 40 test images."""
    return write_cifar(tmp_path_factory.mktemp("data"), per_batch=24, n_test=N_TEST)


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = randomized(build_model("tiny"))  # non-default BatchNorm statistics: a wrong fold or cast would show
    path = tmp_path_factory.mktemp("weights") / "resnet5m_tiny.pt"
    save_weights(path, model, "tiny")
    return path


def _run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, dict | None, str]:
    code = main(argv)
    captured = capsys.readouterr()
    out = json.loads(captured.out) if code == 0 and "--json" in argv else None
    return code, out, captured.err


def _export(weights: Path, fmt: str, out: Path, capsys: pytest.CaptureFixture, data_dir: Path, *extra: str) -> dict:
    argv = ["export", "--weights", str(weights), "--format", fmt, "--out", str(out), "--json", "--no-download"]
    code, result, err = _run([*argv, "--data-dir", str(data_dir), "--calib-images", "64", *extra], capsys)
    assert code == 0, err
    return result


def _evaluate(weights: Path, capsys: pytest.CaptureFixture, data_dir: Path) -> dict:
    argv = ["evaluate", "--weights", str(weights), "--data-dir", str(data_dir), "--no-download", "--device", "cpu", "--json"]
    code, result, err = _run(argv, capsys)
    assert code == 0, err
    return result


def _eager_fp32(weights: Path, data_dir: Path) -> dict:
    images, labels = load_split("test", data_dir)
    return evaluate(load_weights(weights).model, images, labels, precision="fp32", progress=False).to_dict()


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_graph_formats_round_trip(fmt: str, tiny_weights: Path, data_dir: Path, tmp_path: Path, capsys) -> None:
    if fmt == "onnx":
        pytest.importorskip("onnx")
        pytest.importorskip("onnxruntime")
    out = tmp_path / f"tiny{ex.SUFFIXES[fmt]}"
    result = _export(tiny_weights, fmt, out, capsys, data_dir)
    assert result["max_abs_diff"] <= ex.GRAPH_TOLERANCE
    assert result["top1_agreement"] == 1.0
    evaluated = _evaluate(out, capsys, data_dir)
    assert evaluated["format"] == fmt
    assert evaluated["arch"] == "tiny"
    # same predictions as the eager fp32 model on every test image
    assert evaluated["confusion"] == _eager_fp32(tiny_weights, data_dir)["confusion"]


def test_fp16_round_trip(tiny_weights: Path, data_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "tiny_fp16.pt"
    result = _export(tiny_weights, "fp16", out, capsys, data_dir)
    assert result["max_abs_diff"] < 0.05
    assert out.stat().st_size < 0.7 * tiny_weights.stat().st_size
    state = torch.load(out, weights_only=True)["state_dict"]
    assert state["conv1.weight"].dtype == torch.float16
    evaluated = _evaluate(out, capsys, data_dir)
    assert (evaluated["format"], evaluated["arch"], evaluated["n"]) == ("fp16", "tiny", N_TEST)


def test_fp16_keeps_the_training_record(data_dir: Path, tmp_path: Path, capsys) -> None:
    torch.manual_seed(0)
    source = tmp_path / "resnet5m_tiny.pt"
    history = [{"epoch": 1, "val_acc": 0.5}, {"epoch": 2, "val_acc": 0.625}]
    record = {"command": "resnet5m train --arch tiny --epochs 2", "seed": 3, "data": {"train_images": 64, "val_images": 16}}
    save_weights(source, randomized(build_model("tiny")), "tiny", history=history, extra=record)
    out = tmp_path / "tiny_fp16.pt"
    _export(source, "fp16", out, capsys, data_dir)
    saved = torch.load(out, weights_only=True)
    assert saved["history"] == history
    assert {k: saved[k] for k in record} == record
    assert saved["export"]["source_sha256"] == sha256_of(source)


def test_int8_round_trip(tiny_weights: Path, data_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "tiny_int8.pt"
    result = _export(tiny_weights, "int8", out, capsys, data_dir)
    assert result["top1_agreement"] >= 0.75  # random weights on noise images: a loose sanity bound
    payload = torch.load(out, weights_only=True)  # plain tensors and containers only
    assert payload["format"] == formats.INT8_FORMAT
    assert payload["export"]["source_sha256"] == result["source_sha256"]
    assert any(t.is_quantized for t in payload["state_dict"].values() if isinstance(t, torch.Tensor))
    evaluated = _evaluate(out, capsys, data_dir)
    assert (evaluated["format"], evaluated["arch"], evaluated["n"]) == ("int8", "tiny", N_TEST)


def test_int8_loader_rebuilds_the_same_graph(tiny_weights: Path, data_dir: Path) -> None:
    loaded = load_weights(tiny_weights)
    loaded.model.eval()
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    quantized = quantize.quantize_int8(loaded.model, quantize.calibration_images(data_dir, 32))
    rebuilt = quantize.int8_from_state(torch.load(_saved(quantized.state_dict()), weights_only=True), loaded.model.config)
    x = normalize(load_split("test", data_dir)[0][:8])
    with torch.inference_mode():
        assert torch.equal(rebuilt(x), quantized(x))
        reference, approx = loaded.model(x), quantized(x)
    # a wrong BatchNorm fold or scale would be off by ~100%; int8 rounding stays at a few percent
    assert (approx - reference).norm() / reference.norm() < 0.1
    # quantizing folds BatchNorm into a copy: the float model is left as it was
    assert all(torch.equal(before[k], v) for k, v in loaded.model.state_dict().items())


def _saved(obj: object) -> io.BytesIO:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return buffer


def test_int8_seed_fits_storage_budget(data_dir: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    weights = tmp_path / "seed.pt"
    save_weights(weights, build_model("seed"), "seed")
    result = ex.export(weights, "int8", tmp_path / "seed_int8.pt", data_dir=data_dir, calib_images=8)
    assert result.size_bytes <= 5.5e6


def test_export_refuses_to_overwrite(tiny_weights: Path, data_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "taken.ts"
    out.write_bytes(b"keep me")
    argv = ["export", "--weights", str(tiny_weights), "--format", "torchscript", "--out", str(out)]
    code, _, err = _run(argv, capsys)
    assert code == 2
    assert "--force" in err and len(err.strip().splitlines()) == 1
    assert out.read_bytes() == b"keep me"
    code, _, err = _run([*argv, "--force"], capsys)
    assert code == 0, err
    assert formats.detect_format(out) == "torchscript"


def test_export_on_a_full_disk_is_one_line_naming_the_out_path(tiny_weights: Path, tmp_path: Path, capsys, disk_fills_after):
    out = tmp_path / "tiny_fp16.pt"
    out.write_bytes(b"keep me")
    disk_fills_after(1000)
    code, _, err = _run(["export", "--weights", str(tiny_weights), "--format", "fp16", "--out", str(out), "--force"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"could not write {out}: No space left on device" in err and "choose another --out" in err  # not the temp name
    assert out.read_bytes() == b"keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["tiny_fp16.pt"]


def test_export_refuses_its_own_source(tiny_weights: Path) -> None:
    with pytest.raises(UserError, match="source"):
        ex.export(tiny_weights, "fp16", tiny_weights, force=True)


def test_default_out_is_in_exports_not_next_to_the_weights(tiny_weights: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    assert ex.default_out(tmp_path / "resnet5m_seed.pt", "onnx") == Path("exports/resnet5m_seed_onnx.onnx")
    monkeypatch.chdir(tmp_path)
    code, result, err = _run(["export", "--weights", str(tiny_weights), "--format", "torchscript", "--json"], capsys)
    assert code == 0, err
    assert result["path"] == str(Path("exports/resnet5m_tiny_torchscript.ts")) and (tmp_path / result["path"]).is_file()
    assert list(tiny_weights.parent.iterdir()) == [tiny_weights]  # nothing new next to the source


def test_evaluate_rejects_unknown_file(tmp_path: Path, data_dir: Path, capsys) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a model at all")
    code, _, err = _run(["evaluate", "--weights", str(junk), "--data-dir", str(data_dir), "--no-download"], capsys)
    assert code == 2
    assert "resnet5m can run" in err and len(err.strip().splitlines()) == 1


def test_onnx_without_onnxruntime_is_one_line(tmp_path: Path, monkeypatch) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"\x08\x08")  # detection goes by extension and first byte; the runtime is needed first
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(UserError, match="pip install"):
        formats.load_any(model)


def test_onnx_export_without_onnx_is_one_line(tiny_weights: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)
    out = tmp_path / "m.onnx"
    with pytest.raises(UserError, match="onnx"):
        ex.export(tiny_weights, "onnx", out)
    assert not out.exists()


def test_arch_mismatch_is_refused(tiny_weights: Path, tmp_path: Path) -> None:
    out = tmp_path / "tiny.ts"
    ex.export(tiny_weights, "torchscript", out)
    with pytest.raises(UserError, match="holds arch 'tiny'"):
        formats.load_any(out, arch="seed")


def test_table_command(tiny_weights: Path, data_dir: Path, tmp_path: Path, capsys) -> None:
    has_onnx = all(importlib.util.find_spec(name) for name in ("onnx", "onnxruntime"))
    chosen = "fp16,int8,torchscript" + (",onnx" if has_onnx else "")
    argv = ["--weights", str(tiny_weights), "--data-dir", str(data_dir), "--formats", chosen]
    argv += ["--out-dir", str(tmp_path), "--calib-images", "32", "--latency-runs", "2", "--throughput-runs", "1"]
    assert export_table.main(argv) == 0
    table = capsys.readouterr().out
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + 2 + len(chosen.split(","))  # header, source fp32 and bf16, one per format
    assert "| int8 |" in table


@pytest.fixture(scope="module")
def whitened_weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """fast and best nets with fitted whitening and non-default BatchNorm statistics, saved in our format."""
    paths = {}
    for arch in ("fast", "best"):
        torch.manual_seed(0)
        model = build_model(arch)
        model.fit_to_data(torch.randn(64, 3, 32, 32))
        paths[arch] = tmp_path_factory.mktemp(arch) / f"resnet5m_{arch}.pt"
        recipe = {"tta": True, "tta_shift": 1}  # as the fast preset validates; an export must keep it
        save_weights(paths[arch], randomized(model), arch, recipe=recipe, extra={"temperature": 0.5})
    return paths


@pytest.mark.parametrize("arch", ["fast", "best"])
@pytest.mark.parametrize("fmt", ["fp16", "int8", "torchscript", "onnx"])
def test_whitened_nets_export_in_every_format(arch, fmt, whitened_weights, data_dir, tmp_path, capsys) -> None:
    if fmt == "onnx" and not (importlib.util.find_spec("onnx") and importlib.util.find_spec("onnxruntime")):
        pytest.skip("needs the [onnx] extra")
    result = _export(whitened_weights[arch], fmt, tmp_path / f"{arch}{ex.SUFFIXES[fmt]}", capsys, data_dir)
    evaluated = _evaluate(tmp_path / f"{arch}{ex.SUFFIXES[fmt]}", capsys, data_dir)
    assert evaluated["arch"] == arch and evaluated["format"] == fmt and evaluated["n"] == N_TEST
    assert evaluated["tta_shift"] == 1 and evaluated["temperature"] == 0.5  # the source's views and temperature
    if fmt != "int8":  # int8 is compared to fp32 by its own agreement figure, below
        assert result["max_abs_diff"] <= (ex.GRAPH_TOLERANCE if fmt in ("torchscript", "onnx") else 0.05)
    assert result["top1_agreement"] >= (0.75 if fmt == "int8" else 1.0)


def _old_torch_export(*args, **kwargs):
    raise TypeError("export() got an unexpected keyword argument 'dynamic_shapes'")  # what torch 2.4 raised


def _unsupported_op(*args, **kwargs):
    raise RuntimeError("\x1b[96munsupported op\x1b[0m\nmore lines")  # with colours, as torch 2.5's exporter writes


@pytest.mark.parametrize("arch", ["fast", "best"])
def test_onnx_falls_back_to_the_torchscript_exporter(arch, whitened_weights, data_dir, tmp_path, capsys, monkeypatch):
    """Where the torch.export-based exporter fails (torch before 2.13 on these nets), the TorchScript-based one
    writes the file, and the export says so."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    monkeypatch.setattr(ex, "_has_module", lambda name: True)  # as if onnxscript were installed
    monkeypatch.setattr(ex, "_onnx_dynamo", _old_torch_export)
    out = tmp_path / f"{arch}.onnx"
    result = _export(whitened_weights[arch], "onnx", out, capsys, data_dir)
    exporter = next(note for note in result["notes"] if note.startswith("exporter:"))
    assert exporter.startswith("exporter: TorchScript-based") and "torch.export exporter failed (TypeError" in exporter
    assert result["max_abs_diff"] <= ex.GRAPH_TOLERANCE and result["top1_agreement"] == 1.0
    assert _evaluate(out, capsys, data_dir)["format"] == "onnx"


def test_onnx_export_failing_with_both_exporters_is_one_line(tiny_weights, tmp_path, monkeypatch) -> None:
    pytest.importorskip("onnx")
    monkeypatch.setattr(ex, "_has_module", lambda name: True)
    monkeypatch.setattr(ex, "_onnx_dynamo", _old_torch_export)
    monkeypatch.setattr(ex, "_onnx_torchscript", _unsupported_op)
    out = tmp_path / "m.onnx"
    with pytest.raises(UserError, match=r"torch.export exporter failed \(TypeError.*TorchScript-based exporter failed "
                                        r"\(RuntimeError: unsupported op\)$"):
        ex.export(tiny_weights, "onnx", out)
    assert not out.exists()
