"""Document-level bootstrap: 95% intervals for every cell and paired p-values between two cells.

A cell's per-document counts (true positives, predictions, gold mentions; parsed or not)
are resampled by document, as in Koehn (2004) and Berg-Kirkpatrick et al. (2012): the
1,000 resamples are one matrix of document multiplicities, seeded by the number of
documents, so every cell over the same documents sees the same resamples and a whole
grid's intervals are a few matrix products.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

RESAMPLES = 1000
SEED = 2024
LEVEL = 0.95


@lru_cache(maxsize=32)
def weights(n: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """(resamples × n) multiplicities: how often each document is drawn in each resample."""
    rng = np.random.default_rng([seed, n])
    idx = rng.integers(0, n, size=(resamples, n)) + (np.arange(resamples) * n)[:, None]
    w = np.bincount(idx.ravel(), minlength=resamples * n).reshape(resamples, n).astype(np.float64)
    w.setflags(write=False)
    return w


def resampled_sums(per_doc: np.ndarray) -> np.ndarray:
    """Sums of a (documents × ...) count array in each resample: (resamples × ...)."""
    n = per_doc.shape[0]
    flat = per_doc.reshape(n, -1).astype(np.float64)
    return (weights(n) @ flat).reshape((RESAMPLES, *per_doc.shape[1:]))


def prf(counts: np.ndarray) -> np.ndarray:
    """P, R, F1 from (..., 3) counts of (tp, predicted, gold): (..., 3), zero where undefined."""
    tp, n_pred, n_gold = counts[..., 0], counts[..., 1], counts[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(n_pred > 0, tp / n_pred, 0.0)
        r = np.where(n_gold > 0, tp / n_gold, 0.0)
        f = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    return np.stack([p, r, f], axis=-1)


def bounds(samples: np.ndarray) -> np.ndarray:
    """The percentile interval over the first axis: (2 × ...)."""
    tail = (1 - LEVEL) / 2 * 100
    return np.percentile(samples, [tail, 100 - tail], axis=0)


def paired_p_value(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided paired bootstrap p-value of a metric's difference ``a - b``.

    ``a[0]``/``b[0]`` are the observed values, the rest the same resamples of both. The
    resampled differences, centred on the observed one, stand for the null distribution
    (Berg-Kirkpatrick et al., 2012); the p-value is the share at least as far from zero
    as the observed difference, with the observed one counted (never exactly 0).
    """
    observed = float(a[0] - b[0])
    centred = (a[1:] - b[1:]) - observed
    return float((np.sum(np.abs(centred) >= abs(observed) - 1e-12) + 1) / (len(centred) + 1))
