"""One model, several backends: each backend's conversion in its own worker process, side by side.

A conversion is mostly single-threaded Python (graph passes, XNNPACK partitioning, MIL/TFLite serialisation),
so on a machine with spare cores the backends finish in about the time of the slowest one instead of the
sum. Each backend exports its own program (the deploy formulation differs per backend and precision, and
``torch.export`` is ~1 s of a 20-100 s conversion); what runs concurrently is quantisation, lowering, writing
and the check. Every artifact is still written under a temporary name and renamed, so a failing backend
never leaves a half-written file and never costs another backend its artifact.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from typing import Any

from .base import ConversionError, RuntimeUnavailableError, UnsupportedError, get_converter


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS has no affinity API
        return os.cpu_count() or 1


def _validate(to: Sequence[str], precision: str) -> None:
    """Fail before any work starts when a backend is unknown, lacks the precision or its toolchain."""
    if not to:
        raise UnsupportedError("no backend given; choose one or more of executorch, tflite, coreml")
    if len(set(to)) != len(to):
        raise UnsupportedError(f"a backend is named twice in {','.join(to)}")
    for backend in to:
        conv = get_converter(backend)  # an unknown name fails here, naming the known ones
        if precision not in conv.precisions:
            raise UnsupportedError(f"{backend} does not support precision {precision!r}; "
                                   f"choose one of {', '.join(conv.precisions)}")
        # find_spec, not import: importing three toolchains here would cost ~5 s before any worker starts;
        # a package that is present but broken still fails in its worker, with convert's own message
        for mod in conv.packages:
            if importlib.util.find_spec(mod.split(".")[0]) is None:
                raise RuntimeUnavailableError(f"cannot convert to {backend}: python module {mod!r} is not "
                                              f"installed; install the pinned toolchain with `make install`")


def _skip_teardown() -> None:
    """Worker initializer: end the process without tearing down the interpreter.

    A worker that ran a conversion holds gigabytes of graphs and three toolchains; freeing them at exit took
    ~7 s here after the results were already sent (ProcessPoolExecutor writes results synchronously, so
    nothing is pending once the worker is asked to stop).
    """
    import atexit

    def bye() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    atexit.register(bye)  # registered last, so it runs first


def _worker(model: str, backend: str, precision: str, options: dict[str, Any], threads: int) -> dict[str, Any]:
    """Runs in a fresh (spawned) process: one backend's conversion with its share of the cores."""
    import torch

    torch.set_num_threads(threads)  # 2 workers on 2 cores: one intra-op thread each, no oversubscription
    from .pipeline import convert

    return convert(model, to=backend, precision=precision, **options)


def convert_many(
    model: str,
    to: Sequence[str],
    precision: str = "fp32",
    jobs: int | None = None,
    log: Callable[[str], None] | None = None,
    **options: Any,
) -> list[dict[str, Any]]:
    """Convert ``model`` for every backend in ``to``; returns one :func:`convert` result per backend, in order.

    ``jobs``: worker processes (default: one per backend, at most the usable cores); ``jobs=1`` converts in
    this process, one backend after the other. ``options`` are :func:`convert`'s. Each result gains
    ``backend``. ``log`` hears one line per finished backend. When a backend fails the others still finish
    (their artifacts stay), then the first failure (in ``to`` order) is raised. Workers are spawned: a script
    calling this with ``jobs > 1`` needs the usual ``if __name__ == "__main__":`` guard.
    """
    from .pipeline import convert

    to = list(to)
    _validate(to, precision)
    if options.get("quantized_model") is not None:
        raise ValueError("a quantised model belongs to one backend's quantiser: convert it with convert(..., to=B)")
    say = log or (lambda s: None)
    jobs = min(len(to), usable_cores()) if jobs is None else max(1, min(jobs, len(to)))
    results: dict[str, dict[str, Any]] = {}
    errors: dict[str, BaseException] = {}
    t0 = time.perf_counter()
    if jobs == 1:
        for backend in to:
            try:
                results[backend] = convert(model, to=backend, precision=precision, **options)
                say(_line(backend, results[backend], t0))
            except Exception as e:  # the others go on; re-raised below
                errors[backend] = e
                say(_failed(backend, e))
    else:
        options = {**options, "show_progress": False}  # several bars at once would garble the terminal
        threads = max(1, usable_cores() // jobs)
        say(f"converting for {', '.join(to)} in {jobs} worker processes ({threads} thread(s) each)")
        # spawn, not fork: the parent may hold torch's thread pools, which a forked child would inherit locked
        with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"),
                                 initializer=_skip_teardown) as pool:
            futures: dict[Future[dict[str, Any]], str] = {
                pool.submit(_worker, model, b, precision, options, threads): b for b in to}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    backend = futures[f]
                    try:
                        results[backend] = f.result()
                        say(_line(backend, results[backend], t0))
                    except BrokenProcessPool:
                        errors[backend] = ConversionError(
                            f"the {backend} worker process died (out of memory or a crash in the toolchain); "
                            f"convert it alone with --to {backend} to see why")
                        say(_failed(backend, errors[backend]))
                    except Exception as e:  # the others go on; re-raised below
                        errors[backend] = e
                        say(_failed(backend, e))
    for backend in to:
        if backend in errors:
            raise errors[backend]
    return [{"backend": b, **results[b]} for b in to]


def _line(backend: str, r: dict[str, Any], t0: float) -> str:
    check = r.get("check")
    verdict = "" if check is None else ", check PASS" if check.get("passed") else ", check FAIL"
    how = "reused" if r.get("reused") else f"{r['seconds']:.0f} s"
    return f"{backend}: {r['artifact']} ({how}{verdict}; {time.perf_counter() - t0:.0f} s since start)"


def _failed(backend: str, e: BaseException) -> str:
    return f"{backend}: FAILED: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
