"""95% confidence intervals (Student t) for the study's means and differences of means.

Every number a study concludes from is a mean over a few runs, so each comes with its interval:

* :func:`mean_interval` -- one mean: ``mean ± t(0.975, n-1) · s / √n``;
* :func:`paired_interval` -- the mean of per-seed differences ``a_s - b_s`` (runs that share their
  data order, augmentation and new parameters, e.g. a ticket and the dense model fine-tuned with
  the same seed): a one-sample t-interval of the differences;
* :func:`proportions_interval` -- two accuracies measured once each on ``n`` test images: the
  only uncertainty left is which images the test split drew (Wald's interval of a difference of
  two proportions, z = 1.96; treated as independent samples, which is conservative when both were
  measured on the same images);
* :func:`welch_interval` -- a linear combination ``Σ c_i · mean_i`` of independent means
  (``a - b``, or a difference of differences), with the Welch–Satterthwaite degrees of freedom.

An :class:`Interval` is *decided* when it excludes zero. With fewer than two runs in a group its
spread is unknown: the interval has no bounds and is never decided. A group whose runs agree
exactly (std 0, e.g. θ_p evaluated without training) adds no width.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

CONFIDENCE = 0.95


class Summary(Protocol):
    """A mean over ``n`` runs and their sample standard deviation (ddof=1)."""

    @property
    def mean(self) -> float: ...
    @property
    def std(self) -> float: ...
    @property
    def n(self) -> int: ...


@dataclass(frozen=True)
class Interval:
    """An estimate with its 95% interval; ``low``/``high`` are None when the spread is unknown."""

    estimate: float
    low: float | None
    high: float | None
    method: str  # "paired", "welch", "binomial" (test sample only) or "t" (one mean)
    df: float | None = None  # degrees of freedom of the t quantile (None: no interval, or no spread)

    @property
    def decided(self) -> bool:
        """Whether the interval excludes zero (the sign of ``estimate`` is then established)."""
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)

    def shifted(self, by: float) -> Interval:
        """The interval of ``estimate + by`` (``by`` a fixed number, e.g. a margin)."""
        low = None if self.low is None else self.low + by
        high = None if self.high is None else self.high + by
        return Interval(self.estimate + by, low, high, self.method, self.df)

    def to_dict(self) -> dict[str, Any]:
        return {
            "estimate": self.estimate,
            "low": self.low,
            "high": self.high,
            "method": self.method,
            "df": self.df,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Interval:
        def maybe(key: str) -> float | None:
            value = data.get(key)
            return None if value is None else float(value)

        return cls(float(data["estimate"]), maybe("low"), maybe("high"), str(data["method"]), maybe("df"))


def projectable(interval: Interval, runs: int) -> bool:
    """Whether :func:`runs_to_decide` can project ``interval``: undecided, with a spread over
    ``runs`` ≥ 2 runs per mean (a t or Welch interval; a binomial one has only the test sample)."""
    return (
        not interval.decided
        and interval.low is not None
        and interval.high is not None
        and interval.df is not None
        and interval.method in ("paired", "t", "welch")
        and runs >= 2
        and interval.high > interval.low
    )


def runs_to_decide(interval: Interval, runs: int, limit: int = 100) -> int | None:
    """How many runs per mean would decide an undecided ``interval`` (over ``runs`` per mean today),
    *if* its estimate and the runs' spread stayed as they are: the smallest count up to ``limit``
    whose interval would exclude zero. A projection, not a promise: a new run moves the estimate.

    The half-width scales as ``t(df') / t(df) · √(runs / runs')``, with ``df' = runs' - 1`` for a
    paired or one-mean interval and Welch's ``df`` scaled by ``runs' / runs``. None when the interval
    is not :func:`projectable` or would need more than ``limit`` runs (its estimate is too close
    to zero)."""
    if not projectable(interval, runs) or interval.estimate == 0:
        return None
    assert interval.low is not None and interval.high is not None and interval.df is not None
    half = (interval.high - interval.low) / 2
    from scipy.stats import t

    counts = list(range(runs + 1, limit + 1))
    if not counts:
        return None
    scale = [count / runs for count in counts]
    dfs = [
        count - 1.0 if interval.method != "welch" else interval.df * k
        for count, k in zip(counts, scale, strict=True)
    ]
    quantiles = t.ppf(0.5 + CONFIDENCE / 2, dfs)
    now = t_quantile(interval.df)
    for count, k, quantile in zip(counts, scale, quantiles, strict=True):
        if half * (float(quantile) / now) / math.sqrt(k) < abs(interval.estimate):
            return count
    return None


def t_quantile(df: float) -> float:
    """The two-sided 95% Student-t quantile ``t(0.975, df)``."""
    from scipy.stats import t  # scipy is a dependency; imported here to keep `import cvlth` light

    return float(t.ppf(0.5 + CONFIDENCE / 2, df))


def _bounds(estimate: float, variance: float, df: float) -> tuple[float, float]:
    half = t_quantile(df) * math.sqrt(variance) if variance > 0 else 0.0
    return estimate - half, estimate + half


def mean_interval(stats: Summary) -> Interval:
    """The 95% interval of one mean (no bounds for a single run)."""
    if stats.n < 2:
        return Interval(stats.mean, None, None, "t")
    df = float(stats.n - 1)
    low, high = _bounds(stats.mean, stats.std**2 / stats.n, df)
    return Interval(stats.mean, low, high, "t", df)


def paired_interval(a: Sequence[float], b: Sequence[float]) -> Interval:
    """The 95% interval of mean(a_s - b_s) over pairs (equal lengths; no bounds for one pair)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired values need equal, non-zero lengths (got {len(a)} and {len(b)})")
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    n = len(diffs)
    mean = math.fsum(diffs) / n
    if n < 2:
        return Interval(mean, None, None, "paired")
    variance = math.fsum((d - mean) ** 2 for d in diffs) / (n - 1)
    low, high = _bounds(mean, variance / n, float(n - 1))
    return Interval(mean, low, high, "paired", float(n - 1))


def proportions_interval(a: float, b: float, n: int) -> Interval:
    """The 95% interval of ``a - b`` for two proportions (accuracies) each measured on ``n`` items."""
    from scipy.stats import norm

    if n < 1 or not (0.0 <= a <= 1.0 and 0.0 <= b <= 1.0):
        raise ValueError(f"proportions in [0, 1] over n >= 1 items needed (got {a}, {b}, n={n})")
    half = float(norm.ppf(0.5 + CONFIDENCE / 2)) * math.sqrt((a * (1 - a) + b * (1 - b)) / n)
    return Interval(a - b, a - b - half, a - b + half, "binomial")


def welch_interval(terms: Sequence[tuple[float, Summary]]) -> Interval:
    """The 95% interval of ``Σ c · mean`` over independent groups ``(c, stats)`` (Welch–Satterthwaite).

    ``[(1, a), (-1, b)]`` is Welch's two-sample interval of ``a - b``. No bounds when a group with a
    non-zero coefficient has a single run (its spread is unknown).
    """
    estimate = math.fsum(c * s.mean for c, s in terms)
    used = [(c, s) for c, s in terms if c != 0]
    if not used or any(s.n < 2 for _, s in used):
        return Interval(estimate, None, None, "welch")
    parts = [c * c * s.std**2 / s.n for c, s in used]
    variance = math.fsum(parts)
    if variance == 0:
        return Interval(estimate, estimate, estimate, "welch")
    df = variance**2 / math.fsum(p * p / (s.n - 1) for p, (_, s) in zip(parts, used, strict=True))
    low, high = _bounds(estimate, variance, df)
    return Interval(estimate, low, high, "welch", df)


def difference(a: Summary, b: Summary) -> Interval:
    """Welch's 95% interval of ``a.mean - b.mean``."""
    return welch_interval([(1.0, a), (-1.0, b)])
