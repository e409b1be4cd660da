"""Search strategies run against a tabular oracle (NAS-Bench-201): no training, so a
strategy is judged in seconds by how much of the true accuracy/FLOPs Pareto front it
recovers within a query budget.

The budget counts distinct architectures queried. Re-sampling a known architecture is
free (its result is looked up), so a converging controller keeps learning without
spending budget; the CAS schedule therefore advances with the share of the budget spent,
not with controller steps.
"""

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from fastnas.search.pareto import hypervolume, pareto_front
from fastnas.search.policies import (POPULATION_STRATEGIES, REINFORCE_STRATEGIES, RewardFunction, make_policy,
                                     population_options)
from fastnas.search.rewards import CasSchedule
from fastnas.search.significance import wilcoxon_signed_rank
from fastnas.spaces.tabular import TabularBenchmark

# A controller that has collapsed onto architectures it already queried would loop
# forever; stop after this many samples per unit of budget.
MAX_SAMPLES_PER_QUERY = 20
# The seed's lr (1e-3) is for 300 controller updates; a 500-query budget gives about 50,
# so the tabular loop moves the controller proportionally faster.
TABULAR_CONTROLLER_LR = 1e-2
TABULAR_ANNEAL_ALPHA = 0.25
TABULAR_SAMPLES_PER_STEP = 10  # the seed's N
# The reports say how much of a table's score hangs on this many of its best architectures.
TOP_ARCHITECTURES = 3


@dataclass
class TabularResult:
    strategy: str
    queried: dict[tuple[int, ...], tuple[float, float]] = field(default_factory=dict)  # arch -> (flops, acc)
    hypervolume_ratio: float = 0.0
    controller_steps: int = 0

    @property
    def queries(self) -> int:
        return len(self.queried)


def default_tabular_schedule(benchmark: TabularBenchmark, budget: int, samples_per_step: int) -> CasSchedule:
    """CAS over the benchmark's whole FLOPs range, sized to the budget. No warm phase:
    it exists to train the supernet near F_min, and a tabular oracle has no supernet.
    Slow and fast anneal keep the seed's 1:4 split; two cycles over the budget.

    The seed's alpha = 2 sets delta to a quarter of a narrow window (80M..120M). Over
    NAS-Bench-201's 28x range that penalty is so steep that one 1x1 -> 3x3 swap (27.5M)
    cuts the reward by 40%, far more than any accuracy difference among good cells, so
    the controller learns FLOPs, which are free to compute, and not accuracy. alpha =
    0.25 (delta twice the range) keeps both terms of Eq. 3 comparable; it was chosen
    on seeds 0-9 and is reported on seeds 10-29 (README)."""
    flops = [benchmark.flops(a) for a in benchmark.accuracy]
    steps = max(2, budget // samples_per_step)
    n_slow = max(1, steps // 5)
    return CasSchedule(f_min=min(flops), f_max=max(flops), period=max(2, steps // 2),
                       n_warm=0, n_slow=n_slow, n_fast=steps - n_slow, anneal_alpha=TABULAR_ANNEAL_ALPHA)


def true_front_reference(benchmark: TabularBenchmark) -> tuple[float, float, float]:
    """(hypervolume of the true front, reference FLOPs, reference accuracy). The
    reference accuracy is the table's median: with the minimum (a broken cell near
    10%), one good cheap cell would cover almost all the area and every strategy
    would score near 1."""
    archs = list(benchmark.accuracy)
    flops = [benchmark.flops(a) for a in archs]
    accuracy = [benchmark.accuracy[a] for a in archs]
    ref_flops, ref_accuracy = max(flops), sorted(accuracy)[len(accuracy) // 2]
    return hypervolume(flops, accuracy, ref_flops, ref_accuracy), ref_flops, ref_accuracy


def ratio_without_the_best(benchmark: TabularBenchmark, count: int) -> float:
    """The hypervolume ratio a search scores that finds every architecture of the table
    except its ``count`` most accurate: how much of the table's score hangs on them."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    true_hv, ref_flops, ref_accuracy = true_front_reference(benchmark)
    rest = sorted(benchmark.accuracy, key=benchmark.accuracy.get, reverse=True)[count:]
    return hypervolume([benchmark.flops(a) for a in rest], [benchmark.accuracy[a] for a in rest],
                       ref_flops, ref_accuracy) / true_hv


def anytime_hypervolume_ratios(result: "TabularResult", benchmark: TabularBenchmark,
                               queries: Sequence[int]) -> list[float]:
    """The hypervolume ratio of the front found by each prefix of the run's queries, one
    per entry of ``queries`` (each at most ``result.queries``). mobo and random search
    do not depend on the budget, so for them a prefix of q queries is the run with budget
    q; the controller and population strategies size their schedule to the budget."""
    if any(q < 1 or q > result.queries for q in queries):
        raise ValueError(f"queries must lie in 1..{result.queries} (the run's queries), got {list(queries)}")
    true_hv, ref_flops, ref_accuracy = true_front_reference(benchmark)
    points = list(result.queried.values())  # in the order they were queried
    return [hypervolume([f for f, _ in points[:q]], [a for _, a in points[:q]], ref_flops, ref_accuracy) / true_hv
            for q in queries]


def default_sms_target(benchmark: TabularBenchmark) -> float:
    """The table's median FLOPs: SMS then looks for the most accurate architecture in the
    cheaper half of the space. (The largest FLOPs would penalise nothing, and SMS would
    be the ENAS reward.)"""
    flops = sorted(benchmark.flops(a) for a in benchmark.accuracy)
    return flops[len(flops) // 2]


def tabular_search(
    benchmark: TabularBenchmark,
    strategy: str = "cas",
    budget: int = 500,
    samples_per_step: int = TABULAR_SAMPLES_PER_STEP,
    schedule: CasSchedule | None = None,
    seed: int = 0,
    sms_target: float | None = None,
    **policy_options,
) -> TabularResult:
    """Runs ``strategy`` until ``budget`` distinct architectures were queried. Rewards
    use accuracy as a fraction; accuracies are stored in %. ``policy_options`` go to the
    policy (controller or population options) over the defaults derived from the budget;
    ``sms_target`` defaults to the table's median FLOPs."""
    if budget < 1:
        raise ValueError(f"budget must be >= 1 query, got {budget}")
    if samples_per_step < 1:
        raise ValueError(f"samples_per_step must be >= 1, got {samples_per_step}")
    space = benchmark.space
    schedule = schedule or default_tabular_schedule(benchmark, budget, samples_per_step)
    reward_fn = RewardFunction(strategy, schedule, sms_target or default_sms_target(benchmark))
    budget = min(budget, len(benchmark))
    if strategy in POPULATION_STRATEGIES:
        policy_options = {**population_options(strategy, budget), **policy_options}
    elif strategy in REINFORCE_STRATEGIES:
        policy_options.setdefault("lr", TABULAR_CONTROLLER_LR)
    # A table holding part of its space (a user's trained sample) is searched through its
    # rows; mobo always takes them, as its pool.
    if strategy == "mobo":
        policy_options = {"flops": benchmark.flops, **policy_options}
    if strategy == "mobo" or not benchmark.complete:
        policy_options = {"candidates": list(benchmark.accuracy), **policy_options}
    try:
        policy = make_policy(strategy, space.decisions, seed=seed, **policy_options)
    except ValueError as error:
        if benchmark.complete:
            raise
        raise ValueError(f"{benchmark.name} holds {len(benchmark)} of the {benchmark.space.size()} "
                         f"architectures of its space: {error}") from None
    result = TabularResult(strategy)
    max_steps = MAX_SAMPLES_PER_QUERY * budget // samples_per_step + 1
    while result.queries < budget and result.controller_steps < max_steps:
        position = min(schedule.total_steps - 1, result.queries * schedule.total_steps // budget)
        sample = policy.sample(samples_per_step)
        rewards, objectives = [], []
        for arch in sample.archs:
            if arch not in result.queried:
                if result.queries >= budget:
                    break
                result.queried[arch] = (benchmark.flops(arch), benchmark.query(arch))
            flops, accuracy = result.queried[arch]
            rewards.append(reward_fn(accuracy / 100, flops, position))
            objectives.append((accuracy / 100, flops))
        if len(rewards) == len(sample.archs):
            policy.update(sample, rewards, objectives)
        result.controller_steps += 1
    true_hv, ref_flops, ref_accuracy = true_front_reference(benchmark)
    found_flops = [v[0] for v in result.queried.values()]
    found_accuracy = [v[1] for v in result.queried.values()]
    result.hypervolume_ratio = hypervolume(found_flops, found_accuracy, ref_flops, ref_accuracy) / true_hv
    return result


@dataclass(frozen=True)
class PairedTest:
    """One strategy against another over the same seeds."""
    wins: int  # seeds on which the strategy's hypervolume ratio is higher
    ties: int
    seeds: int
    mean_difference: float
    p_value: float  # two-sided exact Wilcoxon signed-rank test


@dataclass(frozen=True)
class StrategyComparison:
    strategy: str
    runs: tuple[TabularResult, ...]  # one per seed
    seeds: tuple[int, ...]

    @property
    def hypervolume_ratios(self) -> list[float]:
        return [run.hypervolume_ratio for run in self.runs]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.hypervolume_ratios)

    @property
    def stdev(self) -> float:
        return statistics.stdev(self.hypervolume_ratios) if len(self.runs) > 1 else 0.0

    def against(self, other: "StrategyComparison") -> PairedTest:
        """Paired by seed, one difference per seed; the test asks whether the differences
        are centred on zero."""
        if self.seeds != other.seeds:
            raise ValueError(f"{self.strategy} and {other.strategy} ran different seeds; compare them on the same ones")
        differences = [a - b for a, b in zip(self.hypervolume_ratios, other.hypervolume_ratios)]
        return PairedTest(sum(d > 0 for d in differences), sum(d == 0 for d in differences), len(differences),
                          statistics.fmean(differences), wilcoxon_signed_rank(differences))


def compare_strategies(benchmark: TabularBenchmark, strategies: Sequence[str], budget: int,
                       seeds: Sequence[int], schedule: CasSchedule | None = None,
                       sms_target: float | None = None) -> list[StrategyComparison]:
    """Each strategy over the same seeds and budget: one seed is noise (random search
    alone spans 0.85..0.94 hypervolume ratio at 500 queries)."""
    if not seeds:
        raise ValueError("compare_strategies needs at least one seed")
    seeds = tuple(seeds)
    return [StrategyComparison(s, tuple(tabular_search(benchmark, s, budget=budget, schedule=schedule, seed=k,
                                                       sms_target=sms_target)
                                        for k in seeds), seeds)
            for s in strategies]


def comparison_table(comparisons: Sequence[StrategyComparison], baseline: str = "random") -> str:
    """A readable table: mean ± sd of the hypervolume ratio, and against ``baseline``
    (when it ran) the seeds won and the paired test's p-value."""
    base = next((c for c in comparisons if c.strategy == baseline), None)
    lines = [f"{'strategy':>10}  {'mean':>6}  {'sd':>6}" + (f"  wins vs {baseline}  p (Wilcoxon)" if base else "")]
    for c in comparisons:
        line = f"{c.strategy:>10}  {c.mean:.4f}  {c.stdev:.4f}"
        if base is not None and c is not base:
            test = c.against(base)
            line += f"  {test.wins:>4}/{test.seeds:<{len(baseline) + 4}}  {test.p_value:.3g}"
        lines.append(line)
    return "\n".join(lines)


__all__ = ["PairedTest", "StrategyComparison", "TabularResult", "anytime_hypervolume_ratios", "compare_strategies",
           "comparison_table", "default_sms_target", "default_tabular_schedule", "pareto_front",
           "ratio_without_the_best", "tabular_search", "true_front_reference"]
