"""Checkpoints written by the official JEM, JEM++ and SADA-JEM code, read into ebjdat's JEM.

Each official training script saves `{"model_state_dict": f.state_dict(), "replay_buffer": B}`
where `f` is its `CCF` module: the Wide-ResNet under `f.`, an unused `energy_output` head and the
`class_output` head. The formats differ only in what the backbone registers:

  jem      wgrathwohl/JEM wideresnet.Wide_ResNet: also a `linear` head that is never called
  jempp    sndnyang/JEMPP models/wideresnet_yopo.Wide_ResNet: conv1 registered again as
           `layer_one`, layer1-3 and bn1 again as `other_layers.0-3` (the same tensors, so
           `state_dict()` holds each twice); its plain `wrn` model has no aliases
  sadajem  sndnyang/SADAJEM models/wideresnet.Wide_ResNet: a 4th stage `layer4` on 64-px data

Reading never unpickles: the file goes through `torch.load(weights_only=True)` only. Every
problem is one line (a CheckpointError), because these files come from outside ebjdat.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .jem import JEM

FORMATS = ("jem", "jempp", "sadajem")
FORMAT_NAMES = {"jem": "JEM", "jempp": "JEM++", "sadajem": "SADA-JEM"}
_SHOWN = 4  # key names listed in an error before "(and N more)"
_BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_BLOCK = re.compile(r"^f\.layer1\.(\d+)\.")


def _error(message: str) -> Exception:
    from ebjdat.checkpoint import CheckpointError

    return CheckpointError(message)


def _names(keys: list[str]) -> str:
    more = f" (and {len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def _check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"unknown official format {fmt!r}; known: {', '.join(FORMATS)}")
    return fmt


# ---- the yopo aliases ------------------------------------------------------------------------


def _canonical(key: str) -> str | None:
    """The name wideresnet_yopo registered first for the module an alias key belongs to
    (layer_one is conv1; other_layers 0-2 are layer1-3 and 3 is bn1), or None for a non-alias."""
    if key.startswith("f.layer_one."):
        return "f.conv1." + key[len("f.layer_one.") :]
    m = re.match(r"^f\.other_layers\.(\d+)\.(.*)$", key)
    if m is None:
        return None
    index, rest = int(m.group(1)), m.group(2)
    target = {0: "layer1", 1: "layer2", 2: "layer3", 3: "bn1"}.get(index)
    # An index the official class never registers stays an unknown key for the caller.
    return None if target is None else f"f.{target}.{rest}"


def _drop_aliases(state: dict[str, Tensor], fmt: str) -> dict[str, Tensor]:
    """`state` without JEM++'s alias keys, after checking that each holds exactly the tensor of
    the name it aliases: a file whose copies differ was not written by that class, and picking
    either copy would be a guess."""
    aliases = {k: c for k in state if (c := _canonical(k)) is not None}
    if not aliases:
        return state
    if fmt != "jempp":
        return state  # aliases are foreign to this format: reported as unknown keys later
    for alias, canonical in aliases.items():
        if canonical not in state:
            raise _error(f"alias {alias} has no {canonical} beside it")
        a, b = state[alias], state[canonical]
        if a.shape != b.shape or a.dtype != b.dtype or not torch.equal(a, b):
            raise _error(
                f"{alias} differs from {canonical}; wideresnet_yopo stores the same tensor under "
                "both names, so this is not one of its state dicts"
            )
    aliased = set(aliases.values())
    should = [k for k in state if re.match(r"^f\.(conv1|layer[123]|bn1)\.", k) and k not in aliased]
    if should:
        raise _error(
            f"some aliases are missing (no layer_one/other_layers copy of {_names(should)})"
        )
    return {k: v for k, v in state.items() if k not in aliases}


# ---- the model an official state dict describes ---------------------------------------------


def _infer_config(state: Mapping[str, Tensor], fmt: str) -> dict[str, Any]:
    """The ebjdat model config (JEM.config form) of an official backbone, read off its tensors:
    depth from the block count, widen from layer1's width, norm from bn1's buffers."""
    need = ["f.conv1.weight", "f.layer1.0.conv1.weight", "class_output.weight"]
    absent = [k for k in need if k not in state]
    if absent:
        raise _error(
            f"not a {FORMAT_NAMES[fmt]} CCF state dict: no {_names(absent)} "
            f"(its keys start: {_names(list(state))})"
        )
    conv1, block_conv = state["f.conv1.weight"], state["f.layer1.0.conv1.weight"]
    head = state["class_output.weight"]
    if conv1.dim() != 4 or block_conv.dim() != 4 or head.dim() != 2:
        raise _error(
            "f.conv1.weight, f.layer1.0.conv1.weight or class_output.weight has the wrong rank"
        )
    width = int(block_conv.shape[0])
    if width % 16 != 0 or width == 0:
        raise _error(f"f.layer1.0.conv1.weight has {width} channels, not 16 x widen")
    blocks = {int(m.group(1)) for k in state if (m := _BLOCK.match(k))}
    n = len(blocks)
    if blocks != set(range(n)):
        raise _error(f"layer1's blocks are numbered {sorted(blocks)}, not 0..{n - 1}")
    norm_keys = sorted(k[len("f.bn1.") :] for k in state if k.startswith("f.bn1."))
    if not norm_keys:
        norm = "none"
    elif norm_keys == sorted(_BN_KEYS):
        norm = "batch"
    else:
        raise _error(
            f"its normalisation (f.bn1.{', f.bn1.'.join(norm_keys)}) is not BatchNorm2d; ebjdat's "
            "WideResNet has the official --norm batch or none only"
        )
    return {
        "backbone": "wideresnet",
        "depth": 6 * n + 4,
        "widen": width // 16,
        "num_classes": int(head.shape[0]),
        "in_channels": int(conv1.shape[1]),
        "norm": norm,
        "bn_momentum": 0.9,  # the official get_norm's; it only matters for further training
        "dropout": 0.0,  # dropout has no tensors, and eval mode ignores it
        "leak": 0.2,
        # Only SADA-JEM's class has a 4th stage; elsewhere layer4 keys are unknown keys.
        "extra_stage": fmt == "sadajem" and "f.layer4.0.conv1.weight" in state,
    }


def _drop_unused_heads(state: dict[str, Tensor], fmt: str, feature_dim: int) -> dict[str, Tensor]:
    """Without `energy_output` (the unconditional F model's head, unused by CCF's logits) and,
    for JEM, the backbone's own `linear` head, which its forward never calls; both are checked
    to be the Linear layers the official classes build, so a mislabelled file is caught."""
    heads = {"energy_output": 1}
    if fmt == "jem":
        heads["f.linear"] = int(state.get("f.linear.bias", torch.empty(0)).numel())
    out = dict(state)
    for name, rows in heads.items():
        w, b = out.pop(f"{name}.weight", None), out.pop(f"{name}.bias", None)
        if w is None and b is None:
            continue
        if (
            w is None
            or b is None
            or tuple(w.shape) != (rows, feature_dim)
            or tuple(b.shape) != (rows,)
        ):
            shapes = [None if t is None else list(t.shape) for t in (w, b)]
            raise _error(
                f"{name} is not a Linear({feature_dim}, {rows}) head (weight, bias shapes: "
                f"{shapes})"
            )
    return out


def _hint(unknown: list[str], fmt: str) -> str:
    """Which other format registers these keys, when one does: the likely mix-up."""
    other = detect_format(dict.fromkeys(unknown))
    if other != fmt and (other != "jempp" or any(_canonical(k) for k in unknown)):
        return f" (they are {FORMAT_NAMES[other]}'s: is it a {other} checkpoint?)"
    return ""


def detect_format(state: Mapping[str, Any]) -> str:
    """The format whose class registers `state`'s distinctive keys: yopo aliases -> jempp,
    a backbone `linear` head -> jem, a 4th stage -> sadajem; else jempp (JEM++'s plain `wrn`
    model and SADA-JEM's 32-px model register the same names)."""
    keys = [k[len("module.") :] if k.startswith("module.") else k for k in state]
    if any(_canonical(k) is not None for k in keys):
        return "jempp"
    if any(k.startswith("f.linear.") for k in keys):
        return "jem"
    if any(k.startswith("f.layer4.") for k in keys):
        return "sadajem"
    return "jempp"


def convert_state_dict(
    state: Mapping[str, Any], fmt: str
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(ebjdat state dict, model config) of an official CCF `state_dict()` in format `fmt`.

    Raises a one-line CheckpointError for anything that is not exactly what the official class
    registers: unknown or missing keys (the first few named), wrong shapes, differing aliases.
    """
    _check_format(fmt)
    if not isinstance(state, Mapping) or not state:
        raise _error("the official model state is not a non-empty state dict")
    bad = [str(k) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise _error(f"the official model state holds non-tensor entries ({_names(bad)})")
    tensors: dict[str, Tensor] = dict(state)
    # nn.DataParallel's state_dict prefixes every key (SADA-JEM wraps f in it on several GPUs).
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    tensors = _drop_aliases(tensors, fmt)
    cfg = _infer_config(tensors, fmt)
    model = JEM.from_config(cfg)
    expected = {
        (k if k.startswith("class_output.") else "f." + k[len("backbone.") :]): (k, v)
        for k, v in model.state_dict().items()
    }
    heads = ["energy_output"] + (["f.linear"] if fmt == "jem" else [])
    head_keys = {f"{h}.{p}" for h in heads for p in ("weight", "bias")}
    unknown = [k for k in tensors if k not in expected and k not in head_keys]
    if unknown:
        raise _error(
            f"unknown keys for a {FORMAT_NAMES[fmt]} {cfg_name(cfg)} state dict: {_names(unknown)}"
            f"{_hint(unknown, fmt)}"
        )
    tensors = _drop_unused_heads(tensors, fmt, model.backbone.feature_dim)
    missing = [k for k in expected if k not in tensors]
    if missing:
        raise _error(
            f"missing keys for a {FORMAT_NAMES[fmt]} {cfg_name(cfg)} state dict: {_names(missing)}"
        )
    resized = [k for k, (_, v) in expected.items() if tensors[k].shape != v.shape]
    if resized:
        k = resized[0]
        more = f" (and {len(resized) - 1} more)" if len(resized) > 1 else ""
        raise _error(
            f"{k} is {list(tensors[k].shape)} but a {cfg_name(cfg)} has "
            f"{list(expected[k][1].shape)}{more}"
        )
    return {name: tensors[k] for k, (name, _) in expected.items()}, cfg


def cfg_name(cfg: Mapping[str, Any]) -> str:
    """'WRN-28-10' (with ', 4 stages' for SADA-JEM's 64-px model)."""
    extra = ", 4 stages" if cfg.get("extra_stage") else ""
    return f"WRN-{cfg['depth']}-{cfg['widen']}{extra}"


def model_from_official(state: Mapping[str, Any], fmt: str) -> JEM:
    """A JEM (CPU, eval mode) holding an official CCF state dict's weights."""
    from .loading import load_weights

    weights, cfg = convert_state_dict(state, fmt)
    model = JEM.from_config(cfg)
    load_weights(model, weights, f"({FORMAT_NAMES[fmt]} state dict)")
    return model.eval()


# ---- official checkpoint files ---------------------------------------------------------------


@dataclass
class OfficialCheckpoint:
    """What an official checkpoint file holds, in ebjdat's terms."""

    model: JEM
    config: dict[str, Any]
    replay_buffer: Tensor | None  # [N, C, H, W] in [-1, 1] (JEM's units, as ebjdat's buffer)
    format: str


def unwrap(obj: Any, source: str) -> tuple[Mapping[str, Any], Tensor | None]:
    """(model state dict, replay buffer or None) of a loaded official file: the official
    `{"model_state_dict", "replay_buffer", ...}` dict, or a bare `f.state_dict()`."""
    if not isinstance(obj, Mapping):
        raise _error(f"{source} holds a {type(obj).__name__}, not an official checkpoint's dict")
    if "model_state_dict" in obj:
        buf = obj.get("replay_buffer")
        return obj["model_state_dict"], buf if isinstance(buf, Tensor) and buf.dim() == 4 else None
    if obj and all(isinstance(v, Tensor) for v in obj.values()):
        return obj, None
    raise _error(
        f"{source} is neither an official checkpoint (no 'model_state_dict' entry; its entries: "
        f"{_names([str(k) for k in obj])}) nor a bare state dict"
    )


def read_official(path: str | Path) -> Any:
    """The loaded contents of `path`, through weights_only=True only (one line when the file
    needs anything more, without torch's advice to unpickle)."""
    from ebjdat.checkpoint import read_tensors

    return read_tensors(path, error=_error, what="")


def load_official(path: str | Path, fmt: str) -> OfficialCheckpoint:
    """An official JEM / JEM++ / SADA-JEM checkpoint file as an ebjdat JEM (eval mode) plus its
    replay buffer; CheckpointError naming the file for any problem."""
    from .loading import load_weights

    _check_format(fmt)
    obj = read_official(path)
    state, buf = unwrap(obj, str(path))
    from ebjdat.checkpoint import CheckpointError

    try:
        weights, cfg = convert_state_dict(state, fmt)
    except CheckpointError as err:
        raise _error(f"{path}: {err}") from None
    model = JEM.from_config(cfg)
    load_weights(model, weights, str(path))
    if buf is not None and (buf.shape[1] != cfg["in_channels"] or not buf.is_floating_point()):
        buf = None  # not images this model reads: leave it out rather than guess
    return OfficialCheckpoint(model.eval(), cfg, buf, fmt)
