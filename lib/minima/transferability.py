"""Transferability scores: how well a checkpoint will finetune, predicted from one forward pass over the target.

Each score takes the target training set's penultimate features (n x d) or the source head's outputs on
it (n x source classes) and the target labels (n,), and returns one number, higher meaning a better start:
- `logme`: You et al. 2021, the log marginal evidence of a Bayesian linear model from features to each
  one-hot label column, per sample, averaged over classes (alpha, beta maximised by MacKay's fixed point);
- `leep`: Nguyen et al. 2020, the log expected empirical prediction of a classifier that maps the source
  head's softmax outputs to target labels through their empirical joint distribution;
- `nce`: Tran et al. 2019, the negative conditional entropy of the target labels given the source head's
  hard predictions;
- `h_score`: Bao et al. 2019, tr(cov(f)^-1 cov(E[f | y])), how far apart the class means lie relative to
  the features' spread;
- `sfda`: Shao et al. 2022, the mean probability of the true class under a regularised Fisher discriminant
  classifier, after the features are first pushed towards the other classes' means where the classifier is
  unsure ("self-challenging"); checked against the authors' code (TencentARC/SFDA, metrics.py).
No maintained package implements them (the PyPI names `logme` and `leep` belong to unrelated projects).
"""
from __future__ import annotations

import numpy as np

LOGME_TOL = 1e-3  # relative change of alpha and beta at which the fixed point stops (You et al.'s code: 1e-3)
LOGME_STEPS = 100


def _check(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y)
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"expected an (n, d) array and n labels; got shapes {x.shape} and {y.shape}")
    if len(np.unique(y)) < 2:
        raise ValueError(f"the labels hold {len(np.unique(y))} class; a score needs at least 2")
    return x, y


def logme_evidence(features: np.ndarray, target: np.ndarray, alpha: float, beta: float) -> float:
    """log p(target | features, alpha, beta) of y = F w + e, w ~ N(0, I / alpha), e ~ N(0, I / beta)."""
    f, t = np.asarray(features, np.float64), np.asarray(target, np.float64)
    n, d = f.shape
    a = alpha * np.eye(d) + beta * f.T @ f
    m = beta * np.linalg.solve(a, f.T @ t)
    fit = np.sum((f @ m - t) ** 2)
    return float(n / 2 * np.log(beta) + d / 2 * np.log(alpha) - n / 2 * np.log(2 * np.pi) - beta / 2 * fit
                 - alpha / 2 * m @ m - np.linalg.slogdet(a)[1] / 2)


def _logme_column(u: np.ndarray, s2: np.ndarray, t: np.ndarray, n: int, d: int) -> tuple[float, float, float]:
    """MacKay's fixed point for one label column in the eigenbasis of F'F; returns evidence / n, alpha, beta."""
    z = u.T @ t  # the target's coordinates along the left singular vectors
    rest = t @ t - z @ z  # the part of the target outside the features' span
    alpha, beta = 1.0, 1.0
    for _ in range(LOGME_STEPS):
        gamma = np.sum(beta * s2 / (alpha + beta * s2))
        m2 = np.sum(beta ** 2 * s2 * z ** 2 / (alpha + beta * s2) ** 2)
        fit = np.sum((alpha * z / (alpha + beta * s2)) ** 2) + rest
        new_alpha, new_beta = gamma / max(m2, 1e-300), (n - gamma) / max(fit, 1e-300)
        done = abs(new_alpha - alpha) / alpha < LOGME_TOL and abs(new_beta - beta) / beta < LOGME_TOL
        alpha, beta = new_alpha, new_beta
        if done:
            break
    fit = np.sum((alpha * z / (alpha + beta * s2)) ** 2) + rest
    m2 = np.sum(beta ** 2 * s2 * z ** 2 / (alpha + beta * s2) ** 2)
    logdet = np.sum(np.log(alpha + beta * s2)) + (d - len(s2)) * np.log(alpha)
    evidence = (n / 2 * np.log(beta) + d / 2 * np.log(alpha) - n / 2 * np.log(2 * np.pi) - beta / 2 * fit
                - alpha / 2 * m2 - logdet / 2)
    return float(evidence / n), float(alpha), float(beta)


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME: the maximised log evidence per sample of each one-hot label column, averaged over classes."""
    f, y = _check(features, labels)
    n, d = f.shape
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    keep = s > s.max() * max(n, d) * np.finfo(float).eps  # directions the features do not span add only alpha
    u, s2 = u[:, keep], s[keep] ** 2
    return float(np.mean([_logme_column(u, s2, (y == c).astype(float), n, d)[0] for c in np.unique(y)]))


def _joint(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The empirical joint distribution P(y, z) of target label y and source class z (classes x source)."""
    classes = np.unique(labels)
    return np.stack([probabilities[labels == c].sum(0) for c in classes]) / len(labels)


def leep(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """LEEP: mean log of sum_z P(y_i | z) theta_z(x_i), theta the source head's softmax outputs."""
    p, y = _check(probabilities, labels)
    if (p < 0).any() or not np.allclose(p.sum(1), 1, atol=1e-6):
        raise ValueError("probabilities must be rows of the source head's softmax outputs (non-negative, sum 1)")
    joint = _joint(p, y)
    conditional = joint / np.maximum(joint.sum(0, keepdims=True), 1e-300)  # P(y | z)
    index = np.searchsorted(np.unique(y), y)
    return float(np.mean(np.log(np.sum(conditional[index] * p, axis=1))))


def nce(source_predictions: np.ndarray, labels: np.ndarray) -> float:
    """NCE: -H(Y | Z), Z the source head's hard predictions, from their empirical joint distribution."""
    z, y = np.asarray(source_predictions), np.asarray(labels)
    if z.ndim != 1 or len(z) != len(y):
        raise ValueError(f"expected n source predictions and n labels; got shapes {z.shape} and {y.shape}")
    _, zi = np.unique(z, return_inverse=True)
    _, yi = np.unique(y, return_inverse=True)
    joint = np.zeros((yi.max() + 1, zi.max() + 1))
    np.add.at(joint, (yi, zi), 1 / len(y))
    pz = joint.sum(0, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(joint > 0, joint * np.log(joint / pz), 0.0)
    return float(terms.sum())


def h_score(features: np.ndarray, labels: np.ndarray) -> float:
    """H-score: tr(cov(f)^+ cov(E[f | y])), covariances over the n samples (pseudo-inverse for a singular cov(f))."""
    f, y = _check(features, labels)
    f = f - f.mean(0)
    means = np.stack([f[y == c].mean(0) for c in np.unique(y)])
    per_sample = means[np.searchsorted(np.unique(y), y)]  # E[f | y_i]
    cov_f, cov_means = f.T @ f / len(f), per_sample.T @ per_sample / len(f)
    return float(np.trace(np.linalg.pinv(cov_f, hermitian=True) @ cov_means))


SFDA_STRENGTH = 5.0  # the shrinkage is exp(-5 * the largest eigenvalue of the within-class scatter) (Shao et al.)


def fisher_shrinkage(features: np.ndarray, labels: np.ndarray) -> float:
    """SFDA's adaptive regularisation: exp(-5 lambda_max(S_w)), at least 1e-10 (S_w: prior-weighted class covariances).

    The authors' code takes lambda_max from 3 power iterations; this takes it exactly."""
    return max(float(np.exp(-SFDA_STRENGTH * np.linalg.eigvalsh(_within(features, labels))[-1])), 1e-10)


def _within(f: np.ndarray, y: np.ndarray) -> np.ndarray:
    classes = np.unique(y)
    return sum((y == c).mean() * np.atleast_2d(np.cov(f[y == c].T, bias=True)) for c in classes)


def fisher_probabilities(features: np.ndarray, labels: np.ndarray, shrinkage: float) -> np.ndarray:
    """p(y | x) of the Bayes classifier with Gaussian classes sharing the shrunk within-class scatter
    (1 - s) S_w + s tr(S_w) / d I: regularised Fisher discriminant analysis with every direction kept."""
    f, y = np.asarray(features, np.float64), np.asarray(labels)
    classes = np.unique(y)
    sw = _within(f, y)
    d = sw.shape[0]
    shrunk = (1 - shrinkage) * sw + shrinkage * np.trace(sw) / d * np.eye(d)
    means = np.stack([f[y == c].mean(0) for c in classes])
    coef = np.linalg.solve(shrunk, means.T).T
    priors = np.array([(y == c).mean() for c in classes])
    scores = f @ coef.T - 0.5 * np.sum(means * coef, axis=1) + np.log(priors)
    scores -= scores.max(1, keepdims=True)
    e = np.exp(scores)
    return e / e.sum(1, keepdims=True)


def sfda(features: np.ndarray, labels: np.ndarray) -> float:
    """SFDA: regularised FDA probabilities, softened by a second softmax; each feature mixed towards the mean of
    the other classes' means by one minus its true-class probability (ConfMix); the mean true-class probability
    of a second FDA with the same regularisation on the mixed features."""
    f, y = _check(features, labels)
    classes, index = np.unique(y, return_inverse=True)
    shrinkage = fisher_shrinkage(f, y)
    p = np.exp(fisher_probabilities(f, y, shrinkage))
    p /= p.sum(1, keepdims=True)
    means = np.stack([f[y == c].mean(0) for c in classes])
    others = (means.sum(0) - means) / (len(classes) - 1)
    own = p[np.arange(len(y)), index][:, None]
    mixed = own * f + (1 - own) * others[index]
    return float(fisher_probabilities(mixed, y, shrinkage)[np.arange(len(y)), index].mean())

