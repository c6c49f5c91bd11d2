"""Class names (ImageNet-1k shipped, files) and `predict`: the same answer from a model and its artifact."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from converters import read_sidecar
from mobilevits.labels import LabelsError, imagenet1k, imagenet1k_names, resolve_labels
from mobilevits.workflows.app_assets import export_app_assets
from mobilevits.workflows.predict import format_predictions, predict


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mobilevits", *args], capture_output=True, text=True, timeout=600,
                          env=os.environ)


def test_imagenet1k_names_ship_in_class_order(tmp_path):
    rows = imagenet1k()
    assert len(rows) == 1000 and len({w for w, _ in rows}) == 1000
    names = imagenet1k_names()
    assert names[0] == "tench" and names[1] == "goldfish" and names[281] == "tabby" and names[999] == "toilet tissue"
    assert rows[0][0] == "n01440764" and all(w.startswith("n") and len(w) == 9 for w, _ in rows)
    assert resolve_labels("imagenet1k", 1000) == (names, "imagenet1k")
    with pytest.raises(LabelsError, match="name 1000 classes but the model has 10"):
        resolve_labels("imagenet1k", 10)
    js = tmp_path / "l.json"
    js.write_text(json.dumps(["a", "b"]))
    assert resolve_labels(js, 2) == (["a", "b"], "l.json")
    binary = tmp_path / "l.txt"
    binary.write_bytes(b"\x93NUMPY\xff\xfe")
    with pytest.raises(LabelsError, match="not UTF-8 text"):
        resolve_labels(binary, 2)


@pytest.fixture(scope="module")
def digit_images(tmp_path_factory) -> tuple[list[Path], list[int]]:
    """Three validation digits saved as PNG files, the way a user would hand them over."""
    import torch

    from mobilevits.base import Preprocess
    from mobilevits.data import digits

    ds = digits(Preprocess(resolution=112), split="val")
    folder = tmp_path_factory.mktemp("digit_images")
    paths, truth = [], []
    for i in (0, 40, 80):
        img = (ds.images[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        paths.append(folder / f"digit_{i}.png")
        Image.fromarray(img).save(paths[-1])
        truth.append(int(ds.labels[i]))
    assert isinstance(ds.images, torch.Tensor)
    return paths, truth


def test_predict_names_the_same_digit_for_the_model_and_its_artifacts(digits_weights, artifact, digit_images,
                                                                      tmp_path):
    paths, truth = digit_images
    names = tmp_path.parent / "digit_names.txt"
    names.write_text("".join(f"digit {i}\n" for i in range(10)))
    torch_r = predict("mobilevit_tiny", paths, top=3, weights=digits_weights, num_classes=10, resolution=96,
                      labels=names)
    torch_top1 = [row["top"][0]["index"] for row in torch_r["predictions"]]
    assert sum(t == y for t, y in zip(torch_top1, truth)) >= 2  # a trained model reads most digits
    for to, precision in (("executorch", "int8"), ("tflite", "fp32")):
        art = artifact("mobilevit_tiny", to, precision, resolution=96, weights=digits_weights, labels=str(names))
        meta = read_sidecar(art["artifact"])
        assert meta["labels"] == {"source": "digit_names.txt", "names": [f"digit {i}" for i in range(10)]}
        r = predict(art["artifact"], paths, top=3)  # names from the sidecar
        assert r["labels"] == "digit_names.txt" and r["runtime"] == to
        assert [row["top"][0]["index"] for row in r["predictions"]] == torch_top1, (to, precision)
        assert r["predictions"][0]["top"][0]["label"] == f"digit {torch_top1[0]}"
        if precision == "fp32":
            np.testing.assert_allclose([t["probability"] for t in r["predictions"][0]["top"]],
                                       [t["probability"] for t in torch_r["predictions"][0]["top"]], atol=1e-3)
    text = format_predictions(r)
    assert text.splitlines()[0].endswith("(tflite; labels: digit_names.txt)") and "1. " in text
    # the app manifest takes the sidecar's names when no --labels is given
    exported = export_app_assets([art["artifact"]], to="android_demo", dest=tmp_path / "app")
    assert exported["models"][0]["labels"][3] == "digit 3" and exported["models"][0]["labels_source"] == \
        "digit_names.txt"


def test_predict_cli_bad_input_is_one_line(artifact, digit_images, tmp_path):
    pte = artifact("mobilenetv3_tiny", "executorch", "fp32")["artifact"]
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    p = _cli("predict", pte, str(digit_images[0][0]), "--json", "--top", "2")
    assert p.returncode == 0, p.stderr[-1500:]
    r = json.loads(p.stdout)
    assert r["labels"] == "generic" and len(r["predictions"][0]["top"]) == 2
    cases = [
        ((pte, str(bad)), "cannot read image"),
        ((pte, str(tmp_path / "missing.png")), "image not found"),
        (("mobilevit_huge", str(bad)), "mobilevit_huge"),
        ((pte, str(digit_images[0][0]), "--labels", "imagenet1k"), "name 1000 classes but the model has 10"),
        ((pte, str(digit_images[0][0]), "--weights", "w.pt"), "describe a model name"),
    ]
    for args, message in cases:
        p = _cli("predict", *args)
        assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr, (args, p.stderr)
