"""The three floors (README "Architecture") are enforced by import-linter's contracts in pyproject.toml."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_the_import_contracts_hold():
    r = _lint(ROOT)
    assert r.returncode == 0, r.stdout[-3000:]
    assert "4 kept, 0 broken" in r.stdout


@pytest.mark.parametrize(("module", "line", "broken"), [
    ("mobilevits/models/levit.py", "import converters.pipeline", "Three floors"),  # core -> converters
    ("converters/compare.py", "import mobilevits.workflows.bench", "Three floors"),  # converters -> workflows
    ("mobilevits/__init__.py", "from converters import base", "public API"),  # the package module itself
    ("mobilevits/weights.py", "import mobilevits._registry", "cycles"),  # _registry -> weights -> _registry
    ("mobilevits/workflows/bench.py", "from converters.executorch_backend import set_threads", "interface"),
])
def test_a_wrong_import_breaks_a_contract(tmp_path, module, line, broken):
    for d in ("mobilevits", "converters"):
        shutil.copytree(ROOT / d, tmp_path / d, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{line}  # noqa\n")
    r = _lint(tmp_path)
    assert r.returncode != 0
    broken_lines = [ln for ln in r.stdout.splitlines() if ln.endswith("BROKEN")]
    assert any(broken in ln for ln in broken_lines), r.stdout[-3000:]
