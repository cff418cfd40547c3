"""Transferability scores against independent references on small data."""
import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.stats import multivariate_normal

from minima import transferability as tr


@pytest.fixture
def features_and_labels():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    f = rng.standard_normal((60, 5)) + 1.5 * np.eye(5)[y]  # class means apart along the first three axes
    return f, y


def test_logme_equals_a_direct_maximisation_of_the_evidence_over_alpha_and_beta(features_and_labels):
    f, y = features_and_labels
    direct = []
    for c in np.unique(y):
        t = (y == c).astype(float)
        best = minimize(lambda v: -tr.logme_evidence(f, t, np.exp(v[0]), np.exp(v[1])), x0=[0.0, 0.0],
                        method="Nelder-Mead", options=dict(xatol=1e-8, fatol=1e-10, maxiter=4000))
        direct.append(-best.fun / len(y))
    # the fixed point stops at a 1e-3 relative change of alpha and beta; the evidence is flat at its maximum,
    # so it lands within ~1e-6 nats per sample of the optimiser's (checked: 3e-11 here)
    assert tr.logme(f, y) == pytest.approx(np.mean(direct), abs=1e-5)


def test_logme_prefers_features_that_separate_the_classes(features_and_labels):
    f, y = features_and_labels
    noise = np.random.default_rng(1).standard_normal(f.shape)
    assert tr.logme(f, y) > tr.logme(noise, y)


def test_leep_on_a_hand_computed_case():
    # two samples of class 0 with source outputs (0.8, 0.2) and (0.6, 0.4), one of class 1 with (0.1, 0.9)
    theta = np.array([[0.8, 0.2], [0.6, 0.4], [0.1, 0.9]])
    y = np.array([0, 0, 1])
    joint = np.array([[1.4, 0.6], [0.1, 0.9]]) / 3  # P(y, z)
    cond = joint / joint.sum(0)  # P(y | z): columns z
    expected = np.mean([np.log(cond[0] @ theta[0]), np.log(cond[0] @ theta[1]), np.log(cond[1] @ theta[2])])
    assert tr.leep(theta, y) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="softmax"):
        tr.leep(theta * 2, y)


def test_nce_is_zero_when_the_source_predicts_the_label_and_minus_its_entropy_when_independent():
    y = np.array([0, 0, 1, 1])
    assert tr.nce(np.array([5, 5, 7, 7]), y) == pytest.approx(0.0, abs=1e-15)
    assert tr.nce(np.array([5, 7, 5, 7]), y) == pytest.approx(-np.log(2), rel=1e-12)
    # one hand case: z = (a, a, a, b), y = (0, 0, 1, 1): -H(Y|Z) = 3/4 * (2/3 log 2/3 + 1/3 log 1/3)
    assert tr.nce(np.array([1, 1, 1, 2]), y) == pytest.approx(0.75 * (2 / 3 * np.log(2 / 3) + 1 / 3 * np.log(1 / 3)))


def test_the_plain_h_score_equals_its_covariance_formula(features_and_labels):
    f, y = features_and_labels
    centred = f - f.mean(0)
    between = sum((y == c).mean() * np.outer(centred[y == c].mean(0), centred[y == c].mean(0)) for c in np.unique(y))
    expected = np.trace(np.linalg.inv(np.cov(f.T, bias=True)) @ between)
    assert tr.h_score(f, y, shrinkage=0) == pytest.approx(expected, rel=1e-10)


def test_scores_refuse_shapes_that_do_not_pair_and_a_single_class():
    with pytest.raises(ValueError, match="n labels"):
        tr.logme(np.zeros((4, 2)), np.zeros(3))
    with pytest.raises(ValueError, match="at least 2"):
        tr.h_score(np.zeros((4, 2)), np.zeros(4))


def test_sfda_probabilities_are_the_bayes_posterior_of_gaussian_classes_with_the_shrunk_scatter(features_and_labels):
    f, y = features_and_labels
    s = tr.fisher_shrinkage(f, y)
    within = sum((y == c).mean() * np.cov(f[y == c].T, bias=True) for c in range(3))
    assert s == pytest.approx(np.exp(-5 * np.linalg.eigvalsh(within).max()))
    shared = (1 - s) * within + s * np.trace(within) / 5 * np.eye(5)
    density = np.stack([(y == c).mean() * multivariate_normal(f[y == c].mean(0), shared).pdf(f) for c in range(3)], 1)
    assert np.allclose(tr.fisher_probabilities(f, y, s), density / density.sum(1, keepdims=True), rtol=1e-9)


def test_sfda_prefers_features_that_separate_the_classes_and_stays_a_probability(features_and_labels):
    f, y = features_and_labels
    noise = np.random.default_rng(2).standard_normal(f.shape)
    assert 1 / 3 < tr.sfda(f, y) <= 1 and tr.sfda(noise, y) < tr.sfda(f, y)


@pytest.mark.parametrize("separation, theirs", [(0.5, 0.2603961613802504), (1.5, 0.4172619887539224),
                                                (3.0, 0.724217827923423)])
def test_sfda_matches_the_authors_code(separation, theirs):
    """`theirs`: SFDA_Score of TencentARC/SFDA's metrics.py on these features, run once beside ours. Their
    shrinkage takes the largest eigenvalue from 3 power iterations, ours exactly: the scores differ by <= 2e-5."""
    rng = np.random.default_rng(0)
    for s in (0.5, 1.5, 3.0):  # the three data sets were drawn in this order from one generator
        y = np.repeat(np.arange(4), 25)
        f = rng.standard_normal((100, 6)) + s * np.eye(6)[y]
        if s == separation:
            break
    assert tr.sfda(f, y) == pytest.approx(theirs, abs=5e-5)


def _features(n: int, d: int, classes: int, separation: float = 2.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Features with a decaying spectrum, as a network's are, the classes apart along the 10 widest directions."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.arange(classes), rng.integers(0, classes, n - classes)]
    signal = rng.standard_normal((classes, d)) * (np.arange(d) < 10) * separation / np.sqrt(10)
    return (signal[y] + rng.standard_normal((n, d))) / np.sqrt(1 + np.arange(d)), y


def _degenerate(n: int, d: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Rank 6 features, a quarter of the columns duplicated and one constant."""
    f, y = _features(n, 6, classes)
    f = f @ np.random.default_rng(1).standard_normal((6, d))
    f[:, : d // 4] = f[:, d // 4: d // 2]
    f[:, -1] = 3.0
    return f, y


def _case(n: int, d: int, classes: int, change=lambda f: f, names=None) -> tuple[np.ndarray, np.ndarray]:
    """`_features` changed by `change`, the classes renamed to `names`."""
    f, y = _features(n, d, classes)
    return change(f), (y if names is None else np.asarray(names)[y])


CASES = {  # d > n among them: the practitioner's 512 features on a few hundred images
    "wide": lambda: _case(80, 512, 3),
    "wide ReLU in float32, labels 3, 7, 100": lambda: _case(80, 512, 3, lambda f: np.maximum(f, 0).astype(np.float32),
                                                            [3, 7, 100]),
    "square": lambda: _case(60, 60, 4),
    "rank 6, duplicated and constant columns": lambda: _degenerate(60, 40, 3),
    "offset 1e3": lambda: _case(80, 200, 3, lambda f: f + 1e3),
    "column scales 1e-3..1e3": lambda: _case(80, 200, 3, lambda f: f * np.logspace(-3, 3, 200)),
    "narrow": lambda: _case(120, 8, 4),
}


def _direct_logme(f: np.ndarray, y: np.ndarray) -> float:
    """The closed-form log evidence log N(t; 0, F F' / alpha + I / beta) of each one-hot column, maximised by
    Nelder-Mead over (log alpha, log beta); averaged over classes, per sample."""
    n, gram = len(y), f @ f.T
    eig = np.linalg.eigvalsh(gram)
    eig = eig[eig > eig[-1] * 1e-13]
    lams, betas = np.arange(np.log(eig[0]) - 10, np.log(eig[-1]) + 10), np.arange(-2.0, 17.0)
    out = []
    for c in np.unique(y):
        t = (y == c).astype(float)

        def minus_evidence(v):
            cov = gram * np.exp(-v[0]) + np.eye(n) * np.exp(-v[1])
            chol = np.linalg.cholesky(cov)
            a = np.linalg.solve(chol, t)
            return (n * np.log(2 * np.pi) + 2 * np.log(np.diag(chol)).sum() + a @ a) / 2

        # the evidence can have two maxima in log lambda = log alpha - log beta: a grid over (log lambda, log beta),
        # then Nelder-Mead from the best point of every local maximum along log lambda
        grid = np.array([[minus_evidence((lam + b, b)) for b in betas] for lam in lams])
        profile, padded = grid.min(1), np.r_[np.inf, grid.min(1), np.inf]
        peaks = np.flatnonzero((profile <= padded[:-2]) & (profile <= padded[2:]))
        best = np.inf
        for i in peaks:
            x, value = (lams[i] + betas[grid[i].argmin()], betas[grid[i].argmin()]), np.inf
            for _ in range(8):  # Nelder-Mead stalls on the ridge alpha / beta = const: restart it where it stops
                found = minimize(minus_evidence, x, method="Nelder-Mead", options=dict(xatol=1e-8, fatol=1e-10))
                if found.fun > value - 1e-10:
                    break
                x, value = found.x, found.fun
            best = min(best, value, found.fun)
        out.append(-best / n)
    return float(np.mean(out))


@pytest.mark.parametrize("case", CASES)
def test_logme_equals_the_evidence_maximised_directly_for_every_shape(case):
    f, y = CASES[case]()
    # the closed form's Cholesky of an n x n covariance whose condition number reaches 1e10 here (offsets,
    # scales) holds the evidence to about 1e-16 * 1e10 relative; measured up to 1e-8 nats per sample
    assert tr.logme(f, y) == pytest.approx(_direct_logme(np.asarray(f, float), y), abs=1e-6)


def _principal(f: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The centred features' coordinates along their top min(rank, n // C) right singular vectors (by SVD)."""
    x = f - f.mean(0)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    rank = np.sum(s > s[0] * 1e-7)  # singular values are accurate to eps * s[0]; the library's tolerance is below this
    k = min(rank, len(f) // len(np.unique(y)))
    return u[:, :k] * s[:k]


@pytest.mark.parametrize("case", CASES)
def test_h_score_equals_a_well_conditioned_svd_form_with_ledoit_wolfs_covariance(case):
    f, y = CASES[case]()
    x = _principal(np.asarray(f, float), y)
    n, k = x.shape
    cov = x.T @ x / n
    mu = np.trace(cov) / k
    # Ledoit & Wolf 2004: the samples' outer products' dispersion about cov, against cov's about mu I
    noise = sum(np.sum((np.outer(row, row) - cov) ** 2) for row in x) / n ** 2 / k
    spread = np.sum((cov - mu * np.eye(k)) ** 2) / k
    s = min(noise, spread) / spread
    means = np.stack([x[y == c].mean(0) for c in np.unique(y)])
    between = means.T @ np.diag([(y == c).mean() for c in np.unique(y)]) @ means
    expected = np.trace(np.linalg.solve((1 - s) * cov + s * mu * np.eye(k), (1 - s) * between))
    # a solve of a k x k matrix whose condition number the shrinkage holds below 25 here, against a sum over its
    # eigenvalues: each within ~25 k eps of the exact value; measured up to 2e-15
    assert tr.h_score(f, y) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def _authors_sfda(x: np.ndarray, y: np.ndarray) -> float:
    """SFDA as Shao et al.'s code computes it (Gaussian class densities with the shrunk within-class scatter),
    written with explicit densities."""
    classes = np.unique(y)
    index, rows, priors = np.searchsorted(classes, y), np.arange(len(y)), np.array([(y == c).mean() for c in classes])

    def posterior(x, shrinkage):
        within = sum(p * np.cov(x[y == c].T, bias=True) for p, c in zip(priors, classes))
        shrinkage = max(np.exp(-5 * np.linalg.eigvalsh(within)[-1]), 1e-10) if shrinkage is None else shrinkage
        shared = (1 - shrinkage) * within + shrinkage * np.trace(within) / len(within) * np.eye(len(within))
        means = np.stack([x[y == c].mean(0) for c in classes])
        log = np.stack([np.log(p) + multivariate_normal(m, shared).logpdf(x) for p, m in zip(priors, means)], 1)
        e = np.exp(log - log.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True), shrinkage, means

    p, shrinkage, means = posterior(x, None)
    p = np.exp(p) / np.exp(p).sum(1, keepdims=True)
    own = p[rows, index][:, None]
    mixed = own * x + (1 - own) * ((means.sum(0) - means) / (len(classes) - 1))[index]
    return float(posterior(mixed, shrinkage)[0][rows, index].mean())


@pytest.mark.parametrize("case", CASES)
def test_sfda_is_the_authors_formula_on_the_top_principal_coordinates(case):
    f, y = CASES[case]()
    # the same posteriors by a solve and by scipy's Cholesky density, of within-class scatters whose condition
    # numbers stay below 1e2 here: each within ~1e2 eps; measured up to 6e-16
    assert tr.sfda(f, y) == pytest.approx(_authors_sfda(_principal(np.asarray(f, float), y), y), abs=1e-9)


def test_h_score_and_sfda_ignore_a_shift_of_the_features():
    f, y = _features(100, 512, 4)
    shift = 1e3 * np.random.default_rng(3).uniform(-1, 1, 512)
    # centring features of size 1e3 in float64 leaves about 1e3 * 2e-16 of their unit spread: 1e-13 relative
    for score in (tr.h_score, tr.sfda):
        assert score(f + shift, y) == pytest.approx(score(f, y), rel=1e-9)


def test_the_plain_h_score_ignores_a_rescaling_of_each_column():
    f, y = _features(500, 20, 4)
    # column scales 1e-3..1e3 spread the singular values over 1e6; an SVD holds the smallest to 1e6 eps relative
    # (from a Gram matrix's eigenvalues, which hold them to 1e12 eps only, the score is 5e-7 off here)
    scaled = f * np.logspace(-3, 3, 20)
    assert tr.h_score(scaled, y, shrinkage=0) == pytest.approx(tr.h_score(f, y, shrinkage=0), rel=1e-8)


@pytest.mark.parametrize("score", ["logme", "h_score", "sfda", "leep", "nce"])
def test_every_score_ignores_what_the_classes_are_called(score):
    f, y = _features(100, 512, 3)
    renamed = np.array([100, 3, 7])[y]  # the order of the classes changes too
    rng = np.random.default_rng(4)
    p = np.exp(rng.standard_normal((100, 6)) + np.eye(6)[y])
    p /= p.sum(1, keepdims=True)
    inputs = dict(leep=p, nce=p.argmax(1)).get(score, f)
    # the same arithmetic with the classes in another order: sums reordered, so equal to rounding
    assert getattr(tr, score)(inputs, renamed) == pytest.approx(getattr(tr, score)(inputs, y), rel=1e-12, abs=1e-14)


@pytest.mark.parametrize("n, d", [(100, 512), (300, 2048)])
def test_wide_features_give_finite_scores_below_their_ceilings_that_rank_the_better_features_first(n, d):
    weak, y = _features(n, d, 5, separation=1.0)
    strong, _ = _features(n, d, 5, separation=3.0)
    scores = {name: [getattr(tr, name)(f, y) for f in (weak, strong)] for name in ("logme", "h_score", "sfda")}
    assert np.isfinite(np.array(list(scores.values()))).all(), scores
    assert max(scores["h_score"]) < 0.9 * 4 and max(scores["sfda"]) < 0.99, f"at the ceilings C - 1 and 1: {scores}"
    assert all(better > worse for worse, better in scores.values()), scores


def _one_value(f: np.ndarray, column: int, value: float) -> np.ndarray:
    """f with its first sample's value in one column replaced."""
    f = f.copy()
    f[0, column] = value
    return f


@pytest.mark.parametrize("score", [tr.logme, tr.h_score, tr.sfda])
@pytest.mark.parametrize("change, message", [
    (lambda f, y: (_one_value(f, 7, np.nan), y), r"finite; 1 of 300 are NaN or infinite, the first nan at sample 0"),
    (lambda f, y: (_one_value(f, 9, np.inf), y), r"finite; 1 of 300 .* inf at sample 0, column 9"),
    (lambda f, y: (f, np.zeros_like(y) + 4), r"1 class\(es\), \[4\]; a score needs at least 2"),
    (lambda f, y: (f, y + 0.5), r"integers.*0.5 at index 0"),
    (lambda f, y: (np.zeros_like(f), y), r"same for all 30 samples"),
    (lambda f, y: (f, y[:-1]), r"n labels"),
])
def test_feature_scores_refuse_bad_input_naming_the_problem(score, change, message):
    f, y = _features(30, 10, 3)
    with pytest.raises(ValueError, match=message):
        score(*change(f, y))


def test_sfda_refuses_classes_without_spread_and_h_score_a_shrinkage_outside_0_1():
    f, y = _features(30, 10, 3)
    with pytest.raises(ValueError, match="within-class scatter is zero"):
        tr.sfda(f[:3], y[:3])
    with pytest.raises(ValueError, match=r"shrinkage must lie in \[0, 1\].*got 2"):
        tr.h_score(f, y, shrinkage=2)


@pytest.mark.parametrize("probabilities, labels, message", [
    (np.array([[0.5, 0.5], [np.nan, 0.5], [0.2, 0.8]]), [0, 1, 1], r"probabilities must be finite.*nan at sample 1"),
    (np.array([[0.5, 0.5], [0.7, 0.5], [0.2, 0.8]]), [0, 1, 1], r"softmax.*row 1 sums to 1.2"),
    (np.array([[0.5, 0.5], [0.5, 0.5], [0.2, 0.8]]), [2, 2, 2], r"at least 2"),
])
def test_leep_refuses_bad_input_naming_the_problem(probabilities, labels, message):
    with pytest.raises(ValueError, match=message):
        tr.leep(probabilities, np.array(labels))


@pytest.mark.parametrize("predictions, labels, message", [
    ([1, 1, 2, 2], [0, 0, 0, 0], r"1 class\(es\), \[0\]; a score needs at least 2"),
    ([1.5, 1, 2, 2], [0, 0, 1, 1], r"source predictions must be integers.*1.5 at index 0"),
    ([1, 1, 2], [0, 0, 1, 1], r"n labels"),
])
def test_nce_refuses_bad_input_naming_the_problem(predictions, labels, message):
    with pytest.raises(ValueError, match=message):
        tr.nce(np.array(predictions), np.array(labels))
