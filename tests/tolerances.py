"""Tolerances for float comparisons in the tests, derived from the arithmetic, not from one machine.

Rounding model (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., sec. 2.2): every
float operation returns the exact result times (1 + d) with |d| <= u, the unit roundoff
(2**-24 in float32, 2**-53 in float64). n such roundings in a row stay within
gamma(n) = n u / (1 - n u) (Lemma 3.1). Every function below returns a bound on
|computed - exact| (or on the difference of two computations of the same exact value, which is
at most the sum of both bounds). These are worst-case bounds: they hold whatever order a kernel,
a thread count or an instruction set (SSE, AVX2, AVX-512, FMA) chooses, so a test using them
does not depend on the CPU or the library version. They are loose (the measured differences
are 10 to 1000 times smaller), and still far below what a real bug moves: each test that uses
one says which bug it was checked to catch.
"""
from __future__ import annotations

from torch import nn

U32 = 2.0 ** -24  # unit roundoff of float32
U64 = 2.0 ** -53  # unit roundoff of float64


def gamma(n: int, u: float = U32) -> float:
    """gamma_n = n u / (1 - n u): the relative effect of n roundings in a row (Higham, Lemma 3.1)."""
    if n * u >= 1:
        raise ValueError(f"n={n} roundings of unit roundoff {u} give no bound (n u >= 1)")
    return n * u / (1 - n * u)


def roundings(n: int, magnitude: float, u: float = U32) -> float:
    """A value computed with at most n roundings, none of an intermediate larger than `magnitude`:
    |computed - exact| <= gamma_n * magnitude."""
    return gamma(n, u) * magnitude


def sum_two_orders(n: int, abs_sum: float, u: float = U32) -> float:
    """Two sums of the same n terms in any two orders (sequential, pairwise, vectorised, threaded):
    each is within gamma_(n-1) * sum|x_i| of the exact sum (Higham, sec. 4.2, eq. 4.4), so they
    differ by at most 2 gamma_n * sum|x_i| (gamma_n also covers one more rounding, e.g. a scale)."""
    return 2 * gamma(n, u) * abs_sum


def mean_two_orders(n: int, abs_mean: float, u: float = U32) -> float:
    """Two means of the same n terms (a sum in any order, then a division by n, one rounding more):
    the sum bound divided by n: 2 gamma_(n+1) * mean|x_i|."""
    return 2 * gamma(n + 1, u) * abs_mean


def running_mean(n: int, max_abs: float, u: float = U32) -> float:
    """A running mean m_k = m_(k-1) + (x_k - m_(k-1)) / k (torch's lerp in SWA's AveragedModel,
    Welford's mean in batchnorm) against the exact mean of n terms no larger than max_abs.

    Each update rounds four times (the weight 1/k, the difference, the product, the sum) on
    intermediates no larger than 2 max_abs (|x_k - m| <= 2 max_abs); an earlier error is carried
    on multiplied by 1 - 1/k <= 1. First order: n gamma_4 2 max_abs <= gamma_(4n) * 2 max_abs."""
    return gamma(4 * n, u) * 2 * max_abs


def dot_two_orders(k: int, abs_dot: float, u: float = U32) -> float:
    """Two computations of a dot product (one element of a matmul or convolution) with inner
    dimension k, in any order: each within gamma_k * sum|a_i b_i| (Higham, eq. 3.5)."""
    return 2 * gamma(k, u) * abs_dot


def accumulations(model: nn.Module) -> tuple[int, int]:
    """(layers, k) of a network: how many convolutions and linear layers it has (every one counted,
    residual branches included: more than the deepest path, so conservative), and the longest
    accumulation any of them does (in_channels / groups x kernel area, or in_features)."""
    layers, k = 0, 1
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            layers, k = layers + 1, max(k, m.in_channels // m.groups * kh * kw)
        elif isinstance(m, nn.Linear):
            layers, k = layers + 1, max(k, m.in_features)
    return layers, k


def forward_pass(model: nn.Module, scale: float, extra: int = 0, u: float = U32) -> float:
    """The outputs (logits) of one network computed two ways, e.g. batched under vmap and one at a
    time, or by different convolution algorithms. A documented rule, not a proof.

    Each layer's accumulations of k terms differ by at most 2 gamma_k relative to what the layer
    computes (dot_two_orders); batchnorm, ReLU, additions and pooling add a few roundings each
    (covered by +4 per layer). The rule assumes that a relative error made in one layer reaches the
    logits no larger, relative to their scale (eval-mode batchnorm renormalises every layer's output,
    ReLU and average pooling do not amplify), so the errors of the L layers add up:
    |difference| <= 2 L gamma_(k+4+extra) * scale, with `scale` the largest |logit| (at least 1).

    `extra`: roundings in each weight before the pass (a weight w' with |w' - w| <= gamma_j |w|
    acts like j more roundings in every dot product it enters: Higham's backward-error view of
    eq. 3.5), e.g. 3 for a + (b - a), or for a lerp, in place of b.

    With width-8 ResNet-18 (21 layers, k = 576) this is about 1.5e-3 relative: 10^4 times the
    measured differences, and 10 to 100 times smaller than the effect of a missing or flipped term.
    """
    layers, k = accumulations(model)
    return 2 * layers * gamma(k + 4 + extra, u) * max(1.0, scale)


def cross_entropy_from_logits(logit_tol: float) -> float:
    """Cross-entropy moves at most 2 x the largest change of any logit: its gradient in the logits,
    softmax(z) - onehot(y), has an L1 norm of at most 2 (so it is 2-Lipschitz in the max norm)."""
    return 2 * logit_tol


def mean_loss_two_ways(model: nn.Module, n: int, logit_scale: float, mean_loss: float,
                       extra: int = 0) -> float:
    """The mean cross-entropy of n images computed two ways (forward passes and the sum over images
    in different orders): the forward-pass rule through cross-entropy, plus two orders of the mean
    of n float32 losses (each per-image loss has a few roundings of its own: log, exp-sum, within
    the forward rule's +4)."""
    forward = cross_entropy_from_logits(forward_pass(model, logit_scale, extra))
    return forward + mean_two_orders(n, abs(mean_loss) + forward)
