"""Tests for harness.stats: statistics vs hand computations on small fixed inputs; ties; bootstrap."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from harness import stats

A = np.array([0.61, 0.48, 0.76, 0.55, 0.70, 0.52])
B = np.array([0.50, 0.51, 0.66, 0.41, 0.58, 0.37])  # differences 0.11 -0.03 0.10 0.14 0.12 0.15


def test_paired_t_equals_the_textbook_formula() -> None:
    d = [a - b for a, b in zip(A, B, strict=True)]
    n = len(d)
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    t = mean / (sd / math.sqrt(n))  # Student (1908): mean difference over its standard error
    p = 2 * scipy_stats.t.sf(abs(t), n - 1)  # the distribution's tail, not the test under check
    result = stats.paired_tests(A, B)
    assert result.n == 6 and result.mean_difference == pytest.approx(mean)
    assert result.t_statistic == pytest.approx(t) and result.t_pvalue == pytest.approx(p)
    assert t == pytest.approx(3.6746, abs=1e-3) and p == pytest.approx(0.01437, abs=1e-4)
    assert result.reason == ""


def _exact_wilcoxon(d: list[float]) -> tuple[float, float]:
    """(min(W+, W-), two-sided exact p) by enumerating all 2^n sign assignments of the ranks of |d|."""
    ranks = scipy_stats.rankdata(np.abs(d))
    w_plus = sum(r for r, x in zip(ranks, d, strict=True) if x > 0)
    centre = ranks.sum() / 2
    observed = abs(w_plus - centre)
    extreme = sum(1 for signs in itertools.product((0, 1), repeat=len(d))
                  if abs(sum(r for r, s in zip(ranks, signs, strict=True) if s) - centre) >= observed - 1e-12)
    return min(w_plus, ranks.sum() - w_plus), extreme / 2 ** len(d)


def test_wilcoxon_equals_the_enumeration_of_sign_assignments() -> None:
    d = list(A - B)  # six distinct |d|, one negative: W- = rank of 0.03 = 1
    w, p = _exact_wilcoxon(d)
    assert (w, p) == (1.0, pytest.approx(4 / 64))  # {W+ = 21, 20} and their mirrors {0, 1}
    result = stats.paired_tests(A, B)
    assert result.w_statistic == w and result.w_pvalue == pytest.approx(p)


def test_wilcoxon_drops_zero_differences() -> None:
    a, b = np.append(A, 0.4), np.append(B, 0.4)  # a seventh pair with no difference
    w, p = _exact_wilcoxon(list(A - B))
    result = stats.paired_tests(a, b)
    assert result.n == 7 and result.w_statistic == w and result.w_pvalue == pytest.approx(p)
    few = stats.paired_tests(np.append(A[:5], 0.4), np.append(B[:5], 0.4))
    assert math.isnan(few.w_pvalue) and "5 non-zero differences" in few.reason
    assert math.isfinite(few.t_pvalue)  # the t-test still counts the zero difference


def test_holm_by_hand() -> None:
    p = [0.01, 0.04, 0.03, 0.005]
    # Sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04; made monotone: 0.04 -> 0.06.
    assert stats.holm(p).tolist() == pytest.approx([0.03, 0.06, 0.06, 0.02])
    out = stats.holm([0.01, math.nan, 0.04])  # a test not done neither counts nor changes
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)
    assert stats.holm([0.3, 0.9]).tolist() == pytest.approx([0.6, 0.9])
    assert np.isnan(stats.holm([math.nan])).all() and stats.holm([]).size == 0


def test_degenerate_pairs_say_why() -> None:
    same = stats.paired_tests(A, A.copy())
    assert (same.t_pvalue, same.w_pvalue, same.reason) == (1.0, 1.0, "equal on every episode")
    shifted = stats.paired_tests(A + 0.25, A)
    assert shifted.t_pvalue == 0.0 and shifted.t_statistic == math.inf and "same difference" in shifted.reason
    assert shifted.w_pvalue == pytest.approx(2 / 64)  # all six differences positive: exact two-sided
    short = stats.paired_tests(A[:5], B[:5])
    assert math.isnan(short.t_pvalue) and math.isnan(short.w_pvalue) and "only 5 paired" in short.reason
    diverged = stats.paired_tests(np.append(A, math.inf), np.append(B, 1.0))
    assert math.isnan(diverged.t_pvalue) and "non-finite" in diverged.reason
    with pytest.raises(ValueError, match="1-D arrays of one length"):
        stats.paired_tests(A, B[:4])


def test_check_test_names_what_is_valid() -> None:
    with pytest.raises(ValueError, match=r"unknown test 'z'.*valid: t, wilcoxon"):
        stats.check_test("z", 0.05)
    with pytest.raises(ValueError, match="strictly between 0 and 1, got 1.5"):
        stats.check_test("t", 1.5)
    stats.check_test("wilcoxon", 0.01)


def _rows(*means_noise: tuple[float, float], episodes: int = 200, seeds: int = 1) -> list[np.ndarray]:
    """Rows sharing episode difficulties (the same tasks), each shifted by its mean plus its own noise."""
    rng = np.random.default_rng(7)
    difficulty = rng.normal(0.0, 1.0, episodes)
    return [mean + difficulty + rng.normal(0.0, noise, (seeds, episodes)) for mean, noise in means_noise]


def _ranks(matrices: list[np.ndarray | None], means: list[float] | None = None, higher: bool = False,
           keys: list[object] | None = None, **kw: object) -> stats.TableStatistics:
    means = means or [float(m.mean()) for m in matrices]
    return stats.table_statistics(means, matrices, keys or [0] * len(matrices), higher, **kw)


def test_identical_rows_share_rank_one_and_a_clearly_worse_row_is_second() -> None:
    best, worse = _rows((0.0, 0.1), (1.0, 0.1))
    result = _ranks([worse, best, best.copy()])
    assert result.rank == [2, 1, 1] and result.shared == [False, True, True]
    assert result.best == 1 and result.leader == [0, 1, 1]
    assert result.vs_best[2].t_pvalue == 1.0 and result.t_holm[0] < 1e-10
    delta, low, high = result.delta[0]
    assert delta == pytest.approx(float((worse - best).mean())) and low < delta < high
    assert result.vs_best[1] is None and result.delta[1] is None  # the best row is the reference


def test_three_rank_groups_stepwise() -> None:
    # a and b within noise; c and d within noise of each other, both far from a; e far from everything.
    a, b, c, d, e = _rows((0.0, 0.5), (0.01, 0.5), (1.0, 0.5), (1.01, 0.5), (3.0, 0.5))
    result = _ranks([e, d, c, b, a])
    assert result.rank == [3, 2, 2, 1, 1]
    assert result.shared == [False, True, True, True, True]
    # Group 2 is led by the better of c and d, and the other is compared with it, not with the best row.
    lead2, lead1 = result.leader[1], result.leader[3]
    assert result.leader[2] == lead2 in (1, 2) and result.leader[4] == lead1 in (3, 4)
    assert result.best == lead1
    other = 3 - lead2
    matrices = [e, d, c, b, a]
    # Each step's p-values are Holm-adjusted within that step: group 2's one test stands alone.
    raw = scipy_stats.ttest_rel(matrices[other].mean(axis=0), matrices[lead2].mean(axis=0)).pvalue
    assert result.rank_pvalue[other] == pytest.approx(raw)
    others = [i for i in range(5) if i != lead1]
    step_one = [scipy_stats.ttest_rel(matrices[i].mean(axis=0), matrices[lead1].mean(axis=0)).pvalue
                for i in others]
    assert result.t_holm[others].tolist() == pytest.approx(stats.holm(step_one).tolist())


def test_higher_is_better_and_the_wilcoxon_option() -> None:
    low, high, near = _rows((0.0, 0.1), (0.5, 0.1), (0.49, 0.1))
    result = _ranks([low, high, near], higher=True, test="wilcoxon")
    best = 1 if high.mean() > near.mean() else 2  # the higher mean leads, whichever its noise made it
    other = 3 - best
    assert result.rank == [2, 1, 1] and result.best == best == result.leader[other]
    # The group test is the Wilcoxon test here; a leader has none of its own.
    assert result.rank_pvalue[other] == pytest.approx(result.w_holm[other])
    assert math.isnan(result.rank_pvalue[0]) and math.isnan(result.rank_pvalue[best])
    assert result.w_holm[0] < 1e-10


def test_alpha_decides_a_borderline_tie() -> None:
    a, b = _rows((0.0, 0.5), (0.1, 0.5), episodes=100)
    p = scipy_stats.ttest_rel(b[0], a[0]).pvalue
    assert 0.001 < p < 0.5  # borderline by construction: the choice of alpha decides
    assert _ranks([a, b], alpha=p * 1.01).rank == [1, 2]
    assert _ranks([a, b], alpha=p * 0.99).rank == [1, 1]


def test_untestable_rows_are_ranked_by_mean_and_never_marked() -> None:
    a, b = _rows((0.0, 0.1), (0.0, 0.1))
    result = _ranks([a, None, b, None], means=[0.0, 0.5, 0.001, 0.5],
                    reasons=["", "no per-episode values", "", "no per-episode values"])
    assert result.rank == [1, 2, 1, 2] and result.shared == [True, False, True, False]
    assert result.vs_best[1] is None and result.reasons[1] == "no per-episode values"
    other = _ranks([a, b], means=[0.0, 0.1], keys=["episodes-1", "episodes-2"])  # not the same episodes
    assert other.rank == [1, 2] and other.vs_best[1] is None and "other episodes" in other.reasons[1]
    old_best = _ranks([None, a], means=[-1.0, 0.0])
    assert old_best.rank == [1, 2] and "best row has no per-episode values" in old_best.reasons[1]
    assert _ranks([None, None], means=[math.nan, 1.0]).rank == [None, 1]


def test_bootstrap_is_deterministic_and_seeded() -> None:
    (m,) = _rows((0.0, 0.3), seeds=3, episodes=50)
    first = stats.bootstrap_interval([m], [1.0], n_resamples=500)
    assert first == stats.bootstrap_interval([m.copy()], [1.0], n_resamples=500)
    assert first != stats.bootstrap_interval([m], [1.0], n_resamples=500, seed=1)
    assert first[0] == pytest.approx(m.mean()) and first[1] < first[0] < first[2]


def test_one_seed_bootstrap_agrees_with_scipys_percentile_bootstrap() -> None:
    x = np.random.default_rng(3).gamma(2.0, 1.0, 80)
    _, low, high = stats.bootstrap_interval([x[None, :]], [1.0], n_resamples=4000)
    ref = scipy_stats.bootstrap((x,), np.mean, n_resamples=4000, method="percentile",
                                random_state=np.random.default_rng(0)).confidence_interval
    se = x.std(ddof=1) / math.sqrt(x.size)
    assert low == pytest.approx(ref.low, abs=0.1 * se) and high == pytest.approx(ref.high, abs=0.1 * se)


def test_paired_difference_interval_keeps_the_pairing() -> None:
    (m,) = _rows((0.0, 0.0))
    _, low, high = stats.bootstrap_interval([m + 0.3, m], [1.0, -1.0])
    assert low == pytest.approx(0.3) and high == pytest.approx(0.3)  # a constant shift is certain
    a, b = _rows((0.0, 0.05), (0.1, 0.05))
    _, low, high = stats.bootstrap_interval([b, a], [1.0, -1.0])
    _, row_low, row_high = stats.bootstrap_interval([a], [1.0])
    assert low < 0.1 < high and high - low < 0.2 * (row_high - row_low)  # shared difficulty cancels


def test_two_way_bootstrap_covers_the_mean_of_crossed_seeds_and_episodes() -> None:
    """Data like the harness's: seed effects, episode effects shared by every seed, noise. The interval
    must cover the true mean at about its nominal rate (conservative is allowed, far below is not)."""
    rng = np.random.default_rng(11)
    seeds, episodes, trials, covered, widths = 5, 40, 200, 0, []
    for _ in range(trials):
        x = (rng.normal(0, 0.5, (seeds, 1)) + rng.normal(0, 1.0, (1, episodes))
             + rng.normal(0, 0.3, (seeds, episodes)))
        _, low, high = stats.bootstrap_interval([x], [1.0], n_resamples=400, seed=int(rng.integers(2**31)))
        covered += low <= 0.0 <= high
        widths.append(high - low)
    true_sd = math.sqrt(0.5**2 / seeds + 1.0 / episodes + 0.3**2 / (seeds * episodes))
    assert 0.85 <= covered / trials <= 1.0
    assert 0.8 < np.mean(widths) / (2 * 1.96 * true_sd) < 1.3


def test_bootstrap_rejects_mismatched_episodes() -> None:
    with pytest.raises(ValueError, match="same episodes"):
        stats.bootstrap_interval([np.zeros((2, 5)), np.zeros((2, 4))], [1.0, -1.0])
    nan = stats.bootstrap_interval([np.array([[1.0, math.inf]])], [1.0])
    assert math.isnan(nan[1]) and math.isnan(nan[2])


def test_procedure_note_states_alpha_and_test() -> None:
    note = stats.procedure_note(0.01, "wilcoxon")
    assert "Wilcoxon signed-rank test on the shared test episodes" in note and "p ≥ 0.01" in note
    assert "Holm" in note and f"fewer than {stats.MIN_PAIRS} pairs" in note
