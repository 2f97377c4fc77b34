"""Op registration and backend choice.

Each op `ebjdat::<name>` is defined here from Python, so it exists even without the native
extension; each kernel file of csrc/cpu and csrc/cuda registers its own kernels. A twin
`ebjdat::<name>_triton` with the same schema runs the Triton kernel (on CUDA, or on CPU tensors
under TRITON_INTERPRET=1).
The PyTorch reference is plain Python. `backend(op, device)` picks one per device type:
native kernel for the device, else Triton on CUDA, else the reference; EBJDAT_BACKEND or
`use_backend` overrides it.

Autograd is decided here too, for every op at once (`define(..., autograd=...)`): the step ops
are not differentiable, so their outputs never require grad and an in-place update bumps the
version counter of what it writes and refuses a tensor that autograd tracks; energy_head brings
its own formula; its backward op may be run once but not differentiated again.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch

from . import _checks

NAMESPACE = "ebjdat"
BACKENDS = ("cuda", "triton", "cpu", "reference")
_LIB = torch.library.Library(NAMESPACE, "DEF")
# op name -> {"native": OpOverloadPacket, "triton": OpOverloadPacket, "reference": callable}
_IMPLS: dict[str, dict[str, Callable[..., Any]]] = {}
_override: str | None = None
_choice: dict[tuple[str, str], str] = {}


def define(
    name: str,
    schema: str,
    *,
    fake: Callable[..., Any],
    triton_impl: Callable[..., Any],
    reference: Callable[..., Any] | None,
    seeded: bool = False,
    public: bool = True,
    autograd: str = "none",
) -> tuple[Any, Any]:
    """Defines `ebjdat::name` and `ebjdat::name_triton` with `schema` (arguments onwards).

    autograd: "none" (not differentiable: outputs never require grad, on every backend including
    the reference; arguments written in place are checked and version-bumped), "formula" (the
    caller registers one for both twins; the reference stays plain, differentiable PyTorch) or
    "once" (a backward op: its result cannot be differentiated again)."""
    if autograd not in ("none", "formula", "once"):
        raise ValueError(f"autograd must be 'none', 'formula' or 'once', got {autograd!r}")
    tags = (torch.Tag.nondeterministic_seeded,) if seeded else ()
    packets = []
    for op_name in (name, f"{name}_triton"):
        _LIB.define(op_name + schema, tags=tags)
        torch.library.register_fake(f"{NAMESPACE}::{op_name}", fake, lib=_LIB)
        packets.append(getattr(getattr(torch.ops, NAMESPACE), op_name))
    args = packets[0].default._schema.arguments
    names = tuple(a.name for a in args)
    written = tuple(i for i, a in enumerate(args) if a.alias_info and a.alias_info.is_write)
    tensors = tuple(i for i, a in enumerate(args) if "Tensor" in str(a.type))
    guard = _write_guard(name, names, written, tensors)
    for packet in packets:
        _register_autograd(packet.default, name, autograd, names, written)
    # CPU tensors reach Triton only under the interpreter; backend() checks that first.
    triton_impl = _guarded(triton_impl, guard)
    _LIB.impl(f"{name}_triton", triton_impl, "CPU")
    _LIB.impl(f"{name}_triton", triton_impl, "CUDA")
    if public:
        if reference is not None and autograd == "none":
            reference = _not_differentiable(_guarded(reference, guard), name, names, written)
        _IMPLS[name] = {"native": packets[0], "triton": packets[1], "reference": reference}
        _choice.clear()
    return packets[0], packets[1]


# --- autograd --------------------------------------------------------------------------------
# A non-differentiable functional op needs nothing from autograd, so its Autograd kernel is a
# fallthrough (no cost per call): its outputs are made below autograd and never require grad.
# An op that writes an argument gets the two kernels an ATen in-place op has: Autograd (refuse a
# tracked tensor, then skip to the backend) and ADInplaceOrView (bump the version, which is how
# autograd notices that a saved tensor changed); the Autograd one does both in a single hop.


def _register_autograd(
    op: Any, public_name: str, mode: str, names: tuple[str, ...], written: tuple[int, ...]
) -> None:
    op_name = op._schema.name.split("::", 1)[1]
    if mode == "formula":
        return
    if mode == "once":
        _LIB.impl(op_name, _once_kernel(op), "Autograd", with_keyset=True)
        return
    if not written:
        _LIB.impl(op_name, torch.library.fallthrough_kernel, "Autograd")
        return

    def bump_and_run(keyset: Any, *args: Any) -> Any:
        with torch._C._AutoDispatchBelowADInplaceOrView():
            out = op.redispatch(keyset & torch._C._after_ADInplaceOrView_keyset, *args)
        torch._C._increment_version([args[i] for i in written])
        return out

    def autograd_kernel(keyset: Any, *args: Any) -> Any:
        for i in written:
            _checks.inplace_grad_mode(public_name, names[i], args[i])
        return bump_and_run(keyset, *args)

    _LIB.impl(op_name, autograd_kernel, "Autograd", with_keyset=True)
    _LIB.impl(op_name, bump_and_run, "ADInplaceOrView", with_keyset=True)


def _once_kernel(op: Any) -> Callable[..., Any]:
    """Runs op below autograd; when grad mode is on and an input requires grad (a backward run
    with create_graph=True), the result carries a node that raises if it is differentiated, so a
    second derivative is never silently zero."""
    message = (
        f"{op._schema.name} is a fused backward without a derivative of its own: double backward "
        "(differentiating a gradient taken with create_graph=True) is not supported by the "
        "cpu/cuda/triton kernels; the reference backend (ops.use_backend('reference')) supports it"
    ).encode()

    def kernel(keyset: Any, *args: Any) -> Any:
        with torch._C._AutoDispatchBelowAutograd():
            out = op.redispatch(keyset & torch._C._after_autograd_keyset, *args)
        tracked = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
        if torch.is_grad_enabled() and tracked:
            # The error node also takes the tracked inputs, so that the result's graph reaches
            # them and autograd.grad(..., inputs) runs into the error instead of finding them
            # unused.
            err = torch._C._functions.DelayedError(message, 1 + len(tracked))
            out = err(out.detach().requires_grad_(), *tracked)[0]
        return out

    return kernel


def _not_differentiable(
    fn: Callable[..., Any], op: str, names: tuple[str, ...], written: tuple[int, ...]
) -> Callable[..., Any]:
    """The reference, which is plain PyTorch, with the same autograd behaviour as the kernels."""

    def reference(*args: Any) -> Any:
        for i in written:
            _checks.inplace_grad_mode(op, names[i], args[i])
        with torch.no_grad():  # in-place writes still bump versions under no_grad
            return fn(*args)

    return reference


# --- memory overlap of in-place writes ---------------------------------------------------------


def _write_guard(
    op: str, names: tuple[str, ...], written: tuple[int, ...], tensors: tuple[int, ...]
) -> Callable[..., None] | None:
    """Checks, for an op that writes arguments, that no written tensor overlaps itself and that
    every other tensor argument is either the written tensor itself or disjoint from it (the C++
    kernels check the same)."""
    if not written:
        return None

    def guard(*args: Any) -> None:
        for i in written:
            _checks.no_internal_overlap(op, names[i], args[i])
            for j in tensors:
                if j != i and isinstance(args[j], torch.Tensor):
                    _checks.no_partial_overlap(op, names[j], args[j], names[i], args[i])

    return guard


def _guarded(fn: Callable[..., Any], guard: Callable[..., None] | None) -> Callable[..., Any]:
    if guard is None:
        return fn

    def checked(*args: Any) -> Any:
        guard(*args)
        return fn(*args)

    return checked


def has_native_kernel(op: str, dispatch_key: str) -> bool:
    """Whether ebjdat._C registered a kernel for `op` under `dispatch_key` ("CPU"/"CUDA")."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"{NAMESPACE}::{op}", dispatch_key)


def triton_status(device_type: str) -> tuple[bool, str]:
    """(usable, reason) for Triton kernels on tensors of `device_type`."""
    if importlib.util.find_spec("triton") is None:
        return False, "triton is not installed"
    if device_type == "cuda":
        return True, ""
    if device_type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        return True, "interpreter"
    return (
        False,
        f"Triton runs on {device_type} tensors only under TRITON_INTERPRET=1 (set before start)",
    )


def _available(op: str, device_type: str, name: str) -> tuple[bool, str]:
    if name == "reference":
        return True, ""
    if name == "triton":
        return triton_status(device_type)
    if name != device_type:
        return False, f"the {name} kernel cannot run on {device_type} tensors"
    if has_native_kernel(op, device_type.upper()):
        return True, ""
    return False, f"ebjdat._C has no {device_type} kernel for {op} (see python -m ebjdat.info)"


def _requested() -> str | None:
    """The forced backend: use_backend's (where "" means automatic), else EBJDAT_BACKEND."""
    if _override is not None:
        return _override or None
    name = os.environ.get("EBJDAT_BACKEND") or None
    if name is not None and name not in BACKENDS:
        raise ValueError(f"EBJDAT_BACKEND must be one of {', '.join(BACKENDS)}; got {name!r}")
    return name


def backend(op: str, device: torch.device | str) -> str:
    """The implementation `op` runs with on `device`: "cuda", "triton", "cpu" or "reference"."""
    if op not in _IMPLS:
        raise ValueError(f"unknown op {op!r}; ops are {', '.join(sorted(_IMPLS))}")
    device_type = torch.device(device).type
    key = (op, device_type)
    if key in _choice:
        return _choice[key]
    requested = _requested()
    if requested is not None:
        ok, reason = _available(op, device_type, requested)
        if not ok:
            raise RuntimeError(f"EBJDAT_BACKEND={requested} cannot run {op}: {reason}")
        choice = requested
    else:
        order = (
            (device_type, "triton", "reference")
            if device_type == "cuda"
            else (device_type, "reference")
        )
        choice = next(name for name in order if _available(op, device_type, name)[0])
    _choice[key] = choice
    return choice


def implementation(op: str, device: torch.device) -> Callable[..., Any]:
    """The callable behind backend(op, device); all take the op's schema arguments."""
    name = backend(op, device)
    return _IMPLS[op]["native" if name in ("cpu", "cuda") else name]


def ops() -> list[str]:
    return sorted(_IMPLS)


@contextlib.contextmanager
def use_backend(name: str | None) -> Iterator[None]:
    """Forces one backend for every op inside the block (None: back to automatic choice)."""
    global _override
    if name is not None and name not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)} or None; got {name!r}")
    previous = _override
    _override = name if name is not None else ""
    _choice.clear()
    warm()
    try:
        yield
    finally:
        _override = previous
        _choice.clear()
        warm()


def warm(device_types: tuple[str, ...] = ("cpu", "cuda")) -> None:
    """Resolves choices ahead of time so compiled code only reads the cache."""
    for op in _IMPLS:
        for device_type in device_types:
            try:
                backend(op, device_type)
            except (RuntimeError, ValueError):
                pass
