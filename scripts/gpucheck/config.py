"""The GPU check's constants: paths, the bandwidth goal, the steps' order, parts and result keys,
the time each step needs (TIMING), the step benchmark's defaults, and the GPU it runs on (Gpu,
detect_gpu, the rehearsal's simulated H200)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
SANITIZER_CALLS = ROOT / "scripts" / "sanitizer_calls.py"
GOAL_FRACTION = 0.85
GOAL_NUMEL = 1 << 24
TAIL_LINES = 60
LOG_CAP_BYTES = 2_000_000  # a log kept under --out-dir: its head and tail beyond this
GPU_PARTS = ("tests", "ops", "step", "scaling")
ORDER = (
    "build",
    "cuda-tests",
    "cuda-sanitizer",
    "cuda-ops",
    "cuda-step",
    "cuda-scaling",
    "cuda-ops-compile",
    "cpu-bench",
)
PART_OF = {
    "cuda-tests": "tests",
    "cuda-sanitizer": "tests",
    "cuda-ops": "ops",
    "cuda-ops-compile": "ops",
    "cuda-step": "step",
    "cuda-scaling": "scaling",
}
RESULT_KEY = {
    "build": "build",
    "cuda-tests": "tests",
    "cuda-sanitizer": "sanitizer",
    "cuda-ops": "bench",
    "cuda-step": "step",
    "cuda-scaling": "scaling",
    "cuda-ops-compile": "ops_compile",
    "cpu-bench": "cpu",
}
# What the GPU machine lacks (its packages come from `pip install --no-deps`, without network).
BLOCKED_IMPORTS = ("torchattacks", "torch_fidelity", "pyautoattack", "tomli_w")
DEFAULT_BUDGET_S = 540.0
REHEARSE_BUILD_EXTRA_S = 1800.0  # a 2-core build here is slower than a 16-core one there
GRACE_S = 10.0  # after SIGINT, before SIGKILL
MARGIN_S = 10.0  # kept for the last results write and the summary
STEP_MODELS = ("wrn-28-10",)
STEP_BATCH = 64
STEP_REPEATS = 3
STEP_VARIANTS = ("default", "bf16")
SANITIZER_BACKENDS = ("cuda", "triton")
DEFAULT_SANITIZER_BACKENDS = ("cuda",)  # the hand-written kernels; triton adds ~a minute


@dataclass(frozen=True)
class Gpu:
    name: str
    capability: tuple[int, int]
    count: int = 1  # visible GPUs (the scaling step needs two or more)
    memory_gib: float | None = None

    @property
    def arch(self) -> str:
        """TORCH_CUDA_ARCH_LIST for exactly this GPU: the fastest build, nothing to spare."""
        return f"{self.capability[0]}.{self.capability[1]}"

    def describe(self) -> dict:
        """The GPU as the results JSON records it."""
        return {"name": self.name, "capability": self.arch, "count": self.count,
                "memory_gib": self.memory_gib}  # fmt: skip


REHEARSAL_GPU = Gpu("rehearsal H200", (9, 0), 1, 139.8)


@dataclass(frozen=True)
class Timing:
    min_s: float  # the least worth starting with, and what each earlier step leaves for it
    cap_s: float | None = None  # the most it may take, even with time to spare
    optional: bool = False  # nothing is held back for it: it runs on time left over


TIMING = {
    "build": Timing(60),
    "cuda-tests": Timing(30, 200),
    "cuda-sanitizer": Timing(40, 150),
    "cuda-ops": Timing(40, 150),
    "cuda-step": Timing(90),
    "cuda-scaling": Timing(90),
    "cuda-ops-compile": Timing(60, optional=True),
    "cpu-bench": Timing(30),
}


def detect_gpu() -> Gpu | None:
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return Gpu(
        props.name,
        (props.major, props.minor),
        torch.cuda.device_count(),
        round(props.total_memory / 2**30, 1),
    )
