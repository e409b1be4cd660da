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
