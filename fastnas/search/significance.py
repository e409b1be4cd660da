"""A paired significance test small enough to compute exactly, without SciPy."""

from collections.abc import Sequence


def wilcoxon_signed_rank(differences: Sequence[float]) -> float:
    """Two-sided p-value of the Wilcoxon signed-rank test that paired differences are
    centred on zero. Exact: the null distribution of the positive rank sum is counted
    over all 2^n sign patterns, so it holds for the handful of seeds a search is run
    with. Zero differences are dropped (Wilcoxon's convention); tied magnitudes share
    their average rank."""
    nonzero = [d for d in differences if d != 0]
    n = len(nonzero)
    if n == 0:
        return 1.0
    order = sorted(range(n), key=lambda i: abs(nonzero[i]))
    doubled_rank = [0] * n  # twice the average rank keeps ties integral
    start = 0
    while start < n:
        end = start
        while end + 1 < n and abs(nonzero[order[end + 1]]) == abs(nonzero[order[start]]):
            end += 1
        for k in range(start, end + 1):
            doubled_rank[order[k]] = start + end + 2
        start = end + 1
    observed = sum(r for r, d in zip(doubled_rank, nonzero) if d > 0)
    # counts[s]: sign patterns whose positive doubled ranks sum to s.
    counts = [1] + [0] * sum(doubled_rank)
    for r in doubled_rank:
        for s in range(len(counts) - 1, r - 1, -1):
            counts[s] += counts[s - r]
    total = 2 ** n
    lower = sum(counts[:observed + 1]) / total
    upper = sum(counts[observed:]) / total
    return min(1.0, 2 * min(lower, upper))
