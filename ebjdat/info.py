"""`python -m ebjdat.info`: versions, how the extension was built, and which backend each op
runs with on each device, so a missing build is never silent."""

from __future__ import annotations

import importlib.util
import json
import sys

import torch

from . import __version__, _native, ops
from .ops._library import has_native_kernel, triton_status


def collect() -> dict:
    module, reason = _native.load()
    triton_version = None
    if importlib.util.find_spec("triton") is not None:
        import triton

        triton_version = triton.__version__
    kernels = {
        key: [op for op in ops.ops() if has_native_kernel(op, key)] for key in ("CPU", "CUDA")
    }
    choice: dict[str, dict[str, str]] = {}
    for device in ("cpu", "cuda"):
        choice[device] = {}
        for op in ops.ops():
            try:
                choice[device][op] = ops.backend(op, device)
            except (RuntimeError, ValueError) as err:
                choice[device][op] = f"error: {err}"
    return {
        "ebjdat": __version__,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "triton": triton_version,
        "triton_cpu": triton_status("cpu")[1] or "no",
        "extension_loaded": module is not None,
        "extension_missing_reason": reason or None,
        "build": _native.build_info(),
        "native_kernels": kernels,
        "backend": choice,
    }


def render(info: dict) -> str:
    lines = [
        f"ebjdat {info['ebjdat']}",
        f"torch {info['torch']} (CUDA {info['torch_cuda'] or 'none'}), "
        f"GPU: {info['gpu'] or 'none visible'}",
        f"triton {info['triton'] or 'not installed'}"
        + (" (interpreter on CPU tensors)" if info["triton_cpu"] == "interpreter" else ""),
    ]
    build = info["build"]
    if info["extension_loaded"]:
        lines.append(
            f"ebjdat._C loaded: build {build.get('kind', '?')}, CPU ISA {build.get('cpu_isa', '?')}"
            + (f", CUDA archs {build['cuda_arch_list']}" if build.get("cuda_arch_list") else "")
        )
    else:
        lines.append(f"ebjdat._C NOT loaded: {info['extension_missing_reason']}")
    for key, names in info["native_kernels"].items():
        lines.append(f"  {key} kernels: {', '.join(names) if names else 'none'}")
    lines.append("backend per op:")
    width = max(len(op) for op in info["backend"]["cpu"])
    lines.append(f"  {'op'.ljust(width)}  cpu tensors  cuda tensors")
    for op in info["backend"]["cpu"]:
        lines.append(
            f"  {op.ljust(width)}  {info['backend']['cpu'][op]:<11}  {info['backend']['cuda'][op]}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    info = collect()
    print(json.dumps(info, indent=2) if "--json" in argv else render(info))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
