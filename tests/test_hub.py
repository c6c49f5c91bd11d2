"""Hub ids resolved from a Hugging Face cache built here in huggingface_hub's own layout (no network)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import mobilevits
from mobilevits.hub import HubError, is_hub_id, parse_hub_id, resolve_hub

FIXTURE = Path(__file__).parent / "fixtures" / "timm_mobilevit_tiny.safetensors"  # timm's keys and output
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _publish(cache: Path, repo_id: str, config: dict, weights: dict[str, torch.Tensor] | None) -> None:
    """One model repository in the cache layout huggingface_hub reads (refs/, snapshots/, blobs/)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    (snap / "config.json").write_text(json.dumps(config))
    if weights is not None:
        save_file(weights, str(snap / "model.safetensors"))


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    fx = load_file(str(FIXTURE))
    weights = {k[len("weights."):]: v for k, v in fx.items() if k.startswith("weights.")}
    config = {"architecture": "mobilevit_tiny", "num_classes": 10, "label_names": [f"thing {i}" for i in range(10)],
              "pretrained_cfg": {"input_size": [3, 160, 160], "mean": [0, 0, 0], "std": [1, 1, 1]}}
    _publish(cache, "timm/mobilevit_tiny.test", config, weights)
    _publish(cache, "someone/vit_giant", {"architecture": "vit_giant_patch14_224"}, weights)
    _publish(cache, "someone/no_weights", config, None)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return {"cache": cache, "fixture": fx}


def test_the_cache_layout_is_huggingface_hubs_own(hub_cache):
    from huggingface_hub import scan_cache_dir

    repos = {r.repo_id: r for r in scan_cache_dir(hub_cache["cache"]).repos}
    assert {"timm/mobilevit_tiny.test", "someone/vit_giant"} <= set(repos)


def test_a_hub_model_loads_from_the_cache_and_gives_timms_output(hub_cache):
    assert is_hub_id("timm/x") and is_hub_id("hf-hub:a/b@v1") and not is_hub_id("mobilevit_xs")
    assert parse_hub_id("hf-hub:a/b@v1") == ("a/b", "v1")
    for model in (mobilevits.create_model("hf-hub:timm/mobilevit_tiny.test"),
                  mobilevits.create_model("mobilevit_tiny", pretrained="timm/mobilevit_tiny.test")):
        assert model.num_classes == 10 and model.resolution == 160 and model.hub.labels[3] == "thing 3"
        fx = hub_cache["fixture"]
        x = torch.from_numpy((fx["image"].numpy().astype(np.float32) / 255.0).transpose(2, 0, 1)[None].copy())
        with torch.no_grad():
            torch.testing.assert_close(model.eval()(x), fx["output"], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="is a mobilevit_tiny, not a levit_tiny"):
        mobilevits.create_model("levit_tiny", pretrained="timm/mobilevit_tiny.test")


def test_what_the_cache_lacks_is_one_line_with_the_fetch_command(hub_cache):
    with pytest.raises(HubError, match=r"not in the Hugging Face cache .*hf download timm/nope config.json"):
        resolve_hub("timm/nope")
    with pytest.raises(HubError, match="no model.safetensors or pytorch_model.bin"):
        resolve_hub("hf-hub:someone/no_weights")
    with pytest.raises(HubError, match="'vit_giant_patch14_224' of hf-hub:someone/vit_giant is not a model mobilevits"):
        mobilevits.create_model("hf-hub:someone/vit_giant")
    with pytest.raises(HubError, match="bad hub id"):
        resolve_hub("hf-hub:justaname")


def test_convert_and_predict_take_a_hub_id(hub_cache, tmp_path):
    env = {**os.environ, "HF_HUB_CACHE": str(hub_cache["cache"]), "HF_HUB_OFFLINE": "1"}
    img = tmp_path / "photo.png"
    from PIL import Image

    Image.fromarray(hub_cache["fixture"]["image"].numpy().astype(np.uint8)).save(img)

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "mobilevits", *args], capture_output=True, text=True,
                              timeout=600, env=env)

    p = cli("convert", "timm/mobilevit_tiny.test", "--to", "tflite", "--out", str(tmp_path), "--no-check", "--json")
    assert p.returncode == 0, p.stderr[-1500:]
    art = json.loads(p.stdout)["artifact"]
    meta = json.loads(Path(art + ".json").read_text())
    assert meta["source"]["hub"] == "timm/mobilevit_tiny.test" and meta["source"]["num_classes"] == 10
    assert meta["labels"]["source"] == "timm/mobilevit_tiny.test" and meta["input"]["shape"][-1] == 160
    by_model = json.loads(cli("predict", "timm/mobilevit_tiny.test", str(img), "--json").stdout)
    by_artifact = json.loads(cli("predict", art, str(img), "--json").stdout)
    assert by_model["labels"] == by_artifact["labels"] == "timm/mobilevit_tiny.test"
    assert [t["label"] for t in by_model["predictions"][0]["top"]] == \
        [t["label"] for t in by_artifact["predictions"][0]["top"]]
    p = cli("predict", "timm/not_cached", str(img))
    assert p.returncode == 2 and "hf download timm/not_cached" in p.stderr and "Traceback" not in p.stderr


def test_weights_for_other_classes_keep_the_backbone_and_get_a_fresh_classifier(hub_cache, tmp_path):
    from mobilevits.workflows.training import _starting_model, _weights_file

    fx = hub_cache["fixture"]
    path = tmp_path / "timm10.safetensors"
    save_file({k[len("weights."):]: v for k, v in fx.items() if k.startswith("weights.")}, str(path))
    five = mobilevits.create_model("mobilevit_tiny", num_classes=5, resolution=160)
    with pytest.raises(mobilevits.WeightsError, match="shape mismatches"):
        mobilevits.load_weights(five, path)
    fresh = {k: v.clone() for k, v in five.state_dict().items()}
    reset = mobilevits.load_weights(five, path, new_head=True)["reset"]
    assert reset and all(fresh[k].shape[0] == 5 for k in reset)
    after = five.state_dict()
    assert all(torch.equal(after[k], fresh[k]) for k in reset)  # the classifier keeps its fresh init
    ten = mobilevits.create_model("mobilevit_tiny", num_classes=10, resolution=160, weights=path).state_dict()
    assert all(torch.equal(after[k], ten[k]) for k in after if k not in reset)  # the backbone is the checkpoint's
    logged = []
    net = _starting_model("mobilevit_tiny", 5, 160, _weights_file("timm/mobilevit_tiny.test"), logged.append)
    assert net.num_classes == 5 and "fresh classifier for 5 classes" in logged[0]


def test_train_starts_from_a_hub_id(hub_cache, tmp_path):
    from mobilevits.workflows.training import train

    r = train("timm/mobilevit_tiny.test", resolution=96, epochs=1, train_limit=64, out=tmp_path, show_progress=False,
              log=lambda s: None)
    assert Path(r["weights"]).is_file() and r["model"] == "mobilevit_tiny"


def test_checkpoint_wrappers_prefer_the_trained_weights_over_the_ema_copy(tmp_path):
    from mobilevits.weights import WeightsError, read_state_dict

    trained = {"w": torch.ones(2)}
    ema = {"w": torch.full((2,), 2.0)}
    cases = {"a.pth": {"state_dict": trained, "state_dict_ema": ema}, "b.pth.tar": {"model_ema": ema, "model": trained},
             "c.pt": {"ema": ema, "epoch": 3}, "d.pth": {"module.w": torch.ones(2)}}
    for name, obj in cases.items():
        torch.save(obj, tmp_path / name)
    assert torch.equal(read_state_dict(tmp_path / "a.pth")["w"], trained["w"])
    assert torch.equal(read_state_dict(tmp_path / "b.pth.tar")["w"], trained["w"])  # .pth.tar reads like .pth
    assert torch.equal(read_state_dict(tmp_path / "c.pt")["w"], ema["w"])  # EMA-only file: its EMA
    assert set(read_state_dict(tmp_path / "d.pth")) == {"w"}  # DistributedDataParallel prefix dropped
    (tmp_path / "e.tar").write_bytes(b"x")
    with pytest.raises(WeightsError, match="expected one of .* or .pth.tar"):
        read_state_dict(tmp_path / "e.tar")


@pytest.mark.parametrize("timm_name,ours", [
    ("deit_tiny_patch16_224", "deit_tiny"), ("deit_base_distilled_patch16_384", "deit_base_distilled"),
    ("mobilevit_xxs", "mobilevit_xxs"), ("deit3_small_patch16_224", "deit3_small_patch16_224"),
    ("tnt_s_patch16_224", "tnt_small"), ("convit_tiny", "convit_tiny"),
])
def test_timm_architecture_names_map_to_ours(timm_name, ours):
    from mobilevits.hub import _architecture

    assert _architecture(timm_name) == ours  # DeiT III (layer scale) is not DeiT: the registry refuses it


def test_timms_legacy_tnt_is_refused_with_the_name_to_take():
    from mobilevits.hub import HubError, _architecture

    with pytest.raises(HubError, match="take timm/tnt_s_patch16_224"):
        _architecture("tnt_s_legacy_patch16_224")
