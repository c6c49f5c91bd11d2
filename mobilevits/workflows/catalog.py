"""What the command line knows before it imports torch: models, backends, precisions, runtimes.

``catalog.json`` (beside this file) is built from the registry, the converters and the bench by
:func:`build`; ``tests/test_catalog.py`` keeps it equal to them, so it cannot drift. Reading it costs a JSON
parse, so ``mobilevits --help``, ``list`` and every argument error answer without importing torch.

Regenerate after adding a model, a backend or a precision::

    .venv/bin/python -m mobilevits.workflows.catalog --write
"""

from __future__ import annotations

import difflib
import fnmatch
import json
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

PATH = Path(__file__).with_name("catalog.json")


@lru_cache(maxsize=1)
def read() -> dict[str, Any]:
    """The shipped catalog: ``{"models": [rows], "backends": {name: [precisions]}, "runtimes": [...]}``."""
    return json.loads(PATH.read_text())


def model_names(pattern: str | None = None, include_tiny: bool = False) -> list[str]:
    """Model names, sorted, as :func:`mobilevits.list_models` gives them."""
    names = [m["name"] for m in read()["models"] if include_tiny or not m["tiny"]]
    return sorted(n for n in names if not pattern or fnmatch.fnmatch(n, pattern))


def model_entry(name: str) -> dict[str, Any]:
    """The catalog row of ``name``; an unknown name raises ValueError with suggestions (the registry's message)."""
    rows = {m["name"]: m for m in read()["models"]}
    if name in rows:
        return rows[name]
    close = difflib.get_close_matches(str(name), list(rows), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ValueError(f"unknown model {name!r}.{hint} Valid models: {', '.join(model_names())}")


def backends() -> tuple[str, ...]:
    return tuple(read()["backends"])


def precisions() -> tuple[str, ...]:
    """Every precision some backend offers, fp32 first (as ``converters.precisions``)."""
    seen: dict[str, None] = {}
    for p in read()["backends"].values():
        seen.update(dict.fromkeys(p))
    return tuple(seen)


def runtimes() -> tuple[str, ...]:
    return tuple(read()["runtimes"])


def build() -> dict[str, Any]:
    """The catalog from the code itself (imports torch, builds every model once: about 20 s)."""
    from converters import backends as converter_backends
    from converters import get_converter

    from .. import get_model_info, list_models
    from .bench import RUNTIMES
    from .report import model_table

    rows = []
    for row in model_table(include_tiny=True, show_progress=False):
        info = get_model_info(row["name"])
        rows.append({**row, "default_resolution": info.default_resolution, "min_resolution": info.min_resolution,
                     "max_resolution": info.max_resolution, "resolution_step": info.resolution_step,
                     "tiny": info.tiny})
    assert sorted(r["name"] for r in rows) == list_models(include_tiny=True)
    return {"models": rows,
            "backends": {b: list(get_converter(b).precisions) for b in converter_backends()},
            "runtimes": list(RUNTIMES)}


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="build the CLI's catalog from the code")
    ap.add_argument("--write", action="store_true", help=f"write {PATH.name} (default: say whether it is current)")
    args = ap.parse_args(argv)
    fresh = build()
    if args.write:
        from converters import atomic_write_text

        atomic_write_text(PATH, json.dumps(fresh, indent=1) + "\n")
        print(f"wrote {PATH}")
        return 0
    current = PATH.is_file() and json.loads(PATH.read_text()) == fresh
    print(f"{PATH.name} is {'current' if current else 'stale: run with --write'}")
    return 0 if current else 1


if __name__ == "__main__":
    sys.exit(main())
