"""Loads the native extension `ebjdat._C` once and records why it is absent when it is."""

from __future__ import annotations

import importlib
import os
import platform
import warnings
from functools import lru_cache
from types import ModuleType

import torch  # noqa: F401  (ebjdat._C links against libtorch, which this import loads first)


def build_info() -> dict:
    """How setup.py built the extension ({"kind": "cuda"|"cpu"|"none", ...}), or {} if unknown."""
    try:
        from ebjdat._build_info import BUILD
    except ImportError:
        return {}
    return dict(BUILD)


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _cpu_mismatch() -> str | None:
    """An AVX2 build must not be imported on a CPU without AVX2: it would die with SIGILL."""
    if build_info().get("cpu_isa") != "avx2":
        return None
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    flags = _cpu_flags()
    if flags and not {"avx2", "fma", "f16c"} <= flags:
        return "this CPU lacks AVX2/FMA/F16C; rebuild with EBJDAT_CPU_AVX2=0"
    return None


@lru_cache(maxsize=1)
def load() -> tuple[ModuleType | None, str]:
    """(module, "") when loaded, else (None, reason). Imported after the schemas are defined.
    EBJDAT_NO_NATIVE=1 skips it, to run (and test) the install-without-extension path."""
    reason = _cpu_mismatch()
    if os.environ.get("EBJDAT_NO_NATIVE") == "1":
        reason = "EBJDAT_NO_NATIVE=1 is set"
    if reason is None:
        try:
            return importlib.import_module("ebjdat._C"), ""
        except ImportError as err:
            kind = build_info().get("kind")
            reason = (
                "the package was installed without a native build"
                if kind == "none"
                else f"ebjdat._C is not importable ({err})"
            )
    warnings.warn(
        f"ebjdat: native kernels unavailable, {reason}. Ops fall back to the PyTorch reference "
        "(or Triton on CUDA); `python -m ebjdat.info` shows what runs where.",
        RuntimeWarning,
        stacklevel=3,
    )
    return None, reason
