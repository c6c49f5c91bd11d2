"""Class names: ImageNet-1k's (shipped), or a user's file, checked against the model's class count.

    names = resolve_labels("imagenet1k", num_classes=1000)   # ['tench', 'goldfish', ...]
    names = resolve_labels("my_classes.txt", num_classes=10)  # one name per line, or a JSON list
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

IMAGENET1K = Path(__file__).resolve().parent / "assets" / "imagenet1k.tsv"


class LabelsError(ValueError):
    """A labels file that cannot be read or does not fit the model."""


@cache
def imagenet1k() -> tuple[tuple[str, str], ...]:
    """The 1000 ImageNet-1k classes in training-index order: (WordNet id, lemmas)."""
    rows = []
    for line in IMAGENET1K.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            wnid, lemmas = line.split("\t", 1)
            rows.append((wnid, lemmas))
    return tuple(rows)


def imagenet1k_names() -> list[str]:
    """Short ImageNet-1k names (each class's first lemma: 'tench', 'goldfish', 'tabby')."""
    return [lemmas.split(",")[0].strip() for _, lemmas in imagenet1k()]


def read_labels(path: str | Path) -> list[str]:
    """Class names from a text file (one per line) or a JSON list of strings."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"labels file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise LabelsError(f"labels file {p} is not UTF-8 text: give one class name per line, or a JSON list") from None
    if p.suffix == ".json":
        try:
            names = json.loads(text)
        except json.JSONDecodeError as e:
            raise LabelsError(f"labels file {p} is not valid JSON ({e})") from None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise LabelsError(f"labels file {p} must hold a JSON list of strings")
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise LabelsError(f"labels file {p} is empty")
    return names


def resolve_labels(spec: str | Path | list[str] | None, num_classes: int) -> tuple[list[str], str] | None:
    """``(names, source)`` for ``imagenet1k``, a file or a list; None for None. The count must fit."""
    if spec is None:
        return None
    if isinstance(spec, list):
        names, source = list(spec), "list"
    elif str(spec) == "imagenet1k":
        names, source = imagenet1k_names(), "imagenet1k"
    else:
        names, source = read_labels(spec), Path(spec).name
    if len(names) != num_classes:
        raise LabelsError(f"labels {source} name {len(names)} classes but the model has {num_classes}: "
                          f"give one name per class")
    return names, source
