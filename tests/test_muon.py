import pytest
import torch

from resnet5m.config import TrainConfig
from resnet5m.errors import UserError
from resnet5m.model import build_model
from resnet5m.muon import Muon, orthogonalize
from resnet5m.optim import make_optimizer
from resnet5m.train import Trainer, train


@pytest.mark.parametrize("shape", [(16, 72), (72, 16)])
def test_orthogonalize_sets_every_singular_value_near_one(shape):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    g[:, 0] *= 100  # one dominant direction: plain momentum would move almost only along it
    o = orthogonalize(g)
    s = torch.linalg.svdvals(o)
    assert o.shape == shape
    assert s.min() > 0.5 and s.max() < 1.3, s
    # Same singular vectors as g: the result is U diag(s') V^T, so U^T o V is diagonal.
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    inner = u.T @ o @ vh.T
    assert torch.allclose(inner, torch.diag(torch.diagonal(inner)), atol=1e-4)


def test_plain_groups_step_exactly_like_torch_sgd():
    torch.manual_seed(0)
    a, b = torch.randn(5, 3, requires_grad=True), torch.randn(7, requires_grad=True)
    a2, b2 = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    groups = lambda x, y: [{"params": [x], "weight_decay": 0.01}, {"params": [y], "lr": 0.3}]  # noqa: E731
    mine = Muon(groups(a, b), lr=0.1, momentum=0.85)
    ref = torch.optim.SGD(groups(a2, b2), lr=0.1, momentum=0.85, nesterov=True)
    for step in range(4):
        for x, y, opt in ((a, b, mine), (a2, b2, ref)):
            opt.zero_grad()
            ((x.sin() * (step + 1)).sum() + (y**2).sum()).backward()
            opt.step()
    assert torch.allclose(a, a2, atol=1e-6) and torch.allclose(b, b2, atol=1e-6)


def test_orthogonal_group_normalizes_the_filters_and_steps_along_the_orthogonalized_gradient():
    torch.manual_seed(0)
    w = torch.randn(8, 4, 3, 3, requires_grad=True)
    start = w.detach().clone()
    opt = Muon([{"params": [w], "orthogonal": True, "weight_decay": 0.5}], lr=0.01, momentum=0.6)
    w.grad = torch.randn_like(w)
    opt.step()  # first step: momentum buffer = grad, Nesterov update = (1 + momentum) * grad
    normalized = start * (8**0.5 / start.norm())
    expected = normalized - 0.01 * orthogonalize((1.6 * w.grad).reshape(8, -1)).view_as(w)
    assert torch.allclose(w.detach(), expected, atol=1e-6)  # weight decay is not applied to Muon groups


def test_muon_optimizer_puts_every_conv_filter_in_the_orthogonal_group():
    model = build_model("fast")
    cfg = TrainConfig(arch="fast", optimizer="muon", bn_bias_lr_scale=64, muon_lr=0.2, muon_momentum=0.5)
    opt = make_optimizer(model, cfg)
    assert isinstance(opt, Muon)
    decay, other, shifts, filters = opt.param_groups
    assert filters["orthogonal"] and filters["lr"] == 0.2 and filters["momentum"] == 0.5
    assert {id(p) for p in filters["params"]} == {id(p) for p in model.parameters() if p.ndim == 4 and p.requires_grad}
    assert [p.shape for p in decay["params"]] == [(10, 256)]  # the linear head stays with SGD
    assert not decay["orthogonal"] and decay["momentum"] == cfg.momentum
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sum(len(g["params"]) for g in opt.param_groups) == len(trainable)


def test_training_with_muon_learns(cifar_dir, tmp_path):
    cfg = TrainConfig(arch="tiny", epochs=3, batch_size=100, val_size=200, optimizer="muon", muon_lr=0.1,
                      data_dir=str(cifar_dir), out=str(tmp_path), quiet=True, download=False)  # fmt: skip
    history = train(cfg)
    assert history[-1]["train_loss"] < history[0]["train_loss"] and history[-1]["val_acc"] > 0.5


def test_unknown_optimizer_is_a_user_error(cifar_dir, tmp_path):
    with pytest.raises(UserError, match="use sgd or muon"):
        Trainer(TrainConfig(arch="tiny", optimizer="adam", data_dir=str(cifar_dir), out=str(tmp_path), download=False))
