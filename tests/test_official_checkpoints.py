"""Official JEM / JEM++ / SADA-JEM checkpoints (ebjdat.models.official, ebjdat-import-official).

The "official" state dicts here are not built from ebjdat's modules: their key lists and shapes
are written out below as data, transcribed from the official classes' registration order (what
their `state_dict()` holds, duplicates included), and the reference logits come from a
functional float64 forward over those official names, written here independently of ebjdat's
WideResNet.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import ebjdat
from ebjdat.checkpoint import CheckpointError
from ebjdat.cli import import_official as cli
from ebjdat.models import JEM
from ebjdat.models.official import (
    convert_state_dict,
    detect_format,
    load_official,
    model_from_official,
)

# ---- key lists (name, then shape; an empty shape is a scalar) --------------------------------

# wgrathwohl/JEM, train_wrn_ebm.py CCF(depth=10, width=1, norm=None, n_classes=10): `f` is
# wideresnet.py Wide_ResNet (conv1, layer1-3 of wide_basic, bn1 = Identity, and a `linear`
# head built with its default num_classes=10 that forward never calls), then F's
# energy_output = Linear(last_dim, 1) and class_output = Linear(last_dim, n_classes). Without
# norm (the official default) no block has BN tensors; layer1's block 16 -> 16 at stride 1 has
# no shortcut.
JEM_WRN_10_1 = """
f.conv1.weight 16 3 3 3
f.conv1.bias 16
f.layer1.0.conv1.weight 16 16 3 3
f.layer1.0.conv1.bias 16
f.layer1.0.conv2.weight 16 16 3 3
f.layer1.0.conv2.bias 16
f.layer2.0.conv1.weight 32 16 3 3
f.layer2.0.conv1.bias 32
f.layer2.0.conv2.weight 32 32 3 3
f.layer2.0.conv2.bias 32
f.layer2.0.shortcut.0.weight 32 16 1 1
f.layer2.0.shortcut.0.bias 32
f.layer3.0.conv1.weight 64 32 3 3
f.layer3.0.conv1.bias 64
f.layer3.0.conv2.weight 64 64 3 3
f.layer3.0.conv2.bias 64
f.layer3.0.shortcut.0.weight 64 32 1 1
f.layer3.0.shortcut.0.bias 64
f.linear.weight 10 64
f.linear.bias 10
energy_output.weight 1 64
energy_output.bias 1
class_output.weight 10 64
class_output.bias 10
"""

# sndnyang/JEMPP, models/jem_models.py CCF(depth=10, width=1, norm="batch", model="yopo"): `f`
# is models/wideresnet_yopo.py Wide_ResNet, which assigns conv1 a second time as `layer_one`
# and appends layer1, layer2, layer3 and bn1 to the ModuleList `other_layers` (registered
# before layer1), so state_dict() lists every backbone tensor twice, aliases first.
JEMPP_YOPO_WRN_10_1 = """
f.conv1.weight 16 3 3 3
f.conv1.bias 16
f.layer_one.weight 16 3 3 3
f.layer_one.bias 16
f.other_layers.0.0.bn1.weight 16
f.other_layers.0.0.bn1.bias 16
f.other_layers.0.0.bn1.running_mean 16
f.other_layers.0.0.bn1.running_var 16
f.other_layers.0.0.bn1.num_batches_tracked
f.other_layers.0.0.conv1.weight 16 16 3 3
f.other_layers.0.0.conv1.bias 16
f.other_layers.0.0.bn2.weight 16
f.other_layers.0.0.bn2.bias 16
f.other_layers.0.0.bn2.running_mean 16
f.other_layers.0.0.bn2.running_var 16
f.other_layers.0.0.bn2.num_batches_tracked
f.other_layers.0.0.conv2.weight 16 16 3 3
f.other_layers.0.0.conv2.bias 16
f.other_layers.1.0.bn1.weight 16
f.other_layers.1.0.bn1.bias 16
f.other_layers.1.0.bn1.running_mean 16
f.other_layers.1.0.bn1.running_var 16
f.other_layers.1.0.bn1.num_batches_tracked
f.other_layers.1.0.conv1.weight 32 16 3 3
f.other_layers.1.0.conv1.bias 32
f.other_layers.1.0.bn2.weight 32
f.other_layers.1.0.bn2.bias 32
f.other_layers.1.0.bn2.running_mean 32
f.other_layers.1.0.bn2.running_var 32
f.other_layers.1.0.bn2.num_batches_tracked
f.other_layers.1.0.conv2.weight 32 32 3 3
f.other_layers.1.0.conv2.bias 32
f.other_layers.1.0.shortcut.0.weight 32 16 1 1
f.other_layers.1.0.shortcut.0.bias 32
f.other_layers.2.0.bn1.weight 32
f.other_layers.2.0.bn1.bias 32
f.other_layers.2.0.bn1.running_mean 32
f.other_layers.2.0.bn1.running_var 32
f.other_layers.2.0.bn1.num_batches_tracked
f.other_layers.2.0.conv1.weight 64 32 3 3
f.other_layers.2.0.conv1.bias 64
f.other_layers.2.0.bn2.weight 64
f.other_layers.2.0.bn2.bias 64
f.other_layers.2.0.bn2.running_mean 64
f.other_layers.2.0.bn2.running_var 64
f.other_layers.2.0.bn2.num_batches_tracked
f.other_layers.2.0.conv2.weight 64 64 3 3
f.other_layers.2.0.conv2.bias 64
f.other_layers.2.0.shortcut.0.weight 64 32 1 1
f.other_layers.2.0.shortcut.0.bias 64
f.other_layers.3.weight 64
f.other_layers.3.bias 64
f.other_layers.3.running_mean 64
f.other_layers.3.running_var 64
f.other_layers.3.num_batches_tracked
f.layer1.0.bn1.weight 16
f.layer1.0.bn1.bias 16
f.layer1.0.bn1.running_mean 16
f.layer1.0.bn1.running_var 16
f.layer1.0.bn1.num_batches_tracked
f.layer1.0.conv1.weight 16 16 3 3
f.layer1.0.conv1.bias 16
f.layer1.0.bn2.weight 16
f.layer1.0.bn2.bias 16
f.layer1.0.bn2.running_mean 16
f.layer1.0.bn2.running_var 16
f.layer1.0.bn2.num_batches_tracked
f.layer1.0.conv2.weight 16 16 3 3
f.layer1.0.conv2.bias 16
f.layer2.0.bn1.weight 16
f.layer2.0.bn1.bias 16
f.layer2.0.bn1.running_mean 16
f.layer2.0.bn1.running_var 16
f.layer2.0.bn1.num_batches_tracked
f.layer2.0.conv1.weight 32 16 3 3
f.layer2.0.conv1.bias 32
f.layer2.0.bn2.weight 32
f.layer2.0.bn2.bias 32
f.layer2.0.bn2.running_mean 32
f.layer2.0.bn2.running_var 32
f.layer2.0.bn2.num_batches_tracked
f.layer2.0.conv2.weight 32 32 3 3
f.layer2.0.conv2.bias 32
f.layer2.0.shortcut.0.weight 32 16 1 1
f.layer2.0.shortcut.0.bias 32
f.layer3.0.bn1.weight 32
f.layer3.0.bn1.bias 32
f.layer3.0.bn1.running_mean 32
f.layer3.0.bn1.running_var 32
f.layer3.0.bn1.num_batches_tracked
f.layer3.0.conv1.weight 64 32 3 3
f.layer3.0.conv1.bias 64
f.layer3.0.bn2.weight 64
f.layer3.0.bn2.bias 64
f.layer3.0.bn2.running_mean 64
f.layer3.0.bn2.running_var 64
f.layer3.0.bn2.num_batches_tracked
f.layer3.0.conv2.weight 64 64 3 3
f.layer3.0.conv2.bias 64
f.layer3.0.shortcut.0.weight 64 32 1 1
f.layer3.0.shortcut.0.bias 64
f.bn1.weight 64
f.bn1.bias 64
f.bn1.running_mean 64
f.bn1.running_var 64
f.bn1.num_batches_tracked
energy_output.weight 1 64
energy_output.bias 1
class_output.weight 10 64
class_output.bias 10
"""

# sndnyang/SADAJEM, models/jem_models.py CCF(depth=10, width=1, norm="batch", n_classes=200,
# args.dataset="tinyimagenet"): `f` is models/wideresnet.py Wide_ResNet with size 64, so a
# 4th stage layer4 of width int(128 * k) and bn1 over it (last_dim 128).
SADAJEM_64PX_WRN_10_1 = """
f.conv1.weight 16 3 3 3
f.conv1.bias 16
f.layer1.0.bn1.weight 16
f.layer1.0.bn1.bias 16
f.layer1.0.bn1.running_mean 16
f.layer1.0.bn1.running_var 16
f.layer1.0.bn1.num_batches_tracked
f.layer1.0.conv1.weight 16 16 3 3
f.layer1.0.conv1.bias 16
f.layer1.0.bn2.weight 16
f.layer1.0.bn2.bias 16
f.layer1.0.bn2.running_mean 16
f.layer1.0.bn2.running_var 16
f.layer1.0.bn2.num_batches_tracked
f.layer1.0.conv2.weight 16 16 3 3
f.layer1.0.conv2.bias 16
f.layer2.0.bn1.weight 16
f.layer2.0.bn1.bias 16
f.layer2.0.bn1.running_mean 16
f.layer2.0.bn1.running_var 16
f.layer2.0.bn1.num_batches_tracked
f.layer2.0.conv1.weight 32 16 3 3
f.layer2.0.conv1.bias 32
f.layer2.0.bn2.weight 32
f.layer2.0.bn2.bias 32
f.layer2.0.bn2.running_mean 32
f.layer2.0.bn2.running_var 32
f.layer2.0.bn2.num_batches_tracked
f.layer2.0.conv2.weight 32 32 3 3
f.layer2.0.conv2.bias 32
f.layer2.0.shortcut.0.weight 32 16 1 1
f.layer2.0.shortcut.0.bias 32
f.layer3.0.bn1.weight 32
f.layer3.0.bn1.bias 32
f.layer3.0.bn1.running_mean 32
f.layer3.0.bn1.running_var 32
f.layer3.0.bn1.num_batches_tracked
f.layer3.0.conv1.weight 64 32 3 3
f.layer3.0.conv1.bias 64
f.layer3.0.bn2.weight 64
f.layer3.0.bn2.bias 64
f.layer3.0.bn2.running_mean 64
f.layer3.0.bn2.running_var 64
f.layer3.0.bn2.num_batches_tracked
f.layer3.0.conv2.weight 64 64 3 3
f.layer3.0.conv2.bias 64
f.layer3.0.shortcut.0.weight 64 32 1 1
f.layer3.0.shortcut.0.bias 64
f.layer4.0.bn1.weight 64
f.layer4.0.bn1.bias 64
f.layer4.0.bn1.running_mean 64
f.layer4.0.bn1.running_var 64
f.layer4.0.bn1.num_batches_tracked
f.layer4.0.conv1.weight 128 64 3 3
f.layer4.0.conv1.bias 128
f.layer4.0.bn2.weight 128
f.layer4.0.bn2.bias 128
f.layer4.0.bn2.running_mean 128
f.layer4.0.bn2.running_var 128
f.layer4.0.bn2.num_batches_tracked
f.layer4.0.conv2.weight 128 128 3 3
f.layer4.0.conv2.bias 128
f.layer4.0.shortcut.0.weight 128 64 1 1
f.layer4.0.shortcut.0.bias 128
f.bn1.weight 128
f.bn1.bias 128
f.bn1.running_mean 128
f.bn1.running_var 128
f.bn1.num_batches_tracked
energy_output.weight 1 128
energy_output.bias 1
class_output.weight 200 128
class_output.bias 200
"""

# Which official module each alias key belongs to (wideresnet_yopo's second registrations).
YOPO_ALIASES = {
    "f.layer_one.": "f.conv1.",
    "f.other_layers.0.": "f.layer1.",
    "f.other_layers.1.": "f.layer2.",
    "f.other_layers.2.": "f.layer3.",
    "f.other_layers.3.": "f.bn1.",
}

CASES = {
    # format: (key list, image size, expected inferred architecture)
    "jem": (JEM_WRN_10_1, 32, {"depth": 10, "widen": 1, "norm": "none", "num_classes": 10}),
    "jempp": (JEMPP_YOPO_WRN_10_1, 32, {"depth": 10, "widen": 1, "norm": "batch"}),
    "sadajem": (SADAJEM_64PX_WRN_10_1, 64, {"extra_stage": True, "num_classes": 200}),
}


def parse(text: str) -> dict[str, tuple[int, ...]]:
    """The key list as {name: shape}, in the order written."""
    out: dict[str, tuple[int, ...]] = {}
    for line in text.strip().splitlines():
        name, *dims = line.split()
        out[name] = tuple(int(d) for d in dims)
    return out


def alias_of(name: str) -> str | None:
    for alias, canonical in YOPO_ALIASES.items():
        if name.startswith(alias):
            return canonical + name[len(alias) :]
    return None


def official_state(text: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random float32 tensors under the official names, as the official module would hold them:
    an alias key holds the very tensor of the name it aliases; BN variances are positive and
    num_batches_tracked an int64 scalar."""
    g = torch.Generator().manual_seed(seed)
    shapes = parse(text)
    state: dict[str, torch.Tensor] = {}
    for name, shape in shapes.items():
        if alias_of(name) is not None:
            continue
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(123, dtype=torch.int64)
        elif name.endswith("running_var"):
            state[name] = torch.rand(shape, generator=g) + 0.5
        elif name.endswith(("bn1.weight", "bn2.weight")) or name == "f.bn1.weight":
            state[name] = torch.rand(shape, generator=g) + 0.5
        else:
            fan_in = max(1, int(torch.tensor(shape[1:]).prod())) if len(shape) > 1 else 1
            state[name] = torch.randn(shape, generator=g) / fan_in**0.5
    full = {}
    for name in shapes:  # the official order, aliases included
        canonical = alias_of(name)
        full[name] = state[canonical] if canonical is not None else state[name]
    return full


def reference_logits(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The official CCF.classify in float64, straight from the official names: wide_basic is
    bn1, lrelu, conv1, bn2, lrelu, conv2 (the stride is on conv2), plus the 1x1 shortcut when
    the block has one; then bn1, lrelu, average pooling and class_output. Input in [0, 1], fed
    as the official [-1, 1] (Normalize(0.5, 0.5))."""
    sd = {k: v.double() if v.is_floating_point() else v for k, v in sd.items()}

    def norm(h: torch.Tensor, p: str) -> torch.Tensor:
        if f"{p}.weight" not in sd:
            return h  # norm=None: Identity
        return F.batch_norm(
            h, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"],
            sd[f"{p}.bias"], training=False, eps=1e-5,
        )  # fmt: skip

    def conv(h: torch.Tensor, p: str, stride: int = 1) -> torch.Tensor:
        w = sd[f"{p}.weight"]
        return F.conv2d(h, w, sd[f"{p}.bias"], stride=stride, padding=w.shape[-1] // 2)

    h = conv(x.double() * 2 - 1, "f.conv1")
    stage = 1
    while f"f.layer{stage}.0.conv1.weight" in sd:
        j = 0
        while f"f.layer{stage}.{j}.conv1.weight" in sd:
            p = f"f.layer{stage}.{j}"
            stride = 2 if stage > 1 and j == 0 else 1
            out = conv(F.leaky_relu(norm(h, f"{p}.bn1"), 0.2), f"{p}.conv1")
            out = conv(F.leaky_relu(norm(out, f"{p}.bn2"), 0.2), f"{p}.conv2", stride)
            skip = conv(h, f"{p}.shortcut.0", stride) if f"{p}.shortcut.0.weight" in sd else h
            h = out + skip
            j += 1
        stage += 1
    h = F.leaky_relu(norm(h, "f.bn1"), 0.2)
    h = F.adaptive_avg_pool2d(h, 1).flatten(1)  # = avg_pool2d(8) on the 8x8 map of 32 px
    return F.linear(h, sd["class_output.weight"], sd["class_output.bias"])


def images(size: int, n: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, size, size, generator=g, dtype=torch.float64)


def one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text
    assert "weights_only=False" not in text
    return text


# ---- conversion ------------------------------------------------------------------------------


def test_key_lists_are_what_the_official_classes_register() -> None:
    """Sanity of the transcription: no duplicate names, and the yopo list is the plain list with
    every backbone tensor once more under its alias."""
    for text, _, _ in CASES.values():
        lines = text.strip().splitlines()
        assert len(lines) == len(parse(text))
    yopo = parse(JEMPP_YOPO_WRN_10_1)
    aliases = {k for k in yopo if alias_of(k) is not None}
    assert {alias_of(k) for k in aliases} == {
        k for k in yopo if re.match(r"f\.(conv1|layer\d|bn1)\.", k)
    }
    assert len(yopo) == 110 and len(aliases) == 53


@pytest.mark.parametrize("fmt", list(CASES))
def test_official_state_dict_converts_and_gives_the_reference_logits(fmt: str) -> None:
    text, size, arch = CASES[fmt]
    sd = official_state(text)
    weights, cfg = convert_state_dict(sd, fmt)
    for key, value in arch.items():
        assert cfg[key] == value, key
    # Every ebjdat tensor is the one under its official name (no copy, no reshuffle).
    for name, tensor in weights.items():
        official = name if name.startswith("class_output.") else "f." + name[len("backbone.") :]
        assert tensor is sd[official], name
    model = model_from_official(sd, fmt).double()
    x = images(size)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference_logits(sd, x), rtol=1e-10, atol=1e-10)
    # JEM.convert_official_state_dict tells the format from the keys and maps the same way.
    assert detect_format(sd) == fmt
    mapped = JEM.convert_official_state_dict(sd)
    assert mapped.keys() == weights.keys()
    assert all(mapped[k] is weights[k] for k in mapped)


def test_dataparallel_prefix_is_stripped() -> None:
    sd = {"module." + k: v for k, v in official_state(SADAJEM_64PX_WRN_10_1).items()}
    weights, cfg = convert_state_dict(sd, "sadajem")
    assert cfg["extra_stage"] and weights["class_output.weight"] is sd["module.class_output.weight"]


def test_differing_alias_is_a_one_line_error() -> None:
    sd = official_state(JEMPP_YOPO_WRN_10_1)
    sd["f.other_layers.1.0.conv1.weight"] = sd["f.layer2.0.conv1.weight"] + 1e-3
    with pytest.raises(CheckpointError) as excinfo:
        convert_state_dict(sd, "jempp")
    assert "f.other_layers.1.0.conv1.weight differs from f.layer2.0.conv1.weight" in (
        one_line_error(excinfo)
    )
    # A copy with equal values is fine: the check is on values, not on storage.
    sd["f.other_layers.1.0.conv1.weight"] = sd["f.layer2.0.conv1.weight"].clone()
    convert_state_dict(sd, "jempp")


def test_missing_alias_is_a_one_line_error() -> None:
    sd = official_state(JEMPP_YOPO_WRN_10_1)
    del sd["f.other_layers.3.running_var"]
    with pytest.raises(CheckpointError) as excinfo:
        convert_state_dict(sd, "jempp")
    assert "f.bn1.running_var" in one_line_error(excinfo)


def test_unknown_keys_are_named_in_one_line() -> None:
    sd = official_state(JEM_WRN_10_1)
    for i in range(6):
        sd[f"f.extra{i}.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as excinfo:
        convert_state_dict(sd, "jem")
    text = one_line_error(excinfo)
    assert "unknown keys" in text and "f.extra0.weight, f.extra1.weight" in text
    assert "(and 2 more)" in text
    # Beside the heads the official classes build, nothing more passes as a dropped head.
    sd = official_state(JEM_WRN_10_1)
    sd["energy_output.scale"] = torch.ones(1)
    with pytest.raises(CheckpointError) as excinfo:
        convert_state_dict(sd, "jem")
    assert "unknown keys" in one_line_error(excinfo) and "energy_output.scale" in str(excinfo.value)


def test_a_state_dict_of_another_format_is_refused() -> None:
    # The failure: a yopo state dict read as plain JEM keeps its aliases, unknown there.
    with pytest.raises(CheckpointError) as excinfo:
        convert_state_dict(official_state(JEMPP_YOPO_WRN_10_1), "jem")
    assert "unknown keys" in one_line_error(excinfo) and "f.layer_one.weight" in str(excinfo.value)
    # SADA-JEM's 4th stage does not exist in JEM++'s classes.
    with pytest.raises(CheckpointError) as excinfo:
        convert_state_dict(official_state(SADAJEM_64PX_WRN_10_1), "jempp")
    assert "f.layer4.0.bn1.weight" in one_line_error(excinfo)


def test_missing_and_resized_tensors_are_one_line_errors() -> None:
    sd = official_state(JEMPP_YOPO_WRN_10_1)
    for key in ("f.layer3.0.conv2.bias", "f.other_layers.2.0.conv2.bias"):
        del sd[key]
    with pytest.raises(CheckpointError) as excinfo:
        convert_state_dict(sd, "jempp")
    assert "missing keys" in one_line_error(excinfo) and "f.layer3.0.conv2.bias" in str(
        excinfo.value
    )
    sd = official_state(JEM_WRN_10_1)
    sd["f.layer2.0.conv2.weight"] = torch.zeros(32, 32, 5, 5)
    with pytest.raises(CheckpointError) as excinfo:
        convert_state_dict(sd, "jem")
    assert "f.layer2.0.conv2.weight is [32, 32, 5, 5]" in one_line_error(excinfo)


def test_other_official_norms_are_refused() -> None:
    # --norm instance / layer: an affine norm with weight and bias but no running statistics.
    sd = {
        k: v
        for k, v in official_state(SADAJEM_64PX_WRN_10_1).items()
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    }
    with pytest.raises(CheckpointError) as excinfo:
        convert_state_dict(sd, "sadajem")
    assert "not BatchNorm2d" in one_line_error(excinfo)


# ---- files -----------------------------------------------------------------------------------


def save_official(path: Path, fmt: str, **extra: object) -> dict[str, torch.Tensor]:
    """An official checkpoint file as the official `checkpoint()` functions write it."""
    text, size, _ = CASES[fmt]
    sd = official_state(text)
    buffer = torch.rand(20, 3, size, size) * 2 - 1
    torch.save({"model_state_dict": sd, "replay_buffer": buffer, **extra}, path)
    return sd


def test_official_file_loads_with_its_buffer(tmp_path: Path) -> None:
    path = tmp_path / "best_valid_ckpt.pt"
    sd = save_official(path, "jempp")
    loaded = load_official(path, "jempp")
    assert loaded.replay_buffer is not None and loaded.replay_buffer.shape == (20, 3, 32, 32)
    x = images(32)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.model.double()(x), reference_logits(sd, x), rtol=1e-10, atol=1e-10
        )


def test_pickled_objects_are_refused_in_one_line(tmp_path: Path) -> None:
    # Some official variants save a module object beside the weights ("margin": component).
    path = tmp_path / "ckpt.pt"
    save_official(path, "jempp", margin=torch.nn.Linear(2, 2))
    with pytest.raises(CheckpointError) as excinfo:
        load_official(path, "jempp")
    text = one_line_error(excinfo)
    assert "pickled Python object" in text and "never unpickles" in text


# ---- ebjdat-import-official ------------------------------------------------------------------


def test_import_command_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "jempp.pt"
    sd = save_official(src, "jempp")
    out = tmp_path / "imported.pt"
    assert (
        cli.run([str(src), "--format", "jempp", "--out", str(out), "--dataset", "synthetic"]) == 0
    )
    assert f"ebjdat-eval {out}" in capsys.readouterr().out
    state = torch.load(out, weights_only=True)
    assert state["config"]["model"]["arch"] == "wrn-10-1"
    assert state["imported_from"]["format"] == "jempp"
    assert state["ranks"][0]["buffer"]["buffer"].shape == (20, 3, 32, 32)
    # load_classifier(OUT) gives the converted model's logits.
    classifier = ebjdat.load_classifier(out).double()
    x = images(32)
    with torch.no_grad():
        torch.testing.assert_close(
            classifier(x), model_from_official(sd, "jempp").double()(x), rtol=0, atol=0
        )
        torch.testing.assert_close(classifier(x), reference_logits(sd, x), rtol=1e-10, atol=1e-10)
    # ebjdat-eval evaluates it (standard protocol, a short look).
    from ebjdat.cli import eval as eval_cli

    report_dir = tmp_path / "eval"
    argv = [str(out), "--out", str(report_dir), "--limit", "8", "--attacks", "pgd2"]
    argv += ["--no-sanity", "--no-generation", "--no-ood", "--device", "cpu", "--no-progress"]
    assert eval_cli.run(argv) == 0
    report = json.loads((report_dir / "report.json").read_text())
    assert report["protocol"] == "standard" and report["dataset"] == "synthetic"
    assert report["preset"] == "imported-jempp"


def exit_code(argv: list[str]) -> int | str | None:
    """The command's exit status, whether it returns it or argparse exits with it."""
    try:
        return cli.run(argv)
    except SystemExit as exc:
        return exc.code


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--format", "jem"], "unknown keys"),  # a JEM++ file named as JEM
        (["--format", "jempp", "--dataset", "cifar100"], "--dataset cifar100 has 100 classes"),
        (["--format", "jempp", "--dataset", "digits"], "--dataset digits"),
        (["--format", "nope"], "invalid choice"),
        (["--format", "jempp", "--out", "EXISTING"], "exists; pass --overwrite"),
    ],
)
def test_import_command_bad_input_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], needle: str
) -> None:
    src = tmp_path / "jempp.pt"
    save_official(src, "jempp")
    existing = tmp_path / "existing.pt"
    existing.write_bytes(b"keep")
    argv = [str(existing) if a == "EXISTING" else a for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out.pt")]
    assert exit_code([str(src), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("ebjdat-import-official: error:")
    assert needle in err
    assert not (tmp_path / "out.pt").exists() and existing.read_bytes() == b"keep"


def test_import_command_refuses_a_missing_or_pickled_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.pt"
    assert cli.run([str(tmp_path / "nope.pt"), "--format", "jem", "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    src = tmp_path / "pickled.pt"
    save_official(src, "jem", margin=torch.nn.Linear(2, 2))
    assert cli.run([str(src), "--format", "jem", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "never unpickles" in err and "weights_only" not in err and not out.exists()


def test_import_command_help_runs_as_a_module() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ebjdat.cli.import_official", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--format {jem,jempp,sadajem}" in done.stdout and "ebjdat-eval" in done.stdout


def test_import_command_sadajem_64px_defaults_to_imagefolder(tmp_path: Path) -> None:
    src = tmp_path / "sadajem.pt"
    sd = save_official(src, "sadajem")
    out = tmp_path / "imported.pt"
    assert cli.run([str(src), "--format", "sadajem", "--out", str(out), "--no-buffer"]) == 0
    state = torch.load(out, weights_only=True)
    assert state["config"]["data"]["dataset"] == "imagefolder"
    assert state["config"]["data"]["image_size"] == 64 and "ranks" not in state
    assert state["model_config"]["extra_stage"] is True
    x = images(64, n=2)
    with torch.no_grad():
        torch.testing.assert_close(
            ebjdat.load_classifier(out).double()(x), reference_logits(sd, x), rtol=1e-10, atol=1e-10
        )
    # A 32-px dataset cannot hold a model made for 64-px images.
    code = exit_code([str(src), "--format", "sadajem", "--out", str(out), "--overwrite",
                      "--dataset", "cifar10"])  # fmt: skip
    assert code == 2
