"""Numbers that say whether two models compute the same thing."""

from __future__ import annotations

import numpy as np

# Pass thresholds (dB) of SQNR against the reference each precision is checked against.
THRESHOLDS_DB = {"fp32": 60.0, "fp16": 35.0, "int8": 30.0, "w8": 30.0}


def sqnr_db(ref: np.ndarray, out: np.ndarray) -> float:
    """Signal-to-quantisation-noise ratio, 10 log10(|ref|^2 / |ref - out|^2), in dB (inf if identical)."""
    ref = ref.astype(np.float64)
    noise = float(np.sum((ref - out.astype(np.float64)) ** 2))
    signal = float(np.sum(ref**2))
    if noise == 0.0:
        return float("inf")
    if signal == 0.0:
        return float("-inf")
    return float(10.0 * np.log10(signal / noise))


def cosine(ref: np.ndarray, out: np.ndarray) -> float:
    """Mean over samples of the cosine similarity between the two logit vectors."""
    a = ref.reshape(ref.shape[0], -1).astype(np.float64)
    b = out.reshape(out.shape[0], -1).astype(np.float64)
    num = np.sum(a * b, axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.mean(np.where(den > 0, num / np.maximum(den, 1e-300), 1.0)))


def topk_agreement(ref: np.ndarray, out: np.ndarray) -> tuple[float, float]:
    """(top-1 agreement, top-5 agreement).

    Top-1: fraction of samples whose arg-max class is the same. Top-5: mean overlap of the two
    top-5 sets (|A & B| / 5), so 1.0 means the same five classes in any order.
    """
    top1 = float(np.mean(ref.argmax(1) == out.argmax(1)))
    k = min(5, ref.shape[1])
    a = np.argsort(-ref, axis=1)[:, :k]
    b = np.argsort(-out, axis=1)[:, :k]
    overlap = [len(set(x) & set(y)) / k for x, y in zip(a, b)]
    return top1, float(np.mean(overlap))


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(logits.argmax(1) == labels))


def compare(ref: np.ndarray, out: np.ndarray) -> dict[str, float]:
    top1, top5 = topk_agreement(ref, out)
    return {"sqnr_db": sqnr_db(ref, out), "max_abs_error": float(np.max(np.abs(ref - out))),
            "cosine": cosine(ref, out), "top1_agreement": top1, "top5_agreement": top5}
