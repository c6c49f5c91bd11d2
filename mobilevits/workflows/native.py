"""The native ExecuTorch runner: built from the executorch wheel's own C++ runtime, run without Python.

    bundle = build_runner("aarch64")     # compiled once into the user cache, rebuilt on change
    # bundle.folder: runner + lib/; run it on a device with machines.NativeSession

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
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from converters import RuntimeUnavailableError

SRC = Path(__file__).resolve().parent / "runner_src" / "executorch"
ICOUNT_SRC = Path(__file__).resolve().parent / "runner_src" / "qemu_icount" / "icount.c"
LIBS = ("executorch", "executorch_backend_xnnpack", "executorch_kernels_optimized", "executorch_kernels_quantized",
        "executorch_threadpool", "executorch_etdump")
# target -> (compiler, Debian package that provides it, pip platform tag of the executorch wheel)
TARGETS: dict[str, tuple[str, str, str | None]] = {
    "host": ("g++", "g++", None),
    "aarch64": ("aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu", "manylinux_2_28_aarch64"),
}


@dataclass(frozen=True)
class RunnerBundle:
    """A built runner: ``folder`` holds ``runner`` and ``lib/`` (the binary finds its libraries through
    rpath ``$ORIGIN/lib``), so the folder can be copied to a board as it is."""

    folder: Path
    target: str
    key: str

    @property
    def binary(self) -> Path:
        return self.folder / "runner"

    @property
    def lib_dir(self) -> Path:
        return self.folder / "lib"


def cache_dir() -> Path:
    """Where runners are built: $MOBILEVITS_CACHE, else $XDG_CACHE_HOME/mobilevits, else ~/.cache/mobilevits."""
    if os.environ.get("MOBILEVITS_CACHE"):
        return Path(os.environ["MOBILEVITS_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mobilevits"


def _check_root(root: Path, how: str) -> Path:
    missing = [n for n in LIBS if not (root / "lib" / f"lib{n}.so").is_file()]
    if missing or not (root / "include" / "executorch").is_dir():
        raise RuntimeUnavailableError(f"the executorch wheel at {root} lacks its C++ runtime "
                                      f"(lib{missing[0] + '.so' if missing else 'include'}); {how}")
    return root


def executorch_root() -> Path:
    """The installed executorch package (its lib/ and include/ folders)."""
    import importlib.util

    spec = importlib.util.find_spec("executorch")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeUnavailableError("the native runner needs the executorch package: pip install executorch==1.5.1")
    return _check_root(Path(next(iter(spec.submodule_search_locations))), "reinstall executorch==1.5.1")


def _executorch_version() -> str:
    from importlib.metadata import version

    return version("executorch")


def target_root(target: str, log: Any = None) -> Path:
    """lib/ and include/ of the executorch wheel for ``target``: the installed package for the host; for
    another architecture, the same version's wheel from the package index, unpacked once into the cache."""
    if target == "host":
        return executorch_root()
    platform = TARGETS[target][2]
    ver = _executorch_version()
    root = cache_dir() / "executorch" / f"{ver}-{target}" / "executorch"
    if (root / "lib").is_dir() and (root / "include").is_dir():
        return _check_root(root, f"remove {root.parent} and build again")
    wheels = cache_dir() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    if log:
        log(f"downloading the executorch {ver} wheel for {platform}")
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "--platform", platform, "--python-version", "3.11", "--implementation", "cp",
           f"executorch=={ver}", "-d", str(wheels)]
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    found = sorted(wheels.glob(f"executorch-{ver}-*{platform}*.whl"))
    if p.returncode != 0 or not found:
        last = (p.stderr.strip().splitlines() or ["no wheel"])[-1]
        raise RuntimeUnavailableError(f"cannot download the executorch {ver} wheel for {platform} ({last}); "
                                      f"run `{' '.join(cmd[2:])}` where the package index is reachable")
    tmp = root.parent.with_name(root.parent.name + f".{os.getpid()}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(found[-1]) as z:  # only the C++ runtime: lib/ and include/
        for name in z.namelist():
            if name.startswith(("executorch/lib/", "executorch/include/")):
                z.extract(name, tmp)
    try:
        os.replace(tmp, root.parent)
    except OSError:  # another process unpacked the same wheel first
        shutil.rmtree(tmp, ignore_errors=True)
    return _check_root(root, f"remove {root.parent} and build again")


def _compiler(target: str) -> str:
    name, package, _ = TARGETS[target]
    env = "CXX" if target == "host" else f"CXX_{target.upper()}"
    cxx = os.environ.get(env) or shutil.which(name)
    if not cxx or not shutil.which(cxx):
        raise RuntimeUnavailableError(f"building the native runner for {target} needs {name}: apt-get install "
                                      f"{package} (or set {env})")
    return cxx


def _key(cxx: str, root: Path, target: str) -> str:
    """Changes when the runner's source, the compiler, the target or the wheel's libraries change."""
    h = hashlib.sha256(target.encode())
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


def build_runner(target: str = "host", force: bool = False, log: Any = None) -> RunnerBundle:
    """Compile the runner for ``target`` (``host`` or ``aarch64``) unless the cached bundle is current."""
    if target not in TARGETS:
        raise ValueError(f"unknown runner target {target!r}: choose from {', '.join(TARGETS)}")
    cxx = _compiler(target)
    root = target_root(target, log)
    key = _key(cxx, root, target)
    bundle = RunnerBundle(cache_dir() / "runners" / f"executorch-{target}-{key}", target, key)
    if bundle.binary.is_file() and not force:
        return bundle
    bundle.folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = bundle.folder.with_name(bundle.folder.name + f".{os.getpid()}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "lib").mkdir(parents=True)
    for n in LIBS:
        shutil.copy2(root / "lib" / f"lib{n}.so", tmp / "lib")
    cmd = [cxx, "-O2", "-std=c++17", str(SRC / "runner.cpp"), "-o", str(tmp / "runner"),
           f"-I{root / 'include'}", f"-I{root / 'include/executorch/runtime/core/portable_type/c10'}",
           f"-I{SRC / 'shim'}", f"-L{root / 'lib'}",
           # --no-as-needed: the backend and kernel libraries register themselves from static constructors
           # and are never called by name, so --as-needed would drop them ("XnnpackBackend is not registered")
           "-Wl,--no-as-needed", *[f"-l{n}" for n in LIBS], "-Wl,-rpath,$ORIGIN/lib", "-Wno-deprecated-declarations"]
    if log:
        log(f"building the native runner for {target} ({Path(cxx).name}) into {bundle.folder}")
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if p.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        first = next((ln for ln in p.stderr.splitlines() if "error" in ln), p.stderr.strip()[-300:])
        raise RuntimeUnavailableError(f"the native runner did not compile: {first}")
    if force:
        shutil.rmtree(bundle.folder, ignore_errors=True)
    try:
        os.replace(tmp, bundle.folder)  # a reader sees no bundle or a complete one
    except OSError:  # a concurrent build of the same key finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return bundle


def build_icount_plugin(force: bool = False) -> Path:
    """The qemu plugin that counts the guest's instructions (``runner_src/qemu_icount``), compiled once with the
    host's C compiler into the user cache; qemu-aarch64 loads it with ``-plugin PATH,out=FILE``."""
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not cc or not shutil.which(cc):
        raise RuntimeUnavailableError("counting instructions under qemu builds a qemu plugin with gcc: "
                                      "apt-get install gcc (or set CC)")
    h = hashlib.sha256(ICOUNT_SRC.read_bytes())
    h.update(subprocess.run([cc, "--version"], capture_output=True, text=True, check=False).stdout.encode())
    path = cache_dir() / "runners" / f"qemu-icount-{h.hexdigest()[:16]}.so"
    if path.is_file() and not force:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.partial")
    p = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-fvisibility=hidden", str(ICOUNT_SRC), "-o", str(tmp)],
                       capture_output=True, text=True, check=False)
    if p.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeUnavailableError(f"the qemu instruction-count plugin did not compile: {p.stderr.strip()[-300:]}")
    os.replace(tmp, path)
    return path


def parse_runner_output(stdout: str) -> dict[str, Any]:
    """The runner's JSON line (the runtime may log other lines before it)."""
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"the native runner printed no result: {stdout.strip()[-300:]!r}")


# --------------------------------------------------------------------------------------------
# TFLite on aarch64: Debian's arm64 Python + ai-edge-litert's aarch64 wheel, run by runner_src/tflite
# --------------------------------------------------------------------------------------------

TFLITE_SRC = Path(__file__).resolve().parent / "runner_src" / "tflite" / "run_tflite.py"
# ai-edge-litert's last Linux aarch64 wheel for Python 3.11 is 1.4.0 (2.x has none). Not tflite-runtime 2.14:
# its XNNPACK delegate left BATCH_MATMUL and more outside and split LeViT-128 into 30 (fp32) and 85 (int8)
# partitions where LiteRT 1.4 and 2.3 make one. Debian 12's arm64 python3.11 and the libraries its modules load.
TFLITE_WHEELS = ("ai-edge-litert==1.4.0", "numpy==1.26.4")
ARM64_DEBS = ("python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "libexpat1", "zlib1g",
              "libffi8", "libssl3", "libbz2-1.0", "liblzma5", "libuuid1")
DEBIAN_MIRROR = os.environ.get("MOBILEVITS_DEBIAN_MIRROR", "http://deb.debian.org/debian")
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")


@dataclass(frozen=True)
class TfliteBundle:
    """``python/`` (Debian's arm64 python3.11 unpacked), ``site/`` (numpy, ai_edge_litert), ``run_tflite.py``."""

    folder: Path
    key: str

    @staticmethod
    def command(folder: str) -> tuple[list[str], dict[str, str]]:
        """argv prefix and environment that run the script from the bundle at ``folder`` on the device."""
        # a fixed hash seed: one program's start-up then executes the same instructions on every run
        env = {"PYTHONHOME": f"{folder}/python/usr", "PYTHONPATH": f"{folder}/site", "PYTHONNOUSERSITE": "1",
               "PYTHONHASHSEED": "0",
               "LD_LIBRARY_PATH": f"{folder}/python/usr/lib/aarch64-linux-gnu:{folder}/python/lib/aarch64-linux-gnu"}
        return [f"{folder}/python/usr/bin/python3.11", f"{folder}/run_tflite.py"], env


def _apt_download(packages: tuple[str, ...], dest: Path) -> None:
    """Download Debian 12 arm64 packages with a private apt state: nothing is installed and no foreign
    architecture is added to the host's dpkg."""
    if shutil.which("apt-get") is None or not DEBIAN_KEYRING.is_file():
        raise RuntimeUnavailableError("TFLite on aarch64 fetches Debian's arm64 python3.11 with apt-get: run on a "
                                      "Debian or Ubuntu host (apt-get install debian-archive-keyring)")
    state = dest / "apt"
    for d in ("state/lists/partial", "cache/archives/partial", "etc/preferences.d"):
        (state / d).mkdir(parents=True, exist_ok=True)
    sources = state / "etc/sources.list"
    sources.write_text("".join(f"deb [arch=arm64 signed-by={DEBIAN_KEYRING}] {url} {suite} main\n" for url, suite in
                               ((DEBIAN_MIRROR, "bookworm"), (DEBIAN_MIRROR + "-security", "bookworm-security"))))
    opts = ["-o", "APT::Architecture=arm64", "-o", "APT::Architectures=arm64", "-o", f"Dir::State={state}/state",
            "-o", "Dir::State::status=/dev/null", "-o", f"Dir::Cache={state}/cache", "-o",
            f"Dir::Etc::SourceList={sources}", "-o", "Dir::Etc::SourceParts=/nonexistent", "-o",
            f"Dir::Etc::PreferencesParts={state}/etc/preferences.d", "-o", "APT::Sandbox::User=root"]
    for args in (["update"], ["download", *packages]):
        p = subprocess.run(["apt-get", "-qq", *opts, *args], capture_output=True, text=True, cwd=dest, check=False)
        if p.returncode != 0:
            last = (p.stderr.strip().splitlines() or ["failed"])[-1]
            raise RuntimeUnavailableError(f"apt-get {args[0]} of Debian's arm64 packages failed ({last}); the "
                                          f"mirror is {DEBIAN_MIRROR} ($MOBILEVITS_DEBIAN_MIRROR)")


def build_tflite_env(target: str = "aarch64", force: bool = False, log: Any = None) -> TfliteBundle:
    """The aarch64 TFLite environment in the cache (about 105 MB), fetched once from Debian and PyPI."""
    if target != "aarch64":
        raise ValueError("the TFLite runner environment is built for aarch64 only (the host runs .tflite in "
                         "its own Python)")
    h = hashlib.sha256(TFLITE_SRC.read_bytes())
    h.update(repr((TFLITE_WHEELS, ARM64_DEBS, DEBIAN_MIRROR)).encode())
    key = h.hexdigest()[:16]
    bundle = TfliteBundle(cache_dir() / "runners" / f"tflite-{target}-{key}", key)
    if (bundle.folder / "run_tflite.py").is_file() and not force:
        return bundle
    if shutil.which("dpkg-deb") is None:
        raise RuntimeUnavailableError("TFLite on aarch64 unpacks Debian packages: apt-get install dpkg")
    bundle.folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = bundle.folder.with_name(bundle.folder.name + f".{os.getpid()}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "debs").mkdir(parents=True)
    if log:
        log("fetching Debian's arm64 python3.11 and ai-edge-litert's aarch64 wheel")
    _apt_download(ARM64_DEBS, tmp / "debs")
    for deb in sorted((tmp / "debs").glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp / "python")], check=True)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "--platform",
           "manylinux_2_34_aarch64", "--platform", "manylinux_2_17_aarch64", "--python-version", "3.11",
           "--implementation", "cp", *TFLITE_WHEELS, "-d", str(tmp / "wheels")]
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if p.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeUnavailableError(f"cannot download {', '.join(TFLITE_WHEELS)} for aarch64: "
                                      f"{(p.stderr.strip().splitlines() or ['pip failed'])[-1]}")
    for whl in sorted((tmp / "wheels").glob("*.whl")):
        with zipfile.ZipFile(whl) as z:
            z.extractall(tmp / "site")
    shutil.copy2(TFLITE_SRC, tmp / "run_tflite.py")
    for junk in ("debs", "wheels"):
        shutil.rmtree(tmp / junk)
    if force:
        shutil.rmtree(bundle.folder, ignore_errors=True)
    try:
        os.replace(tmp, bundle.folder)
    except OSError:  # a concurrent build finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return bundle
