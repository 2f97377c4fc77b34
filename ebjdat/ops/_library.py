"""Op registration and backend choice.

Each op `ebjdat::<name>` is defined here from Python, so it exists even without the native
extension; csrc/register.cpp adds its CPU and CUDA kernels. A twin `ebjdat::<name>_triton` with
the same schema runs the Triton kernel (on CUDA, or on CPU tensors under TRITON_INTERPRET=1).
The PyTorch reference is plain Python. `backend(op, device)` picks one per device type:
native kernel for the device, else Triton on CUDA, else the reference; EBJDAT_BACKEND or
`use_backend` overrides it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch

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
) -> tuple[Any, Any]:
    """Defines `ebjdat::name` and `ebjdat::name_triton` with `schema` (arguments onwards)."""
    tags = (torch.Tag.nondeterministic_seeded,) if seeded else ()
    packets = []
    for op_name in (name, f"{name}_triton"):
        _LIB.define(op_name + schema, tags=tags)
        torch.library.register_fake(f"{NAMESPACE}::{op_name}", fake, lib=_LIB)
        packets.append(getattr(getattr(torch.ops, NAMESPACE), op_name))
    # CPU tensors reach Triton only under the interpreter; backend() checks that first.
    _LIB.impl(f"{name}_triton", triton_impl, "CPU")
    _LIB.impl(f"{name}_triton", triton_impl, "CUDA")
    if public:
        _IMPLS[name] = {"native": packets[0], "triton": packets[1], "reference": reference}
        _choice.clear()
    return packets[0], packets[1]


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
