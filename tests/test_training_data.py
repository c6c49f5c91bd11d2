"""Streaming training data (``mobilevits.workflows.training_data``): folders are listed, not loaded; batches and
their augmentation depend on (seed, epoch, position) only; unreadable files are skipped and counted; unusable
folders fail before training with one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mobilevits.base import Preprocess
from mobilevits.workflows import training_data as td
from mobilevits.workflows.training import _batches, train

PP = Preprocess(resolution=32)


def _folder(root: Path, per_class: int = 6, classes: int = 3, size: int = 40) -> Path:
    """An ImageFolder of small JPEGs cut from scikit-image's photos (distinct per class)."""
    import skimage.data

    rng = np.random.default_rng(0)
    for c, name in enumerate(("astronaut", "chelsea", "coffee", "rocket")[:classes]):
        im = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            w, h = im.size
            left, top = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
            im.crop((left, top, left + w // 2, top + h // 2)).resize((size, size)).save(root / f"c{c}" / f"{i}.jpg")
    return root


def test_a_folder_is_listed_not_loaded_and_decoded_per_batch(tmp_path, monkeypatch):
    split = td.load_split(str(_folder(tmp_path)), PP, seed=0)
    assert isinstance(split.train, td.FolderSamples) and split.num_classes == 3
    assert len(split.train) + len(split.val) == 18 and len(split.val) == 3  # 80/20 split of one folder
    assert not any(isinstance(v, torch.Tensor) for v in vars(split.train).values())  # no images held
    opened = []
    real = Image.open
    monkeypatch.setattr(td.Image, "open", lambda p, *a, **k: opened.append(p) or real(p, *a, **k))
    x, y = next(td.stream(split.train, [[0, 1, 2, 3]]))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1
    assert len(opened) == 4 and y.tolist() == split.train.labels[:4].tolist()


def test_train_and_val_subfolders_are_used_as_given(tmp_path):
    _folder(tmp_path / "train", per_class=4)
    _folder(tmp_path / "val", per_class=2)
    split = td.load_split(str(tmp_path), PP)
    assert (len(split.train), len(split.val)) == (12, 6) and split.val.augment is False
    (tmp_path / "val" / "c2").rename(tmp_path / "val" / "other")
    with pytest.raises(td.DataError, match="different class folders"):
        td.load_split(str(tmp_path), PP)


def test_batches_and_augmentation_depend_on_seed_epoch_and_position_not_on_workers(tmp_path):
    split = td.load_split(str(_folder(tmp_path)), PP, seed=0)
    batches = _batches(len(split.train), 5, seed=0, epoch=1, rank=0, world=1)

    def epoch(ds, e, workers):
        ds.set_epoch(e)
        return [(x.clone(), y.clone()) for x, y in td.stream(ds, batches, workers=workers)]

    a, b = epoch(split.train, 1, 0), epoch(split.train, 1, 2)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    other = epoch(split.train, 2, 0)  # another epoch draws other crops of the same images
    assert not torch.equal(a[0][0], other[0][0]) and torch.equal(a[0][1], other[0][1])
    plain = epoch(split.train.for_eval(), 1, 0)  # evaluation preprocessing: no augmentation
    assert not torch.equal(a[0][0], plain[0][0])
    assert torch.equal(plain[0][0][0], torch.from_numpy(td.prepare_image(Image.open(split.train.items[
        int(batches[0][0])][0]), PP)))


def test_random_resized_crop_stays_in_the_image_and_is_fixed_by_its_generator():
    img = Image.fromarray(np.arange(60 * 90 * 3, dtype=np.uint8).reshape(60, 90, 3))
    a = td.random_resized_crop(img, PP, np.random.default_rng([0, 1, 2]))
    b = td.random_resized_crop(img, PP, np.random.default_rng([0, 1, 2]))
    c = td.random_resized_crop(img, PP, np.random.default_rng([0, 1, 3]))
    assert a.shape == (3, 32, 32) and np.array_equal(a, b) and not np.array_equal(a, c)


def test_unreadable_files_are_skipped_counted_and_named(tmp_path):
    root = _folder(tmp_path / "data", per_class=8)
    (root / "c1" / "broken.jpg").write_bytes(b"not an image")
    good = (root / "c0" / "0.jpg").read_bytes()
    (root / "c2" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    r = train("mobilevit_tiny", data=str(root), resolution=96, epochs=1, batch_size=8, out=tmp_path / "run",
              show_progress=False, log=lambda s: None, workers=2)
    assert r["skipped"]["count"] == 2 and {Path(p).name for p in r["skipped"]["first"]} == {"broken.jpg",
                                                                                           "truncated.jpg"}
    assert r["train_data"]["streamed"] and r["train_data"]["images"] + r["val_data"]["images"] == 26
    assert r["history"][0]["train_loss"] > 0 and Path(r["weights"]).is_file()
    assert td.Skipped().summary() is None


@pytest.mark.parametrize("layout, message", [
    ("empty-class", "class folder .*c1 has no images"),
    ("no-classes", "has no class subfolders"),
    ("missing", "must be 'digits' or an ImageFolder"),
])
def test_unusable_folders_fail_before_training_with_one_line(tmp_path, layout, message):
    root = tmp_path / "data"
    if layout == "empty-class":
        _folder(root)
        for f in (root / "c1").iterdir():
            f.unlink()
    elif layout == "no-classes":
        root.mkdir()
        Image.new("RGB", (8, 8)).save(root / "a.png")
    with pytest.raises(td.DataError, match=message):
        td.load_split(str(root), PP)
    r = subprocess.run([sys.executable, "-m", "mobilevits", "train", "mobilevit_tiny", "--data", str(root),
                        "--resolution", "96", "--out", str(tmp_path / "run")], capture_output=True, text=True)
    lines = [s for s in r.stderr.splitlines() if s.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "run").exists()  # nothing started


def test_digits_refuse_mirroring():
    with pytest.raises(td.DataError, match="mirrored digit"):
        td.load_split("digits", PP, augment="crop-flip")
    assert isinstance(td.load_split("digits", PP).train, td.TensorSamples)


def test_calibration_images_of_a_train_folder_cover_every_class(tmp_path):
    # DIR/train lists its items class by class: the first few images would all be class 0
    _folder(tmp_path / "train", per_class=8)
    _folder(tmp_path / "val", per_class=2)
    split = td.load_split(str(tmp_path), PP, augment="none")
    x = td.first_images(split.train, 6)
    labels = split.train.labels
    picked = td.spread_indices(len(split.train))[:6]
    assert x.shape == (6, 3, 32, 32) and torch.equal(x[0], split.train[picked[0]][0])
    assert len(set(labels[picked].tolist())) == 3


def test_batchnorm_statistics_are_recomputed_on_evaluation_images_with_the_rest_in_eval():
    from mobilevits.data import ImageSet
    from mobilevits.workflows.training import recalibrate_batchnorm

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3)
    net = torch.nn.Sequential(conv, torch.nn.BatchNorm2d(4), torch.nn.Dropout(0.5), torch.nn.Flatten())
    bn = net[1]
    bn.running_mean.fill_(5.0)  # stale statistics, as after a short fine-tune on augmented crops
    bn.running_var.fill_(9.0)
    images = torch.rand(100, 3, 8, 8)
    ds = td.TensorSamples(ImageSet(images, torch.zeros(100, dtype=torch.long), ["a"], "test"))
    assert recalibrate_batchnorm(net, ds, count=96, batch_size=32) == 96  # equal batches: their mean is the mean
    with torch.no_grad():
        used = images[td.spread_indices(100)[:96]]
        feats = conv(used)  # (96, 4, 6, 6)
    torch.testing.assert_close(bn.running_mean, feats.mean((0, 2, 3)), atol=1e-5, rtol=1e-5)
    assert bn.momentum == 0.1 and not net.training and not bn.training
    # a network without BatchNorm is left alone
    assert recalibrate_batchnorm(torch.nn.Sequential(torch.nn.Flatten()), ds) == 0
