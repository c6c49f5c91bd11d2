"""Numbers that say whether two models compute the same thing."""

from __future__ import annotations

import numpy as np

# Pass thresholds (dB) of SQNR against the reference each precision is checked against. For int8 this
# is rule (a) of :func:`int8_verdict`; rule (b) covers trained models.
THRESHOLDS_DB = {"fp32": 60.0, "fp16": 35.0, "int8": 30.0, "w8": 30.0}

# Rule (b) of the int8 check: decided only on this many images or more (below, top-1 agreement is too
# coarse to mean anything: one image is 1 pt at 100), with at least this top-1 agreement.
MARGIN_MIN_IMAGES = 100
MARGIN_MIN_AGREEMENT = 0.95


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


def int8_verdict(sqnr: float, sqnr_quantised_vs_float: float | None, top1_agreement: float, images: int) -> dict:
    """The int8 (and W8A8) acceptance rule, the one every backend's check uses.

    (a) ``sqnr`` (artifact vs the quantised PyTorch graph) >= 30 dB passes. Otherwise (b): the artifact
    passes when it is at least as close to the quantised graph as quantisation moved the model,
    ``margin = sqnr - sqnr_quantised_vs_float >= 0`` dB, and top-1 agreement with the quantised graph is
    >= 95%, on at least 100 images. Rounding ties broken the other way compound through a trained
    network's depth and pull (a) below 30 dB for faithful artifacts; a wrong scale, zero point or a
    dropped op lands far below the quantisation noise, so (b) still fails it.

    Returns ``rule`` ("sqnr" or "margin": the one that decided), ``passed``, ``margin_db`` and ``why``.
    """
    margin = None if sqnr_quantised_vs_float is None else float(sqnr - sqnr_quantised_vs_float)
    threshold = THRESHOLDS_DB["int8"]
    if sqnr >= threshold:
        return {"rule": "sqnr", "passed": True, "margin_db": margin,
                "why": f"SQNR {sqnr:.1f} dB >= {threshold:g} dB vs the quantised graph"}
    if images < MARGIN_MIN_IMAGES or margin is None:
        missing = (f"only {images} images (rule (b) needs >= {MARGIN_MIN_IMAGES}; use --data digits or a folder)"
                   if images < MARGIN_MIN_IMAGES else "no float model to measure the quantisation noise against")
        return {"rule": "sqnr", "passed": False, "margin_db": margin,
                "why": f"SQNR {sqnr:.1f} dB < {threshold:g} dB, decided by rule (a) alone: {missing}"}
    passed = margin >= 0.0 and top1_agreement >= MARGIN_MIN_AGREEMENT
    reasons = []
    if margin < 0.0:
        reasons.append(f"margin {margin:+.1f} dB < 0 (the artifact strays further from the quantised graph than "
                       "quantisation moved the model)")
    if top1_agreement < MARGIN_MIN_AGREEMENT:
        reasons.append(f"top-1 agreement {100 * top1_agreement:.1f}% < {100 * MARGIN_MIN_AGREEMENT:g}%")
    why = (f"SQNR {sqnr:.1f} dB < {threshold:g} dB but margin {margin:+.1f} dB >= 0 and top-1 agreement "
           f"{100 * top1_agreement:.1f}% >= {100 * MARGIN_MIN_AGREEMENT:g}% on {images} images") if passed else \
        f"SQNR {sqnr:.1f} dB < {threshold:g} dB and " + "; ".join(reasons)
    return {"rule": "margin", "passed": bool(passed), "margin_db": margin, "why": why}
