"""Builds ebjdat._C: a CUDAExtension when a CUDA toolkit and a CUDA torch exist, else a
CppExtension, and never a failed install: if neither compiles, ebjdat runs on its PyTorch
reference and says so (python -m ebjdat.info).

Environment:
  EBJDAT_BUILD_CUDA=0|1   force the C++-only or the CUDA build (1 fails loudly if impossible)
  EBJDAT_CPU_AVX2=0|1     compile the CPU kernels for AVX2+FMA+F16C (default 1 on x86_64)
  EBJDAT_NO_EXTENSION=1   skip the native build entirely (reference backend only)
  TORCH_CUDA_ARCH_LIST    GPU architectures (default "8.0;9.0+PTX" when no GPU is visible)
  CUDA_HOME               toolkit root; /usr/local/cuda is tried when unset
"""

from __future__ import annotations

import glob
import os
import platform
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
DEFAULT_ARCH_LIST = "8.0;9.0+PTX"


def log(msg: str) -> None:
    print(f"[ebjdat setup] {msg}", file=sys.stderr)


def env_flag(name: str) -> bool | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    if value not in ("0", "1"):
        raise SystemExit(f"{name} must be 0 or 1, got {value!r}")
    return value == "1"


def find_cuda_home() -> str | None:
    """A toolkit root with bin/nvcc and include/cuda_runtime.h. The nvcc on PATH may be a wrapper
    script, from which torch would guess a root that has no libcudart, so check for real."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    for root in candidates:
        if not root:
            continue
        if os.path.isfile(os.path.join(root, "bin", "nvcc")) and os.path.isfile(
            os.path.join(root, "include", "cuda_runtime.h")
        ):
            return root
    return None


def write_build_info(**info: object) -> None:
    """Recorded for ebjdat.info and for the import-time CPU feature check."""
    lines = ['"""Written by setup.py; describes how ebjdat._C was built."""', ""]
    lines.append(f"BUILD = {info!r}")
    (ROOT / "ebjdat" / "_build_info.py").write_text("\n".join(lines) + "\n")


def extension_kwargs() -> dict:
    if env_flag("EBJDAT_NO_EXTENSION"):
        log("EBJDAT_NO_EXTENSION=1: no native extension; the reference backend will be used")
        write_build_info(kind="none", cpu_isa="none", cuda_arch_list="")
        return {}
    try:
        import torch
    except ImportError:
        log("torch is not importable: install torch first, then build with --no-build-isolation")
        write_build_info(kind="none", cpu_isa="none", cuda_arch_list="")
        return {}

    want_cuda = env_flag("EBJDAT_BUILD_CUDA")
    cuda_home = find_cuda_home()
    reasons = []
    if torch.version.cuda is None:
        reasons.append("torch is not a CUDA build")
    if cuda_home is None:
        reasons.append("no CUDA toolkit (set CUDA_HOME to a root with bin/nvcc)")
    use_cuda = not reasons if want_cuda is None else want_cuda
    if want_cuda and reasons:
        raise SystemExit(
            "EBJDAT_BUILD_CUDA=1 but the CUDA build is impossible: " + "; ".join(reasons)
        )
    if use_cuda:
        os.environ["CUDA_HOME"] = cuda_home
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCH_LIST
    elif want_cuda is None:
        log("building the C++-only extension: " + "; ".join(reasons))

    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    avx2 = env_flag("EBJDAT_CPU_AVX2")
    if avx2 is None:
        avx2 = platform.machine().lower() in ("x86_64", "amd64")
    # at::parallel_for is inline ATen code: without OpenMP here it would run on one thread. The
    # runtime is torch's own libgomp, already loaded when ebjdat._C is.
    cxx = ["-O3", "-fopenmp"]
    link = ["-fopenmp"]
    if avx2:
        # CPU_CAPABILITY selects ATen's AVX2 vector types (Sleef exp/log) and their namespace.
        cxx += ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY_AVX2", "-DCPU_CAPABILITY=AVX2"]
    sources = sorted(glob.glob("csrc/cpu/*.cpp")) + ["csrc/register.cpp"]
    include_dirs = [str(ROOT / "csrc")]
    kwargs: dict = {"sources": sources, "include_dirs": include_dirs, "extra_link_args": link}
    if use_cuda:
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        # The toolkit root lacks cuBLAS/cuRAND headers that ATen/cuda includes; the pip wheels
        # beside torch carry them.
        site = Path(torch.__file__).resolve().parent.parent
        # (CUDA 13 wheels: nvidia/cu13/include; CUDA 12 ones: nvidia/<library>/include.)
        wheel_includes = glob.glob(str(site / "nvidia" / "cu*" / "include"))
        include_dirs += sorted(wheel_includes or glob.glob(str(site / "nvidia" / "*" / "include")))
        kwargs["extra_compile_args"] = {
            "cxx": cxx + ["-DEBJDAT_WITH_CUDA"],
            "nvcc": ["-O3", "-DEBJDAT_WITH_CUDA", "--expt-relaxed-constexpr"],
        }
        ext = CUDAExtension("ebjdat._C", **kwargs)
        arch = os.environ.get("TORCH_CUDA_ARCH_LIST", "(visible GPU)")
        log(f"building the CUDA extension (CUDA_HOME={cuda_home}, TORCH_CUDA_ARCH_LIST={arch})")
    else:
        kwargs["extra_compile_args"] = {"cxx": cxx}
        ext = CppExtension("ebjdat._C", **kwargs)
        arch = ""
    write_build_info(
        kind="cuda" if use_cuda else "cpu",
        cpu_isa="avx2" if avx2 else "generic",
        cuda_arch_list=arch,
    )
    strict = bool(want_cuda) or bool(env_flag("EBJDAT_BUILD_STRICT"))

    class FallbackBuild(BuildExtension.with_options(use_ninja=True)):
        """A failed CUDA compile falls back to the C++-only build, and a failed C++ build to no
        extension, unless the build was forced (EBJDAT_BUILD_CUDA=1 or EBJDAT_BUILD_STRICT=1),
        as CI does so that a broken kernel fails it."""

        def run(self) -> None:
            try:
                super().run()
                return
            except Exception as err:  # noqa: BLE001 - any compiler failure
                if strict:
                    raise
                log(f"native build failed: {err}")
            if use_cuda:
                cpu_sources = [s for s in sources if not s.endswith(".cu")]
                self.extensions = [
                    CppExtension(
                        "ebjdat._C",
                        sources=cpu_sources,
                        include_dirs=[str(ROOT / "csrc")],
                        extra_compile_args={"cxx": cxx},
                        extra_link_args=link,
                    )
                ]
                write_build_info(
                    kind="cpu", cpu_isa="avx2" if avx2 else "generic", cuda_arch_list=""
                )
                try:
                    log("retrying without CUDA")
                    super().run()
                    return
                except Exception as err:  # noqa: BLE001
                    log(f"C++-only build failed too: {err}")
            write_build_info(kind="none", cpu_isa="none", cuda_arch_list="")
            log("installing without ebjdat._C: only the PyTorch reference backend will run")

    return {"ext_modules": [ext], "cmdclass": {"build_ext": FallbackBuild}}


setup(**extension_kwargs())
