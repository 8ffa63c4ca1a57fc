"""The statistics behind the verdicts: the FID shortcut and the paired bootstrap interval (issue #13)."""
from __future__ import annotations

import numpy as np
import scipy.linalg
from sklearn.metrics import confusion_matrix, f1_score

from ganaug.judge.feature_metrics import fid
from ganaug.judge.metrics import _confusion_stack, _macro_f1_from_confusion, bootstrap_delta


def test_fid_eigenvalue_shortcut_equals_the_matrix_square_root():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6))
    b = rng.normal(size=(250, 6)) @ rng.normal(size=(6, 6)) + 0.5
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    direct = ((mu_a - mu_b) ** 2).sum() + np.trace(ca + cb - 2 * scipy.linalg.sqrtm(ca @ cb).real)
    assert np.isclose(fid(a, b), direct, rtol=1e-8)


def test_macro_f1_from_stacked_confusions_matches_sklearn():
    rng = np.random.default_rng(1)
    y, p = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    cm = np.zeros((1, 4, 4), dtype=np.int64)
    np.add.at(cm, (0, y, p), 1)
    assert np.isclose(_macro_f1_from_confusion(cm)[0], f1_score(y, p, average="macro"))


def test_stacked_confusions_are_sklearns_row_by_row():
    rng = np.random.default_rng(3)
    y, p = rng.integers(0, 5, (40, 30)), rng.integers(0, 5, (40, 30))  # (R, N)
    p[0] = y[0]  # a perfect row
    y[1], p[1] = 4, 0  # classes that never occur in a row
    stack = _confusion_stack(y, p, 5)
    assert stack.shape == (40, 5, 5) and stack.sum() == y.size
    for r in range(40):
        assert np.array_equal(stack[r], confusion_matrix(y[r], p[r], labels=range(5))), r


def test_paired_bootstrap_interval_is_zero_for_identical_predictions_and_excludes_zero_for_a_clear_gain():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 600)
    noisy = np.where(rng.random(600) < 0.5, rng.integers(0, 3, 600), y)
    same = bootstrap_delta(y, noisy, noisy, 3)
    assert all(same[m] == {"ci95_low": 0.0, "ci95_high": 0.0} for m in ("accuracy", "macro_f1"))
    better = np.where(rng.random(600) < 0.2, rng.integers(0, 3, 600), y)  # far fewer errors
    ci = bootstrap_delta(y, noisy, better, 3)
    gain = (better == y).mean() - (noisy == y).mean()
    assert 0 < ci["accuracy"]["ci95_low"] < gain < ci["accuracy"]["ci95_high"]
    assert bootstrap_delta(y, noisy, better, 3) == ci  # seeded: the same interval every time
    worse = bootstrap_delta(y, better, noisy, 3)
    assert worse["macro_f1"]["ci95_high"] < 0
