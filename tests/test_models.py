"""The JEM Wide-ResNet and the JEM wrapper: shapes, size, energies, units, BN semantics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ebjdat.models import (
    JEM,
    WideResNet,
    bn_eval,
    build_model,
    frozen_bn_stats,
    parse_arch,
    restore_bn_momentum,
    set_bn_momentum,
)


def small(**kw: object) -> JEM:
    args = {"num_classes": 10, "in_channels": 3, "image_size": 8}
    args.update(kw)
    return build_model("wrn-10-2", **args)


@pytest.mark.parametrize(
    ("arch", "channels", "size", "extra", "feat"),
    [
        ("wrn-10-2", 1, 8, False, 128),
        ("wrn-10-2", 3, 32, False, 128),
        ("wrn-16-4", 3, 32, False, 256),
        ("wrn-10-2", 3, 64, True, 256),
        ("wrn-16-4", 3, 64, True, 512),
    ],
)
def test_shapes(arch: str, channels: int, size: int, extra: bool, feat: int) -> None:
    torch.manual_seed(0)
    model = build_model(arch, num_classes=7, in_channels=channels, image_size=size)
    assert model.backbone.extra_stage is extra
    assert model.backbone.feature_dim == feat
    x = torch.rand(1, channels, size, size)
    assert model.backbone(JEM.to_internal(x)).shape == (1, feat)
    assert model(x).shape == (1, 7)


def test_block_structure_matches_official() -> None:
    """Stride on the second conv, 1x1 shortcut only where the shape changes, convs with bias."""
    net = WideResNet(depth=16, widen=2, norm="batch")
    first, second = net.layer2[0], net.layer2[1]
    assert first.conv1.stride == (1, 1) and first.conv2.stride == (2, 2)
    assert isinstance(first.shortcut[0], nn.Conv2d) and first.shortcut[0].kernel_size == (1, 1)
    assert len(second.shortcut) == 0
    assert all(m.bias is not None for m in net.modules() if isinstance(m, nn.Conv2d))
    assert isinstance(first.lrelu, nn.LeakyReLU) and first.lrelu.negative_slope == 0.2
    assert net.bn1.momentum == 0.9
    no_norm = WideResNet(depth=10, widen=1, norm=None)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in no_norm.modules())


def test_wrn_28_10_parameter_count() -> None:
    """WRN-28-10 with a 10-class head is the known ~36.5M parameters."""
    with torch.device("meta"):
        model = build_model("wrn-28-10", num_classes=10, in_channels=3, image_size=32)
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - 36.5e6) / 36.5e6 < 0.01, count
    assert model.backbone.feature_dim == 640


@pytest.mark.parametrize("arch", ["wrn-27-10", "wrn-28", "resnet-18", "wrn-28-0", "", "wrn-4-1"])
def test_bad_arch_strings(arch: str) -> None:
    with pytest.raises(ValueError, match="arch"):
        build_model(arch, num_classes=10, in_channels=3, image_size=32)


def test_bad_depth_names_depth() -> None:
    with pytest.raises(ValueError, match="depth"):
        WideResNet(depth=20, widen=2)
    assert parse_arch("WRN-28-10") == (28, 10)


def test_energies_match_definitions() -> None:
    torch.manual_seed(1)
    model = small().eval()
    x = torch.rand(5, 3, 8, 8)
    y = torch.tensor([0, 3, 9, 1, 1])
    with torch.no_grad():
        logits = model(x).double()
        out = model.energies(x, y)
        energy, cond = model.energy(x), model.cond_energy(x, y)
    lse = torch.log(torch.exp(logits).sum(1))
    torch.testing.assert_close(out.energy.double(), -lse, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.cond_energy.double(), -logits[torch.arange(5), y])
    torch.testing.assert_close(out.ce.double(), lse - logits[torch.arange(5), y], atol=1e-5, rtol=0)
    torch.testing.assert_close(energy, out.energy)
    torch.testing.assert_close(cond, out.cond_energy)
    assert model.energies(x).cond_energy is None


def test_energies_are_differentiable_in_the_input() -> None:
    model = small().eval()
    z = (torch.rand(2, 3, 8, 8) * 2 - 1).requires_grad_()
    (grad,) = torch.autograd.grad(model.energies(z, internal=True).energy.sum(), z)
    assert grad.shape == z.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_units_convert_in_one_place() -> None:
    torch.manual_seed(2)
    model = small().eval()
    x = torch.rand(3, 3, 8, 8)
    z = 2 * x - 1
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.logits_internal(z))
        torch.testing.assert_close(
            model.energies(x).energy, model.energies(z, internal=True).energy
        )
    torch.testing.assert_close(JEM.to_internal(x), z)
    torch.testing.assert_close(JEM.from_internal(z), x)


def test_config_round_trip() -> None:
    model = build_model(
        "wrn-10-2", num_classes=4, in_channels=1, image_size=8, norm=None, dropout=0.1
    )
    cfg = model.config
    assert all(isinstance(v, (str, int, float, bool)) for v in cfg.values())  # TOML-safe
    rebuilt = JEM.from_config(cfg)
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.config == cfg
    x = torch.rand(2, 1, 8, 8)
    model.eval()
    rebuilt.eval()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x))


def test_official_state_dict_names_map() -> None:
    model = small()
    official = {"f." + k: v for k, v in model.backbone.state_dict().items()}
    official.update({"class_output." + k: v for k, v in model.class_output.state_dict().items()})
    official["energy_output.weight"] = torch.zeros(1, 128)
    official["energy_output.bias"] = torch.zeros(1)
    model.load_state_dict(JEM.convert_official_state_dict(official))


def bn_model() -> JEM:
    return build_model("wrn-10-1", num_classes=3, in_channels=3, image_size=8, bn_momentum=0.9)


def test_bn_momentum_semantics() -> None:
    """momentum=0.9 in PyTorch's convention: running = 0.1 * old + 0.9 * batch."""
    torch.manual_seed(3)
    model = bn_model().train()
    bn = model.backbone.layer1[0].bn1  # sees conv1's output directly
    bn.running_mean.fill_(0.5)
    x = torch.rand(4, 3, 8, 8)
    with torch.no_grad():
        h = model.backbone.conv1(JEM.to_internal(x))
        model(x)
    expected = 0.1 * 0.5 + 0.9 * h.mean(dim=(0, 2, 3))
    torch.testing.assert_close(bn.running_mean, expected, atol=1e-6, rtol=1e-5)


def test_frozen_bn_stats_leaves_running_stats() -> None:
    model = bn_model().train()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    with frozen_bn_stats(model):
        model(torch.rand(4, 3, 8, 8))
    after = {k: v for k, v in model.state_dict().items() if "running" in k}
    for k in before:
        torch.testing.assert_close(after[k], before[k], atol=0, rtol=0)
    assert all(m.momentum == 0.9 for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    previous = set_bn_momentum(model, 0.0)
    assert set(previous.values()) == {0.9}
    restore_bn_momentum(model, previous)
    assert all(m.momentum == 0.9 for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_bn_eval_restores_mode() -> None:
    model = bn_model().train()
    model.backbone.layer1[0].bn2.eval()  # a mixed state must come back as it was
    modes = {n: m.training for n, m in model.named_modules()}
    running = model.backbone.bn1.running_mean.clone()
    with bn_eval(model):
        bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        assert bns and not any(m.training for m in bns)
        assert model.training  # only BN layers change
        model(torch.rand(2, 3, 8, 8))
    torch.testing.assert_close(model.backbone.bn1.running_mean, running, atol=0, rtol=0)
    assert {n: m.training for n, m in model.named_modules()} == modes


@pytest.mark.parametrize("norm", ["batch", None])
def test_in_place_activation_is_the_same_function(norm: str | None) -> None:
    """LeakyReLU runs in place after BatchNorm only; logits, input and weight gradients equal an
    out-of-place copy of the same model in train mode (where BN's backward is the subtle one)."""
    torch.manual_seed(0)
    fast = small(norm=norm)
    slow = small(norm=norm)
    slow.load_state_dict(fast.state_dict())
    for m in slow.modules():
        if isinstance(m, nn.LeakyReLU):
            m.inplace = False
    expect_inplace = norm == "batch"
    assert all(
        m.inplace == expect_inplace for m in fast.modules() if isinstance(m, nn.LeakyReLU)
    )
    z = torch.rand(6, 3, 8, 8) * 2 - 1
    grads = []
    for model in (fast, slow):
        model.train()
        zr = z.clone().requires_grad_(True)
        logits = model.logits_internal(zr)
        (logits.logsumexp(1).sum() + logits[:, 0].square().sum()).backward()
        grads.append((logits.detach(), zr.grad, [p.grad for p in model.parameters()]))
    (l1, g1, p1), (l2, g2, p2) = grads
    torch.testing.assert_close(l1, l2, rtol=0, atol=0)
    torch.testing.assert_close(g1, g2, rtol=1e-6, atol=1e-7)
    for a, b in zip(p1, p2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
