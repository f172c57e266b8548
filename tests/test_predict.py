"""`resnet5m predict` on every input kind (inputs.py), its table/JSON/CSV output and bad input (predict.py)."""

from __future__ import annotations

import csv
import importlib.util
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_batch
from PIL import Image
from test_checkpoint import randomized

from resnet5m import export as ex
from resnet5m.cli import main
from resnet5m.data import CLASSES
from resnet5m.errors import UserError
from resnet5m.evaluate import evaluate
from resnet5m.inputs import pixels_of, read_inputs
from resnet5m.model import build_model
from resnet5m.weights import load_weights, save_weights


def pixels(n: int, seed: int = 0, size: tuple[int, int] = (32, 32)) -> np.ndarray:
    """n random uint8 images (n, H, W, 3)."""
    return np.random.default_rng(seed).integers(0, 256, (n, *size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    save_weights(path, randomized(build_model("tiny")), "tiny")
    return path


@pytest.fixture
def images_dir(tmp_path: Path) -> Path:
    """One file of each image kind, one of them in a subfolder."""
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    rgb = pixels(4)
    Image.fromarray(rgb[0]).save(folder / "a_rgb.png")
    Image.fromarray(rgb[1]).save(folder / "b_photo.jpg", quality=95)
    Image.fromarray(rgb[2][..., 0]).save(folder / "c_gray.png")  # mode L
    rgba = np.dstack([rgb[3], np.full((32, 32), 255, np.uint8)])
    rgba[:16, :, 3] = 0  # top half fully transparent
    Image.fromarray(rgba).save(folder / "d_rgba.png")
    Image.fromarray(rgb[0]).convert("P").save(folder / "e_palette.bmp")
    Image.fromarray(pixels(1, 1, (300, 200))[0]).save(folder / "sub" / "f_large.webp")
    Image.fromarray(pixels(1, 2, (64, 64))[0]).convert("L").save(folder / "sub" / "g_gray_large.jpg")
    return folder


def run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def dump(obj: object, path: Path) -> Path:
    with open(path, "wb") as f:
        pickle.dump(obj, f)
    return path


# ---------------------------------------------------------------- reading inputs


def test_image_files_of_every_kind_become_32px_rgb(images_dir: Path) -> None:
    inputs = read_inputs([str(images_dir)])
    names = ["a_rgb.png", "b_photo.jpg", "c_gray.png", "d_rgba.png", "e_palette.bmp", "sub/f_large.webp", "sub/g_gray_large.jpg"]
    assert inputs.ids == names  # recursive, sorted, relative to the folder
    assert inputs.images.shape == (7, 3, 32, 32) and inputs.images.dtype == torch.uint8
    assert inputs.resized == 2 and inputs.skipped == [] and not inputs.labelled.any()
    rgb = torch.from_numpy(pixels(4)).permute(0, 3, 1, 2)
    assert torch.equal(inputs.images[0], rgb[0])
    gray = inputs.images[2]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2]) and torch.equal(gray[0], rgb[2][0])
    rgba = inputs.images[3]
    assert (rgba[:, :16] == 255).all() and torch.equal(rgba[:, 16:], rgb[3][:, 16:])  # transparency over white


def test_globs_and_files_keep_the_order_given(images_dir: Path) -> None:
    inputs = read_inputs([str(images_dir / "sub" / "*.webp"), str(images_dir / "a_rgb.png"), str(images_dir / "**" / "*.jpg")])
    assert [Path(i).name for i in inputs.ids] == ["f_large.webp", "a_rgb.png", "b_photo.jpg", "g_gray_large.jpg"]


def test_arrays_in_both_layouts_and_npz_with_labels(tmp_path: Path) -> None:
    hwc = pixels(3)
    np.save(tmp_path / "hwc.npy", hwc)
    np.save(tmp_path / "chw.npy", hwc.transpose(0, 3, 1, 2))
    np.savez(tmp_path / "set.npz", images=hwc, labels=np.array([1, 2, 3]))
    inputs = read_inputs([str(tmp_path / n) for n in ("hwc.npy", "chw.npy", "set.npz")])
    assert inputs.images.shape == (9, 3, 32, 32)
    assert torch.equal(inputs.images[:3], inputs.images[3:6]) and torch.equal(inputs.images[:3], inputs.images[6:])
    assert inputs.ids == list(range(9))  # no ids in the files: the running index
    assert inputs.labels.tolist() == [-1] * 6 + [1, 2, 3]


@pytest.mark.parametrize("keys", ["bytes", "str"])
def test_cifar_style_pickles_with_bytes_or_str_keys(keys: str, tmp_path: Path) -> None:
    batch = make_batch(6, seed=5)  # the official layout: bytes keys, (N, 3072) rows, labels, filenames
    if keys == "str":
        batch = {k.decode(): v for k, v in batch.items()}
        batch["data"] = batch["data"].reshape(6, 3, 32, 32).transpose(0, 2, 3, 1)  # (N, 32, 32, 3)
        batch["ids"] = list(range(100, 106))
    inputs = read_inputs([str(dump(batch, tmp_path / "batch"))])
    labels = batch[b"labels" if keys == "bytes" else "labels"]
    assert inputs.images.shape == (6, 3, 32, 32) and inputs.labels.tolist() == list(labels)
    assert inputs.ids == (list(range(100, 106)) if keys == "str" else [f"img_5_{i}.png" for i in range(6)])


# ---------------------------------------------------------------- the command and its outputs


def test_table_json_and_accuracy_of_a_labelled_pickle(weights: Path, tmp_path: Path, capsys) -> None:
    batch = dump(make_batch(30, seed=3), tmp_path / "labelled")
    code, out, _ = run(["predict", str(batch), "--weights", str(weights), "--top-k", "2"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["input", "class", "prob", "top-2"] and lines[1].startswith("img_3_0.png")
    images, labels = read_inputs([str(batch)]).images, torch.tensor(make_batch(30, seed=3)[b"labels"])
    expected = evaluate(load_weights(weights).model, images, labels, tta=True, progress=False).accuracy
    assert f"accuracy  {100 * expected:.2f}% on the 30 images" in out and "images/s on cpu" in out
    code, out, err = run(["predict", str(batch), "--weights", str(weights), "--json", "--top-k", "3"], capsys)
    objects = [json.loads(line) for line in out.splitlines()]  # stdout holds JSON only; the notes go to stderr
    assert len(objects) == 30 and "accuracy" in err
    first = objects[0]
    assert first["id"] == "img_3_0.png" and first["true_label"] == int(labels[0]) and len(first["top_k"]) == 3
    assert first["class"] == CLASSES[first["label"]] and first["top_k"][0]["probability"] == first["probability"]


def test_no_label_pickle_round_trips_to_an_id_labels_csv(weights: Path, tmp_path: Path, capsys) -> None:
    data = pixels(25, seed=7).transpose(0, 3, 1, 2).reshape(25, 3072)
    ids = [int(i) for i in np.random.default_rng(1).permutation(1000)[:25]]  # not in order: the file's ids are kept
    test_file = dump({b"data": data, b"ids": ids}, tmp_path / "test_no_labels")
    out_csv = tmp_path / "submission.csv"
    code, out, _ = run(["predict", str(test_file), "--weights", str(weights), "--csv", str(out_csv)], capsys)
    assert code == 0 and f"wrote     {out_csv} (25 rows)" in out
    rows = list(csv.reader(out_csv.open()))
    images = torch.from_numpy(data.reshape(25, 3, 32, 32))
    expected = evaluate(load_weights(weights).model, images, torch.zeros(25, dtype=torch.int64), tta=True, progress=False)
    assert rows[0] == ["ID", "Labels"] and len(rows) == 26
    for (row_id, label), image_id, prediction in zip(rows[1:], ids, expected.predictions.tolist(), strict=True):
        assert (int(row_id), int(label)) == (image_id, prediction)
    code, _, _ = run(["predict", str(test_file), "--weights", str(weights), "--csv", str(out_csv), "--force", "--labels", "name",
                      "--probs"], capsys)  # fmt: skip
    rows = list(csv.reader(out_csv.open()))
    assert code == 0 and rows[0] == ["ID", "Labels", *CLASSES]
    assert [r[1] for r in rows[1:]] == [CLASSES[p] for p in expected.predictions.tolist()]
    assert all(abs(sum(map(float, r[2:])) - 1) < 1e-4 for r in rows[1:])


def test_an_existing_csv_needs_force(weights: Path, images_dir: Path, tmp_path: Path, capsys) -> None:
    out_csv = tmp_path / "taken.csv"
    out_csv.write_text("keep me")
    argv = ["predict", str(images_dir), "--weights", str(weights), "--csv", str(out_csv)]
    code, _, err = run(argv, capsys)
    assert code == 2 and "--force" in err and len(err.strip().splitlines()) == 1 and out_csv.read_text() == "keep me"
    assert run([*argv, "--force"], capsys)[0] == 0
    assert out_csv.read_text().splitlines()[1].startswith("a_rgb.png,")


def test_a_stored_temperature_softens_the_probabilities(tmp_path: Path, capsys) -> None:
    torch.manual_seed(1)
    model = randomized(build_model("tiny"))
    save_weights(tmp_path / "plain.pt", model, "tiny")
    save_weights(tmp_path / "hot.pt", model, "tiny", extra={"temperature": 2.0})
    np.save(tmp_path / "x.npy", pixels(5))
    probs = {}
    for name in ("plain", "hot"):
        argv = ["predict", str(tmp_path / "x.npy"), "--weights", str(tmp_path / f"{name}.pt"), "--json", "--top-k", "10"]
        code, out, err = run(argv, capsys)
        assert code == 0
        rows = [sorted(json.loads(line)["top_k"], key=lambda t: t["label"]) for line in out.splitlines()]
        probs[name] = torch.tensor([[t["probability"] for t in row] for row in rows])
    assert "temperature 2.000" in err
    assert torch.allclose(probs["hot"], (probs["plain"].log() / 2).softmax(1), atol=1e-5)


# ---------------------------------------------------------------- every weights format


@pytest.fixture(scope="module")
def exported(weights: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from conftest import write_cifar

    data_dir = write_cifar(tmp_path_factory.mktemp("data"), per_batch=12, n_test=8)
    folder = tmp_path_factory.mktemp("exports")
    formats = ["fp16", "int8", "torchscript"]
    if importlib.util.find_spec("onnx") and importlib.util.find_spec("onnxruntime"):
        formats.append("onnx")
    for f in formats:
        ex.export(weights, f, folder / f"tiny_{f}{ex.SUFFIXES[f]}", data_dir=data_dir, calib_images=32)
    return {f: folder / f"tiny_{f}{ex.SUFFIXES[f]}" for f in formats}


@pytest.mark.parametrize("fmt", ["fp32", "fp16", "int8", "torchscript", "onnx"])
def test_every_weights_format_predicts(
    fmt: str, weights: Path, exported: dict[str, Path], images_dir: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("resnet5m.runtime.cpu_has_native_bf16", lambda: True)  # auto: bf16, as on this project's hosts
    if fmt != "fp32" and fmt not in exported:
        pytest.skip("needs the [onnx] extra")
    path = weights if fmt == "fp32" else exported[fmt]
    code, out, err = run(["predict", str(images_dir), "--weights", str(path), "--json", "--device", "cpu"], capsys)
    assert code == 0, err
    objects = [json.loads(line) for line in out.splitlines()]
    assert [o["id"] for o in objects][:2] == ["a_rgb.png", "b_photo.jpg"] and len(objects) == 7
    assert all(0 <= o["label"] < 10 and 0 < o["probability"] <= 1 for o in objects)
    assert ("(bf16)" if fmt in ("fp32", "fp16") else "(fp32)") in err  # graph and int8 models run as stored


# ---------------------------------------------------------------- bad input


def test_an_unreadable_file_is_skipped_with_its_reason_or_stops_strict(weights: Path, images_dir: Path, capsys) -> None:
    (images_dir / "broken.png").write_bytes(b"not an image")
    dump({"data": np.zeros((1, 3072), np.uint8), "hook": torch.nn.Identity()}, images_dir / "evil.npz.pkl")
    inputs = read_inputs([str(images_dir), str(images_dir / "evil.npz.pkl")])
    reasons = dict(inputs.skipped)
    assert len(inputs.ids) == 7 and "not a readable image" in reasons[str(images_dir / "broken.png")]
    assert "not loaded for safety" in reasons[str(images_dir / "evil.npz.pkl")]
    code, out, _ = run(["predict", str(images_dir), "--weights", str(weights)], capsys)
    assert code == 0 and f"skipped   {images_dir / 'broken.png'}: not a readable image" in out
    code, _, err = run(["predict", str(images_dir), "--weights", str(weights), "--strict"], capsys)
    assert code == 2 and "broken.png" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (np.zeros((2, 28, 28), np.uint8), "expected uint8 images of shape (N, 32, 32, 3), (N, 3, 32, 32)"),
        (np.zeros((2, 32, 32, 3), np.float32), "got float32 (2, 32, 32, 3)"),
        ({"images": np.zeros((2, 3072), np.uint8)}, "expected a dict with 'data'"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 12]}, "expected 2 integer labels in 0..9"),
    ],
)
def test_content_of_the_wrong_kind_is_one_line_naming_what_was_expected(content, message: str, tmp_path: Path, capsys) -> None:
    if isinstance(content, np.ndarray):
        np.save(path := tmp_path / "bad.npy", content)
    else:
        path = dump(content, tmp_path / "bad_batch")
    code, _, err = run(["predict", str(path)], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_empty_folders_missing_paths_and_no_readable_image_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"folder .*empty holds no files \(searched recursively\)"):
        read_inputs([str(tmp_path / "empty")])
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(UserError, match=r"no readable images among the 1 input file\(s\); the first, .*notes.txt: not a"):
        read_inputs([str(tmp_path / "empty")])
    with pytest.raises(UserError, match="not found"):
        read_inputs([str(tmp_path / "missing.png")])
    with pytest.raises(UserError, match="no file matches"):
        read_inputs([str(tmp_path / "*.jpg")])
    (tmp_path / "junk.png").write_bytes(b"junk")
    with pytest.raises(UserError, match="no readable images among the 1 input file"):
        read_inputs([str(tmp_path / "junk.png")])


# ---------------------------------------------------------------- every Pillow mode


def _modes() -> dict[str, tuple[Image.Image, np.ndarray]]:
    """mode -> (an image in that mode, the 8-bit RGB image it was made from, as the net should see it)."""
    rng = np.random.default_rng(3)
    gray = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    rgb = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    as_rgb = lambda g: np.repeat(g[..., None], 3, -1)  # noqa: E731
    opaque = rng.random((32, 32)) < 0.7
    alpha = np.where(opaque, 255, 0).astype(np.uint8)
    bw = np.where(gray > 127, 255, 0).astype(np.uint8)
    palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    index = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    p = Image.frombytes("P", (32, 32), index.tobytes())  # the palette image of `index`
    p.putpalette(palette.flatten().tolist())
    p_clear = p.copy()
    p_clear.info["transparency"] = int(index[0, 0])
    clear = (index == index[0, 0])[..., None]
    pa = p.convert("PA")
    pa.putalpha(Image.fromarray(alpha))
    white = np.full((32, 32, 3), 255, np.uint8)
    over_white = lambda x: np.where(opaque[..., None], x, white)  # noqa: E731
    return {
        "1": (Image.fromarray(bw).convert("1", dither=Image.Dither.NONE), as_rgb(bw)),
        "L": (Image.fromarray(gray), as_rgb(gray)),
        "LA": (Image.merge("LA", [Image.fromarray(gray), Image.fromarray(alpha)]), over_white(as_rgb(gray))),
        "P": (p, palette[index]),
        "P transparency": (p_clear, np.where(clear, white, palette[index])),
        "PA": (pa, over_white(palette[index])),
        "I;16": (Image.fromarray(gray.astype(np.uint16) * 257), as_rgb(gray)),  # 16-bit values: the white bird
        "I": (Image.fromarray(gray.astype(np.int32) * 257), as_rgb(gray)),
        "I, 8-bit values": (Image.fromarray(gray).convert("I"), as_rgb(gray)),
        "F": (Image.fromarray(gray.astype(np.float32) / 255), as_rgb(gray)),
        "F, 8-bit values": (Image.fromarray(gray).convert("F"), as_rgb(gray)),
        "CMYK": (Image.fromarray(rgb).convert("CMYK"), rgb),
    }


@pytest.mark.parametrize("mode", list(_modes()))
def test_every_pillow_mode_is_read_as_the_8_bit_image_it_was_made_from(mode: str, weights: Path, tmp_path: Path) -> None:
    image, expected = _modes()[mode]
    assert image.mode == mode.split(" ")[0].rstrip(",")
    pixels = pixels_of(image)
    assert torch.equal(pixels, torch.from_numpy(expected).permute(2, 0, 1))
    loaded = load_weights(weights)
    answer = lambda x: evaluate(loaded.model, x[None], torch.zeros(1, dtype=torch.long), progress=False)  # noqa: E731
    got, want = answer(pixels), answer(torch.from_numpy(expected).permute(2, 0, 1))
    assert torch.equal(got.predictions, want.predictions) and torch.equal(got.confidences, want.confidences)


def test_a_16_bit_png_file_predicts_as_its_8_bit_source(weights: Path, tmp_path: Path, capsys) -> None:
    gray = np.random.default_rng(4).integers(0, 256, (32, 32), dtype=np.uint8)
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "deep.png")
    Image.fromarray(gray).save(tmp_path / "plain.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    lines = [run(["predict", str(tmp_path / name), "--weights", str(weights)], capsys)[1].splitlines()[0] for name in
             ("deep.png", "plain.png")]  # fmt: skip
    assert lines[0].split()[1:] == lines[1].split()[1:]  # class, probability and top-k as the 8-bit file's


# ---------------------------------------------------------------- folders


def test_a_folder_reads_arrays_and_pickles_and_lists_everything_else_as_skipped(weights: Path, images_dir: Path, capsys):
    np.save(images_dir / "floats.npy", np.zeros((2, 32, 32, 3), np.float32))  # the wrong kind: stopped the whole run
    dump({"data": pixels(3, 5).reshape(3, -1)}, images_dir / "batch.pkl")  # a pickle: was silently ignored
    (images_dir / "notes.txt").write_text("not an image")
    inputs = read_inputs([str(images_dir)])
    reasons = dict(inputs.skipped)
    assert len(inputs.ids) == 7 + 3 and set(reasons) == {str(images_dir / "floats.npy"), str(images_dir / "notes.txt")}
    assert reasons[str(images_dir / "floats.npy")].startswith("expected uint8 images of shape") and "float32" in reasons[
        str(images_dir / "floats.npy")
    ]  # fmt: skip
    code, out, _ = run(["predict", str(images_dir), "--weights", str(weights)], capsys)
    assert code == 0 and f"skipped   {images_dir / 'floats.npy'}: expected uint8" in out
    assert not any("batch.pkl" in line for line in out.splitlines() if line.startswith("skipped"))
    code, _, err = run(["predict", str(images_dir), "--weights", str(weights), "--strict"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--strict stops" in err
