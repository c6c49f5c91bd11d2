"""Training data that streams: an ImageFolder is a list of (file, class) pairs, decoded per item with Pillow in
``DataLoader`` workers; nothing holds the whole set in memory. ``digits`` stays an in-memory tensor (1,797 8x8 scans).

    split = load_split("photos/", preprocess, seed=0)          # lists files, decodes nothing
    for x, y in stream(split.train, index_batches, workers=2):  # (B, 3, R, R) in [0, 1], (B,)
        ...

Augmentation (training only, folders by default): a random-resized crop (area 8-100% of the image, aspect 3/4-4/3)
and a horizontal flip, drawn from (seed, epoch, index) so a resumed run and any number of workers see the same
images. Evaluation and calibration use the model's own preprocessing (short side to ``resolution / crop_pct``,
centre crop), the one the converters calibrate and check with.

A file Pillow cannot read is skipped where it is met (``Skipped`` counts them and keeps the first paths); an empty
class folder or a folder without images is an error before training starts.
"""

from __future__ import annotations

import math
import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ..base import Preprocess
from ..data import _RESAMPLE, IMAGE_SUFFIXES, ImageSet, load_data, prepare_image

AUGMENTS = ("auto", "none", "crop-flip")
# errors a damaged or non-image file raises in Pillow (truncated data, bad header, huge declared size)
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class DataError(ValueError):
    """The data cannot be trained on (no images, an empty class folder, mismatched train/val classes)."""


@dataclass
class Skipped:
    """Files that could not be decoded, each counted once however often it is met (every epoch, every
    evaluation); ``paths`` keeps the first few."""

    keep: int = 5
    paths: list[str] = field(default_factory=list)
    _seen: set[str] = field(default_factory=set)

    @property
    def count(self) -> int:
        return len(self._seen)

    def add(self, paths: Sequence[str]) -> None:
        for p in paths:
            if p not in self._seen:
                self._seen.add(p)
                if len(self.paths) < self.keep:
                    self.paths.append(p)

    def summary(self) -> str | None:
        if not self.count:
            return None
        more = ", ..." if self.count > len(self.paths) else ""
        return f"skipped {self.count} unreadable file(s): {', '.join(self.paths)}{more}"


class Samples(Dataset):
    """A labelled image set: ``len``, ``labels`` (N,) int64, ``classes``, ``source``; item i is
    ``(image (3, R, R) float32 in [0, 1] or None when unreadable, label, path)``."""

    classes: list[str]
    source: str

    @property
    def labels(self) -> np.ndarray:
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:  # noqa: B027 - only augmenting sets use it
        """Which epoch's augmentation ``__getitem__`` draws (fixed per (seed, epoch, index))."""

    def for_eval(self) -> Samples:
        """The same images with evaluation preprocessing (no augmentation)."""
        return self


class TensorSamples(Samples):
    """An in-memory :class:`ImageSet` (digits, small sets): batches are slices of one tensor."""

    def __init__(self, ds: ImageSet) -> None:
        if ds.labels is None:
            raise DataError(f"{ds.source}: training needs labels (an ImageFolder: one subfolder per class)")
        self.images, self._labels = ds.images, ds.labels
        self.classes, self.source = list(ds.classes or []), ds.source

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, str]:
        return self.images[i], int(self._labels[i]), ""

    @property
    def labels(self) -> np.ndarray:
        return self._labels.numpy()


class FolderSamples(Samples):
    """Files of an ImageFolder, decoded on demand; ``augment`` applies the training augmentation."""

    def __init__(self, items: list[tuple[str, int]], classes: list[str], preprocess: Preprocess, source: str,
                 augment: bool = False, seed: int = 0) -> None:
        self.items, self.classes, self.pp, self.source = items, classes, preprocess, source
        self.augment, self.seed, self.epoch = augment, seed, 0

    def __len__(self) -> int:
        return len(self.items)

    @property
    def labels(self) -> np.ndarray:
        return np.fromiter((lab for _, lab in self.items), dtype=np.int64, count=len(self.items))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def for_eval(self) -> FolderSamples:
        return FolderSamples(self.items, self.classes, self.pp, self.source, augment=False, seed=self.seed)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, int, str]:
        path, label = self.items[i]
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")  # decodes: a truncated file fails here, not later
                if self.augment:
                    arr = random_resized_crop(im, self.pp, np.random.default_rng([self.seed, self.epoch, i]))
                else:
                    arr = prepare_image(im, self.pp)
        except _DECODE_ERRORS:
            return None, label, path
        return torch.from_numpy(arr), label, path


def random_resized_crop(img: Image.Image, pp: Preprocess, rng: np.random.Generator,
                        scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                        flip: bool = True) -> np.ndarray:
    """A crop of 8-100% of the area at aspect 3/4-4/3 (ten draws, else the centre square), resized to the model's
    resolution with its interpolation, mirrored half of the time: (3, R, R) float32 in [0, 1]."""
    w, h = img.size
    box = None
    for _ in range(10):
        area = w * h * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            box = (left, top, left + cw, top + ch)
            break
    if box is None:
        side = min(w, h)
        box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
    r = pp.resolution
    img = img.resize((r, r), _RESAMPLE.get(pp.interpolation, Image.BICUBIC), box=box)
    if flip and rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return (np.asarray(img, dtype=np.float32) / 255.0).transpose(2, 0, 1)


# --------------------------------------------------------------------------------------------
# listing a folder
# --------------------------------------------------------------------------------------------


def _class_items(root: Path) -> tuple[list[tuple[str, int]], list[str]]:
    """(file, class index) of an ImageFolder in sorted order; errors name the folder that is wrong."""
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root} has no class subfolders: training needs an ImageFolder (one subfolder per class)")
    items: list[tuple[str, int]] = []
    for ci, c in enumerate(classes):
        files = sorted(str(f) for f in (root / c).rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        if not files:
            raise DataError(f"class folder {root / c} has no images ({', '.join(IMAGE_SUFFIXES)}): add images or "
                            "remove the folder")
        items += [(f, ci) for f in files]
    return items, classes


@dataclass
class Split:
    """Training and validation samples of one data set."""

    train: Samples
    val: Samples
    num_classes: int


def load_split(data: str, preprocess: Preprocess, seed: int = 0, augment: str = "auto") -> Split:
    """``digits`` (fixed stratified split, in memory) or an ImageFolder, streamed: ``DIR/train`` and ``DIR/val``
    when both exist, else one ImageFolder split 80/20 reproducibly by ``seed``.

    ``augment``: ``auto`` (folders: ``crop-flip``; digits: ``none``, since a mirrored digit is another symbol),
    ``none`` or ``crop-flip``.
    """
    if augment not in AUGMENTS:
        raise DataError(f"--augment must be one of {', '.join(AUGMENTS)}, got {augment!r}")
    if data == "digits":
        if augment == "crop-flip":
            raise DataError("--augment crop-flip does not suit digits (a mirrored digit is another symbol): "
                            "use --augment none")
        return Split(TensorSamples(load_data("digits", preprocess, split="train")),
                     TensorSamples(load_data("digits", preprocess, split="val")), 10)
    root = Path(data)
    if not root.is_dir():
        raise DataError(f"--data must be 'digits' or an ImageFolder directory, got {data!r}")
    aug = augment != "none"
    if (root / "train").is_dir() and (root / "val").is_dir():
        tr_items, classes = _class_items(root / "train")
        va_items, va_classes = _class_items(root / "val")
        if classes != va_classes:
            raise DataError(f"{root}/train and {root}/val have different class folders: "
                            f"{sorted(set(classes) ^ set(va_classes))}")
        tr_src, va_src = str(root / "train"), str(root / "val")
    else:
        items, classes = _class_items(root)
        perm = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed)).tolist()
        n_val = max(1, len(items) // 5)
        if len(items) - n_val < 1:
            raise DataError(f"{root} has {len(items)} image(s): too few to split into training and validation")
        va_items, tr_items = [items[i] for i in perm[:n_val]], [items[i] for i in perm[n_val:]]
        tr_src, va_src = f"{root}, train split", f"{root}, val split"
    train = FolderSamples(tr_items, classes, preprocess, f"{tr_src} ({len(tr_items)} images)", aug, seed)
    val = FolderSamples(va_items, classes, preprocess, f"{va_src} ({len(va_items)} images)")
    return Split(train, val, len(classes))


# --------------------------------------------------------------------------------------------
# batches
# --------------------------------------------------------------------------------------------


def _collate(items: list[tuple[torch.Tensor | None, int, str]]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    good = [(x, y) for x, y, _ in items if x is not None]
    bad = [p for x, _, p in items if x is None]
    if not good:
        return torch.zeros(0), torch.zeros(0, dtype=torch.int64), bad
    return torch.stack([x for x, _ in good]), torch.tensor([y for _, y in good]), bad


def _worker_init(_: int) -> None:
    # Ctrl-C reaches the whole process group: the trainer stops at the next step boundary and writes its
    # checkpoint, which needs the workers alive until then (the loader ends them)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def stream(ds: Samples, batches: Sequence[torch.Tensor | list[int]], workers: int = 0,
           skipped: Skipped | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(images (B, 3, R, R), labels (B,))`` for each index batch, in order; unreadable files are left out of
    their batch (and counted in ``skipped``); a batch left empty is yielded empty, so positions stay aligned."""
    if isinstance(ds, TensorSamples):
        for idx in batches:
            idx = torch.as_tensor(idx, dtype=torch.int64)
            yield ds.images[idx], ds._labels[idx]
        return
    loader = DataLoader(ds, batch_sampler=[torch.as_tensor(b).tolist() for b in batches], num_workers=workers,
                        collate_fn=_collate, worker_init_fn=_worker_init if workers else None)
    for x, y, bad in loader:
        if skipped is not None and bad:
            skipped.add(bad)
        yield x, y


def eval_batches(n: int, batch_size: int) -> list[list[int]]:
    """Index batches in order, for evaluation."""
    return [list(range(i, min(n, i + batch_size))) for i in range(0, n, batch_size)]


def spread_indices(n: int, seed: int = 0) -> list[int]:
    """All indices of a set of ``n`` in a fixed shuffled order: a prefix of it samples every class (a folder's
    items are sorted by class)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


def first_images(ds: Samples, count: int, skipped: Skipped | None = None) -> torch.Tensor:
    """``count`` readable images of ``ds`` with evaluation preprocessing, spread over its classes: (count, 3, R, R),
    for calibration and export examples. In-memory sets (digits, already stratified) give their first ``count``;
    a folder gives the first readable ones in :func:`spread_indices` order."""
    ev = ds.for_eval()
    if isinstance(ev, TensorSamples):
        return ev.images[:count]
    out: list[torch.Tensor] = []
    for i in spread_indices(len(ev)):
        x, _, path = ev[i]
        if x is None:
            if skipped is not None:
                skipped.add([path])
            continue
        out.append(x)
        if len(out) == count:
            break
    if not out:
        raise DataError(f"{ev.source}: no readable image")
    return torch.stack(out)


def describe(ds: Samples) -> dict[str, Any]:
    """What a run trained or evaluated on, for results and sidecars."""
    return {"source": ds.source, "images": len(ds), "classes": len(ds.classes),
            "streamed": not isinstance(ds, TensorSamples)}
