"""Autograd and train/eval modes that samplers, attacks and evaluation share: input gradients
under any caller's grad mode, frozen parameters, and model modes that are restored exactly."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch
from torch import nn

F = TypeVar("F", bound=Callable[..., object])


@contextlib.contextmanager
def model_mode(model: nn.Module, train: bool | None) -> Iterator[nn.Module]:
    """Put the whole model in train (BatchNorm batch statistics) or eval (running statistics)
    mode for the block, then restore every submodule's own previous flag.

    The official code calls f.train()/f.eval() on the whole model and leaves it in train mode
    afterwards; restoring the exact previous flags instead makes samplers safe to call from
    evaluation code too. train=None leaves the modes alone.
    """
    if train is None:
        yield model
        return
    saved = [(m, m.training) for m in model.modules()]
    model.train(train)
    try:
        yield model
    finally:
        for m, flag in saved:
            m.training = flag


@contextlib.contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """Parameters stop requiring grad inside the block (samplers only need input gradients).

    Eager autograd already skips weight-gradient kernels for torch.autograd.grad wrt the input,
    but a torch.compile'd model does not: its backward graph is built once for every input that
    requires grad, so without this each sampler step would also compute all weight gradients.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


@contextlib.contextmanager
def grad_mode() -> Iterator[None]:
    """Input gradients even when the caller runs under torch.no_grad / inference_mode."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def outside_inference_mode(fn: F) -> F:
    """Run a sampler with inference mode off, so that it also works when called under
    torch.inference_mode (evaluation code): tensors it creates are normal tensors that autograd
    accepts. Samplers clone their inputs first, which turns inference-tensor inputs into normal
    ones."""

    @functools.wraps(fn)
    def wrapper(*args: object, **kwargs: object) -> object:
        with torch.inference_mode(False):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
