import pytest
import torch
from test_checkpoint import randomized
from test_cli import run_json

from resnet5m.cli import main
from resnet5m.model import build_model
from resnet5m.weights import entry_for, load_weights, save_weights


@pytest.fixture
def trained(tmp_path):
    """A weights file as `resnet5m train` writes it: recipe, history, validation metrics, command."""
    torch.manual_seed(0)
    path = tmp_path / "run" / "resnet5m_tiny.pt"
    save_weights(
        path, randomized(build_model("tiny")), "tiny", metrics={"val_acc": 0.5, "val_n": 100}, recipe={"tta": True},
        history=[{"epoch": 1, "val_acc": 0.5}], extra={"command": "resnet5m train --arch tiny", "seed": 3},
    )  # fmt: skip
    return path


def test_publish_records_the_test_figures_and_keeps_the_rest(trained, tmp_path, cifar_dir, capsys):
    out_path = tmp_path / "weights" / "resnet5m_tiny.pt"
    argv = ["publish", "--weights", str(trained), "--out", str(out_path), "--data-dir", str(cifar_dir), "--json"]
    out = run_json(capsys, argv)
    assert out["test_n"] == 200 and out["test_tta"] is True and 0 <= out["test_acc_no_tta"] <= 1
    # the recorded figure is the one `resnet5m evaluate` measures on the published file (TTA on by default)
    evaluated = run_json(capsys, ["evaluate", "--weights", str(out_path), "--data-dir", str(cifar_dir), "--json"])
    assert evaluated["accuracy"] == out["test_acc"] and evaluated["weights_sha256"] == out["sha256"]
    plain = run_json(capsys, ["evaluate", "--weights", str(out_path), "--data-dir", str(cifar_dir), "--no-tta", "--json"])
    assert plain["accuracy"] == out["test_acc_no_tta"]
    # the file's entry for the manifest of shipped weights, as the manifest test reads it back from the file
    entry = out["manifest"]["tiny"]
    assert entry == entry_for(out_path).to_dict() and entry["sha256"] == out["sha256"]
    assert (entry["test_acc"], entry["test_acc_one_view"], entry["test_n"]) == (out["test_acc"], plain["accuracy"], 200)

    source, published = load_weights(trained), load_weights(out_path)
    assert published.meta["metrics"]["val_acc"] == 0.5 and published.meta["history"] == [{"epoch": 1, "val_acc": 0.5}]
    assert published.meta["command"] == "resnet5m train --arch tiny" and published.meta["seed"] == 3
    assert published.meta["trained"] == source.meta["created"]
    for key, value in source.model.state_dict().items():
        assert torch.equal(value, published.model.state_dict()[key]), key


def test_publish_never_replaces_a_file_without_force(trained, tmp_path, cifar_dir, capsys):
    out_path = tmp_path / "taken.pt"
    out_path.write_bytes(b"user data")
    argv = ["publish", "--weights", str(trained), "--out", str(out_path), "--data-dir", str(cifar_dir)]
    assert main(argv) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert out_path.read_bytes() == b"user data"
    assert main(argv + ["--force", "--no-tta"]) == 0
    assert load_weights(out_path).meta["metrics"]["test_tta"] is False
    printed = capsys.readouterr().out
    assert "add the entry in src/resnet5m/weights/manifest.json:\n" in printed and '"tiny": {' in printed
    assert main(["publish", "--weights", str(trained), "--out", str(trained), "--data-dir", str(cifar_dir), "--force"]) == 2
    assert "must differ" in capsys.readouterr().err
