"""Any classifier as an energy model: wrap an `nn.Module` that maps [0, 1] images to logits, and
ebjdat's samplers, attacks, losses and checkpoints work with it as with its own WideResNet.

A checkpoint never pickles the user's module. It records how to rebuild it: `builder`, an
importable "module:callable" (a class or a function) and its plain `kwargs`, given as
`Classifier(net, num_classes, builder="pkg.mod:make_net", kwargs={...})`. A class that takes no
arguments at all is its own builder. Otherwise the weights still load into a model passed in
(`load_classifier(path, model=...)`, or the `model` of a resumed Trainer).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .jem import EnergyModel

KIND = "classifier"


def builder_of(net: nn.Module) -> str | None:
    """"module:Class" when `net`'s class is importable by that name and takes no arguments at
    all, so that calling it rebuilds exactly this architecture. A class with parameters, even
    defaulted ones, is never guessed: its defaults may not be what built `net`."""
    cls = type(net)
    module = cls.__module__
    if module in ("__main__", "builtins") or "<locals>" in cls.__qualname__:
        return None
    try:
        found = resolve(f"{module}:{cls.__qualname__}")
        parameters = inspect.signature(cls).parameters
    except (ImportError, AttributeError, ValueError, TypeError):
        return None
    return f"{module}:{cls.__qualname__}" if found is cls and not parameters else None


def resolve(reference: str) -> Any:
    """The object named by "package.module:attribute.path"."""
    if not isinstance(reference, str) or reference.count(":") != 1:
        raise ValueError(f"a builder must look like 'package.module:callable', got {reference!r}")
    module_name, attr = reference.split(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


class Classifier(EnergyModel):
    """`net` (a [0, 1] image -> logits module) read as an energy model: E(x) = -logsumexp f(x).

    Samplers call `logits_internal` on [-1, 1] images, which converts back to [0, 1] for `net`;
    `forward` is `net` itself, so attacks and evaluation see the user's model unchanged."""

    def __init__(
        self,
        net: nn.Module,
        num_classes: int,
        *,
        builder: str | None = None,
        kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(net).__name__}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        self.net = net
        self.num_classes = num_classes
        self.builder = builder if builder is not None else builder_of(net)
        self.kwargs = dict(kwargs or {})

    def logits_internal(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.from_internal(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @property
    def config(self) -> dict[str, Any]:
        """Plain data (weights_only-safe) that `Classifier.from_config` rebuilds the model from;
        builder None means the model must be passed in to load the weights."""
        return {
            "kind": KIND,
            "builder": self.builder or "none",
            "kwargs": self.kwargs,
            "class": f"{type(self.net).__module__}:{type(self.net).__qualname__}",
            "num_classes": self.num_classes,
        }

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], net: nn.Module | None = None) -> Classifier:
        """The (untrained) model a checkpoint's config describes; `net` replaces the builder."""
        builder = cfg.get("builder")
        kwargs = cfg.get("kwargs") or {}
        if not isinstance(kwargs, Mapping):
            raise ValueError(f"kwargs must be a table, got {type(kwargs).__name__}")
        if net is None:
            if not builder or builder == "none":
                raise ValueError(
                    f"the model ({cfg.get('class', 'a user module')}) was saved without a builder; "
                    "pass the untrained model to load its weights into (model=...)"
                )
            net = resolve(str(builder))(**kwargs)
        return cls(
            net,
            int(cfg["num_classes"]),
            builder=None if builder in (None, "none") else str(builder),
            kwargs=kwargs,
        )
