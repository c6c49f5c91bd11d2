"""Real images that need no download: scikit-image's sample photos (and crops of them), scikit-learn's
digits, folders.

Every loader returns float32 RGB in [0, 1], NCHW, at the model's resolution: the input of a
converted artifact (normalisation is baked into artifacts; use :class:`mobilevits.Normalize` to
feed a bare PyTorch model).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .base import Preprocess

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "retina",
          "colorwheel")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
_RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


@dataclass
class ImageSet:
    """Images (N, 3, R, R) in [0, 1], optional integer labels (N,), class names and a description."""

    images: torch.Tensor
    labels: torch.Tensor | None
    classes: list[str] | None
    source: str

    def __len__(self) -> int:
        return self.images.shape[0]


def prepare_image(img: Image.Image | np.ndarray, pp: Preprocess) -> np.ndarray:
    """Resize the short side to ``resolution / crop_pct``, centre-crop, scale to [0, 1]: (3, R, R)."""
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    img = img.convert("RGB")
    r = pp.resolution
    short = max(r, int(round(r / pp.crop_pct)))
    w, h = img.size
    scale = short / min(w, h)
    img = img.resize((max(r, round(w * scale)), max(r, round(h * scale))), _RESAMPLE.get(pp.interpolation,
                                                                                       Image.BICUBIC))
    w, h = img.size
    left, top = (w - r) // 2, (h - r) // 2
    img = img.crop((left, top, left + r, top + r))
    return (np.asarray(img, dtype=np.float32) / 255.0).transpose(2, 0, 1)


def photos(pp: Preprocess, limit: int | None = None) -> ImageSet:
    """scikit-image's bundled sample photos (8 real RGB images), prepared for the model."""
    import skimage.data

    names = PHOTOS[:limit] if limit else PHOTOS
    arrays = [prepare_image(getattr(skimage.data, n)(), pp) for n in names]
    return ImageSet(torch.from_numpy(np.stack(arrays)), None, None, f"scikit-image photos ({len(arrays)})")


def photo_crops(pp: Preprocess, count: int = 128, seed: int = 0) -> ImageSet:
    """``count`` natural images without a download: the 8 photos, then crops of them (a random 30-100% of each
    side at a random place, half of them mirrored; fixed by ``seed``), each prepared like any image.

    For checks that need more images than there are photos (the int8 rule's margin test needs 100).
    """
    import skimage.data

    rng = np.random.default_rng(seed)
    sources = [Image.fromarray(getattr(skimage.data, n)()).convert("RGB") for n in PHOTOS]
    arrays = [prepare_image(im, pp) for im in sources][:count]
    while len(arrays) < count:
        im = sources[len(arrays) % len(sources)]
        w, h = im.size
        cw, ch = (max(8, int(side * rng.uniform(0.3, 1.0))) for side in (w, h))
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = im.crop((left, top, left + cw, top + ch))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        arrays.append(prepare_image(crop, pp))
    return ImageSet(torch.from_numpy(np.stack(arrays)), None, None,
                    f"scikit-image photos and crops of them ({len(arrays)})")


def digits(pp: Preprocess, split: str = "val", seed: int = 0, val_fraction: float = 0.2) -> ImageSet:
    """scikit-learn's handwritten digits (1797 real 8x8 scans, 10 classes), upscaled to the model's size.

    The train/val split is fixed by ``seed`` and stratified by class, so every run sees the same split.
    """
    from sklearn.datasets import load_digits

    if split not in ("train", "val", "all"):
        raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]  # (N, 1, 8, 8) in [0, 1]
    y = torch.from_numpy(d.target.astype(np.int64))
    rng = np.random.default_rng(seed)
    val_idx = []
    for c in range(10):
        idx = np.flatnonzero(d.target == c)
        val_idx.extend(rng.permutation(idx)[: int(round(len(idx) * val_fraction))].tolist())
    mask = np.zeros(len(y), dtype=bool)
    mask[val_idx] = True
    if split != "all":
        keep = torch.from_numpy(mask if split == "val" else ~mask)
        x, y = x[keep], y[keep]
    x = torch.nn.functional.interpolate(x, size=(pp.resolution, pp.resolution), mode="bilinear",
                                        align_corners=False).clamp(0, 1)
    return ImageSet(x.repeat(1, 3, 1, 1).contiguous(), y, [str(i) for i in range(10)],
                    f"sklearn digits ({split}, {len(y)} images)")


def folder(path: str | Path, pp: Preprocess, limit: int | None = None) -> ImageSet:
    """A folder of images (unlabelled), or an ImageFolder (one subfolder per class: labelled)."""
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"data folder not found: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    items: list[tuple[Path, int | None]] = []
    if classes:
        for ci, c in enumerate(classes):
            items += [(f, ci) for f in sorted((root / c).rglob("*")) if f.suffix.lower() in IMAGE_SUFFIXES]
    else:
        items = [(f, None) for f in sorted(root.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not items:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {root}")
    if limit:
        # evenly spaced so every class stays represented
        step = max(1, len(items) // limit)
        items = items[::step][:limit]
    arrays = []
    for f, _ in items:
        try:
            with Image.open(f) as im:
                arrays.append(prepare_image(im, pp))
        except Exception as e:
            raise ValueError(f"cannot read image {f}: {e}") from None
    labels = torch.tensor([lab for _, lab in items]) if classes else None
    n_classes = f", {len(classes)} classes" if classes else ""
    return ImageSet(torch.from_numpy(np.stack(arrays)), labels, classes or None,
                    f"{root} ({len(arrays)} images{n_classes})")


def load_data(spec: str, pp: Preprocess, limit: int | None = None, split: str = "val") -> ImageSet:
    """``photos``, ``photo-crops``, ``digits`` or a folder path -> :class:`ImageSet` at the model's
    preprocessing."""
    if spec == "photos":
        return photos(pp, limit)
    if spec == "photo-crops":
        return photo_crops(pp, count=limit or 128)
    if spec == "digits":
        ds = digits(pp, split=split)
        if limit:
            ds = ImageSet(ds.images[:limit], ds.labels[:limit], ds.classes, ds.source)
        return ds
    if Path(spec).is_dir():
        return folder(spec, pp, limit)
    raise ValueError(f"--data must be 'photos', 'photo-crops', 'digits' or an existing folder, got {spec!r}")
