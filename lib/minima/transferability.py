"""Transferability scores: how well a checkpoint will finetune, predicted from one forward pass over the target.

Each score takes the target training set's penultimate features (n x d) or the source head's outputs on
it (n x source classes) and the target labels (n,), and returns one number, higher meaning a better start:
- `logme`: You et al. 2021, the log marginal evidence of a Bayesian linear model from features to each
  one-hot label column, per sample, averaged over classes, maximised over the prior and noise precisions;
- `leep`: Nguyen et al. 2020, the log expected empirical prediction of a classifier that maps the source
  head's softmax outputs to target labels through their empirical joint distribution;
- `nce`: Tran et al. 2019, the negative conditional entropy of the target labels given the source head's
  hard predictions;
- `h_score`: Bao et al. 2019, tr(cov(f)^-1 cov(E[f | y])), how far apart the class means lie relative to
  the features' spread, regularised as Ibrahim, Ponomareva & Mazumder 2022 (Ledoit-Wolf's cov(f));
- `sfda`: Shao et al. 2022, the mean probability of the true class under a regularised Fisher discriminant
  classifier, after the features are first pushed towards the other classes' means where the classifier is
  unsure ("self-challenging"); checked against the authors' code (TencentARC/SFDA, metrics.py).

The practitioner's case is wide: a ResNet-50's 2048 features or a ResNet-18's 512 on a few hundred target
images (d > n; the default study's 512 features on 250 images too). Estimators chosen for it:
- LogME is computed in the dual (the n-dimensional sample space of the n x n Gram matrix, from the SVD of the
  features) when d > n, and the target's part outside the features' span is clipped at 0 (rounding made it
  negative: beta ran to 1e300 and the score to NaN). The evidence maximised over beta is a function of
  lambda = alpha / beta alone; it is maximised over log lambda on a grid spanning the spectrum, then refined
  by Brent's method. MacKay's fixed point (the authors') is not used: the evidence can have two maxima in
  lambda, and where the features fit every label exactly (d >= n) the highest lies at beta -> infinity,
  which a fixed point only creeps towards.
- H-score and SFDA are computed on the centred features' coordinates along their top k = min(rank, n // C)
  principal directions (rank at numpy's tolerance): a shift, a rotation, constant and duplicated columns
  change nothing, and no more directions are kept than the average class has images. With more, a Gaussian
  classifier fitted and scored on the same images finds each one by its noise (every image pulls its own
  class mean towards itself: about k / n_c nats of false confidence, n_c images per class), which shrinkage
  towards mu I reduces but does not remove: H-score sat at C - 1 for every candidate with d > n, and SFDA
  stayed at 1.0000 with a Ledoit-Wolf shrinkage of 0.1-0.3 on the wide cases tried.
- H-score shrinks cov(f) towards mu I by the Ledoit-Wolf intensity s (the estimate of the shrinkage that
  minimises the covariance's expected squared error: no tuning, invariant to a common scale), as Ibrahim et
  al., who also weigh cov(E[f | y]) by 1 - s: at s = 1 (a covariance no more spread than sampling noise
  makes an isotropic one) the score is 0. `shrinkage=0` gives Bao et al.'s plain score.
- SFDA keeps the authors' regulariser, exp(-5 lambda_max(S_w)), with the largest eigenvalue taken exactly, not
  by their 3 power iterations.

Every score checks its input at once (`ValueError` naming the problem): finite features and probabilities,
labels of any integer values (relabelled 0..C-1 in sorted order), at least two classes.
Transfer-Learning-Library (thuml, `tllib.ranking`) implements these scores but is not installable from the
package registry (the PyPI names `logme` and `leep` belong to unrelated projects), hence this module.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

EPS = np.finfo(np.float64).eps
LOGME_MARGIN = 25.0  # the grid of log lambda reaches e^25 beyond the spectrum, where the evidence has levelled off
LOGME_XTOL = 1e-10  # Brent's tolerance on log lambda: the evidence is flat at its maximum, so far below 1e-12 nats
PROBABILITY_SUM_TOL = 1e-6  # a softmax row in float32 sums to 1 within a few 1e-7


def _integers(values: np.ndarray, what: str) -> np.ndarray:
    """The values as integers; a ValueError naming the first that is not one."""
    if np.issubdtype(values.dtype, np.integer) or values.dtype == bool:
        return values.astype(np.int64)
    if not np.issubdtype(values.dtype, np.floating):
        raise ValueError(f"{what} must be integers (any values); got dtype {values.dtype}")
    bad = np.flatnonzero(~np.isfinite(values) | (values != np.round(values)))
    if len(bad):
        raise ValueError(f"{what} must be integers (any values); got {values[bad[0]]} at index {bad[0]}")
    return values.astype(np.int64)


def _classes(labels: np.ndarray) -> np.ndarray:
    """The labels as class indices 0..C-1 (sorted by value); a ValueError unless integers of at least 2 classes."""
    values, index = np.unique(_integers(labels, "labels"), return_inverse=True)
    if len(values) < 2:
        raise ValueError(f"the labels hold {len(values)} class(es), {values.tolist()}; a score needs at least 2")
    return index


def _finite(x: np.ndarray, what: str) -> np.ndarray:
    """x as float64; a ValueError naming the first value that is NaN or infinite."""
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"{what} must be real numbers; got dtype {x.dtype}")
    x = x.astype(np.float64)
    bad = np.argwhere(~np.isfinite(x))
    if len(bad):
        i, j = bad[0]
        raise ValueError(f"{what} must be finite; {len(bad)} of {x.size} are NaN or infinite, the first "
                         f"{x[i, j]} at sample {i}, column {j}")
    return x


def _check(features: np.ndarray, labels: np.ndarray, what: str = "features") -> tuple[np.ndarray, np.ndarray]:
    """An (n, d) float64 array of finite values and the labels as class indices 0..C-1; a ValueError otherwise."""
    x, y = np.asarray(features), np.asarray(labels)
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"expected an (n, d) array of {what} and n labels; got shapes {x.shape} and {y.shape}")
    return _finite(x, what), _classes(y)


def _features(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`_check`, and a ValueError for features that are the same for every sample."""
    f, y = _check(features, labels)
    if f.size == 0 or np.ptp(f, axis=0).max() == 0:
        raise ValueError(f"the features are the same for all {len(f)} samples (every one of the {f.shape[1]} "
                         "columns constant): they carry nothing to score")
    return f, y


def _spectrum(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left singular vectors (n x k; n x n when d > n, the dual) and squared singular values (ascending) of x."""
    # by SVD: a Gram matrix's rounding would hold a singular value s to eps (s_max / s)^2 instead of eps s_max / s
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    # numpy's rank tolerance, max(n, d) eps of the largest
    keep = s > s[0] * max(x.shape) * EPS
    return u[:, keep][:, ::-1], s[keep][::-1] ** 2


def _class_means(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The mean row of x in each class (classes x columns), y holding class indices 0..C-1."""
    sums = np.zeros((y.max() + 1, x.shape[1]))
    np.add.at(sums, y, x)
    return sums / np.bincount(y)[:, None]


def _ledoit_wolf(x: np.ndarray) -> float:
    """Ledoit & Wolf's (2004) intensity (sklearn's `ledoit_wolf_shrinkage`) for S = x'x / n towards tr(S) / d I."""
    n, d = x.shape
    cov = x.T @ x / n
    mu = np.trace(cov) / d
    spread = np.sum((cov - mu * np.eye(d)) ** 2) / d  # ||S - mu I||_F^2 / d
    noise = (np.sum(np.sum(x ** 2, axis=1) ** 2) / n - np.sum(cov ** 2)) / (d * n)  # sum_i ||x_i x_i' - S||^2 / (n^2 d)
    return float(min(noise, spread) / spread) if spread > 0 else 0.0


def logme_evidence(features: np.ndarray, target: np.ndarray, alpha: float, beta: float) -> float:
    """log p(target | features, alpha, beta) of y = F w + e, w ~ N(0, I / alpha), e ~ N(0, I / beta)."""
    f, t = np.asarray(features, np.float64), np.asarray(target, np.float64)
    n, d = f.shape
    a = alpha * np.eye(d) + beta * f.T @ f
    m = beta * np.linalg.solve(a, f.T @ t)
    fit = np.sum((f @ m - t) ** 2)
    return float(n / 2 * np.log(beta) + d / 2 * np.log(alpha) - n / 2 * np.log(2 * np.pi) - beta / 2 * fit
                 - alpha / 2 * m @ m - np.linalg.slogdet(a)[1] / 2)


def _profiled_evidence(log_lam: np.ndarray, z2: np.ndarray, s2: np.ndarray, rest: float, n: int) -> np.ndarray:
    """Log evidence per sample at each lambda = alpha / beta, maximised over beta (z2, s2, rest: `_logme_column`'s)."""
    # log N(t; 0, (F F' / lambda + I) / beta) at its best beta, n / t'(F F' / lambda + I)^-1 t
    lam = np.exp(np.asarray(log_lam, np.float64))[..., None]
    quadratic = np.sum(lam * z2 / (s2 + lam), axis=-1) + rest
    logdet = np.sum(np.log1p(s2 / lam), axis=-1)
    return (-logdet / 2 - n / 2 * np.log(quadratic) + n / 2 * (np.log(n) - 1 - np.log(2 * np.pi))) / n


def _logme_column(u: np.ndarray, s2: np.ndarray, t: np.ndarray) -> float:
    """The maximum over alpha, beta of one label column's log evidence per sample."""
    z = u.T @ t  # the target's coordinates along the features' directions, whose squared singular values are s2
    # the target's part outside the features' span: none where they span R^n, else clipped at 0 (rounding)
    rest = 0.0 if len(s2) == len(t) else max(float(t @ t - z @ z), 0.0)
    grid = np.arange(np.log(s2[0]) - LOGME_MARGIN, np.log(s2[-1]) + LOGME_MARGIN + 1)
    values = _profiled_evidence(grid, z ** 2, s2, rest, len(t))
    best = int(np.argmax(values))
    low, high = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    found = minimize_scalar(lambda v: -_profiled_evidence(v, z ** 2, s2, rest, len(t)), bounds=(low, high),
                            method="bounded", options=dict(xatol=LOGME_XTOL))
    return float(max(-found.fun, values[best]))


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME: the maximised log evidence per sample of each one-hot label column, averaged over classes."""
    f, y = _features(features, labels)
    u, s2 = _spectrum(f)
    return float(np.mean([_logme_column(u, s2, (y == c).astype(float)) for c in range(y.max() + 1)]))


def _joint(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The empirical joint distribution P(y, z) of target class y (indices 0..C-1) and source class z."""
    return _class_means(probabilities, labels) * (np.bincount(labels) / len(labels))[:, None]


def leep(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """LEEP: mean log of sum_z P(y_i | z) theta_z(x_i), theta the source head's softmax outputs."""
    p, y = _check(probabilities, labels, "probabilities")
    sums = p.sum(1)
    bad = np.flatnonzero((p < 0).any(1) | (np.abs(sums - 1) > PROBABILITY_SUM_TOL))
    if len(bad):
        raise ValueError(f"probabilities must be rows of the source head's softmax outputs (non-negative, summing to "
                         f"1 within {PROBABILITY_SUM_TOL}); row {bad[0]} sums to {sums[bad[0]]:.6g} "
                         f"with least entry {p[bad[0]].min():.6g}")
    joint = _joint(p, y)
    conditional = joint / np.maximum(joint.sum(0, keepdims=True), 1e-300)  # P(y | z)
    return float(np.mean(np.log(np.sum(conditional[y] * p, axis=1))))


def nce(source_predictions: np.ndarray, labels: np.ndarray) -> float:
    """NCE: -H(Y | Z), Z the source head's hard predictions, from their empirical joint distribution."""
    z, y = np.asarray(source_predictions), np.asarray(labels)
    if z.ndim != 1 or y.ndim != 1 or len(z) != len(y):
        raise ValueError(f"expected n source predictions and n labels; got shapes {z.shape} and {y.shape}")
    yi = _classes(y)
    _, zi = np.unique(_integers(z, "source predictions"), return_inverse=True)
    joint = np.zeros((yi.max() + 1, zi.max() + 1))
    np.add.at(joint, (yi, zi), 1 / len(y))
    pz = joint.sum(0, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(joint > 0, joint * np.log(joint / pz), 0.0)
    return float(terms.sum())


def _principal(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`_spectrum` of the centred features, kept to their top k = min(rank, n // C) principal directions."""
    u, s2 = _spectrum(features - features.mean(0))
    k = min(len(s2), len(features) // (labels.max() + 1))
    return u[:, -k:], s2[-k:]


def h_score(features: np.ndarray, labels: np.ndarray, shrinkage: float | None = None) -> float:
    """H-score tr(S^-1 (1 - s) cov(E[f | y])), S = (1 - s) cov(f) + s mu I; s Ledoit-Wolf's unless given (0: plain)."""
    f, y = _features(features, labels)
    u, s2 = _principal(f, y)
    n, k = u.shape
    s = _ledoit_wolf(u * np.sqrt(s2)) if shrinkage is None else float(shrinkage)
    if not 0 <= s <= 1:
        raise ValueError(f"shrinkage must lie in [0, 1] (None: Ledoit-Wolf's); got {shrinkage}")
    between = np.bincount(y) @ _class_means(u, y) ** 2  # v' cov(E[f | y]) v n / s2 along each principal direction v
    spread = (1 - s) * s2 / n  # the eigenvalues of (1 - s) cov(f)
    return float(np.sum(spread / (spread + s * s2.sum() / (n * k)) * between))


SFDA_STRENGTH = 5.0  # the shrinkage is exp(-5 * the largest eigenvalue of the within-class scatter) (Shao et al.)
SFDA_LEAST_SHRINKAGE = 1e-10  # the authors' floor


def _sfda_input(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The principal coordinates and class indices of features SFDA can score; a ValueError otherwise."""
    f, y = _features(features, labels)
    u, s2 = _principal(f, y)
    x = u * np.sqrt(s2)
    if np.all(x == _class_means(x, y)[y]):
        raise ValueError(f"SFDA needs some class whose samples differ: in each of the {y.max() + 1} classes of the "
                         f"{len(y)} samples the features are identical, so the within-class scatter is zero")
    return x, y


def _within(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The within-class scatter S_w: the prior-weighted class covariances (over n, as the authors)."""
    deviations = x - _class_means(x, y)[y]
    return deviations.T @ deviations / len(x)


def _fisher_shrinkage(x: np.ndarray, y: np.ndarray) -> float:
    """The authors' exp(-5 lambda_max(S_w)), at least 1e-10."""
    return max(float(np.exp(-SFDA_STRENGTH * np.linalg.eigvalsh(_within(x, y))[-1])), SFDA_LEAST_SHRINKAGE)


def _fisher_probabilities(x: np.ndarray, y: np.ndarray, shrinkage: float) -> np.ndarray:
    """p(y | x) of the Bayes classifier with Gaussian classes sharing (1 - s) S_w + s tr(S_w) / k I."""
    within = _within(x, y)
    k = len(within)
    shrunk = (1 - shrinkage) * within + shrinkage * np.trace(within) / k * np.eye(k)
    means = _class_means(x, y)
    coef = np.linalg.solve(shrunk, means.T).T
    scores = x @ coef.T - 0.5 * np.sum(means * coef, axis=1) + np.log(np.bincount(y) / len(y))
    scores -= scores.max(1, keepdims=True)
    e = np.exp(scores)
    return e / e.sum(1, keepdims=True)


def fisher_shrinkage(features: np.ndarray, labels: np.ndarray) -> float:
    """SFDA's regularisation exp(-5 lambda_max(S_w)), at least 1e-10 (lambda_max exact; the authors iterate 3 times)."""
    return _fisher_shrinkage(*_sfda_input(features, labels))


def fisher_probabilities(features: np.ndarray, labels: np.ndarray, shrinkage: float) -> np.ndarray:
    """p(y | x) of the Bayes classifier with Gaussian classes sharing the shrunk within-class scatter
    (1 - s) S_w + s tr(S_w) / k I on the k principal coordinates: regularised FDA with every direction kept."""
    return _fisher_probabilities(*_sfda_input(features, labels), shrinkage)


def sfda(features: np.ndarray, labels: np.ndarray) -> float:
    """SFDA: regularised FDA probabilities, softened by a second softmax; each feature mixed towards the mean of
    the other classes' means by one minus its true-class probability (ConfMix); the mean true-class probability
    of a second FDA with the same regularisation on the mixed features."""
    x, y = _sfda_input(features, labels)
    rows = np.arange(len(y))
    shrinkage = _fisher_shrinkage(x, y)
    p = np.exp(_fisher_probabilities(x, y, shrinkage))
    p /= p.sum(1, keepdims=True)
    means = _class_means(x, y)
    others = (means.sum(0) - means) / (len(means) - 1)
    own = p[rows, y][:, None]
    mixed = own * x + (1 - own) * others[y]
    return float(_fisher_probabilities(mixed, y, shrinkage)[rows, y].mean())
