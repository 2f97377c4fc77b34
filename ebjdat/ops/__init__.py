"""The fused ops: one name each, the backend chosen per device (see `backend`)."""

from __future__ import annotations

from .. import _native
from ._library import BACKENDS, backend, ops, use_backend, warm
from .energy_head import EnergyOut, energy_head
from .pgd_init import pgd_init
from .pgd_step import pgd_step
from .sgld_step import sgld_step, sgld_step_

# Kernels register against the schemas defined above, so the extension loads after them.
_native.load()
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
