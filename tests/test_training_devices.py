"""Where training runs (``mobilevits.workflows.compute``): device choice, mixed precision, the QAT graph's CPU twin,
checkpoints from older runs. CUDA paths run where CUDA exists and are skipped, saying so, elsewhere."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mobilevits
from mobilevits.workflows import compute
from mobilevits.workflows.training import CHECKPOINT, OtherRunError, load_into_twin, qat_graphs, train

MODEL, RES = "mobilevit_tiny", 96
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine (CPU-only torch)")


def test_auto_picks_what_exists_and_unavailable_devices_say_what_there_is(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(compute, "_mps_available", lambda: False)
    assert compute.resolve_device("auto") == torch.device("cpu") == compute.resolve_device("cpu")
    with pytest.raises(compute.DeviceError, match=r"--device cuda:1: CUDA is not available .*available: cpu"):
        compute.resolve_device("cuda:1")
    with pytest.raises(compute.DeviceError, match="--device mps: .*use --device cpu"):
        compute.resolve_device("mps")
    with pytest.raises(compute.DeviceError, match="must be auto, cpu, cuda, cuda:N or mps"):
        compute.resolve_device("tpu")
    monkeypatch.setattr(compute, "_mps_available", lambda: True)
    assert compute.resolve_device("auto") == torch.device("mps")


def test_cli_refuses_an_absent_device_in_one_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = subprocess.run([sys.executable, "-m", "mobilevits", "train", MODEL, "--device", "cuda", "--resolution",
                        str(RES), "--out", str(tmp_path / "run")], capture_output=True, text=True)
    lines = [s for s in r.stderr.splitlines() if s.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "CUDA is not available" in lines[0], r.stderr
    assert not (tmp_path / "run").exists()


def test_autocast_runs_the_forward_in_the_chosen_precision():
    cpu = torch.device("cpu")
    a = torch.randn(4, 4)
    with compute.autocast("bf16", cpu):
        assert (a @ a).dtype == torch.bfloat16
    with compute.autocast("none", cpu):
        assert (a @ a).dtype == torch.float32
    assert compute.grad_scaler("fp16", cpu).is_enabled() and not compute.grad_scaler("bf16", cpu).is_enabled()
    with pytest.raises(compute.DeviceError, match="--amp must be"):
        compute.check_amp("int4", cpu)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_training_trains_and_differs_from_fp32(amp, tmp_path):
    kw = dict(resolution=RES, epochs=1, train_limit=64, batch_size=32, show_progress=False, log=lambda s: None,
              device="cpu")
    mixed = train(MODEL, out=tmp_path / amp, amp=amp, **kw)
    full = train(MODEL, out=tmp_path / "fp32", **kw)
    assert mixed["amp"] == amp and mixed["device"] == "cpu" and full["amp"] == "none"
    assert torch.isfinite(torch.tensor(mixed["history"][0]["train_loss"]))
    a = torch.load(tmp_path / amp / CHECKPOINT, weights_only=True)
    b = torch.load(tmp_path / "fp32" / CHECKPOINT, weights_only=True)
    assert a["meta"]["recipe"]["amp"] == amp and a["scaler"] is not None
    # the forward ran in reduced precision: the weights moved differently (an ignored --amp gives equal weights)
    assert any(not torch.equal(a["module"][k], b["module"][k]) for k in a["module"])
    assert all(v.dtype != torch.bfloat16 and v.dtype != torch.float16 for v in a["module"].values())


def test_checkpoints_from_before_a_recipe_field_existed_still_resume(tmp_path):
    kw = dict(resolution=RES, epochs=2, train_limit=32, batch_size=32, show_progress=False, log=lambda s: None,
              out=tmp_path)
    train(MODEL, **{**kw, "epochs": 1})
    ck = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    for key in ("augment", "amp"):  # a checkpoint written before these fields existed
        del ck["meta"]["recipe"][key]
    ck["rng"] = ck["rng"]["cpu"]  # ... and before the RNG state named its device
    ck["meta"]["recipe"]["epochs"] = 2
    torch.save(ck, tmp_path / CHECKPOINT)
    assert len(train(MODEL, **kw, resume=True)["history"]) == 2
    with pytest.raises(OtherRunError, match="belongs to another run"):
        train(MODEL, **kw, resume=True, amp="bf16")


def _qat_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 4))


def _twin_outputs(copy: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from torchao.quantization.pt2e import move_exported_model_to_eval

    from converters import get_converter

    conv = get_converter("executorch")
    x = torch.rand(6, 3, 12, 12)
    graph, twin = qat_graphs(_qat_net(), x[:2], lambda: conv.quantizer("int8", qat=True), torch.device("cpu"))
    opt = torch.optim.SGD(graph.parameters(), lr=0.1)
    for _ in range(3):  # observers, BatchNorm statistics and weights all move
        opt.zero_grad()
        graph(x).square().mean().backward()
        opt.step()
    if copy:
        load_into_twin(graph, twin)
    move_exported_model_to_eval(graph)
    move_exported_model_to_eval(twin)
    with torch.no_grad():
        return graph(x), twin(x)


def test_the_cpu_twin_computes_what_the_trained_graph_computes():
    trained, twin = _twin_outputs(copy=True)
    assert torch.equal(trained, twin)
    trained, fresh = _twin_outputs(copy=False)  # the check can fail: an untouched twin differs
    assert not torch.allclose(trained, fresh)


@CUDA
def test_cuda_training_with_fp16_resumes_on_the_cpu(tmp_path):
    kw = dict(resolution=RES, train_limit=64, batch_size=32, show_progress=False, log=lambda s: None, out=tmp_path)
    r = train(MODEL, epochs=1, device="cuda", amp="fp16", **kw)
    assert r["device"].startswith("cuda") and r["amp"] == "fp16"
    ck = torch.load(tmp_path / CHECKPOINT, weights_only=True, map_location="cpu")
    ck["meta"]["recipe"]["epochs"] = 2
    torch.save(ck, tmp_path / CHECKPOINT)
    assert len(train(MODEL, epochs=2, device="cpu", amp="fp16", resume=True, **kw)["history"]) == 2


@CUDA
def test_qat_on_cuda_converts_from_the_cpu_twin(tmp_path, digits_weights):
    from mobilevits.workflows.training import qat

    r = qat(MODEL, backend="executorch", weights=digits_weights, resolution=RES, epochs=1, train_limit=64,
            out=tmp_path, device="cuda", show_progress=False, log=lambda s: None)
    assert r["device"].startswith("cuda") and r["check"]["passed"], r["check"].get("rule_note")


# ------------------------------------------------------------------------------------------------
# distillation
# ------------------------------------------------------------------------------------------------


def test_distillation_loss_is_zero_on_agreement_and_scaled_by_t_squared():
    from mobilevits.workflows.training import distillation_loss

    s = torch.randn(5, 10)
    assert distillation_loss(s, s.clone(), 2.0).abs() < 1e-6
    t = torch.randn(5, 10)
    assert distillation_loss(s, t, 1.0) > 0
    p, q = torch.softmax(t, 1), torch.log_softmax(s, 1)
    expected = (p * (torch.log(p) - q)).sum(1).mean()
    torch.testing.assert_close(distillation_loss(s, t, 1.0), expected)


@pytest.mark.parametrize("spec, message", [("mobilevit_tiny", "needs trained weights"),
                                           ("no_such_model:w.pt", "unknown model"),
                                           ("mobilevit_tiny:nowhere.pt", "weights file not found")])
def test_a_teacher_without_usable_weights_is_refused_before_training(spec, message, tmp_path):
    # no --weights: a valid teacher would start the float training first; a bad one must stop before it
    r = subprocess.run([sys.executable, "-m", "mobilevits", "qat", MODEL, "--backend", "executorch", "--teacher",
                        spec, "--resolution", str(RES), "--out", str(tmp_path / "run")], capture_output=True,
                       text=True)
    lines = [s for s in r.stderr.splitlines() if s.strip()]
    assert r.returncode == 2 and len(lines) == 1 and message in lines[0], r.stderr
    assert not (tmp_path / "run").exists()


def test_distillation_without_a_teacher_is_refused_before_training(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mobilevits", "qat", MODEL, "--backend", "executorch",
                        "--distillation", "hard", "--resolution", str(RES), "--out", str(tmp_path / "run")],
                       capture_output=True, text=True)
    lines = [s for s in r.stderr.splitlines() if s.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "add --teacher" in lines[0], r.stderr
    assert not (tmp_path / "run").exists()


def test_hard_distillation_trains_the_distillation_head_on_the_teachers_top_class():
    from mobilevits.workflows.training import Recipe, training_loss

    torch.manual_seed(0)
    head = torch.randn(6, 10, requires_grad=True)
    head_dist = torch.randn(6, 10, requires_grad=True)
    labels, teacher = torch.randint(0, 10, (6,)), torch.randn(6, 10)
    hard = Recipe(distillation="hard", kd_alpha=0.3, label_smoothing=0.1)
    loss = training_loss((head, head_dist), labels, teacher, hard)
    expected = 0.7 * F.cross_entropy(head, labels, label_smoothing=0.1) + 0.3 * F.cross_entropy(
        head_dist, teacher.argmax(1))
    torch.testing.assert_close(loss, expected)
    # the labels reach only the class head and the teacher only the distillation head
    only_teacher = training_loss((head, head_dist), labels, teacher, Recipe(distillation="hard", kd_alpha=1.0))
    g_head, g_dist = torch.autograd.grad(only_teacher, [head, head_dist])
    assert g_head.abs().max() == 0 and g_dist.abs().max() > 0
    # soft distillation and no teacher act on the pair's average, which is what the model answers
    avg = (head + head_dist) * 0.5
    torch.testing.assert_close(training_loss((head, head_dist), labels, None, hard),
                               F.cross_entropy(avg, labels, label_smoothing=0.1))
    soft = Recipe(kd_alpha=0.5, kd_temperature=2.0, label_smoothing=0.0)
    from mobilevits.workflows.training import distillation_loss

    torch.testing.assert_close(training_loss((head, head_dist), labels, teacher, soft),
                               0.5 * F.cross_entropy(avg, labels) + 0.5 * distillation_loss(avg, teacher, 2.0))


def test_a_graph_returning_both_heads_is_made_to_return_their_average():
    from mobilevits.workflows.training import _average_heads_in_graph

    torch.manual_seed(0)
    model = mobilevits.create_model("levit_tiny", num_classes=10, resolution=128).eval()
    x = torch.rand(2, 3, 128, 128)
    model.both_heads = True
    graph = torch.export.export(model, (x,)).module()
    head, head_dist = graph(x)
    assert not torch.equal(head, head_dist)
    averaged = _average_heads_in_graph(graph)
    model.both_heads = False
    torch.testing.assert_close(averaged(x), model(x))
    torch.testing.assert_close(torch.export.export(averaged, (x,)).module()(x), (head + head_dist) * 0.5)


@pytest.mark.slow
def test_hard_distillation_qat_trains_both_heads_and_the_mixed_artifact_answers_their_average(tmp_path):
    from mobilevits.workflows.training import qat

    # distilled DeiT (its distillation token feeds head_dist), small enough to train to a meaningful int8 check;
    # mixed precision too: both heads kept in float
    r = qat("deit_test", backend="tflite", resolution=96, epochs=1, float_epochs=12, out=tmp_path,
            show_progress=False, log=lambda s: None, teacher="self", distillation="hard", keep_float=["head*"])
    led = r["ledger"]
    assert led["float_top1"] > 0.5 and led["distillation"] == "hard" and led["qat_kd_int8_top1"] is not None
    # the mixed model's ledger names what stayed float and how fast the artifact runs on this host
    assert led["keep_float"] == ["head*"] and any("kept in float" in n for n in r["notes"])
    assert led["latency"]["median_ms"] > 0 and led["latency"]["threads"] == 1
    # the distilled graph returned both heads while training; the converted reference returns one (B, C) answer
    ref = torch.export.load(r["reference"]).module()
    out = ref(torch.rand(1, 3, 96, 96))  # exported at batch 1
    assert isinstance(out, torch.Tensor) and out.shape == (1, 10)
    # the artifact computes what the quantised graph computes (the int8 rule), so it averages the heads too
    assert r["check"]["passed"], r["check"].get("rule_note")
    assert abs(led["steps"]["artifact_vs_quantized"]["difference"]) <= 0.015
    # the two runs start from the same weights and batches: the hard term moved the distillation head apart
    plain = torch.load(tmp_path / "without_teacher" / "checkpoint.pt", weights_only=True)["module"]
    kd = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["module"]
    dist = [k for k in kd if "head_dist" in k and k.endswith("weight") and kd[k].is_floating_point()]
    assert dist and any(not torch.equal(plain[k], kd[k]) for k in dist)
