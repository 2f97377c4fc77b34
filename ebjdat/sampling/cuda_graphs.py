"""CUDA-graph capture of the samplers' inner loops (`train.cuda_graphs`, CUDA only).

One SGLD or adversarial step is a forward, an input-gradient backward and one fused update: a few
hundred small kernels whose launches dominate at small batches on a fast GPU. The step is captured
once per (model, sampler settings, input shape) and the loop replays it `steps` times. The step
must update its static tensors in place (the replay reads its own output next time).

What keeps a graphed loop the same function as the eager one:
- the warm-up the capture needs runs on scratch copies, and the model's buffers (BatchNorm running
  statistics) and the noise generator's state are put back afterwards;
- capturing records kernels without running them, and the fused ops draw Philox noise through the
  graph-safe generator state (registered with the graph), so every replay advances the generator
  exactly as the eager calls would and draws fresh noise;
- parameters are read in place, so optimiser steps, SAM perturbations and rollbacks (which copy
  into the same storage) are seen by later replays. Replacing a parameter tensor is not.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

Step = Callable[[Mapping[str, torch.Tensor]], None]
WARMUP_STEPS = 2


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    statics: dict[str, torch.Tensor]


_GRAPHS: weakref.WeakKeyDictionary[nn.Module, dict[Hashable, _Captured]] = (
    weakref.WeakKeyDictionary()
)


def callable_key(fn: Callable) -> Hashable:
    """A cache-key part for the forward function that holds no strong reference (a bound
    method of the model would keep the model, and so its graphs, alive forever)."""
    owner = getattr(fn, "__self__", None)
    if owner is not None and hasattr(fn, "__func__"):
        return ("method", id(owner), fn.__func__)
    try:
        return ("callable", weakref.ref(fn))
    except TypeError:
        return ("callable", id(fn))


def check_cuda_graph_inputs(*tensors: torch.Tensor) -> None:
    """cuda_graph=True needs CUDA tensors; anything else is a usage error, not a silent fallback."""
    for t in tensors:
        if t.device.type != "cuda":
            raise ValueError(f"cuda_graph=True needs CUDA tensors, got a tensor on {t.device}")


def _autocast_key(device: torch.device) -> tuple:
    return (torch.is_autocast_enabled(device.type), torch.get_autocast_dtype(device.type))


def _no_autocast_cache(device: torch.device) -> torch.autocast:
    """The current autocast settings with its weight cache off, as graph capture requires."""
    enabled, dtype = _autocast_key(device)
    return torch.autocast(device.type, dtype=dtype, enabled=enabled, cache_enabled=False)


def _capture(
    model: nn.Module,
    inputs: Mapping[str, torch.Tensor],
    step: Step,
    generator: torch.Generator | None,
) -> _Captured:
    device = next(iter(inputs.values())).device
    statics = {k: v.detach().clone() for k, v in inputs.items()}
    buffers = [b.detach().clone() for b in model.buffers()]
    rng = generator.get_state() if generator is not None else torch.cuda.get_rng_state(device)
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side), _no_autocast_cache(device):
        scratch = {k: v.clone() for k, v in statics.items()}
        for _ in range(WARMUP_STEPS):  # cuDNN/cuBLAS handles, autograd streams, lazy init
            step(scratch)
    torch.cuda.current_stream(device).wait_stream(side)
    with torch.no_grad():  # undo the warm-up's side effects
        for b, saved in zip(model.buffers(), buffers, strict=True):
            b.copy_(saved)
    if generator is not None:
        generator.set_state(rng)
    else:
        torch.cuda.set_rng_state(rng, device)
    graph = torch.cuda.CUDAGraph()
    if generator is not None:
        graph.register_generator_state(generator)
    with torch.cuda.graph(graph), _no_autocast_cache(device):
        step(statics)
    return _Captured(graph, statics)


def replay_loop(
    model: nn.Module,
    key: Hashable,
    inputs: Mapping[str, torch.Tensor],
    step: Step,
    steps: int,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Run `step` `steps` times on copies of `inputs` through a CUDA graph captured on first use
    for this model and `key` (which must name everything the step closes over: settings, the
    forward function, modes). Returns the final tensors, owned by the caller."""
    first = next(iter(inputs.values()))
    check_cuda_graph_inputs(*inputs.values())
    full_key = (
        key,
        _autocast_key(first.device),
        tuple((k, v.shape, v.dtype, v.stride(), v.device) for k, v in inputs.items()),
        None if generator is None else id(generator),
    )
    graphs = _GRAPHS.setdefault(model, {})
    captured = graphs.get(full_key)
    if captured is None:
        captured = graphs[full_key] = _capture(model, inputs, step, generator)
    for name, value in inputs.items():
        captured.statics[name].copy_(value)
    for _ in range(steps):
        captured.graph.replay()
    return {k: v.clone() for k, v in captured.statics.items()}


def clear(model: nn.Module | None = None) -> None:
    """Drop the captured graphs (of one model, or all) and their memory pools."""
    if model is None:
        _GRAPHS.clear()
    else:
        _GRAPHS.pop(model, None)
