"""Distances between two sets of feature vectors: FID, KID, k-NN precision and recall.

Pure numpy; the features come from the pretrained classifier's penultimate
layer (no Inception weights can be downloaded here), so the numbers compare
runs of this project, not published Inception-FIDs.

- FID (Heusel et al. 2017): `|mu_a - mu_b|^2 + Tr(C_a + C_b - 2 (C_a C_b)^(1/2))`;
  biased for small sets (it grows as n shrinks), so compare FIDs of equal n only.
- KID (Binkowski et al. 2018): the unbiased MMD^2 with the cubic polynomial kernel
  `k(x, y) = (x.y / d + 1)^3`, averaged over random subsets; unbiased, so the
  one to trust under ~2,048 samples (it can be slightly negative).
- precision / recall (Kynkaanniemi et al. 2019): the fraction of fake samples
  inside the real manifold (union of k-NN balls around real samples), and of
  real samples inside the fake manifold.
"""
from __future__ import annotations

import numpy as np


def _as_2d(feats: np.ndarray, name: str) -> np.ndarray:
    f = np.asarray(feats, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"{name}: need a (N >= 2, D) array of features, got shape {f.shape}")
    return f


def fid(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to (N_a, D) and (N_b, D) features."""
    a, b = _as_2d(feats_a, "feats_a"), _as_2d(feats_b, "feats_b")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)  # (D, D)
    # Tr((C_a C_b)^(1/2)) = sum of sqrt of the eigenvalues of C_a C_b (real, >= 0 for PSD C_a, C_b)
    eig = np.linalg.eigvals(cov_a @ cov_b).real
    tr_sqrt = np.sqrt(np.clip(eig, 0.0, None)).sum()
    value = float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2.0 * tr_sqrt)
    return max(value, 0.0)


def _poly_mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 of (m, D) and (n, D) samples with k(u, v) = (u.v / D + 1)^3."""
    d = x.shape[1]
    k_xx, k_yy, k_xy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
    m, n = len(x), len(y)
    sum_xx = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    sum_yy = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(sum_xx + sum_yy - 2.0 * k_xy.mean())


def kid(feats_a: np.ndarray, feats_b: np.ndarray, subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> dict[str, float]:
    """KID: mean and std of the unbiased polynomial-kernel MMD^2 over `subsets` random subsets.

    Each subset draws min(subset_size, N_a, N_b) samples without replacement from each set.
    """
    a, b = _as_2d(feats_a, "feats_a"), _as_2d(feats_b, "feats_b")
    m = min(subset_size, len(a), len(b))
    rng = np.random.default_rng(seed)
    vals = np.array([
        _poly_mmd2_unbiased(a[rng.choice(len(a), m, replace=False)], b[rng.choice(len(b), m, replace=False)])
        for _ in range(subsets)
    ])
    return {"mean": float(vals.mean()), "std": float(vals.std()), "subset_size": int(m), "subsets": int(subsets)}


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances (N_a, N_b), clipped at 0."""
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.clip(d, 0.0, None)


def knn_radii(feats: np.ndarray, k: int) -> np.ndarray:
    """Squared distance from each sample to its k-th nearest other sample (N,)."""
    d = _sq_dists(feats, feats)
    np.fill_diagonal(d, np.inf)
    return np.partition(d, k - 1, axis=1)[:, k - 1]


def _coverage(manifold: np.ndarray, radii: np.ndarray, queries: np.ndarray) -> float:
    """Fraction of `queries` inside at least one ball (manifold[i], radii[i])."""
    return float((_sq_dists(queries, manifold) <= radii[None, :]).any(1).mean())


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> dict[str, float]:
    """k-NN manifold precision (fake inside real) and recall (real inside fake)."""
    r, f = _as_2d(real, "real"), _as_2d(fake, "fake")
    if min(len(r), len(f)) <= k:
        raise ValueError(f"precision_recall: need more than k={k} samples in each set, got {len(r)} and {len(f)}")
    return {"precision": _coverage(r, knn_radii(r, k), f), "recall": _coverage(f, knn_radii(f, k), r), "k": int(k)}


def nearest_distances(queries: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Euclidean distance from each query (N_q, D) to its nearest reference (N_r, D): (N_q,)."""
    q, r = np.asarray(queries, np.float64), np.asarray(reference, np.float64)
    if len(q) == 0:
        return np.zeros(0)
    return np.sqrt(_sq_dists(q, r).min(1))
