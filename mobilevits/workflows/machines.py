"""Machines the native runner runs on: this host, an emulated ARM CPU, an ARM Linux board over ssh.

    with open_device("qemu-arm64:cortex-a53") as dev, NativeSession(dev, "m.pte") as s:
        logits = s.run(x)                                  # (N, 3, R, R) -> (N, classes), one process
        timing = s.time(x[:1], warmup=3, iterations=10)    # the runner's JSON (ms)

Every device has the same small interface (push, pull, run, mkdir, info, close), like the adb device: the
runner bundle (binary + lib/) and the program are pushed, the runner is run, its outputs pulled back.
``qemu-arm64`` runs the aarch64 build of the runner under ``qemu-aarch64 -cpu CPU``: ARM kernels with ARM
numerics, but emulated time (``emulated: True``), never a phone's.
"""

from __future__ import annotations

import functools
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from converters import Session

from .devices import DeviceError
from .native import TfliteBundle, build_runner, build_tflite_env, parse_runner_output

QEMU_SYSROOT = Path("/usr/aarch64-linux-gnu")  # Debian's libc6-arm64-cross (pulled by g++-aarch64-linux-gnu)
QEMU_DEFAULT_CPU = "cortex-a76"
# qemu 7.2 (Debian 12) emulates the SME instructions of XNNPACK's packed-LHS int8 kernels wrongly: on
# `-cpu max` every int8 model came out wrong (3-11 dB) while qemu 10.0.2 gave the host's output bit for bit
# (BENCHMARKS.md). Versions in between are untested, so SME needs qemu >= 10.
QEMU_SME_MIN_VERSION = (10, 0)  # Armv8.2 with dot product, like the big cores of 2019-2023 phones
DEVICE_KINDS = ("host", "qemu-arm64", "ssh")


class Device(ABC):
    """A machine that runs the native runner: push files to it, run a command there, pull files back."""

    spec: str = ""
    emulated: bool = False
    target: str = "host"  # the runner build it needs (native.TARGETS)

    def __init__(self) -> None:
        self._bundles: dict[str, str] = {}

    @abstractmethod
    def push(self, local: Path) -> str:
        """Make ``local`` (file or folder) available on the device; returns its path there."""

    @abstractmethod
    def pull(self, remote: str, local: Path) -> None:
        """Copy the device's file ``remote`` to ``local``."""

    @abstractmethod
    def run(self, argv: list[str], timeout: float = 1800.0, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess:
        """Run ``argv`` on the device with ``env`` added to its environment (text output, exit code not checked)."""

    @abstractmethod
    def mkdir(self, name: str) -> str:
        """A new empty folder in the device's work folder; returns its path there."""

    @abstractmethod
    def info(self) -> dict[str, Any]:
        """What the device is (kind, arch, CPU), recorded with every result."""

    @abstractmethod
    def close(self) -> None:
        """Remove what was pushed."""

    def runner(self, suffix: str = ".pte") -> tuple[list[str], dict[str, str]]:
        """argv prefix and environment of the runner for ``suffix`` (.pte: the native runner; .tflite: the
        TFLite script in Debian's arm64 Python, aarch64 only), built and pushed once per device."""
        if suffix == ".pte":
            bundle = build_runner(self.target)
            if bundle.key not in self._bundles:
                self._bundles[bundle.key] = self.push(bundle.folder)
            return [self._bundles[bundle.key] + "/runner"], {}
        if suffix == ".tflite":
            if self.target != "aarch64":
                raise DeviceError(f"{self.spec} runs .tflite files on aarch64 only (ai-edge-litert's aarch64 "
                                  "wheel); on this host, check them without --device")
            tfl = build_tflite_env(self.target)
            if tfl.key not in self._bundles:
                self._bundles[tfl.key] = self.push(tfl.folder)
            return TfliteBundle.command(self._bundles[tfl.key])
        raise DeviceError(f"{self.spec} runs .pte and .tflite files, not {suffix or 'this file'}")

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _run(argv: list[str], timeout: float, what: str, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                              env={**os.environ, **env} if env else None)
    except FileNotFoundError:
        raise DeviceError(f"{argv[0]} not found ({what})") from None
    except subprocess.TimeoutExpired:
        raise DeviceError(f"`{shlex.join(argv[:4])} ...` did not finish in {timeout:.0f} s ({what})") from None


class LocalDevice(Device):
    """This host: files stay where they are; a private temporary folder holds outputs."""

    spec = "host"

    def __init__(self) -> None:
        super().__init__()
        self._work: Path | None = None

    @property
    def work(self) -> Path:
        if self._work is None:
            self._work = Path(tempfile.mkdtemp(prefix="mobilevits-device-"))
        return self._work

    def push(self, local: Path) -> str:
        return str(Path(local).resolve())

    def pull(self, remote: str, local: Path) -> None:
        if Path(remote).resolve() != Path(local).resolve():
            shutil.copyfile(remote, local)

    def _prefix(self, env: dict[str, str]) -> list[str]:
        return []

    def run(self, argv: list[str], timeout: float = 1800.0, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess:
        return _run([*self._prefix(env or {}), *argv], timeout, self.spec, env=None if self.emulated else env)

    def mkdir(self, name: str) -> str:
        p = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.work))
        return str(p)

    def info(self) -> dict[str, Any]:
        return {"kind": "host", "arch": platform.machine(), "cpu": _host_cpu(), "emulated": False}

    def close(self) -> None:
        if self._work is not None:
            shutil.rmtree(self._work, ignore_errors=True)
            self._work = None


def _host_cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def qemu_binary() -> str:
    """``$MOBILEVITS_QEMU`` (e.g. a newer qemu-aarch64 than the distribution's), else ``qemu-aarch64``."""
    return os.environ.get("MOBILEVITS_QEMU") or "qemu-aarch64"


def _qemu_says(*args: str) -> str:
    """stdout of ``qemu-aarch64 ARGS``, asked once per binary (and its modification time) per process."""
    binary = qemu_binary()
    path = shutil.which(binary) or binary
    try:
        stamp = os.stat(path).st_mtime_ns
    except OSError:
        stamp = 0
    return _qemu_says_cached(path, stamp, args)


@functools.lru_cache(maxsize=32)
def _qemu_says_cached(path: str, stamp: int, args: tuple[str, ...]) -> str:
    return _run([path, *args], 60, "apt-get install qemu-user").stdout


def qemu_cpus() -> list[str]:
    """CPU models this qemu-aarch64 emulates (``qemu-aarch64 -cpu help``)."""
    return [w for w in _qemu_says("-cpu", "help").split() if w not in ("Available", "CPUs:")]


def qemu_version() -> tuple[int, ...]:
    """(major, minor, ...) of the qemu-aarch64 in use."""
    import re

    m = re.search(r"version (\d+)\.(\d+)", _qemu_says("--version"))
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


class QemuArm64(LocalDevice):
    """The aarch64 runner under ``qemu-aarch64 -cpu CPU`` (user-mode emulation, Debian's qemu-user).

    XNNPACK picks its kernels from the CPU's features (HWCAP), so ``cortex-a53`` (no dot product),
    ``cortex-a76`` (dot product) and ``max`` (i8mm, SVE, SME) run different int8 code paths.
    """

    emulated = True
    target = "aarch64"

    def __init__(self, cpu: str | None = None) -> None:
        super().__init__()
        self.qemu = qemu_binary()
        if shutil.which(self.qemu) is None:
            raise DeviceError(f"qemu-arm64 needs {self.qemu}: apt-get install qemu-user (or set $MOBILEVITS_QEMU)")
        if not (QEMU_SYSROOT / "lib").is_dir():
            raise DeviceError(f"qemu-arm64 needs the aarch64 C and C++ libraries in {QEMU_SYSROOT}: "
                              "apt-get install g++-aarch64-linux-gnu")
        self.cpu = cpu or QEMU_DEFAULT_CPU
        # `max,sme=off`: a model name plus feature switches
        known = qemu_cpus()
        if self.cpu.split(",")[0] not in known:
            raise DeviceError(f"qemu-aarch64 does not emulate CPU {self.cpu!r}: choose from {', '.join(known)}")
        version = qemu_version()
        sme = self.cpu.split(",")[0] == "max" and "sme=off" not in self.cpu.split(",")[1:]
        if sme and version < QEMU_SME_MIN_VERSION:
            raise DeviceError(f"qemu {'.'.join(map(str, version))} computes the SME int8 kernels XNNPACK picks on "
                              f"-cpu max wrongly (measured: 3-11 dB vs the host's output, right on qemu 10.0.2): use "
                              f"qemu-arm64:max,sme=off, or a qemu-aarch64 >= 10 in $MOBILEVITS_QEMU")
        self.spec = f"qemu-arm64:{self.cpu}"
        self.plugins: list[str] = []  # `-plugin` arguments (file,arg=value) for the next runs

    def _prefix(self, env: dict[str, str]) -> list[str]:
        # the guest's environment goes through -E: set on qemu's own process, LD_LIBRARY_PATH would
        # point the host's loader at aarch64 libraries
        sets = [a for k, v in env.items() for a in ("-E", f"{k}={v}")]
        plugins = [a for spec in self.plugins for a in ("-plugin", spec)]
        return [self.qemu, "-L", str(QEMU_SYSROOT), "-cpu", self.cpu, *plugins, *sets]

    def info(self) -> dict[str, Any]:
        v = _qemu_says("--version").splitlines()
        return {"kind": "qemu-arm64", "arch": "aarch64", "cpu": self.cpu, "emulated": True,
                "emulator": v[0] if v else "qemu-aarch64"}


class SshDevice(Device):
    """An ARM Linux board (Raspberry Pi, Jetson, Graviton) or any Linux machine over ssh.

    Key authentication only (``BatchMode``: never a password prompt); more ssh options from
    ``$MOBILEVITS_SSH_OPTIONS`` (e.g. ``-i KEY -o StrictHostKeyChecking=accept-new``). Everything is
    pushed into a ``mktemp -d`` folder on the board, removed on close.
    """

    def __init__(self, target: str) -> None:
        super().__init__()
        if not target:
            raise DeviceError("--device ssh needs a host: ssh:[USER@]HOST[:PORT]")
        host, _, port = target.partition(":")
        if port and not port.isdigit():
            raise DeviceError(f"bad port {port!r} in ssh:{target} (ssh:[USER@]HOST[:PORT])")
        for tool in ("ssh", "scp"):
            if shutil.which(tool) is None:
                raise DeviceError(f"--device ssh needs {tool}: apt-get install openssh-client")
        self.host, self.port, self.spec = host, port, f"ssh:{target}"
        self.options = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=15",
                        *shlex.split(os.environ.get("MOBILEVITS_SSH_OPTIONS", ""))]
        self._remote_work: str | None = None
        uname = self._ssh("uname -m", 60)
        arch = uname.stdout.strip()
        if uname.returncode != 0 or not arch:
            last = (uname.stderr.strip().splitlines() or ["no answer"])[-1]
            raise DeviceError(f"cannot reach {self.host} over ssh ({last}); key authentication is required "
                              "(ssh-copy-id), extra options go in $MOBILEVITS_SSH_OPTIONS")
        if arch == "aarch64":
            self.target = "aarch64"
        elif arch == platform.machine():
            self.target = "host"  # same architecture as this host: the host build runs there
        else:
            raise DeviceError(f"{self.host} is {arch}: the native runner is built for aarch64 and "
                              f"{platform.machine()} only")
        self.arch = arch
        made = self._ssh("mktemp -d /tmp/mobilevits.XXXXXX", 60)
        if made.returncode != 0:
            raise DeviceError(f"cannot create a work folder on {self.host}: {made.stderr.strip()}")
        self._remote_work = made.stdout.strip()

    def _ssh(self, command: str, timeout: float) -> subprocess.CompletedProcess:
        port = ["-p", self.port] if self.port else []
        return _run(["ssh", *self.options, *port, self.host, command], timeout, self.spec)

    def _scp(self, src: str, dst: str, timeout: float = 900.0) -> None:
        port = ["-P", self.port] if self.port else []
        p = _run(["scp", "-q", "-r", *self.options, *port, src, dst], timeout, self.spec)
        if p.returncode != 0:
            raise DeviceError(f"scp {src} -> {dst} failed: {p.stderr.strip()}")

    def push(self, local: Path) -> str:
        remote = f"{self._remote_work}/{Path(local).name}"
        self._scp(str(local), f"{self.host}:{remote}")
        return remote

    def pull(self, remote: str, local: Path) -> None:
        self._scp(f"{self.host}:{remote}", str(local))

    def run(self, argv: list[str], timeout: float = 1800.0, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess:
        sets = ["env", *(f"{k}={v}" for k, v in env.items())] if env else []
        return self._ssh(shlex.join([*sets, *argv]), timeout)

    def mkdir(self, name: str) -> str:
        p = self._ssh(f"mktemp -d {self._remote_work}/{shlex.quote(name)}-XXXXXX", 60)
        if p.returncode != 0:
            raise DeviceError(f"cannot create a folder on {self.host}: {p.stderr.strip()}")
        return p.stdout.strip()

    def info(self) -> dict[str, Any]:
        model = self._ssh("cat /proc/device-tree/model 2>/dev/null || uname -n", 60).stdout.strip("\x00\n ")
        return {"kind": "ssh", "host": self.host, "arch": self.arch, "cpu": model, "emulated": False}

    def close(self) -> None:
        if self._remote_work:
            self._ssh(f"rm -rf {shlex.quote(self._remote_work)}", 60)
            self._remote_work = None


def open_device(spec: str) -> Device:
    """``host``, ``qemu-arm64[:CPU]`` or ``ssh:[USER@]HOST[:PORT]``."""
    kind, _, ident = spec.partition(":")
    if kind == "host" and not ident:
        return LocalDevice()
    if kind == "qemu-arm64":
        return QemuArm64(ident or None)
    if kind == "ssh":
        return SshDevice(ident)
    raise DeviceError(f"unknown device {spec!r}: host, qemu-arm64[:CPU] or ssh:[USER@]HOST[:PORT]")


class NativeSession(Session):
    """A .pte (native runner) or .tflite (TFLite runner, aarch64) on a device; each call is one process."""

    def __init__(self, device: Device, artifact: str | Path, threads: int = 1) -> None:
        self.device, self.threads, self.pte = device, int(threads), Path(artifact)
        if not self.pte.is_file():
            raise DeviceError(f"no such program: {self.pte}")
        self.command, self.env = device.runner(self.pte.suffix)
        self.model = device.push(self.pte)
        what = "executorch native runner" if self.pte.suffix == ".pte" else "LiteRT"
        self.runtime_version = f"{what} on {device.spec}"
        self.device_spec = device.spec

    def invoke(self, x: np.ndarray, warmup: int = 0, iterations: int = 1, outputs: bool = True,
               etdump: Path | None = None, timeout: float = 3600.0) -> dict[str, Any]:
        """One runner process on ``x`` (samples stacked on the first axis); the runner's JSON plus
        ``output`` (the first output, every sample) when ``outputs``."""
        with tempfile.TemporaryDirectory(prefix="mobilevits-native-") as d:
            inp = Path(d) / "input_0.npy"
            np.save(inp, np.ascontiguousarray(x, dtype=np.float32))
            out_dir = self.device.mkdir("out")
            argv = [*self.command, "--model", self.model, "--input", self.device.push(inp), "--threads",
                    str(self.threads), "--warmup", str(warmup), "--iterations", str(iterations)]
            if outputs:
                argv += ["--output-dir", out_dir]
            if etdump is not None:
                argv += ["--etdump", f"{out_dir}/trace.etdp"]
            p = self.device.run(argv, timeout=timeout, env=self.env)
            if p.returncode != 0:
                err = next((ln for ln in p.stderr.splitlines() if ln.startswith("error:")),
                           (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1])
                raise DeviceError(f"native runner on {self.device.spec} failed on {self.pte.name}: {err}")
            result = parse_runner_output(p.stdout)
            paths = result.pop("outputs")
            if outputs:
                local = Path(d) / "output_0.npy"
                self.device.pull(paths[0], local)
                result["output"] = np.load(local)
            if etdump is not None:
                self.device.pull(f"{out_dir}/trace.etdp", Path(etdump))
        return result

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.invoke(x)["output"]

    def time(self, x: np.ndarray, warmup: int, iterations: int, etdump: Path | None = None) -> dict[str, Any]:
        """Load, first inference, warm-up and timed runs of one input in one process (no outputs written)."""
        return self.invoke(x, warmup=warmup, iterations=iterations, outputs=False, etdump=etdump)

    def close(self) -> None:
        pass
