"""Test setup. Without a GPU, TRITON_INTERPRET must be set before triton is imported, so that
the Triton kernels run on CPU tensors (set any later, kernel launches fail with "0 active
drivers"); with one, the Triton tests run the compiled kernels. ebjdat is imported only after."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.pop("EBJDAT_BACKEND", None)

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "ebjdat",
    max_examples=int(os.environ.get("EBJDAT_HYPOTHESIS_EXAMPLES", "30")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
settings.load_profile("ebjdat")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(
        reason="needs a CUDA GPU; none is visible (torch.cuda.is_available() is False)"
    )
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
