import torch

from resnet5m.data import load_split
from resnet5m.evaluate import evaluate
from resnet5m.model import build_model


def test_evaluate_counts_and_confusion(cifar_dir):
    images, labels = load_split("test", cifar_dir)
    result = evaluate(build_model("tiny"), images, labels, batch_size=64, progress=False)
    assert result.n == 200 and sum(map(sum, result.confusion)) == 200
    diag = sum(result.confusion[i][i] for i in range(10))
    assert result.accuracy == diag / 200 and result.predictions.shape == (200,)


def test_evaluate_feeds_the_requested_size(cifar_dir):
    images, labels = load_split("test", cifar_dir)
    model = build_model("tiny")
    seen = []
    model.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].shape[-1]))
    evaluate(model, images[:10], labels[:10], progress=False, size=16)
    assert set(seen) == {16}


def test_batchnorm_folding_does_not_change_predictions(cifar_dir):
    images, labels = load_split("test", cifar_dir)
    torch.manual_seed(0)
    model = build_model("tiny")
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
    folded = evaluate(model, images, labels, precision="fp32", progress=False)
    with torch.no_grad():
        from resnet5m.data import model_input

        plain = model.eval()(model_input(images)).argmax(1)
    assert torch.equal(folded.predictions, plain)


def test_shifted_views_move_the_image_and_are_averaged():
    from resnet5m.evaluate import predict_logits, recipe_views, shifted

    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).view(2, 3, 6, 6)
    up_left, down_right = shifted(x, 1)
    assert up_left.shape == down_right.shape == x.shape
    assert torch.equal(up_left[..., :-1, :-1], x[..., 1:, 1:]) and torch.equal(down_right[..., 1:, 1:], x[..., :-1, :-1])

    seen = []

    def model(v):
        seen.append(v)
        return v.mean(dim=(1, 2, 3))[:, None].expand(-1, 10)

    logits = predict_logits(model, x, tta=True, shift=1)
    views = list(seen)
    assert len(views) == 6  # identity, mirror, and both shifted copies of each
    assert torch.allclose(logits, torch.stack([model(v) for v in views]).mean(0))
    assert recipe_views({}) == (True, 0) and recipe_views({"recipe": {"tta": False, "tta_shift": 2}}) == (False, 2)


def test_evaluate_reports_its_views(cifar_dir):
    images, labels = load_split("test", cifar_dir)
    result = evaluate(build_model("tiny"), images[:20], labels[:20], tta=True, tta_shift=2, progress=False)
    assert result.to_dict()["tta_shift"] == 2 and result.views == " with flip + 2-px shift TTA"
