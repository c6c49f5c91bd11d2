"""The native ExecuTorch runner: built from the executorch wheel's own C++ runtime, run without Python.

    bundle = build_runner()                     # compiled once into the user cache, rebuilt on change
    result = run_native(bundle, "m.pte", x)     # x: (1, 3, R, R) float32 -> logits, timings

The runner's source is ``runner_src/executorch/runner.cpp``; it links the wheel's libexecutorch
(Module API), the XNNPACK backend, the optimized and quantized kernels and the thread pool, so its
output equals the Python runtime's and its timings carry no Python overhead.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from converters import RuntimeUnavailableError

SRC = Path(__file__).resolve().parent / "runner_src" / "executorch"
LIBS = ("executorch", "executorch_backend_xnnpack", "executorch_kernels_optimized", "executorch_kernels_quantized",
        "executorch_threadpool")


@dataclass(frozen=True)
class RunnerBundle:
    """A built runner: the binary and the folder of the libraries it loads."""

    binary: Path
    lib_dir: Path
    key: str


def cache_dir() -> Path:
    """Where runners are built: $MOBILEVITS_CACHE, else $XDG_CACHE_HOME/mobilevits, else ~/.cache/mobilevits."""
    if os.environ.get("MOBILEVITS_CACHE"):
        return Path(os.environ["MOBILEVITS_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mobilevits"


def executorch_root() -> Path:
    """The installed executorch package (its lib/ and include/ folders)."""
    import importlib.util

    spec = importlib.util.find_spec("executorch")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeUnavailableError("the native runner needs the executorch package: pip install executorch==1.5.1")
    root = Path(next(iter(spec.submodule_search_locations)))
    missing = [n for n in LIBS if not (root / "lib" / f"lib{n}.so").is_file()]
    if missing or not (root / "include" / "executorch").is_dir():
        raise RuntimeUnavailableError(f"the executorch wheel at {root} lacks its C++ runtime "
                                      f"(lib{missing[0] if missing else 'include'}); reinstall executorch==1.5.1")
    return root


def _compiler() -> str:
    cxx = os.environ.get("CXX") or shutil.which("g++")
    if not cxx or not shutil.which(cxx):
        raise RuntimeUnavailableError("building the native runner needs a C++17 compiler: apt-get install g++ "
                                      "(or set CXX)")
    return cxx


def _key(cxx: str, root: Path) -> str:
    """Changes when the runner's source, the compiler or the wheel's libraries change."""
    h = hashlib.sha256()
    for p in sorted(SRC.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(SRC).as_posix().encode())
            h.update(p.read_bytes())
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=False).stdout
    h.update(version.encode())
    for n in LIBS:
        st = (root / "lib" / f"lib{n}.so").stat()
        h.update(f"{n}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def build_runner(force: bool = False, log: Any = None) -> RunnerBundle:
    """Compile the runner for this host unless the cached build is current; returns the bundle."""
    root, cxx = executorch_root(), _compiler()
    key = _key(cxx, root)
    folder = cache_dir() / "runners" / f"executorch-host-{key}"
    binary = folder / "runner"
    bundle = RunnerBundle(binary, root / "lib", key)
    if binary.is_file() and not force:
        return bundle
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".runner.{os.getpid()}.partial"
    cmd = [cxx, "-O2", "-std=c++17", str(SRC / "runner.cpp"), "-o", str(tmp),
           f"-I{root / 'include'}", f"-I{root / 'include/executorch/runtime/core/portable_type/c10'}",
           f"-I{SRC / 'shim'}", f"-L{root / 'lib'}", "-Wl,--no-as-needed", *[f"-l{n}" for n in LIBS],
           f"-Wl,-rpath,{root / 'lib'}", "-Wno-deprecated-declarations"]
    if log:
        log(f"building the native runner ({Path(cxx).name}) into {folder}")
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if p.returncode != 0:
        tmp.unlink(missing_ok=True)
        first = next((ln for ln in p.stderr.splitlines() if "error" in ln), p.stderr.strip()[-300:])
        raise RuntimeUnavailableError(f"the native runner did not compile: {first}")
    os.replace(tmp, binary)  # concurrent builds: the last rename wins, each binary is complete
    return bundle


def parse_runner_output(stdout: str) -> dict[str, Any]:
    """The runner's JSON line (the runtime may log other lines before it)."""
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"the native runner printed no result: {stdout.strip()[-300:]!r}")


def run_native(bundle: RunnerBundle, pte: str | Path, x: np.ndarray, threads: int = 1, warmup: int = 3,
               iterations: int = 10, timeout: float = 600) -> dict[str, Any]:
    """Run ``pte`` on one input through the native runner; adds ``output`` (the first output array)."""
    with tempfile.TemporaryDirectory(prefix="mobilevits-native-") as d:
        inp = Path(d) / "input_0.npy"
        np.save(inp, np.ascontiguousarray(x))
        cmd = [str(bundle.binary), "--model", str(pte), "--input", str(inp), "--output-dir", d,
               "--threads", str(threads), "--warmup", str(warmup), "--iterations", str(iterations)]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if p.returncode != 0:
            err = next((ln for ln in p.stderr.splitlines() if ln.startswith("error:")), p.stderr.strip()[-300:])
            raise RuntimeError(f"native runner failed on {Path(pte).name}: {err}")
        result = parse_runner_output(p.stdout)
        paths = result.pop("outputs")  # files in the temporary folder: read before it goes
        result["output"] = np.load(paths[0]) if paths else None
    return result
