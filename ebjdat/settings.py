"""Settings dataclasses that declare each field's allowed values next to its default, and the one
check that enforces them.

The training config's sections are such dataclasses, and so are the samplers' settings: the
[sgld] section *is* the SGLD sampler's settings (`ebjdat.sampling.SGLDConfig`) and the [adv]
section *is* the adversarial sampler's (`ebjdat.attacks.AdvConfig`). This module sits below
both, so that a sampler validates its settings with the same rules and messages as the config.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from dataclasses import field, fields
from typing import Any


class ConfigError(ValueError):
    """A bad config file, preset, override or settings value; the message names the key."""


def setting(default: Any, *, choices: tuple[str, ...] | None = None, **limits: float) -> Any:
    """A field with its allowed values: `choices` for strings; ge/gt/le/lt bounds for numbers
    (also each item of a list). Numbers must be finite unless a bound says inf."""
    meta = {"choices": choices, "limits": limits}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


_SIGNS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def _within(item: float, name: str, bound: float) -> bool:
    return {
        "ge": item >= bound,
        "gt": item > bound,
        "le": item <= bound,
        "lt": item < bound,
    }[name]


def check_value(key: str, value: Any, hint: Any, f: dataclasses.Field) -> None:
    """One value against its type's optionality and its field's declared choices and bounds."""
    choices = f.metadata.get("choices")
    limits = f.metadata.get("limits", {})
    if value is None:
        if type(None) not in typing.get_args(hint):
            raise ConfigError(f"{key} must be set (none is not allowed)")
        return
    if choices is not None and value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}; got {value!r}")
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            continue
        if isinstance(item, float) and not math.isfinite(item):
            raise ConfigError(f"{key} must be a finite number, got {item}")
        for name, bound in limits.items():
            if not _within(item, name, bound):
                shown = f"{bound:g}" if isinstance(bound, float) else str(bound)
                raise ConfigError(f"{key} must be {_SIGNS[name]} {shown}, got {item}")


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    """A settings class's resolved field types, once: samplers check their settings per call."""
    return typing.get_type_hints(cls)


def check_fields(values: Any, section: str) -> None:
    """Every field of the settings dataclass `values`, named `section.field` in the error."""
    hints = _type_hints(type(values))
    for f in fields(values):
        check_value(f"{section}.{f.name}", getattr(values, f.name), hints[f.name], f)
