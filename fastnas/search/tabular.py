"""Search strategies run against a tabular oracle (NAS-Bench-201): no training, so a
strategy is judged in seconds by how much of the true accuracy/FLOPs Pareto front it
recovers within a query budget."""

from dataclasses import dataclass, field

from fastnas.search.pareto import hypervolume, pareto_front
from fastnas.search.policies import RewardFunction, make_policy
from fastnas.search.rewards import CasSchedule
from fastnas.spaces.nasbench201 import TabularBenchmark


@dataclass
class TabularResult:
    strategy: str
    queried: dict[tuple[int, ...], tuple[float, float]] = field(default_factory=dict)  # arch -> (flops, acc)
    hypervolume_ratio: float = 0.0

    @property
    def queries(self) -> int:
        return len(self.queried)


def default_tabular_schedule(benchmark: TabularBenchmark, budget: int, samples_per_step: int) -> CasSchedule:
    """CAS over the benchmark's whole FLOPs range, its steps sized to the budget."""
    flops = [benchmark.space.flops(a) for a in benchmark.accuracy]
    steps = max(3, budget // samples_per_step)
    n_warm = max(1, steps // 10)
    n_slow = max(1, steps * 3 // 10)
    return CasSchedule(
        f_min=min(flops), f_max=max(flops), period=max(2, steps // 5),
        n_warm=n_warm, n_slow=n_slow, n_fast=steps - n_warm - n_slow,
    )


def true_front_reference(benchmark: TabularBenchmark) -> tuple[float, float, float]:
    """(hypervolume of the true front, reference FLOPs, reference accuracy). The
    reference accuracy is the table's median: with the minimum (a broken cell near
    10%), one good cheap cell would cover almost all the area and every strategy
    would score near 1."""
    archs = list(benchmark.accuracy)
    flops = [benchmark.space.flops(a) for a in archs]
    accuracy = [benchmark.accuracy[a] for a in archs]
    ref_flops, ref_accuracy = max(flops), sorted(accuracy)[len(accuracy) // 2]
    return hypervolume(flops, accuracy, ref_flops, ref_accuracy), ref_flops, ref_accuracy


def tabular_search(
    benchmark: TabularBenchmark,
    strategy: str = "cas",
    budget: int = 1000,
    samples_per_step: int = 10,
    schedule: CasSchedule | None = None,
    seed: int = 0,
    **controller_options,
) -> TabularResult:
    """Runs ``strategy`` until ``budget`` distinct architectures were queried (or the
    schedule ends). Rewards use accuracy as a fraction; accuracies are stored in %."""
    if budget < 1:
        raise ValueError(f"budget must be >= 1 query, got {budget}")
    space = benchmark.space
    schedule = schedule or default_tabular_schedule(benchmark, budget, samples_per_step)
    reward_fn = RewardFunction(strategy, schedule)
    policy = make_policy(strategy, space.decisions, seed=seed, **controller_options)
    result = TabularResult(strategy)
    step = 0
    while result.queries < budget and step < schedule.total_steps:
        sample = policy.sample(samples_per_step)
        rewards = []
        for arch in sample.archs:
            if arch not in result.queried:
                if result.queries >= budget:
                    break
                result.queried[arch] = (space.flops(arch), benchmark.query(arch))
            flops, accuracy = result.queried[arch]
            rewards.append(reward_fn(accuracy / 100, flops, step))
        if len(rewards) == len(sample.archs):
            policy.update(sample, rewards)
        step += 1
    true_hv, ref_flops, ref_accuracy = true_front_reference(benchmark)
    found_flops = [v[0] for v in result.queried.values()]
    found_accuracy = [v[1] for v in result.queried.values()]
    result.hypervolume_ratio = hypervolume(found_flops, found_accuracy, ref_flops, ref_accuracy) / true_hv
    return result


__all__ = ["TabularResult", "default_tabular_schedule", "pareto_front", "tabular_search", "true_front_reference"]
