import errno
import os
import re
import tempfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resnet5m.errors import UserError
from resnet5m.files import atomic_save, sha256_of, staged
from resnet5m.model import build_model
from resnet5m.weights import load_weights, save_weights


class OriginalBlock(nn.Module):
    """An independent re-statement of the original project's BasicBlock, for its key names."""

    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + self.shortcut(x))


class OriginalResNet(nn.Module):
    def __init__(self, blocks=(5, 4, 3), widths=(64, 128, 256)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        c = widths[0]
        for i, (n, w) in enumerate(zip(blocks, widths, strict=True)):
            layers = []
            for j in range(n):
                layers.append(OriginalBlock(c, w, 2 if (i and not j) else 1))
                c = w
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
        self.linear = nn.Linear(c, 10)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


def randomized(model: nn.Module) -> nn.Module:
    """Give BN statistics non-default values so a load that skipped them would show."""
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2)
    return model.eval()


def test_original_state_dict_loads_strictly_and_agrees(tmp_path):
    original = randomized(OriginalResNet())
    torch.save(original.state_dict(), tmp_path / "orig.pt")
    loaded = load_weights(tmp_path / "orig.pt")
    assert loaded.arch == "seed"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded.model.eval()(x), original(x), atol=1e-5)


def test_our_format_round_trip_with_metadata(tmp_path):
    model = randomized(build_model("tiny"))
    digest = save_weights(tmp_path / "w.pt", model, "tiny", metrics={"test_acc": 0.5}, history=[{"epoch": 1}])
    assert digest == sha256_of(tmp_path / "w.pt")
    loaded = load_weights(tmp_path / "w.pt", expected_sha256=digest)
    assert loaded.arch == "tiny" and loaded.meta["metrics"]["test_acc"] == 0.5 and loaded.meta["history"] == [{"epoch": 1}]
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v)


def test_fp16_storage_loads_back_as_fp32(tmp_path):
    model = randomized(build_model("tiny"))
    save_weights(tmp_path / "h.pt", model, half=True)
    loaded = load_weights(tmp_path / "h.pt")
    w = loaded.model.state_dict()["conv1.weight"]
    assert w.dtype == torch.float32 and torch.allclose(w, model.state_dict()["conv1.weight"], atol=1e-3)


def test_save_never_overwrites_by_default(tmp_path):
    model = build_model("tiny")
    save_weights(tmp_path / "w.pt", model)
    before = sha256_of(tmp_path / "w.pt")
    with pytest.raises(UserError, match="already exists"):
        save_weights(tmp_path / "w.pt", build_model("tiny"))
    assert sha256_of(tmp_path / "w.pt") == before


def test_module_prefixed_state_dict_loads(tmp_path):
    model = randomized(build_model("tiny"))
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, tmp_path / "ddp.pt")
    loaded = load_weights(tmp_path / "ddp.pt")
    assert loaded.arch == "tiny"
    assert torch.equal(loaded.model.state_dict()["bn1.running_mean"], model.state_dict()["bn1.running_mean"])


@pytest.mark.parametrize("key", ["model_state_dict", "state_dict", "net", "model"])
@pytest.mark.parametrize("prefix", ["", "module.", "_orig_mod.", "_orig_mod.module."])
def test_common_checkpoint_layouts_load(tmp_path, key, prefix):
    # Training checkpoints saved the common way: the state dict next to the epoch and the optimizer's state, its
    # keys prefixed by DataParallel/DDP (module.), torch.compile (_orig_mod.) or both.
    model = randomized(build_model("tiny"))
    state = {f"{prefix}{k}": v for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.save({key: state, "epoch": 7, "optimizer_state_dict": optimizer.state_dict()}, tmp_path / "ckpt.pt")
    loaded = load_weights(tmp_path / "ckpt.pt")
    assert loaded.arch == "tiny"
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v), k


def test_an_unknown_layout_is_refused_naming_its_keys(tmp_path):
    model = build_model("tiny")
    torch.save({"weights": model.state_dict(), "epoch": 3}, tmp_path / "odd.pt")
    expected = r"odd.pt holds no model state dict \(found keys 'weights', 'epoch'\); expected .* under 'model_state_dict'"
    with pytest.raises(UserError, match=expected):
        load_weights(tmp_path / "odd.pt")
    torch.save({}, tmp_path / "empty.pt")
    with pytest.raises(UserError, match=r"found an empty dict"):
        load_weights(tmp_path / "empty.pt")


def test_whole_pickled_model_is_refused(tmp_path):
    torch.save(build_model("tiny"), tmp_path / "whole.pt")
    with pytest.raises(UserError, match="pickled Python object.*state_dict"):
        load_weights(tmp_path / "whole.pt")


def test_arch_mismatch_names_keys_and_the_lookalike(tmp_path):
    torch.save(build_model("tiny").state_dict(), tmp_path / "tiny.pt")
    expected = r"does not fit arch 'seed'.*missing keys \['layer1.1.*looks like arch 'tiny'.*: pass --arch tiny"
    with pytest.raises(UserError, match=expected):
        load_weights(tmp_path / "tiny.pt", arch="seed")


def test_arch_mismatch_suggests_the_arch_that_fits(tmp_path):
    save_weights(tmp_path / "fast.pt", build_model("fast"), "fast")
    with pytest.raises(UserError, match=r"does not fit arch 'seed'.*; the file records arch 'fast': pass --arch fast or drop"):
        load_weights(tmp_path / "fast.pt", arch="seed")
    torch.save(build_model("fast").state_dict(), tmp_path / "bare.pt")  # no metadata: found by its shapes
    with pytest.raises(UserError, match=r"; it looks like arch 'fast': pass --arch fast or drop --arch$"):
        load_weights(tmp_path / "bare.pt", arch="tiny")
    torch.save(OriginalResNet((2, 2, 2), (8, 16, 32)).state_dict(), tmp_path / "custom.pt")
    with pytest.raises(UserError, match=r"looks like a ResNet \(blocks \[2, 2, 2\], widths \[8, 16, 32\]\): drop --arch"):
        load_weights(tmp_path / "custom.pt", arch="tiny")
    assert load_weights(tmp_path / "custom.pt").arch == "custom"  # as the message says


def test_foreign_state_dict_is_refused(tmp_path):
    torch.save({"fc.weight": torch.zeros(10, 4)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="fit no resnet5m network .* of a custom shape, pass --arch SPEC"):
        load_weights(tmp_path / "other.pt")
    with pytest.raises(UserError, match="does not fit arch 'seed'.*not a resnet5m/original-format ResNet"):
        load_weights(tmp_path / "other.pt", arch="seed")


@pytest.mark.parametrize("content", [b"hello", b"", None])
def test_truncated_or_junk_files_are_refused(tmp_path, content):
    path = tmp_path / "bad.pt"
    if content is None:  # a real checkpoint cut short
        save_weights(tmp_path / "good.pt", build_model("tiny"))
        content = (tmp_path / "good.pt").read_bytes()[:2000]
    path.write_bytes(content)
    with pytest.raises(UserError, match="not a PyTorch checkpoint or is truncated"):
        load_weights(path)


def test_non_checkpoint_object_is_refused(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(UserError, match=r"holds no model state dict \(found a list\)"):
        load_weights(tmp_path / "list.pt")


def test_sha256_mismatch_is_refused(tmp_path):
    save_weights(tmp_path / "w.pt", build_model("tiny"))
    with pytest.raises(UserError, match="expected 00ff.*corrupt"):
        load_weights(tmp_path / "w.pt", expected_sha256="00ff")


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="not found; pass --weights"):
        load_weights(tmp_path / "nope.pt")


def test_fast_arch_round_trip(tmp_path):
    model = randomized(build_model("fast"))
    save_weights(tmp_path / "fast.pt", model, "fast")
    loaded = load_weights(tmp_path / "fast.pt")
    assert loaded.arch == "fast"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.model.eval()(x), model(x))
    with pytest.raises(UserError, match="does not fit arch 'seed'"):
        load_weights(tmp_path / "fast.pt", arch="seed")


def test_torchvision_resnet_is_named_as_such_and_no_arch_is_suggested(tmp_path):
    import torchvision

    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), tmp_path / "r18.pt")
    with pytest.raises(UserError, match=r"a torchvision-style ResNet \(keys conv1.weight, bn1.weight") as info:
        load_weights(tmp_path / "r18.pt")
    assert "--arch" not in str(info.value)
    with pytest.raises(UserError, match="does not fit arch 'seed'.*it is a torchvision-style ResNet") as info:
        load_weights(tmp_path / "r18.pt", arch="seed")  # passing an --arch, as the old message asked
    assert "pass --arch" not in str(info.value)


def test_a_bare_state_dict_of_a_named_arch_loads_without_arch(tmp_path):
    model = randomized(build_model("fast"))
    torch.save(model.state_dict(), tmp_path / "fast_sd.pt")
    assert load_weights(tmp_path / "fast_sd.pt").arch == "fast"


def test_full_disk_is_one_line_and_keeps_the_old_file(tmp_path, disk_fills_after):
    path = tmp_path / "run" / "w.pt"
    save_weights(path, build_model("tiny"), "tiny")
    before = path.read_bytes()
    disk_fills_after(1000)  # torch's own zip writer would turn this into RuntimeError("unexpected pos ...")
    with pytest.raises(UserError) as info:
        save_weights(path, build_model("tiny"), "tiny", overwrite=True)
    message = str(info.value)
    assert message.startswith(f"could not write {path}: No space left on device (") and "\n" not in message
    assert re.search(rf"[MG]B free in {re.escape(str(path.parent))}", message)
    assert "free some space or choose another --out" in message
    assert path.read_bytes() == before and os.listdir(path.parent) == ["w.pt"]  # no temp file left behind


def test_staged_text_write_on_a_full_disk(tmp_path, monkeypatch):
    path = tmp_path / "history.json"
    path.write_text("[]")

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(UserError, match=r"could not write .*history.json: No space left on device \(\d+\.\d\d [MG]B free in "):
        with staged(path) as tmp:
            tmp.write_text("[1]")
    assert path.read_bytes() == b"[]" and os.listdir(tmp_path) == ["history.json"]


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_unwritable_folder_is_one_line(tmp_path, monkeypatch, code):
    path = tmp_path / "w.pt"
    path.write_bytes(b"old weights")

    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(UserError, match=f"could not write {path}: {os.strerror(code)}.*choose another --out you can write to"):
        atomic_save({"a": torch.zeros(1)}, path)
    assert path.read_bytes() == b"old weights"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders anyway")
def test_read_only_folder_by_permissions(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "w.pt").write_bytes(b"old weights")
    folder.chmod(0o555)
    try:
        with pytest.raises(UserError, match="Permission denied.*choose another --out"):
            atomic_save({"a": torch.zeros(1)}, folder / "w.pt")
    finally:
        folder.chmod(0o755)
    assert (folder / "w.pt").read_bytes() == b"old weights"
