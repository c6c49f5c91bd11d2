"""mobilevits TFLite runner: the native runner's flags and JSON line, for a .tflite, with LiteRT's interpreter.

    python run_tflite.py --model m.tflite --input x.npy [--output-dir DIR] [--threads N]
                         [--warmup W] [--iterations N]

Runs where only numpy and ai_edge_litert (or the older tflite_runtime) exist (an ARM board, or Debian's arm64
Python under qemu): it imports nothing of mobilevits. The interpreter applies XNNPACK by default, as on Android;
the JSON line says how many delegate partitions it made (1: the whole graph runs in XNNPACK). An input may
stack several samples on its first axis; timings use the first. Any problem: one "error: ..." line on
stderr and exit code 2.
"""

import argparse
import contextlib
import json
import os
import platform
import sys
import time


def _fail(message):
    sys.stderr.write(f"error: {message}\n")
    sys.exit(2)


def main():
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--model", required=True)
    ap.add_argument("--input", action="append", default=[])
    ap.add_argument("--output-dir")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=10)
    args, unknown = ap.parse_known_args()
    if unknown:
        _fail(f"unknown flag {unknown[0]}")
    if args.threads < 1 or args.warmup < 0 or args.iterations < 1:
        _fail("--threads and --iterations must be >= 1, --warmup >= 0")
    import importlib.metadata

    import numpy as np

    try:
        from ai_edge_litert.interpreter import Interpreter

        runtime = "ai-edge-litert"
    except ImportError:  # a board with the older package only
        try:
            from tflite_runtime.interpreter import Interpreter

            runtime = "tflite-runtime"
        except ImportError:
            _fail("neither ai_edge_litert nor tflite_runtime is importable: pip install ai-edge-litert")
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        runtime += " " + importlib.metadata.version(runtime)

    t0 = time.perf_counter()
    try:
        interp = Interpreter(model_path=args.model, num_threads=args.threads)
        interp.allocate_tensors()
    except Exception as e:  # noqa: BLE001 - any load failure is the same answer for the caller
        _fail(f"cannot load {args.model} ({str(e).splitlines()[0] if str(e) else type(e).__name__})")
    load_ms = (time.perf_counter() - t0) * 1e3
    try:  # delegated nodes show up as one DELEGATE node per partition (private API: None when it is gone)
        partitions = sum(op["op_name"] == "DELEGATE" for op in interp._get_ops_details())
    except Exception:  # noqa: BLE001
        partitions = None
    ins, outs = interp.get_input_details(), interp.get_output_details()
    if len(args.input) != len(ins):
        _fail(f"{args.model} takes {len(ins)} input(s), got {len(args.input)} --input")
    arrays, samples = [], None
    for path, d in zip(args.input, ins):
        try:
            a = np.load(path)
        except Exception as e:  # noqa: BLE001
            _fail(f"cannot read {path} ({e})")
        want = tuple(int(v) for v in d["shape"])
        ok = a.dtype == d["dtype"] and a.ndim == len(want) and a.shape[1:] == want[1:] and a.shape[0] % want[0] == 0
        if not ok or (samples is not None and a.shape[0] // want[0] != samples):
            _fail(f"{path} is {a.dtype} {list(a.shape)} but the program takes {np.dtype(d['dtype'])} {list(want)}")
        samples = a.shape[0] // want[0]
        arrays.append(a.reshape((samples,) + want))

    def execute(s):
        for a, d in zip(arrays, ins):
            interp.set_tensor(d["index"], np.ascontiguousarray(a[s]))
        interp.invoke()
        return [interp.get_tensor(o["index"]) for o in outs]

    t0 = time.perf_counter()
    first = execute(0)
    first_ms = (time.perf_counter() - t0) * 1e3
    for _ in range(args.warmup):
        execute(0)
    times = []
    for _ in range(args.iterations):
        t0 = time.perf_counter()
        execute(0)
        times.append((time.perf_counter() - t0) * 1e3)
    written = []
    if args.output_dir:
        results = [first] + [execute(s) for s in range(1, samples)]
        for k in range(len(outs)):
            path = os.path.join(args.output_dir, f"output_{k}.npy")
            with open(path + ".partial", "wb") as f:
                np.save(f, np.concatenate([r[k] for r in results]))
            os.replace(path + ".partial", path)
            written.append(path)
    print(json.dumps({"runner": "mobilevits-tflite", "format": 1, "model": args.model, "threads": args.threads,
                      "load_ms": load_ms, "first_inference_ms": first_ms, "warmup": args.warmup,
                      "inputs_stacked": samples, "samples_ms": times, "outputs": written,
                      "arch": platform.machine(), "runtime": runtime, "delegate_partitions": partitions,
                      "compiler": f"{runtime}, python {platform.python_version()}"}))


if __name__ == "__main__":
    main()
