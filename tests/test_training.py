"""Trainer and QAT: learning happens, runs resume exactly after a kill or Ctrl-C, DDP, the ledger."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import mobilevits
from mobilevits.workflows.training import CHECKPOINT, Recipe, _batches, _lr_lambda, qat, train

MODEL = "mobilevit_tiny"
RES = 96
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _cli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mobilevits", *args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


@pytest.fixture(scope="module")
def float_weights(digits_weights) -> str:
    """A float mobilevit_tiny trained on digits (conftest; shared with the int8 rule tests)."""
    return digits_weights


def test_schedule_and_batches_are_deterministic():
    f = _lr_lambda(Recipe(epochs=4, warmup_epochs=1), steps_per_epoch=10)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) > f(25) > f(39) >= 0.01
    a = _batches(100, 32, seed=1, epoch=3, rank=0, world=1)
    b = _batches(100, 32, seed=1, epoch=3, rank=0, world=1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], _batches(100, 32, seed=1, epoch=4, rank=0, world=1)[0])
    # two ranks split every global batch without overlap
    r0, r1 = _batches(100, 32, 1, 3, 0, 2), _batches(100, 32, 1, 3, 1, 2)
    assert all(set(x.tolist()).isdisjoint(y.tolist()) for x, y in zip(r0, r1))
    assert sorted(torch.cat(r0 + r1).tolist()) == list(range(100))


def test_float_training_learns_digits(float_weights):
    ck = torch.load(Path(float_weights).parent / CHECKPOINT, weights_only=True)
    hist = ck["history"]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert hist[-1]["train_top1"] > 0.3  # chance is 0.1
    model = mobilevits.create_model(MODEL, num_classes=10, resolution=RES, weights=float_weights)
    assert sum(p.numel() for p in model.parameters()) > 0


def _final_state(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / CHECKPOINT, weights_only=True)["module"]


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


QAT_ARGS = ["--backend", "executorch", "--resolution", str(RES), "--epochs", "3", "--train-limit", "192",
            "--batch-size", "32", "--no-convert", "--json"]


def _wait_for(cond, proc: subprocess.Popen, timeout: float = 900.0) -> None:
    t0 = time.time()
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"process ended early: {proc.returncode}\n{proc.stderr.read()[-2000:]}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError("timed out")
        time.sleep(0.05)


@pytest.mark.slow
def test_qat_killed_mid_epoch_resumes_to_identical_weights(float_weights, tmp_path):
    ref_out, run_out = tmp_path / "unbroken", tmp_path / "killed"
    ref = _cli("qat", MODEL, "--weights", float_weights, "--out", str(ref_out), *QAT_ARGS)
    assert ref.wait(timeout=1800) == 0, ref.stderr.read()[-2000:]

    p = _cli("qat", MODEL, "--weights", float_weights, "--out", str(run_out), *QAT_ARGS)
    ck = run_out / CHECKPOINT
    _wait_for(ck.exists, p)  # epoch 1 written: now inside epoch 2
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL
    saved = torch.load(ck, weights_only=True)
    assert saved["epoch"] == 1 and saved["batch"] == 0  # the kill came before epoch 2 finished

    resumed = _cli("qat", MODEL, "--weights", float_weights, "--out", str(run_out), "--resume", *QAT_ARGS)
    out, err = resumed.communicate(timeout=1800)
    assert resumed.returncode == 0, err[-2000:]
    _assert_same_state(_final_state(run_out), _final_state(ref_out))
    ledger = json.loads(out)["ledger"]
    assert ledger["artifact_top1"] is None and 0 <= ledger["qat_int8_top1"] <= 1


@pytest.mark.slow
def test_ctrl_c_leaves_a_mid_epoch_checkpoint_that_resumes_exactly(float_weights, tmp_path):
    # Three short epochs and the signal as soon as epoch 1's checkpoint lands: it falls inside the run
    # (epoch 2's batches or its evaluation) however fast the machine is.
    args = ["train", MODEL, "--weights", float_weights, "--resolution", str(RES), "--epochs", "3",
            "--train-limit", "256", "--batch-size", "16", "--json"]
    ref = _cli(*args, "--out", str(tmp_path / "ref"))
    assert ref.wait(timeout=900) == 0
    p = _cli(*args, "--out", str(tmp_path / "run"))
    ck = tmp_path / "run" / CHECKPOINT
    _wait_for(ck.exists, p)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 130 and "--resume" in err
    saved = torch.load(ck, weights_only=True)
    if saved["epoch"] == 1:
        assert saved["batch"] > 0  # a mid-epoch position was saved
    resumed = _cli(*args, "--out", str(tmp_path / "run"), "--resume")
    assert resumed.wait(timeout=900) == 0
    _assert_same_state(_final_state(tmp_path / "run"), _final_state(tmp_path / "ref"))


def test_resume_refuses_another_runs_checkpoint(float_weights, tmp_path):
    train(MODEL, resolution=RES, epochs=1, train_limit=64, out=tmp_path, show_progress=False, log=lambda s: None)
    with pytest.raises(ValueError, match="belongs to another run"):
        train(MODEL, resolution=RES, epochs=1, train_limit=64, lr=0.1, out=tmp_path, resume=True,
              show_progress=False, log=lambda s: None)


def test_a_diverging_run_stops_before_the_step_and_keeps_its_checkpoint(tmp_path, monkeypatch):
    import mobilevits.workflows.training as training

    real, calls = training.F.cross_entropy, []

    def poisoned(*a, **kw):  # 2 batches an epoch: the 4th loss is epoch 2's second batch, made NaN
        calls.append(1)
        return real(*a, **kw) * (float("nan") if len(calls) == 4 else 1.0)

    monkeypatch.setattr(training.F, "cross_entropy", poisoned)
    with pytest.raises(training.DivergedError, match=r"train diverged at epoch 2, batch 2: the loss is not finite; "
                                                     r"the last checkpoint .* 1 epochs done.*lower --lr"):
        train(MODEL, resolution=RES, epochs=2, train_limit=64, batch_size=32, out=tmp_path, show_progress=False,
              log=lambda s: None)
    ck = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert ck["epoch"] == 1 and all(torch.isfinite(v).all() for v in ck["module"].values() if v.is_floating_point())


@pytest.mark.slow
def test_ddp_on_two_processes_trains_the_weights_one_process_trains(tmp_path):
    # deit_test: no BatchNorm (statistics are per rank under DDP) and no stochastic depth (drawn per rank), so two
    # ranks on halves of each global batch must take the steps one process takes on the whole batch
    args = ["train", "deit_test", "--resolution", "96", "--epochs", "1", "--train-limit", "128", "--batch-size",
            "32", "--json"]
    torchrun = Path(sys.executable).with_name("torchrun")
    r = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "mobilevits", *args,
                        "--out", str(tmp_path / "ddp")], env=ENV, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    ddp = json.loads(r.stdout)
    assert ddp["world_size"] == 2
    sums = ddp["rank_param_checksums"]
    assert len(sums) == 2 and sums[0] == sums[1]  # the replicas stay identical
    r = subprocess.run([sys.executable, "-m", "mobilevits", *args, "--out", str(tmp_path / "one")], env=ENV,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    one = json.loads(r.stdout)
    from safetensors.torch import load_file

    a, b = load_file(ddp["weights"]), load_file(one["weights"])
    torch.manual_seed(0)  # the trainer's start: seed 0, then the model
    start = mobilevits.create_model("deit_test", num_classes=10, resolution=96).state_dict()
    moved = sum(float((b[k] - start[k]).float().norm() ** 2) for k in b) ** 0.5
    apart = sum(float((a[k] - b[k]).float().norm() ** 2) for k in b) ** 0.5
    # summation order differs (gloo's all-reduce averages two half-batch gradients): float rounding, not a step
    assert moved > 0.1 and apart < 1e-3 * moved, (apart, moved)


@pytest.mark.slow
def test_qat_ledger_and_artifact_match_the_quantised_graph(float_weights, tmp_path):
    # with a teacher (the float model itself): QAT runs without it and with it, and the distilled run is converted
    r = qat(MODEL, backend="tflite", weights=float_weights, resolution=RES, epochs=1, train_limit=256,
            out=tmp_path, show_progress=False, log=lambda s: None, teacher="self")
    led = r["ledger"]
    keys = ("float_top1", "ptq_int8_top1", "qat_int8_top1", "qat_kd_int8_top1", "quantized_top1", "artifact_top1")
    assert all(led[k] is not None for k in keys)
    # the teacher is the float model as trained; float_top1 is its deploy formulation (BatchNorm folded)
    assert led["teacher"].startswith("self") and abs(led["teacher_top1"] - led["float_top1"]) <= 0.01
    plain = torch.load(tmp_path / "without_teacher" / CHECKPOINT, weights_only=True)
    kd = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert kd["meta"]["teacher"].startswith("self") and "teacher" not in plain["meta"]
    # same start, same batches: the distillation term is what moved the weights apart
    assert any(not torch.equal(plain["module"][k], kd["module"][k]) for k in kd["module"])
    assert led["steps"]["kd_vs_qat"]["difference"] == pytest.approx(led["qat_kd_int8_top1"] - led["qat_int8_top1"])
    assert led["float_top1"] > 0.5  # a trained model, so the ledger means something
    # the artifact computes what the quantised PyTorch graph computes: within 1.5 pt, and the int8 check passes
    step = led["steps"]["artifact_vs_quantized"]
    assert step["difference"] == pytest.approx(led["artifact_top1"] - led["quantized_top1"])
    assert step["ci95"][0] <= step["difference"] <= step["ci95"][1] and step["images"] == 359
    assert abs(step["difference"]) <= 0.015 and led["passed"]
    assert r["check"]["passed"] and r["check"]["reference"].startswith("quantised PyTorch"), r["check"]["rule_note"]
    assert r["check"]["sqnr_quantised_vs_float_db"] is not None and r["check"]["rule"] in ("sqnr", "margin")
    from mobilevits.workflows.training import ledger_markdown

    text = ledger_markdown(r)
    assert "quantised graph (convert_pt2e)" in text and "ledger PASS" in text and "soft distillation from self" in text
    assert led["keep_float"] == [] and led["latency"]["median_ms"] > 0 and "artifact latency on this host" in text
    meta = json.loads(Path(r["artifact"] + ".json").read_text())
    assert meta["quantization"]["source"] == "qat" and meta["ledger"]["qat_int8_top1"] == led["qat_int8_top1"]


def test_paired_difference_counts_only_the_images_where_two_stages_disagree():
    from mobilevits.workflows.training import paired_difference

    a = np.array([1] * 90 + [0] * 10, dtype=bool)
    b = np.array([1] * 85 + [0] * 5 + [1] * 3 + [0] * 7, dtype=bool)  # 5 gained, 3 lost
    d = paired_difference(a, b)
    assert d["only_first"] == 5 and d["only_second"] == 3 and d["difference"] == pytest.approx(0.02)
    lo, hi = d["ci95"]
    assert lo < 0 < hi and hi - lo == pytest.approx(2 * 1.96 * np.sqrt((0.08 - 0.02**2) / 100))
    same = paired_difference(a, a)
    assert same["difference"] == 0 and same["ci95"] == [0, 0]
