"""The fused ops: one name each, the backend chosen per device (see `backend`)."""

from __future__ import annotations

from .. import _native

# The native kernels (and the C++ autograd of energy_head) register before the schemas are
# defined below; the dispatcher accepts that order, and energy_head checks what was registered.
_native.load()

from ._library import BACKENDS, backend, ops, use_backend, warm  # noqa: E402
from .energy_head import EnergyOut, energy_head  # noqa: E402
from .pgd_init import pgd_init  # noqa: E402
from .pgd_step import pgd_step  # noqa: E402
from .sgld_step import sgld_step, sgld_step_  # noqa: E402

warm()

__all__ = [
    "BACKENDS",
    "EnergyOut",
    "backend",
    "energy_head",
    "ops",
    "pgd_init",
    "pgd_step",
    "sgld_step",
    "sgld_step_",
    "use_backend",
]
