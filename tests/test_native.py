"""The native ExecuTorch runner (C++ against the executorch wheel's runtime) on this host."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from converters import RuntimeUnavailableError, get_converter
from mobilevits.workflows import native
from mobilevits.workflows.bench import bench
from mobilevits.workflows.machines import LocalDevice, NativeSession


@pytest.fixture(scope="module")
def runner() -> native.RunnerBundle:
    if shutil.which("g++") is None:  # a module fixture cannot take the function-scoped `needs`
        pytest.skip("needs g++: apt-get install g++")
    return native.build_runner()


@pytest.mark.parametrize(("model", "precision"), [("mobilenetv3_tiny", "fp32"), ("mobilevit_tiny", "int8")])
def test_native_output_equals_the_python_runtime(runner, artifact, model, precision):
    pte = Path(artifact(model, "executorch", precision)["artifact"])
    x = np.random.default_rng(0).uniform(0, 1, (3, 3, 96, 96)).astype(np.float32)  # 3 samples, one process
    with LocalDevice() as dev, NativeSession(dev, pte) as s:
        out = s.run(x)
        r = s.time(x[:1], warmup=1, iterations=3)
    want = get_converter("executorch").run(pte, x)
    assert out.shape == want.shape == (3, 10)
    np.testing.assert_allclose(out, want, rtol=0, atol=1e-6)
    assert len(r["samples_ms"]) == 3 and r["threads"] == 1 and r["load_ms"] > 0 and r["inputs_stacked"] == 1
    assert r["arch"] in ("x86_64", "aarch64")


def test_build_is_cached_and_redone_when_the_source_changes(runner, tmp_path, monkeypatch):
    assert native.build_runner() == runner  # current: no rebuild
    mtime = runner.binary.stat().st_mtime_ns
    src = tmp_path / "src"
    shutil.copytree(native.SRC, src)
    (src / "runner.cpp").write_text((src / "runner.cpp").read_text() + "\n// changed\n")
    monkeypatch.setattr(native, "SRC", src)
    again = native.build_runner()
    assert again.key != runner.key and again.binary.is_file() and runner.binary.stat().st_mtime_ns == mtime
    # self-contained: the libraries sit beside the binary (rpath $ORIGIN/lib), so the folder can be copied
    assert sorted(p.name for p in again.lib_dir.iterdir()) == sorted(f"lib{n}.so" for n in native.LIBS)


def test_bad_inputs_give_one_error_line_and_exit_2(runner, artifact, tmp_path):
    pte = artifact("mobilenetv3_tiny", "executorch", "fp32")["artifact"]
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((1, 3, 64, 64), np.float32))
    stacked = tmp_path / "stacked.npy"  # 2 samples of the wrong size: not a stack of the program's input
    np.save(stacked, np.zeros((2, 3, 96, 95), np.float32))
    corrupt = tmp_path / "corrupt.pte"
    corrupt.write_bytes(b"not a program" * 10)
    cases = [
        (["--model", pte, "--input", str(wrong)], "but the program takes <f4 [1, 3, 96, 96]"),
        (["--model", str(corrupt), "--input", str(wrong)], "cannot load method forward"),
        (["--model", pte, "--frobnicate"], "unknown flag --frobnicate"),
        (["--model", pte, "--input", str(wrong), "--threads", "0"], "--threads must be an integer >= 1"),
        (["--model", pte], "takes 1 input(s), got 0"),
        (["--model", pte, "--input", str(stacked)], "but the program takes <f4 [1, 3, 96, 96]"),
    ]
    for args, message in cases:
        p = subprocess.run([str(runner.binary), *args], capture_output=True, text=True, timeout=120)
        errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
        assert p.returncode == 2 and len(errors) == 1 and message in errors[0], (args, p.stderr)


def test_missing_compiler_is_one_line_naming_the_package(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-g++"))
    monkeypatch.setenv("MOBILEVITS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(RuntimeUnavailableError, match="apt-get install g[+][+]"):
        native.build_runner()
    p = subprocess.run([sys.executable, "-m", "mobilevits", "build-runner"], capture_output=True, text=True,
                       timeout=300, env={**__import__("os").environ, "CXX": str(tmp_path / "no-such-g++"),
                                         "MOBILEVITS_CACHE": str(tmp_path / "cache")})
    assert p.returncode == 2 and "apt-get install g++" in p.stderr and "Traceback" not in p.stderr


def test_bench_times_a_pte_natively_next_to_the_bindings(runner, artifact, tmp_path):
    pte = artifact("mobilenetv3_tiny", "executorch", "fp32")["artifact"]
    r = bench([pte], runtime="executorch,executorch-native", warmup=1, iterations=3, cooldown=0,
              out=tmp_path / "o", log=lambda s: None)
    by_runtime = {c["runtime"]: c for c in r["cells"]}
    assert set(by_runtime) == {"executorch", "executorch-native"}
    native_cell = by_runtime["executorch-native"]
    assert len(native_cell["samples_ms"]) == 3 and native_cell["load_ms_cold"] > 0
    assert native_cell["runtime_version"].startswith("executorch native runner")
    with pytest.raises(ValueError, match="is a executorch artifact but --runtime is tflite"):
        bench([pte], runtime="tflite", cooldown=0, out=tmp_path / "o", log=lambda s: None)
