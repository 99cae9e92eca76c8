"""Paired statistics for leaderboards: tests against the best row, bootstrap intervals, Holm, ranks with ties.

Every algorithm of a table is tested on the same episodes (`harness.cells.resolve_cell`), so rows are
compared episode by episode. With `values[s, e]` the final-step metric of seed s on test episode e:

- A row's interval. One seed: the 95% t-interval over episodes (the record's own CI). Several seeds: a
  two-way percentile bootstrap (Owen 2007, "The pigeonhole bootstrap"): each resample draws the seeds
  with replacement, then the episodes with replacement; the episodes are shared by every seed (they are
  the same tasks), so one draw of episodes serves all of them. The interval accounts for both sources
  of variation: a nested draw of episodes within each seed would count the spread of task difficulty
  once per seed and make the interval too narrow by about the square root of the number of seeds.
- Paired tests against a reference row: per row, the values are averaged over its seeds episode by
  episode; on those pairs a two-sided paired t-test (`scipy.stats.ttest_rel`) and a Wilcoxon
  signed-rank test (`scipy.stats.wilcoxon`, zero differences dropped: Wilcoxon 1945). Not done (n/a,
  with the reason) below `MIN_PAIRS` pairs, on non-finite values, or on episodes that differ. Rows equal
  on every episode get p = 1; a difference that is the same non-zero number on every episode, p = 0.
  The tests condition on the trained seeds; the interval of the difference accounts for seeds too.
- The interval of the difference to the reference: the same two-way bootstrap, the seeds of each row
  drawn independently and one draw of episodes applied to both rows, so the pairing is kept.
- Holm's step-down correction (Holm 1979, statsmodels' `multipletests`) across the table's comparisons.
- Ranks with ties at `alpha` on one primary test (`PRIMARY_TEST`, the paired t-test, since rows are
  ranked by their mean): sort the rows by mean, best first. The best remaining row leads a new rank
  group; it is compared with every remaining row that can be paired with it, Holm-adjusted within this
  step, and the rows whose adjusted p >= alpha (not significantly worse) join its group. The group is
  removed and the next best remaining row leads group 2, and so on (ranks 1, 1, 2, 3, 3, ...). A row
  that cannot be tested (no per-episode values) only shares a rank with untestable rows of exactly the
  same mean, and never carries the tie marker.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats as scipy_stats
from statsmodels.stats.multitest import multipletests

#: Fewest pairs a test is done on: with 5 pairs the smallest two-sided Wilcoxon p is 2/32 > 0.05.
MIN_PAIRS = 6
ALPHA = 0.05
TESTS = ("t", "wilcoxon")
PRIMARY_TEST = "t"
TEST_NAMES = {"t": "paired t-test", "wilcoxon": "Wilcoxon signed-rank test"}
N_RESAMPLES = 2000
CONFIDENCE = 0.95
#: Bootstrap draws start from this seed in every call: the same values give the same interval, so a
#: table rebuilt from the same records is byte-identical.
BOOTSTRAP_SEED = 20240611
_CHUNK = 2**22  # numbers per resampling block: bounds memory for long episode lists


@dataclass(frozen=True)
class PairedTest:
    """A paired comparison of `a` with `b` (differences a - b); p-values nan with `reason` when not done."""

    n: int
    mean_difference: float
    t_statistic: float = math.nan
    t_pvalue: float = math.nan
    w_statistic: float = math.nan
    w_pvalue: float = math.nan
    reason: str = ""

    def pvalue(self, test: str) -> float:
        """The p-value of `test` ("t" or "wilcoxon")."""
        return self.t_pvalue if test == "t" else self.w_pvalue


def check_test(test: str, alpha: float) -> None:
    """Raise ValueError unless `test` names a test of `TESTS` and 0 < alpha < 1."""
    if test not in TESTS:
        raise ValueError(f"unknown test {test!r} for ranks with ties; valid: {', '.join(TESTS)}")
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise ValueError(f"alpha must be a number strictly between 0 and 1, got {alpha!r}")


def paired_tests(a: np.ndarray, b: np.ndarray, min_pairs: int = MIN_PAIRS) -> PairedTest:
    """Two-sided paired t-test and Wilcoxon signed-rank test of `a` against `b` (1-D, equal length)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"paired values must be two 1-D arrays of one length, got shapes {a.shape} and "
                         f"{b.shape}")
    n = int(a.size)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return PairedTest(n, math.nan, reason="non-finite values (diverged episodes)")
    diff = a - b
    mean = float(diff.mean()) if n else math.nan
    if n < min_pairs:
        return PairedTest(n, mean, reason=f"only {n} paired episodes (tests need {min_pairs})")
    if not diff.any():
        return PairedTest(n, 0.0, 0.0, 1.0, 0.0, 1.0, reason="equal on every episode")
    nonzero = int(np.count_nonzero(diff))
    if np.ptp(diff) == 0:  # no spread: t is infinite, the difference is certain
        t_stat, t_p, reason = math.copysign(math.inf, mean), 0.0, "the same difference on every episode"
    else:
        with warnings.catch_warnings():  # near-equal rows: scipy warns of precision loss, still answers
            warnings.simplefilter("ignore", RuntimeWarning)
            t = scipy_stats.ttest_rel(a, b)
        t_stat, t_p, reason = float(t.statistic), float(t.pvalue), ""
    if nonzero < min_pairs:
        return PairedTest(n, mean, t_stat, t_p, reason=f"only {nonzero} non-zero differences (Wilcoxon needs "
                                                         f"{min_pairs})")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        w = scipy_stats.wilcoxon(diff, zero_method="wilcox", alternative="two-sided")
    return PairedTest(n, mean, t_stat, t_p, float(w.statistic), float(w.pvalue), reason)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-adjusted p-values (statsmodels); nan entries (tests not done) stay nan and do not count."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, math.nan)
    done = np.isfinite(p)
    if done.any():
        out[done] = multipletests(p[done], alpha=ALPHA, method="holm")[1]
    return out


def _resample_weights(rng: np.random.Generator, size: int, n: int) -> np.ndarray:
    """[size, n] weights of `size` draws of n indices with replacement: how often each was drawn, over n.
    A weighted sum by matmul is then each resample's mean, without gathering the values."""
    drawn = rng.integers(0, n, (size, n)) + np.arange(size)[:, None] * n
    return np.bincount(drawn.ravel(), minlength=size * n).reshape(size, n) / n


def bootstrap_interval(matrices: Sequence[np.ndarray], signs: Sequence[float],
                       confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES,
                       seed: int = BOOTSTRAP_SEED) -> tuple[float, float, float]:
    """(estimate, low, high): a two-way percentile bootstrap of sum_i signs[i] * mean(matrices[i]).

    Each matrix is [seeds, episodes] with the episodes shared by all of them. A resample draws every
    matrix's seeds with replacement (independently) and one set of episodes with replacement for all.
    """
    mats = [np.atleast_2d(np.asarray(m, dtype=float)) for m in matrices]
    if not mats or len(mats) != len(signs):
        raise ValueError("bootstrap_interval needs one sign per matrix and at least one matrix")
    episodes = mats[0].shape[1]
    if episodes == 0 or any(m.shape[1] != episodes or m.shape[0] == 0 for m in mats):
        raise ValueError(f"matrices must be [seeds, episodes] with the same episodes, got "
                         f"{[m.shape for m in mats]}")
    estimate = float(sum(s * m.mean() for s, m in zip(signs, mats, strict=True)))
    if not all(np.isfinite(m).all() for m in mats):
        return estimate, math.nan, math.nan
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK // episodes)
    draws = []
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        episode_w = _resample_weights(rng, size, episodes)
        total = np.zeros(size)
        for sign, m in zip(signs, mats, strict=True):
            total += sign * ((_resample_weights(rng, size, m.shape[0]) @ m) * episode_w).sum(axis=1)
        draws.append(total)
    low, high = np.quantile(np.concatenate(draws), [(1 - confidence) / 2, (1 + confidence) / 2])
    return estimate, float(low), float(high)


@dataclass
class TableStatistics:
    """Per row (in input order): rank, tie marker, the comparison with the best row (`vs_best`, Holm-adjusted
    `t_holm` / `w_holm`, `delta` = (difference, low, high)), its group's `leader` and the Holm-adjusted
    p-value of its test against that leader (`rank_pvalue`, nan for leaders); `reasons`: why a row was not
    compared with the best one."""

    best: int | None
    rank: list[int | None]
    shared: list[bool]
    vs_best: list[PairedTest | None]
    t_holm: np.ndarray
    w_holm: np.ndarray
    delta: list[tuple[float, float, float] | None]
    leader: list[int | None]
    rank_pvalue: np.ndarray
    reasons: list[str] = field(default_factory=list)


def _order(means: np.ndarray, higher: bool) -> list[int]:
    finite = [i for i in range(len(means)) if not math.isnan(means[i])]
    return sorted(finite, key=lambda i: (-means[i] if higher else means[i], i))


def table_statistics(means: Sequence[float], matrices: Sequence[np.ndarray | None], keys: Sequence[Hashable],
                     higher: bool, alpha: float = ALPHA, test: str = PRIMARY_TEST,
                     n_resamples: int = N_RESAMPLES, reasons: Sequence[str] | None = None) -> TableStatistics:
    """Ranks with ties and comparisons with the best row, as the module docstring describes.

    `means[i]` ranks row i; `matrices[i]` is its [seeds, episodes] final-step values (None: untestable,
    `reasons[i]` says why); rows pair only when their `keys` (episode identities) are equal.
    """
    check_test(test, alpha)
    means_a = np.asarray(means, dtype=float)
    n = len(means_a)
    if len(matrices) != n or len(keys) != n:
        raise ValueError("means, matrices and keys must have one entry per row")
    why = list(reasons) if reasons is not None else ["" for _ in range(n)]
    averaged = [None if m is None else np.atleast_2d(m).mean(axis=0) for m in matrices]

    def pairable(i: int, j: int) -> bool:
        return averaged[i] is not None and averaged[j] is not None and keys[i] == keys[j]

    order = _order(means_a, higher)
    best = order[0] if order else None
    vs_best: list[PairedTest | None] = [None] * n
    delta: list[tuple[float, float, float] | None] = [None] * n
    for i in order[1:]:
        if best is not None and pairable(i, best):
            vs_best[i] = paired_tests(averaged[i], averaged[best])
            delta[i] = bootstrap_interval([matrices[i], matrices[best]], [1.0, -1.0], n_resamples=n_resamples)
        elif averaged[i] is not None:
            why[i] = why[i] or ("the best row has no per-episode values" if averaged[best] is None
                                else "tested on other episodes than the best row")
    t_holm = holm([t.t_pvalue if t else math.nan for t in vs_best])
    w_holm = holm([t.w_pvalue if t else math.nan for t in vs_best])
    rank: list[int | None] = [None] * n
    shared, leader = [False] * n, [None] * n
    rank_p = np.full(n, math.nan)
    remaining, group = list(order), 0
    while remaining:
        head, rest = remaining[0], remaining[1:]
        group += 1
        rank_p[head] = math.nan  # a leader's group test is against itself: only members keep theirs
        members = [head]
        if averaged[head] is not None:
            candidates = [j for j in rest if pairable(head, j)]
            p = [paired_tests(averaged[j], averaged[head]).pvalue(test) for j in candidates]
            adjusted = holm(p)
            for j, q in zip(candidates, adjusted, strict=True):
                rank_p[j] = q
                if q >= alpha:  # nan (test not done) never ties
                    members.append(j)
        else:
            members += [j for j in rest if averaged[j] is None and means_a[j] == means_a[head]]
        for j in members:
            rank[j], leader[j] = group, head
            shared[j] = len(members) > 1 and averaged[j] is not None
        remaining = [j for j in rest if j not in members]
    return TableStatistics(best, rank, shared, vs_best, t_holm, w_holm, delta, leader, rank_p, why)


def procedure_note(alpha: float, test: str, n_resamples: int = N_RESAMPLES) -> str:
    """The table note that says how ranks, p-values and the Δ interval were computed."""
    return (f"rank: the best remaining row by mean and every row not significantly worse than it share "
            f"a rank (marked =): two-sided {TEST_NAMES[test]} on the shared test episodes, each row's "
            f"values averaged over its seeds episode by episode, Holm-adjusted within the step, tie at "
            f"p ≥ {alpha:g}; the next best remaining row starts the next rank. Δ vs best: mean difference "
            f"to the best row with a 95% paired bootstrap interval ({n_resamples} resamples of the "
            f"episodes, and of each row's seeds where it has several). p (t) and p (W): paired t-test and "
            f"Wilcoxon signed-rank test (zero differences dropped) against the best row, Holm-adjusted "
            f"across the table; n/a: no per-episode values, or fewer than {MIN_PAIRS} pairs.")
