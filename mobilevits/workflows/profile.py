"""Per-op profiles of ExecuTorch programs: where a forward's time goes, on any device the native runner reaches.

    result = profile_artifact("m.pte", device="qemu-arm64:cortex-a76")
    print(format_profile(result))

The native runner writes an ETDump of its timed runs; ``executorch.devtools.Inspector`` reads it. The
wheel's XNNPACK is built with its profiler, so every XNNPACK operator is an event ("Convolution (NHWC,
QC8) IGEMM #3"); operators outside the delegate appear as their kernels. ``Convert`` operators are the
int8 <-> fp32 conversions around ops that have no int8 kernel: their count and share say what int8 costs.
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

# runtime bookkeeping events, not operators
_FRAME = {"Method::execute", "DELEGATE_CALL", "OPERATOR_CALL", "Program::load_method", "Method::init"}


def _kind(name: str) -> str:
    return re.sub(r"\s+#\d+$", "", name)


def summarize_etdump(path: str | Path, runs: int) -> dict[str, Any]:
    """Operators of the last ``runs`` executions in an ETDump: the median time of each (ms), grouped by kind."""
    import warnings

    from executorch.devtools import Inspector

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Output Buffer not found": no tensors were logged, by design
        inspector = Inspector(etdump_path=str(path))
    ops: list[dict[str, Any]] = []
    total = delegate = None
    for block in inspector.event_blocks:
        for e in block.events:
            raw = list(e.perf_data.raw) if e.perf_data is not None else []
            if not raw:
                continue
            ms = statistics.median(raw[-runs:])
            if e.name == "Method::execute":
                total = ms
            elif e.name == "DELEGATE_CALL":
                delegate = (delegate or 0.0) + ms
            elif e.name not in _FRAME:
                ops.append({"name": e.name, "kind": _kind(e.name), "ms": ms, "delegated": bool(e.is_delegated_op)})
    if total is None:
        raise ValueError(f"{path}: no Method::execute event (was the ETDump written by a run?)")
    kinds: dict[str, dict[str, Any]] = {}
    for op in ops:
        k = kinds.setdefault(op["kind"], {"kind": op["kind"], "count": 0, "ms": 0.0, "delegated": op["delegated"]})
        k["count"] += 1
        k["ms"] += op["ms"]
    for k in kinds.values():
        k["share"] = k["ms"] / total
    by_kind = sorted(kinds.values(), key=lambda k: -k["ms"])
    top = sorted(ops, key=lambda o: -o["ms"])[:10]
    for o in top:
        o["share"] = o["ms"] / total
    convert = [o for o in ops if o["kind"].startswith("Convert")]
    outside = [k for k in by_kind if not k["delegated"]]
    delegated_ms = sum(o["ms"] for o in ops if o["delegated"])
    return {"total_ms": total, "operators": len(ops), "kinds": by_kind, "top": top,
            "outside_delegate": outside, "outside_ms": sum(k["ms"] for k in outside),
            "convert": {"count": len(convert), "ms": sum(o["ms"] for o in convert),
                        "share": sum(o["ms"] for o in convert) / total},
            # time inside the delegate call that no operator accounts for (graph set-up, copies)
            "delegate_overhead_ms": None if delegate is None else max(delegate - delegated_ms, 0.0)}


def _program_and_input(artifact: str | Path, seed: int, suffixes: tuple[str, ...] = (".pte",)
                       ) -> tuple[Path, dict[str, Any], np.ndarray]:
    """The program (a .pte, or one of ``suffixes``), its sidecar and a seeded random input of the program's shape
    (profiles need no real image)."""
    from converters import read_sidecar

    artifact = Path(artifact)
    if artifact.suffix not in suffixes:
        what = "ExecuTorch programs (.pte)" if suffixes == (".pte",) else " and ".join(suffixes) + " files"
        raise ValueError(f"profile reads {what}, not {artifact.name}")
    if not artifact.is_file():
        raise FileNotFoundError(f"no such program: {artifact}")
    meta = read_sidecar(artifact)
    return artifact, meta, np.random.default_rng(seed).random(tuple(meta["input"]["shape"]), dtype=np.float32)


def profile_artifact(artifact: str | Path, device: str = "host", threads: int = 1, warmup: int = 2,
                     iterations: int = 5, etdump: str | Path | None = None, seed: int = 0) -> dict[str, Any]:
    """Run ``artifact`` (.pte) through the native runner on ``device`` with an ETDump and summarise it."""
    from .machines import NativeSession, open_device

    artifact, meta, x = _program_and_input(artifact, seed)
    with tempfile.TemporaryDirectory(prefix="mobilevits-profile-") as d:
        trace = Path(etdump) if etdump else Path(d) / "trace.etdp"
        with open_device(device) as dev, NativeSession(dev, artifact, threads=threads) as s:
            timing = s.time(x, warmup=warmup, iterations=iterations, etdump=trace)
            info = dev.info()
        summary = summarize_etdump(trace, runs=iterations)
    return {"artifact": str(artifact), "model": meta["source"].get("name"), "precision": meta["precision"],
            "device": info, "emulated": bool(info.get("emulated")), "threads": threads, "warmup": warmup,
            "iterations": iterations, "runner_median_ms": float(np.median(timing["samples_ms"])),
            "etdump": str(etdump) if etdump else None, **summary}


def count_instructions(artifact: str | Path, threads: int = 1, seed: int = 0, device: str = "host"
                       ) -> dict[str, Any]:
    """Instructions executed per forward by the native runner: a cost figure that machine load does not move.

    ``host``: the host build under valgrind (callgrind; two counts of one program agree within about 1%).
    ``qemu-arm64[:CPU]``: the aarch64 build (a .pte), or LiteRT (ai-edge-litert) in Debian's arm64 Python (a .tflite),
    under qemu-aarch64 with a counting plugin (one thread; two counts of one program differ by a few
    thousand instructions per forward);
    XNNPACK picks its kernels from the emulated CPU's features, so ``cortex-a76`` counts its dot-product int8
    kernels. Two runs (1 and N timed forwards) cancel the load and the first inference: (IN - I1) / (N - 1), N = 3
    for the native runner and 11 for a .tflite (its Python's start-up varies by a few M instructions)."""
    from converters import RuntimeUnavailableError

    from .machines import DeviceError, QemuArm64, open_device
    from .native import build_icount_plugin, build_runner

    counts = {}
    # under qemu the TFLite script in arm64 Python takes a .tflite too; on host valgrind runs the native runner
    artifact, _, x = _program_and_input(artifact, seed, (".pte",) if device == "host" else (".pte", ".tflite"))
    if device == "host":
        if shutil.which("valgrind") is None:
            raise RuntimeUnavailableError("--instructions counts with valgrind: apt-get install valgrind")
        bundle = build_runner("host")
        with tempfile.TemporaryDirectory(prefix="mobilevits-instr-") as d:
            np.save(Path(d) / "x.npy", x)
            for n in (1, 3):
                p = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                                    str(bundle.binary), "--model", str(artifact), "--input", str(Path(d) / "x.npy"),
                                    "--threads", str(threads), "--warmup", "0", "--iterations", str(n)],
                                   capture_output=True, text=True, timeout=3600, check=False)
                m = re.search(r"Collected : (\d+)", p.stderr)
                if p.returncode != 0 or m is None:
                    raise RuntimeError(f"valgrind run of the native runner failed: {p.stderr.strip()[-300:]}")
                counts[n] = int(m.group(1))
        return {"instructions_per_forward": (counts[3] - counts[1]) / 2, "instructions_load_and_first": counts[1],
                "arch": bundle.target, "device": "host", "tool": "valgrind --tool=callgrind (host build)"}
    if device.partition(":")[0] != "qemu-arm64":
        raise DeviceError(f"instructions are counted on host (valgrind) or qemu-arm64[:CPU] (a qemu plugin), "
                          f"not on {device}")
    if threads != 1:
        raise ValueError("instructions under qemu are counted for one thread (--threads 1): the plugin's "
                         "counter is not shared between threads")
    with open_device(device) as dev:
        assert isinstance(dev, QemuArm64)
        plugin = build_icount_plugin()
        argv, env = dev.runner(artifact.suffix)  # the native runner, or the TFLite script in arm64 Python
        work = Path(dev.mkdir("instr"))
        np.save(work / "x.npy", x)
        # the arm64 Python that runs a .tflite starts with about 3 G instructions that vary by a few M between
        # runs (four counts of one MobileNetV3-Small program per forward from (I3 - I1) / 2: 30.1-33.4 M); 11
        # forwards divide that by 5 (the runner's Python also has a fixed hash seed); the native runner starts in a
        # few M instructions and takes 3
        last = 11 if artifact.suffix == ".tflite" else 3
        for n in (1, last):
            out = work / f"count{n}.txt"
            dev.plugins = [f"{plugin},out={out}"]
            p = dev.run([*argv, "--model", str(artifact), "--input", str(work / "x.npy"), "--threads", "1",
                         "--warmup", "0", "--iterations", str(n)], timeout=3600, env=env)
            if p.returncode != 0 or not out.is_file():
                raise RuntimeError(f"qemu run of the native runner with the counting plugin failed: "
                                   f"{p.stderr.strip()[-300:]}")
            counts[n] = int(out.read_text())
            runner = json.loads(p.stdout.strip().splitlines()[-1])
        dev.plugins = []
        info = dev.info()
    return {"instructions_per_forward": (counts[last] - counts[1]) / (last - 1),
            "instructions_load_and_first": counts[1], "forwards_counted": last, "arch": "aarch64", "device": dev.spec,
            "tool": f"{info['emulator']} -cpu {dev.cpu} with a counting plugin "
                    f"({runner['runtime'] + ' in arm64 Python' if 'runtime' in runner else 'aarch64 build'})"}


def format_profile(r: dict[str, Any], rows: int = 15) -> str:
    """Tables for people: operator kinds by time, the 10 slowest single ops, what runs outside XNNPACK."""
    dev = r["device"]
    where = (f"EMULATED {dev['kind']} CPU {dev.get('cpu')}: shares are the emulator's costs, not a phone's"
             if r["emulated"] else f"{dev['kind']} {dev.get('cpu')}")
    lines = [f"{Path(r['artifact']).name} ({r['precision']}) on {where}; {r['threads']} thread(s), median of "
             f"{r['iterations']} runs: forward {r['total_ms']:.2f} ms, {r['operators']} operators",
             f"int8<->fp32 Convert: {r['convert']['count']} ops, {r['convert']['ms']:.2f} ms "
             f"({100 * r['convert']['share']:.1f}%); outside the delegate: {r['outside_ms']:.2f} ms"
             + ("" if r["delegate_overhead_ms"] is None else
                f"; delegate time between operators: {r['delegate_overhead_ms']:.2f} ms"), "",
             f"{'operator kind':<52} {'count':>5} {'ms':>9} {'share':>6}"]
    for k in r["kinds"][:rows]:
        where_k = "" if k["delegated"] else "  (outside XNNPACK)"
        lines.append(f"{k['kind'][:52]:<52} {k['count']:>5} {k['ms']:>9.3f} {100 * k['share']:>5.1f}%{where_k}")
    if len(r["kinds"]) > rows:
        rest = r["kinds"][rows:]
        lines.append(f"{f'... {len(rest)} more kinds':<52} {sum(k['count'] for k in rest):>5} "
                     f"{sum(k['ms'] for k in rest):>9.3f} {100 * sum(k['share'] for k in rest):>5.1f}%")
    if r.get("instructions"):
        lines.insert(1, f"instructions per forward ({r['instructions']['tool']}): "
                        f"{r['instructions']['instructions_per_forward'] / 1e6:.1f} M")
    lines += ["", "top 10 single operators:"]
    for o in r["top"]:
        lines.append(f"  {o['name'][:60]:<60} {o['ms']:>9.3f} ms {100 * o['share']:>5.1f}%")
    return "\n".join(lines)


def write_profile_plot(r: dict[str, Any], path: str | Path, rows: int = 12) -> Path:
    """Horizontal bars: time share of the slowest operator kinds (Convert in red, outside XNNPACK hatched)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = r["kinds"][:rows][::-1]
    fig, ax = plt.subplots(figsize=(9, 0.4 * len(kinds) + 1.5))
    colours = ["tab:red" if k["kind"].startswith("Convert") else "tab:blue" for k in kinds]
    bars = ax.barh([f"{k['kind'][:45]} x{k['count']}" for k in kinds], [100 * k["share"] for k in kinds],
                   color=colours)
    for bar, k in zip(bars, kinds):
        if not k["delegated"]:
            bar.set_hatch("//")
    ax.set_xlabel("share of the forward (%)")
    title = f"{Path(r['artifact']).name}: {r['total_ms']:.1f} ms"
    ax.set_title(title + (f" (EMULATED {r['device'].get('cpu')})" if r["emulated"] else ""), fontsize=9)
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
