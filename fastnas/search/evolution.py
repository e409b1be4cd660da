"""Population-based search policies with the same sample/update interface as the
REINFORCE controller, so both the tabular loop and the weight-sharing loop run them.

Regularized (aging) evolution, Real et al. 2019: a population of P evaluated
architectures; a child is the best of S members drawn at random, with one decision
changed; the child joins and the oldest member leaves, whatever its fitness.

NSGA-II, Deb et al. 2002, run steady-state: offspring from binary tournaments on
(non-dominated rank, crowding distance), uniform crossover and per-decision mutation;
parents and offspring together are cut back to P by rank, then by crowding distance.
Its two objectives are accuracy (maximised) and FLOPs (minimised), so it needs no
scalar reward.

Both draw every random number from their own generator and keep their whole state in
``state_dict``, so a search resumes exactly.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fastnas.search.pareto import crowding_distances, nondominated_ranks
from fastnas.spaces.base import Candidates, choice_counts

Architecture = tuple[int, ...]
# A child that was evaluated before teaches nothing; it is redrawn up to this many times.
MAX_REDRAWS = 10


@dataclass
class PopulationSample:
    archs: list[Architecture]


@dataclass
class PopulationUpdate:
    loss: float
    baseline: float
    mean_reward: float


class _PopulationPolicy:
    """Shared parts: the generator, uniform draws, mutation, the record of what was seen.
    ``candidates`` restricts every sample to those architectures (a table that holds only
    part of its space): draws come from them and other children are redrawn."""

    def __init__(self, decisions: Sequence[int], population_size: int, seed: int,
                 candidates: Sequence[Architecture] | None = None):
        self.decisions = choice_counts(decisions)
        if population_size < 2:
            raise ValueError(f"population_size must be >= 2, got {population_size}")
        self.population_size = population_size
        self.generator = torch.Generator().manual_seed(seed)
        self.seen: set[Architecture] = set()
        self.candidates = None if candidates is None else Candidates(candidates)
        self.baseline = None  # the REINFORCE policy's field; records read it

    def _integer(self, high: int) -> int:
        return int(torch.randint(high, (1,), generator=self.generator))

    def _uniform(self) -> float:
        return float(torch.rand((), generator=self.generator))

    def _random_arch(self) -> Architecture:
        if self.candidates is not None:
            return self.candidates.draw(1, self.generator)[0]
        return tuple(self._integer(n) for n in self.decisions)

    def _mutate_one(self, arch: Architecture) -> Architecture:
        """One decision, drawn among those with a choice, set to a different value. With
        candidates, one of the architecture's neighbours among them (a random candidate
        when it has none)."""
        if self.candidates is not None:
            neighbours = [arch[:i] + (value,) + arch[i + 1:] for i, n in enumerate(self.decisions)
                          for value in range(n) if value != arch[i]]
            neighbours = [a for a in neighbours if a in self.candidates]
            return neighbours[self._integer(len(neighbours))] if neighbours else self._random_arch()
        free = [i for i, n in enumerate(self.decisions) if n > 1]
        if not free:
            return arch
        i = free[self._integer(len(free))]
        value = self._integer(self.decisions[i] - 1)
        child = list(arch)
        child[i] = value if value < arch[i] else value + 1
        return tuple(child)

    def _unseen(self, make, batch: set[Architecture]) -> Architecture:
        arch = make()
        for _ in range(MAX_REDRAWS):
            if arch not in self.seen and arch not in batch and self._allowed(arch):
                break
            arch = make()
        if not self._allowed(arch):  # a sparse table's front may have no child in the table
            arch = self._random_arch()
        batch.add(arch)
        return arch

    def _allowed(self, arch: Architecture) -> bool:
        return self.candidates is None or arch in self.candidates

    def choice_probabilities(self) -> list[list[float]]:
        """Per decision, how often each choice occurs in the population."""
        members = self._members()
        if not members:
            return [[1.0 / k] * k for k in self.decisions]
        return [[sum(a[i] == c for a in members) / len(members) for c in range(k)]
                for i, k in enumerate(self.decisions)]

    def _state(self) -> dict:
        return {"generator": self.generator.get_state(), "seen": sorted(self.seen)}

    def _load_state(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.seen = {tuple(a) for a in state["seen"]}


class AgingEvolution(_PopulationPolicy):
    """Regularized evolution; the reward is the fitness."""

    def __init__(self, decisions: Sequence[int], population_size: int = 50, tournament_size: int = 10,
                 seed: int = 0, candidates: Sequence[Architecture] | None = None):
        super().__init__(decisions, population_size, seed, candidates)
        if not 1 <= tournament_size <= population_size:
            raise ValueError(f"tournament_size must be in [1, population_size={population_size}], "
                             f"got {tournament_size}")
        self.tournament_size = tournament_size
        self.population: list[tuple[Architecture, float]] = []  # oldest first

    def _members(self) -> list[Architecture]:
        return [arch for arch, _ in self.population]

    def leading(self, n: int) -> list[Architecture]:
        """The n fittest members."""
        return [arch for arch, _ in sorted(self.population, key=lambda member: -member[1])[:n]]

    def _child(self) -> Architecture:
        if len(self.population) < self.population_size:
            return self._random_arch()
        contenders = [self.population[self._integer(len(self.population))] for _ in range(self.tournament_size)]
        return self._mutate_one(max(contenders, key=lambda member: member[1])[0])

    def sample(self, n: int) -> PopulationSample:
        batch: set[Architecture] = set()
        return PopulationSample([self._unseen(self._child, batch) for _ in range(n)])

    def update(self, sample, rewards: Sequence[float], objectives=None) -> PopulationUpdate:
        for arch, reward in zip(sample.archs, rewards):
            self.seen.add(arch)
            self.population.append((arch, float(reward)))
        del self.population[:max(0, len(self.population) - self.population_size)]
        return PopulationUpdate(0.0, float("nan"), sum(rewards) / max(1, len(rewards)))

    def state_dict(self) -> dict:
        return {**self._state(), "population": [(list(a), r) for a, r in self.population]}

    def load_state_dict(self, state: dict) -> None:
        self._load_state(state)
        self.population = [(tuple(a), float(r)) for a, r in state["population"]]


class Nsga2(_PopulationPolicy):
    """Steady-state NSGA-II over (accuracy up, FLOPs down). ``update`` needs the
    objectives: one (accuracy, flops) pair per sampled architecture."""

    def __init__(self, decisions: Sequence[int], population_size: int = 50, crossover_probability: float = 0.9,
                 seed: int = 0, candidates: Sequence[Architecture] | None = None):
        super().__init__(decisions, population_size, seed, candidates)
        if not 0 <= crossover_probability <= 1:
            raise ValueError(f"crossover_probability must be in [0, 1], got {crossover_probability}")
        self.crossover_probability = crossover_probability
        self.mutation_probability = 1.0 / len(self.decisions)
        # members: (arch, accuracy, flops); rank and crowding follow from them.
        self.population: list[tuple[Architecture, float, float]] = []
        self._rank: list[int] = []
        self._crowding: list[float] = []

    def _members(self) -> list[Architecture]:
        return [member[0] for member in self.population]

    def leading(self, n: int) -> list[Architecture]:
        """n members by rank, then crowding distance (the population is kept in that order)."""
        return self._members()[:n]

    def _tournament(self) -> Architecture:
        a, b = self._integer(len(self.population)), self._integer(len(self.population))
        better = a if (self._rank[a], -self._crowding[a]) <= (self._rank[b], -self._crowding[b]) else b
        return self.population[better][0]

    def _child(self) -> Architecture:
        if len(self.population) < self.population_size:
            return self._random_arch()
        first, second = self._tournament(), self._tournament()
        if self._uniform() < self.crossover_probability:
            first = tuple(x if self._uniform() < 0.5 else y for x, y in zip(first, second))
        child = tuple(self._integer(n) if n > 1 and self._uniform() < self.mutation_probability else c
                      for c, n in zip(first, self.decisions))
        # Crossover of equal parents without mutation would repeat a parent.
        return child if child not in self.seen else self._mutate_one(child)

    def sample(self, n: int) -> PopulationSample:
        batch: set[Architecture] = set()
        return PopulationSample([self._unseen(self._child, batch) for _ in range(n)])

    def update(self, sample, rewards: Sequence[float], objectives=None) -> PopulationUpdate:
        if objectives is None or len(objectives) != len(sample.archs):
            raise ValueError("NSGA-II needs objectives: one (accuracy, flops) pair per sampled architecture")
        for arch, (accuracy, flops) in zip(sample.archs, objectives):
            self.seen.add(arch)
            if all(member[0] != arch for member in self.population):
                self.population.append((arch, float(accuracy), float(flops)))
        self._select()
        return PopulationUpdate(0.0, float("nan"), sum(rewards) / max(1, len(rewards)))

    def _select(self) -> None:
        """Keeps the best population_size members by rank, then by crowding distance."""
        points = [(-accuracy, flops) for _, accuracy, flops in self.population]
        ranks = nondominated_ranks(points)
        crowding = [0.0] * len(points)
        for rank in set(ranks):
            members = [i for i, r in enumerate(ranks) if r == rank]
            for i, distance in zip(members, crowding_distances([points[i] for i in members])):
                crowding[i] = distance
        keep = sorted(range(len(points)), key=lambda i: (ranks[i], -crowding[i]))[:self.population_size]
        self.population = [self.population[i] for i in keep]
        self._rank = [ranks[i] for i in keep]
        self._crowding = [crowding[i] for i in keep]

    def state_dict(self) -> dict:
        return {**self._state(), "population": [(list(a), acc, f) for a, acc, f in self.population],
                "rank": list(self._rank), "crowding": list(self._crowding)}

    def load_state_dict(self, state: dict) -> None:
        self._load_state(state)
        self.population = [(tuple(a), float(acc), float(f)) for a, acc, f in state["population"]]
        self._rank, self._crowding = list(state["rank"]), list(state["crowding"])
