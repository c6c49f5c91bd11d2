"""What a model or its artifact sees in an image: top-k class names with probabilities.

    r = predict("out/mobilevit_xxs_256_executorch_int8.pte", ["cat.jpg"])    # an artifact (its sidecar)
    r = predict("mobilevit_xxs", ["cat.jpg"], weights="w.safetensors")       # the PyTorch model
    print(format_predictions(r))

An artifact and its PyTorch source get the same preprocessing (the sidecar's) and the same softmax, so
their tables can be compared line by line; ``device`` runs a .pte or .tflite on qemu-arm64 or over ssh.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..base import Preprocess
from ..data import prepare_image
from ..labels import resolve_labels


def _load_images(paths: Sequence[str | Path], pp: Preprocess) -> np.ndarray:
    """(N, 3, R, R) float32 in [0, 1]; a missing or unreadable image is one clear error."""
    if not paths:
        raise ValueError("give at least one image")
    arrays = []
    for p in map(Path, paths):
        if not p.is_file():
            raise FileNotFoundError(f"image not found: {p}")
        try:
            with Image.open(p) as im:
                arrays.append(prepare_image(im, pp))
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"cannot read image {p} ({type(e).__name__}): is it a JPEG/PNG/BMP/WebP/TIFF "
                             "file?") from None
    return np.stack(arrays).astype(np.float32)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def predict(target: str | Path, images: Sequence[str | Path], top: int = 5, labels: str | Path | None = None,
            weights: str | Path | None = None, num_classes: int | None = None, resolution: int | None = None,
            device: str = "host") -> dict[str, Any]:
    """Top-``top`` classes of each image for an artifact (a file with a sidecar) or a registered model name."""
    from converters import build_source, read_sidecar, run_artifact

    if top < 1:
        raise ValueError(f"--top must be at least 1, got {top}")
    path = Path(target)
    if path.suffix in (".pte", ".tflite", ".mlpackage") or path.exists():
        if weights is not None or resolution is not None or num_classes is not None:
            raise ValueError("--weights, --resolution and --num-classes describe a model name; an artifact "
                             "carries its own (its sidecar)")
        meta = read_sidecar(path)
        pp_dict = {k: v for k, v in meta["preprocess"].items() if k in Preprocess.__dataclass_fields__}
        pp = Preprocess(**{**pp_dict, "mean": tuple(pp_dict["mean"]), "std": tuple(pp_dict["std"])})
        x = _load_images(images, pp)
        if device != "host":
            from .machines import NativeSession, open_device

            with open_device(device) as dev, NativeSession(dev, path) as session:
                logits, runtime = session.run(x), session.runtime_version
        else:
            logits, runtime = run_artifact(path, x), meta["backend"]
        n_classes, stored = int(meta["source"]["num_classes"]), meta.get("labels")
        what = {"artifact": str(path), "backend": meta["backend"], "precision": meta["precision"]}
    else:
        if device != "host":
            raise ValueError("--device runs artifacts; convert the model first (mobilevits convert)")
        import mobilevits
        from mobilevits import resolve_pretrained
        from mobilevits.hub import is_hub_id

        stored = None
        if is_hub_id(str(target)):  # the hub model's architecture, weights, size and class names
            if weights is not None:
                raise ValueError("a hub id carries its weights: drop --weights")
            hub = resolve_pretrained(str(target))
            target, weights = hub.architecture, hub.weights
            resolution, num_classes = resolution or hub.resolution, hub.num_classes
            stored = {"names": hub.labels, "source": hub.hub_id} if hub.labels else None
        info = mobilevits.get_model_info(str(target))  # unknown name: one line listing close matches
        res = resolution or info.default_resolution
        n_classes = num_classes
        if n_classes is None and weights is not None:  # what the weights were made for (a digits model: 10)
            n_classes = mobilevits.checkpoint_num_classes(mobilevits.create_model(str(target), resolution=res),
                                                          weights)
        n_classes = n_classes or 1000
        source = {"name": str(target), "num_classes": n_classes, "resolution": res, "overrides": {},
                  "weights": None, "seed": 0, "normalize_in_model": True}
        if weights is not None:
            probe = mobilevits.create_model(str(target), num_classes=n_classes, resolution=res)
            source["weights"] = {"path": str(Path(weights).resolve()),
                                 "sha256": mobilevits.load_weights(probe, weights)["sha256"]}
        model = build_source(source)
        x = _load_images(images, model.preprocess)
        import torch

        with torch.no_grad():
            logits = np.concatenate([model(torch.from_numpy(x[i:i + 1])).numpy() for i in range(len(x))])
        runtime = "torch"
        what = {"model": str(target), "weights": str(weights) if weights else None}
    named = resolve_labels(labels, n_classes) if labels is not None else (
        (stored["names"], stored["source"]) if stored else None)
    names, source_name = named if named else ([f"class {i}" for i in range(n_classes)], "generic")
    probs = _softmax(logits)
    k = min(top, n_classes)
    rows = []
    for img, p in zip(images, probs):
        order = np.argsort(-p, kind="stable")[:k]
        rows.append({"image": str(img), "top": [{"index": int(i), "label": names[i], "probability": float(p[i])}
                                                for i in order]})
    return {**what, "runtime": runtime, "device": device, "labels": source_name, "predictions": rows}


def format_predictions(r: dict[str, Any]) -> str:
    """One block per image: rank, probability, class index and name."""
    head = r.get("artifact") or r.get("model")
    lines = [f"{head} ({r['runtime']}{'' if r['device'] == 'host' else ' on ' + r['device']}; labels: {r['labels']})"]
    for row in r["predictions"]:
        lines.append(f"{row['image']}:")
        for rank, t in enumerate(row["top"], 1):
            lines.append(f"  {rank}. {100 * t['probability']:6.2f}%  {t['index']:>4}  {t['label']}")
    return "\n".join(lines)
