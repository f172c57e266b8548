import shutil

import pytest
import torch
import torch.nn.functional as F

from resnet5m.errors import UserError
from resnet5m.model import ResNetConfig, build_model, count_params, infer_config, macs_per_image


def test_seed_has_the_original_parameter_count():
    assert count_params(build_model("seed")) == 4_771_146


def test_seed_uses_the_original_key_names():
    keys = set(build_model("seed").state_dict())
    for key in ["conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer1.4.bn2.bias",
                "layer2.0.shortcut.0.weight", "layer2.0.shortcut.1.running_var", "layer3.2.conv2.weight",
                "linear.weight", "linear.bias"]:  # fmt: skip
        assert key in keys
    assert "layer1.0.shortcut.0.weight" not in keys  # identity shortcut where the shape is kept
    assert "layer4.0.conv1.weight" not in keys


def test_forward_shape_at_several_resolutions():
    model = build_model("tiny").eval()
    for size in (16, 24, 32):
        assert model(torch.zeros(2, 3, size, size)).shape == (2, 10)


def test_five_million_guard():
    big = ResNetConfig(blocks=(5, 5, 5), widths=(96, 192, 384))
    with pytest.raises(UserError, match="5,000,000 limit"):
        build_model(big)
    assert count_params(build_model(big, allow_over_limit=True)) >= 5_000_000


def test_unknown_arch_is_a_user_error():
    with pytest.raises(UserError, match="unknown arch 'resnet99'"):
        build_model("resnet99")


def test_infer_config_recovers_the_shape():
    sd = build_model("seed").state_dict()
    assert infer_config(sd) == ResNetConfig((5, 4, 3), (64, 128, 256))
    assert infer_config({"fc.weight": torch.zeros(10, 4)}) is None


def test_macs_count_matches_a_hand_count():
    # tiny: stem 3->16 at 32x32, then blocks; check the stem alone on a 1-stage net.
    model = build_model(ResNetConfig(blocks=(1,), widths=(8,)))
    stem = 32 * 32 * 8 * 3 * 9
    block = 2 * 32 * 32 * 8 * 8 * 9
    assert macs_per_image(model) == stem + block + 8 * 10


@pytest.mark.parametrize("arch", ["tiny", "bottleneck:1,2@8,16"])
def test_folded_batchnorm_gives_the_same_logits(arch):
    from resnet5m.model import fold_batchnorm

    torch.manual_seed(0)
    model = build_model(arch)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_()
    model.eval()
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-4)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original is untouched


def test_fast_arch_is_small_and_runs_at_several_resolutions():
    model = build_model("fast").eval()
    assert count_params(model) < 2_500_000
    assert macs_per_image(model) < 200e6  # under a quarter of the seed net's 874M
    for size in (16, 24, 32):
        assert model(torch.zeros(2, 3, size, size)).shape == (2, 10)


def test_best_arch_is_under_the_limit_and_old_fast_files_keep_their_shape():
    from resnet5m.fastnet import FastConfig
    from resnet5m.model import ARCHS, PARAM_LIMIT, arch_name, config_from_dict

    best = build_model("best").eval()
    assert count_params(best) == 4_382_936 < PARAM_LIMIT and macs_per_image(best) < 300e6
    assert best(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    wider = FastConfig(widths=(128, 320, 384), depth=2)  # the same design a size up: refused without the opt-out
    with pytest.raises(UserError, match="over the project's 5,000,000 limit"):
        build_model(wider)
    old = {"kind": "fast", "widths": [64, 256, 256], "patch": 2, "logit_scale": 0.125}  # saved before `depth`
    assert arch_name(config_from_dict(old)) == "fast" and ARCHS["fast"].depth == 1
    keys = set(build_model("fast").state_dict())
    assert {"whiten.weight", "whiten.bias", "stages.0.residual.conv.weight"} <= keys  # as the shipped file holds


def test_fast_convs_start_as_identity_maps():
    from resnet5m.fastnet import identity_conv

    x = torch.randn(2, 8, 6, 6)
    assert torch.equal(identity_conv(8, 8)(x), x)
    wide = identity_conv(8, 32)(x)  # widening: the first 8 channels copy the input, the rest are random
    assert torch.equal(wide[:, :8], x) and wide[:, 8:].abs().sum() > 0


def test_whitening_decorrelates_patches():
    from resnet5m.fastnet import fit_whitening, whitening_conv

    g = torch.Generator().manual_seed(0)
    mix = torch.tensor([[1.0, 0.9, 0.8], [0.0, 0.4, 0.3], [0.0, 0.0, 0.2]])
    images = torch.einsum("ij,njhw->nihw", mix, torch.randn(64, 3, 16, 16, generator=g))  # correlated channels
    whiten = whitening_conv(2)
    fit_whitening(whiten, images)
    out = F.conv2d(images, whiten.weight[:12]).permute(1, 0, 2, 3).reshape(12, -1)  # the positive half
    cov = out @ out.T / out.shape[1]
    assert torch.allclose(cov, torch.eye(12), atol=0.05)


class NoFloat64(torch.Tensor):
    """Stands in for an Apple MPS tensor: it cannot become float64 unless it moves to the CPU first."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        wants_f64 = func is torch.Tensor.double or (
            func is torch.Tensor.to and (torch.float64 in args[1:] or kwargs.get("dtype") is torch.float64)
        )
        to_cpu = func is torch.Tensor.to and any(str(a) == "cpu" for a in (*args[1:], kwargs.get("device")))
        if wants_f64 and not to_cpu:
            raise TypeError("Cannot convert a MPS Tensor to float64 dtype as the MPS framework doesn't support float64")
        return super().__torch_function__(func, types, args, kwargs)


def test_whitening_fits_on_the_cpu_in_float64_from_any_device():
    from resnet5m.fastnet import fit_whitening, whitening_conv

    images = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    plain, mps_like = whitening_conv(2), whitening_conv(2)
    fit_whitening(plain, images)
    fit_whitening(mps_like, images.as_subclass(NoFloat64))  # the fit computed in float64 on MPS before the fix
    assert torch.equal(plain.weight, mps_like.weight) and plain.weight.dtype == torch.float32


def test_configs_round_trip_through_dicts():
    from resnet5m.model import ARCHS, config_from_dict

    for config in ARCHS.values():
        assert config_from_dict(config.to_dict()) == config
    assert config_from_dict({"blocks": [5, 4, 3], "widths": [64, 128, 256]}) == ARCHS["seed"]  # files without "kind"


@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")), reason="torch.compile on CPU needs a C++ compiler")
def test_fast_net_compiled_under_bf16_autocast_has_finite_gradients():
    # `train --compile` on the fast net: Inductor's backward of a bf16 amax head returned NaN (pytorch#186799).
    torch.manual_seed(0)
    model = build_model("fast")
    x, y = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    model.fit_to_data(x)
    torch._dynamo.reset()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(torch.compile(model)(x).float(), y)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.stages[0].conv.weight.grad.abs().sum() > 0  # the gradient reaches the first stage


# --- arch specs, bottleneck blocks, analytic costs -------------------------------------------------
def test_seed_is_a_name_for_its_spec_and_keeps_the_original_keys():
    from resnet5m.model import ARCHS, arch_name, get_config, parse_spec

    spec = "resnet:5,4,3@64,128,256"
    assert ARCHS["seed"] == parse_spec(spec) == get_config(spec) and ARCHS["seed"].spec == spec
    assert arch_name(get_config(spec)) == "seed"
    assert set(build_model(spec).state_dict()) == set(build_model("seed").state_dict())
    assert ARCHS["seed"].to_dict()["block"] == "basic"


def test_bottleneck_spec_builds_torchvision_style_blocks():
    from resnet5m.model import get_config

    config = get_config("bottleneck:2,1@8,16")
    assert config.block == "bottleneck" and config.spec == "bottleneck:2,1@8,16"
    model = build_model(config).eval()
    sd = model.state_dict()
    assert sd["layer1.0.conv1.weight"].shape == (8, 8, 1, 1) and sd["layer1.0.conv3.weight"].shape == (32, 8, 1, 1)
    assert sd["layer1.0.shortcut.0.weight"].shape == (32, 8, 1, 1)  # the stem's 8 channels grow to 4 x 8
    assert "layer1.1.shortcut.0.weight" not in sd and sd["linear.weight"].shape == (10, 64)
    assert model.layer2[0].conv2.stride == (2, 2)  # the 3x3 conv strides, as in torchvision's ResNet-50 (v1.5)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert infer_config(sd) == config


@pytest.mark.parametrize(
    "spec",
    ["resnet:5,4@64", "resnet:5,0,3@64,128,256", "resnet:1,1@16,-32", "resnet:a,b@c,d", "resnet:1,2", "resnet:",
     "widenet:1,1@16,32", "resnet:1@"],
)  # fmt: skip
def test_bad_specs_are_one_line_with_an_example(spec):
    from resnet5m.model import get_config

    with pytest.raises(UserError) as info:
        get_config(spec)
    message = str(info.value)
    assert message.startswith(f"bad arch spec '{spec}'") and "e.g. resnet:5,4,3@64,128,256" in message
    assert "\n" not in message


def test_unknown_names_mention_specs():
    with pytest.raises(UserError, match=r"choose one of: seed, tiny, fast, best, or a spec such as resnet:5,4,3@64,128,256$"):
        build_model("resnet99")


def test_specs_keep_the_five_million_guard():
    with pytest.raises(UserError, match="5,000,000 limit"):
        build_model("bottleneck:3,4,6@64,128,256")  # ResNet-50's stages at CIFAR widths: 8.5M
    assert count_params(build_model("resnet:2,2,2,2@64,128,256,512", allow_over_limit=True)) == 11_173_962


def test_block_is_saved_and_old_files_load_as_basic():
    from resnet5m.model import config_from_dict, get_config

    config = get_config("bottleneck:1,1@8,16")
    assert config.to_dict()["block"] == "bottleneck" and config_from_dict(config.to_dict()) == config
    old = {"kind": "resnet", "blocks": [1, 1], "widths": [8, 16], "num_classes": 10}  # saved before `block`
    assert config_from_dict(old).block == "basic"


@pytest.mark.parametrize(
    "spec",
    ["resnet:5,4,3@64,128,256", "resnet:1,2,1,3@32,64,64,128", "resnet:2@24", "bottleneck:1,2,1@16,32,64",
     "bottleneck:2,1,1,2@8,16,32,32", "bottleneck:1,1,1,1,1@8,8,16,16,32"],
)  # fmt: skip
def test_analytic_costs_match_the_built_model(spec):
    from resnet5m.model import get_config, resnet_macs, resnet_params

    config = get_config(spec)
    model = build_model(config, allow_over_limit=True)
    assert resnet_params(config) == count_params(model)
    for size in (32, 24, 17):  # odd sizes: stride-2 convs round up
        assert resnet_macs(config, size) == macs_per_image(model, size)


def test_safe_name_makes_a_plain_folder_name():
    from resnet5m.model import safe_name

    assert safe_name("resnet:5,4,3@64,128,256") == "resnet_5-4-3_64-128-256"
    assert safe_name("bottleneck:3,4,6@64,128,256") == "bottleneck_3-4-6_64-128-256" and safe_name("seed") == "seed"


def test_a_spec_trains_from_the_cli_and_evaluates_without_arch(cifar_dir, tmp_path, capsys):
    import json

    from resnet5m.cli import main

    spec = "resnet:1,1@16,32"
    argv = ["train", "--arch", spec, "--epochs", "1", "--subset", "200", "--val-size", "100", "--data-dir", str(cifar_dir)]
    assert main(argv + ["--out", str(tmp_path), "--quiet"]) == 0
    (weights,) = tmp_path.glob("resnet5m_*.pt")
    capsys.readouterr()
    assert main(["evaluate", "--weights", str(weights), "--data-dir", str(cifar_dir), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["arch"] == spec and out["n"] == 200
