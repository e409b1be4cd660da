"""Builds fastnas._C: CPU kernels always, CUDA kernels whenever a CUDA toolkit and a
CUDA build of torch are present, whether or not a GPU is visible.

Environment switches:
  FASTNAS_CUDA=1 / 0     force / skip the CUDA kernels (default: auto-detect)
  TORCH_CUDA_ARCH_LIST   CUDA targets (default: the visible GPUs, else "9.0" = H100/H200)
  CUDA_HOME              CUDA toolkit root (default: torch's guess, checked for bin/nvcc)
  FASTNAS_DEBUG=1        -O0 -g host code, -G device code
  MAX_JOBS               parallel compile jobs (ninja)
"""

import glob
import json
import os
import shutil
import sys

from setuptools import setup


def _cuda_home_guess():
    # A wrapper nvcc on PATH (e.g. /usr/local/bin/nvcc) makes torch guess /usr/local;
    # resolve the real toolkit before torch.utils.cpp_extension reads CUDA_HOME.
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    candidates = ["/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.insert(0, os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    for root in candidates:
        if os.path.exists(os.path.join(root, "include", "cuda_runtime.h")) and os.path.exists(
            os.path.join(root, "bin", "nvcc")
        ):
            os.environ["CUDA_HOME"] = root
            return


_cuda_home_guess()

import torch  # noqa: E402
from torch.utils import cpp_extension  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))


def _want_cuda():
    switch = os.environ.get("FASTNAS_CUDA", "auto").lower()
    available = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if switch in ("0", "false", "no", "off"):
        return False, "disabled by FASTNAS_CUDA=0"
    if switch in ("1", "true", "yes", "on"):
        if not available:
            sys.exit(
                "fastnas: FASTNAS_CUDA=1 but no CUDA build of torch or no CUDA toolkit was "
                f"found (torch.version.cuda={torch.version.cuda}, "
                f"CUDA_HOME={cpp_extension.CUDA_HOME}); set CUDA_HOME or install a CUDA torch"
            )
        return True, "forced by FASTNAS_CUDA=1"
    if torch.version.cuda is None:
        return False, "torch is a CPU-only build"
    if cpp_extension.CUDA_HOME is None:
        return False, "no CUDA toolkit found (set CUDA_HOME)"
    return True, "CUDA toolkit and CUDA torch found"


def _arch_list():
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return os.environ["TORCH_CUDA_ARCH_LIST"]
    if torch.cuda.is_available():
        caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        arch = ";".join(f"{major}.{minor}" for major, minor in caps)
    else:
        arch = "9.0"
    os.environ["TORCH_CUDA_ARCH_LIST"] = arch
    return arch


def _library_headers_dirs():
    # A minimal toolkit may lack the cuBLAS/cuSPARSE headers that ATen/cuda includes;
    # torch's CUDA wheels ship them in site-packages/nvidia/<cuda>/include.
    if os.path.exists(os.path.join(cpp_extension.CUDA_HOME, "include", "cusparse.h")):
        return []
    found = []
    for entry in sys.path:
        found += glob.glob(os.path.join(entry, "nvidia", "*", "include", "cusparse.h"))
        found += glob.glob(os.path.join(entry, "nvidia", "cusparse", "include", "cusparse.h"))
    return sorted({os.path.dirname(path) for path in found})


def _extension():
    with_cuda, reason = _want_cuda()
    debug = os.environ.get("FASTNAS_DEBUG", "0") == "1"
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    # The C++ standard is left to torch.utils.cpp_extension (torch >= 2.10 needs C++20).
    cxx_flags = ["-O0", "-g"] if debug else ["-O3"]
    define_macros = []
    include_dirs = []
    # at::parallel_for is inlined from ATen's headers: without -fopenmp it compiles to a
    # serial loop, and every CPU kernel would run on one thread whatever torch's setting.
    openmp = torch.backends.openmp.is_available()
    if openmp:
        cxx_flags.append("-fopenmp")
    extra = {"cxx": cxx_flags}
    arch = ""
    if with_cuda:
        arch = _arch_list()
        include_dirs = _library_headers_dirs()
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        define_macros += [("FASTNAS_WITH_CUDA", None)]
        extra["nvcc"] = (["-O0", "-G", "-g"] if debug else ["-O3"]) + ["--expt-relaxed-constexpr"]
    define_macros += [("FASTNAS_CUDA_ARCH_LIST", f'"{arch}"')]
    print(
        "fastnas build configuration:\n"
        f"  torch          {torch.__version__} (CUDA {torch.version.cuda})\n"
        f"  CUDA kernels   {'yes' if with_cuda else 'no'} ({reason})\n"
        f"  CPU threads    {'OpenMP, as torch' if openmp else 'torch is built without OpenMP: one thread'}\n"
        f"  CUDA_HOME      {cpp_extension.CUDA_HOME}\n"
        f"  arch list      {arch or '-'}\n"
        f"  debug          {debug}\n"
        f"  sources        {len(sources)} files",
        flush=True,
    )
    _write_build_meta(with_cuda, arch)
    ext_cls = cpp_extension.CUDAExtension if with_cuda else cpp_extension.CppExtension
    return ext_cls(
        name="fastnas._C",
        sources=sources,
        define_macros=define_macros,
        include_dirs=include_dirs,
        extra_compile_args=extra,
        # libgomp.so.1 resolves to the copy torch has already loaded: one thread pool.
        extra_link_args=["-fopenmp"] if openmp else [],
    )


def _write_build_meta(with_cuda, arch):
    # Read by fastnas before loading _C, so a torch mismatch gives a rebuild hint
    # instead of an undefined-symbol error.
    meta = {"torch": torch.__version__.split("+")[0], "cuda": with_cuda, "cuda_arch_list": arch}
    with open(os.path.join(ROOT, "fastnas", "_build_meta.json"), "w") as f:
        json.dump(meta, f)


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension},
)
