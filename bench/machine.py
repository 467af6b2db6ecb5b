"""What machine a benchmark ran on: CPU model, cores, library versions and NumPy's BLAS kernel.

`python -m bench.machine` prints the BLAS facts of the running interpreter as JSON; the benchmark
runs it as a child with the nntrain side's environment, so the kernel reported is the one nntrain used.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

from bench.procs import OPENBLAS_OVERRIDES, child_env, run_child


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _openblas_lib() -> ctypes.CDLL | None:
    """The OpenBLAS library NumPy loaded into this process, found through /proc/self/maps."""
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return None
    for line in maps:
        path = line.split()[-1]
        if "openblas" in Path(path).name.lower() and ".so" in path:
            return ctypes.CDLL(path)
    return None


def _call_str(lib: ctypes.CDLL, names: tuple[str, ...]) -> str | None:
    for name in names:
        fn = getattr(lib, name, None)
        if fn is not None:
            fn.restype = ctypes.c_char_p
            return fn().decode(errors="replace").strip()
    return None


def blas_info() -> dict:
    """NumPy's BLAS in this process: library, OpenBLAS core (kernel) name, config and threads."""
    import numpy as np

    info: dict = {"numpy": np.__version__}
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg.get("Build Dependencies", {}).get("blas", {})
        info["library"] = f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:  # older NumPy without mode="dicts"
        info["library"] = "unknown"
    lib = _openblas_lib()
    if lib is not None:
        prefixes = ("scipy_openblas_", "openblas_")
        suffixes = ("64_", "")
        info["kernel"] = _call_str(lib, tuple(p + "get_corename" + s for p in prefixes for s in suffixes))
        info["config"] = _call_str(lib, tuple(p + "get_config" + s for p in prefixes for s in suffixes))
        for p in prefixes:
            for s in suffixes:
                fn = getattr(lib, p + "get_num_threads" + s, None)
                if fn is not None and "threads" not in info:
                    fn.restype = ctypes.c_int
                    info["threads"] = int(fn())
    info["env"] = {k: os.environ[k] for k in (*OPENBLAS_OVERRIDES, "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")
                   if k in os.environ}
    return info


def machine_info(threads: int, workdir: Path) -> dict:
    """The machine, library versions, and NumPy's BLAS as the nntrain side's children see it."""
    res = run_child([sys.executable, "-m", "bench.machine"], child_env(threads, "nntrain"), workdir,
                    cwd=Path(__file__).resolve().parent.parent)
    try:
        blas = json.loads(res.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        blas = {"error": (res.stderr or res.stdout).strip()[-300:]}
    return {
        "cpu": cpu_model(),
        "cores": usable_cores(),
        "python": platform.python_version(),
        "numpy": _version("numpy"),
        "torch": _version("torch"),
        "nntrain": _version("nntrain"),
        "blas_nntrain_side": blas,
        "parent_env_openblas": {k: os.environ[k] for k in OPENBLAS_OVERRIDES if k in os.environ},
    }


if __name__ == "__main__":
    print(json.dumps(blas_info()))
    sys.exit(0)
