"""The CLI's catalog equals the code, and the CLI answers help, list and argument errors without torch."""

import json
import subprocess
import sys

import pytest

from mobilevits.workflows import catalog


def test_catalog_equals_the_registry_converters_and_bench():
    # regenerate with: .venv/bin/python -m mobilevits.workflows.catalog --write
    assert json.loads(json.dumps(catalog.build())) == catalog.read(), \
        "mobilevits/workflows/catalog.json is stale: run .venv/bin/python -m mobilevits.workflows.catalog --write"


def _cli_without_torch(*argv: str) -> tuple[int, str, bool]:
    """Run the CLI in a fresh interpreter; returns (exit code, output, whether torch got imported)."""
    code = ("import sys\nfrom mobilevits.workflows.cli import main\n"
            f"try:\n    rc = main({list(argv)!r})\nexcept SystemExit as e:\n    rc = e.code\n"
            "print('TORCH', 'torch' in sys.modules, 'RC', rc, file=sys.stderr)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    last = p.stderr.strip().splitlines()[-1].split()
    return int(last[3]), p.stdout + p.stderr, last[1] == "True"


@pytest.mark.parametrize("argv,rc,needle", [
    (("--help",), 0, "Compact vision transformers"),
    (("--version",), 0, "mobilevits 0."),
    (("list",), 0, "levit_128s"),
    (("list", "--pattern", "mobilevit*", "--json"), 0, '"mobilevit_xs"'),
    (("convert", "--help"), 0, "Models: convit_base, convit_small"),
    (("convert", "mobilevit_xxx", "--to", "executorch"), 2, "Did you mean mobilevit_xxs"),
    (("convert", "mobilevit_xxs", "--to", "onnx"), 2, "unknown backend 'onnx'; choose one or more of"),
    (("convert", "mobilevit_xxs", "--to", "tflite,executorch,tflite"), 2, "a backend is named twice"),
    (("bench", "--runtime", "nope"), 2, "runtime"),
])
def test_cli_answers_without_importing_torch(argv, rc, needle):
    code, out, torch_imported = _cli_without_torch(*argv)
    assert code == rc and needle in out, out[-2000:]
    assert not torch_imported


def test_list_from_the_catalog_matches_a_counted_list():
    from mobilevits.workflows.report import model_table

    counted = {r["name"]: r for r in model_table(pattern="levit_128*", show_progress=False)}
    for row in catalog.read()["models"]:
        if row["name"] in counted:
            assert row["params"] == counted[row["name"]]["params"] and row["macs"] == counted[row["name"]]["macs"]
