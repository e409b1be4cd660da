"""Accuracy/FLOPs Pareto fronts and their 2-D hypervolume."""

from collections.abc import Sequence


def pareto_front(flops: Sequence[float], accuracy: Sequence[float]) -> list[int]:
    """Indices of the points no other point dominates (fewer or equal FLOPs and higher or
    equal accuracy, one of them strictly), sorted by FLOPs. Duplicates keep the first."""
    order = sorted(range(len(flops)), key=lambda i: (flops[i], -accuracy[i]))
    front, best = [], float("-inf")
    for i in order:
        if accuracy[i] > best:
            front.append(i)
            best = accuracy[i]
    return front


def hypervolume(flops: Sequence[float], accuracy: Sequence[float], ref_flops: float, ref_accuracy: float) -> float:
    """Area dominated by the points and bounded by the reference point (ref_flops at or
    above the largest FLOPs, ref_accuracy at or below the lowest accuracy)."""
    front = pareto_front(flops, accuracy)
    area = 0.0
    for k, i in enumerate(front):
        if flops[i] >= ref_flops or accuracy[i] <= ref_accuracy:
            continue
        next_flops = ref_flops
        for j in front[k + 1:]:
            next_flops = min(flops[j], ref_flops)
            break
        area += (next_flops - flops[i]) * (accuracy[i] - ref_accuracy)
    return area


def nondominated_ranks(points: Sequence[Sequence[float]]) -> list[int]:
    """Every point's non-dominated front (0 = not dominated), all coordinates minimised.
    Deb et al.'s fast sort: O(M N^2) for N points of M objectives."""
    n = len(points)
    dominated_by_count = [0] * n
    dominates: list[list[int]] = [[] for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            if _dominates(points[i], points[j]):
                dominates[i].append(j)
                dominated_by_count[j] += 1
            elif _dominates(points[j], points[i]):
                dominates[j].append(i)
                dominated_by_count[i] += 1
    ranks = [0] * n
    front = [i for i in range(n) if dominated_by_count[i] == 0]
    rank = 0
    while front:
        following = []
        for i in front:
            ranks[i] = rank
            for j in dominates[i]:
                dominated_by_count[j] -= 1
                if dominated_by_count[j] == 0:
                    following.append(j)
        front, rank = following, rank + 1
    return ranks


def _dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def crowding_distances(points: Sequence[Sequence[float]]) -> list[float]:
    """NSGA-II's crowding distance of each point of one front: per objective, the gap
    between its two neighbours over the objective's range; the extremes are infinite so
    the front's ends are always kept."""
    n = len(points)
    distance = [0.0] * n
    if n == 0:
        return distance
    for m in range(len(points[0])):
        order = sorted(range(n), key=lambda i: points[i][m])
        low, high = points[order[0]][m], points[order[-1]][m]
        distance[order[0]] = distance[order[-1]] = float("inf")
        if high == low:
            continue
        for k in range(1, n - 1):
            distance[order[k]] += (points[order[k + 1]][m] - points[order[k - 1]][m]) / (high - low)
    return distance
