"""Per-op profiles of ExecuTorch programs: where a forward's time goes, on any device the native runner reaches.

    result = profile_artifact("m.pte", device="qemu-arm64:cortex-a76")
    print(format_profile(result))

The native runner writes an ETDump of its timed runs; ``executorch.devtools.Inspector`` reads it. The
wheel's XNNPACK is built with its profiler, so every XNNPACK operator is an event ("Convolution (NHWC,
QC8) IGEMM #3"); operators outside the delegate appear as their kernels. ``Convert`` operators are the
int8 <-> fp32 conversions around ops that have no int8 kernel: their count and share say what int8 costs.
"""

from __future__ import annotations

import functools
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


def _xnn_family(name: str) -> str | None:
    """The operator an XNNPACK microkernel serves, from its name: ``xnn_qs8_qc8w_dwconv_minmax_fp32_ukernel_25p16c__
    neonv8_mla8_ld64`` -> ``qs8_qc8w_dwconv`` (element type, then operation; the variant after ``ukernel`` is the
    CPU-specific part). None for other functions."""
    m = re.match(r"xnn_(\w+?)_ukernel", name)
    if m is None:
        return None
    return re.sub(r"_(minmax|fp32|rndnu|gemmlowp|relu|linear)(?=_|$)", "", m.group(1))


@functools.cache  # both runs of a count read the same files (LiteRT's .so: 100 MB)
def _elf_functions(path: str) -> tuple[list[int], list[str], bool]:
    """Start addresses (sorted) and demangled names of the functions in an ELF file, from its symbol table
    (binutils' aarch64 ``nm``: the .so files of LiteRT's wheel keep theirs), and whether its addresses are fixed
    (a non-PIE program) rather than offsets from where it is loaded. A file with only its dynamic table (libc,
    Debian's python3) names its exported functions; a name there is prefixed ``~``: code between two exported
    functions is counted to the lower one."""
    nm = shutil.which("aarch64-linux-gnu-nm")
    if nm is None:
        from converters import RuntimeUnavailableError

        raise RuntimeUnavailableError("naming the functions of an aarch64 program needs aarch64-linux-gnu-nm: "
                                      "apt-get install binutils-aarch64-linux-gnu")
    starts: dict[int, str] = {}
    for args in (["--defined-only", "-C"], ["-D", "--defined-only", "-C"]):  # static table, else dynamic
        p = subprocess.run([nm, *args, path], capture_output=True, text=True, check=False)
        for line in p.stdout.splitlines():
            addr, _, rest = line.partition(" ")
            kind, _, name = rest.partition(" ")
            if kind in ("t", "T", "W", "w", "i") and addr.strip("0123456789abcdef") == "":
                starts.setdefault(int(addr, 16), name if args[0] != "-D" else "~" + name.split("@")[0])
        if starts:
            break
    order = sorted(starts)
    with open(path, "rb") as f:
        fixed = f.read(18)[16:18] == b"\x02\x00"  # e_type ET_EXEC (little-endian)
    return order, [starts[a] for a in order], fixed


def functions_of_blocks(path: str | Path) -> dict[tuple[str, str], int]:
    """Guest instructions per (library, function) from the counting plugin's ``blocks=`` file: each block's
    address is placed in the mapped file that holds it (the plugin appends the emulator's memory map; qemu-user
    maps a guest's file at the same address here, guest_base 0, which the main program's fixed address shows)
    and named by the nearest function symbol at or below it; blocks outside any file count as ``[anonymous]``
    (code generated at run time, or the emulator's own)."""
    import bisect

    lines = Path(path).read_text().splitlines()
    cut = lines.index("maps")
    per_addr: dict[int, int] = {}
    for line in lines[:cut]:
        a, n = line.split()
        per_addr[int(a, 16)] = per_addr.get(int(a, 16), 0) + int(n)
    maps = []  # (start, end, file); base of a file = start of its mapping at file offset 0
    bases: dict[str, int] = {}
    for line in lines[cut + 1:]:
        f = line.split(maxsplit=5)
        if len(f) < 6 or not f[5].startswith("/"):
            continue
        start, end = (int(v, 16) for v in f[0].split("-"))
        maps.append((start, end, f[5]))
        if int(f[2], 16) == 0:
            bases.setdefault(f[5], start)
    maps.sort()
    starts = [m[0] for m in maps]
    symbols: dict[str, tuple[list[int], list[str], bool]] = {}
    out: dict[tuple[str, str], int] = {}
    for addr, n in per_addr.items():
        i = bisect.bisect_right(starts, addr) - 1
        if i < 0 or addr >= maps[i][1]:
            key = ("[anonymous]", "")
        else:
            file = maps[i][2]
            if file not in symbols:
                symbols[file] = _elf_functions(file)
            order, names, fixed = symbols[file]
            off = addr if fixed else addr - bases.get(file, maps[i][0])
            j = bisect.bisect_right(order, off) - 1
            key = (Path(file).name, names[j] if j >= 0 else f"+{off:#x}")
        out[key] = out.get(key, 0) + n
    return out


def count_instructions(artifact: str | Path, threads: int = 1, seed: int = 0, device: str = "host",
                       by_function: bool = False) -> dict[str, Any]:
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
        if by_function:
            raise ValueError("instructions per function are counted under qemu (a plugin that sees every block): "
                             "--device qemu-arm64")
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
        functions = {}
        for n in (1, last):
            out = work / f"count{n}.txt"
            dev.plugins = [f"{plugin},out={out}" + (f",blocks={work / f'blocks{n}.txt'}" if by_function else "")]
            p = dev.run([*argv, "--model", str(artifact), "--input", str(work / "x.npy"), "--threads", "1",
                         "--warmup", "0", "--iterations", str(n)], timeout=3600, env=env)
            if p.returncode != 0 or not out.is_file():
                raise RuntimeError(f"qemu run of the native runner with the counting plugin failed: "
                                   f"{p.stderr.strip()[-300:]}")
            counts[n] = int(out.read_text())
            runner = json.loads(p.stdout.strip().splitlines()[-1])
            if by_function:
                functions[n] = functions_of_blocks(work / f"blocks{n}.txt")
        dev.plugins = []
        info = dev.info()
    result = {"instructions_per_forward": (counts[last] - counts[1]) / (last - 1),
              "instructions_load_and_first": counts[1], "forwards_counted": last, "arch": "aarch64",
              "device": dev.spec,
              "tool": f"{info['emulator']} -cpu {dev.cpu} with a counting plugin "
                      f"({runner['runtime'] + ' in arm64 Python' if 'runtime' in runner else 'aarch64 build'})"}
    if by_function:
        result["functions"] = _per_forward(functions[1], functions[last], last - 1)
    return result


def _per_forward(first: dict[tuple[str, str], int], last: dict[tuple[str, str], int], forwards: int
                 ) -> list[dict[str, Any]]:
    """Per-function instructions per forward, (I_last - I_first) / forwards, largest first; functions whose
    difference is under 0.01% of the forward (start-up noise of the runner's Python) are left out."""
    per = {k: (last.get(k, 0) - first.get(k, 0)) / forwards for k in set(first) | set(last)}
    floor = 1e-4 * sum(per.values())
    rows = [{"library": lib, "function": fn, "family": _xnn_family(fn), "instructions_per_forward": v}
            for (lib, fn), v in per.items() if abs(v) >= floor]
    return sorted(rows, key=lambda r: -r["instructions_per_forward"])


def format_functions(r: dict[str, Any], rows: int = 15) -> str:
    """Table for people: instructions per forward by operator (XNNPACK microkernels grouped by the operation
    their name carries, other functions by name), then the single most expensive functions."""
    total = r["instructions_per_forward"]
    groups: dict[str, float] = {}
    for f in r["functions"]:
        key = f["family"] or f"{f['function'].split('(')[0]}"
        groups[key] = groups.get(key, 0.0) + f["instructions_per_forward"]
    lines = [f"{'XNNPACK operation or function':<58} {'M instr':>8} {'share':>6}"]
    for k, v in sorted(groups.items(), key=lambda kv: -kv[1])[:rows]:
        lines.append(f"{k[:58]:<58} {v / 1e6:>8.2f} {100 * v / total:>5.1f}%")
    lines += ["", "top functions:"]
    for f in r["functions"][:rows]:
        lines.append(f"  {f['function'][:70]:<70} {f['instructions_per_forward'] / 1e6:>8.2f} M  ({f['library']})")
    return "\n".join(lines)


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
