"""Search policies and reward functions shared by the weight-sharing loop and the
tabular-oracle loop.

REINFORCE (seed 000, Eq. 1): grad = 1/N sum_n sum_g grad log P(a_g | a_<g) (R_n - b), the
sample entropy added to the reward with weight 0.1, b an exponential moving average of
past rewards, Adam with lr 1e-3. Random search is the honest baseline.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fastnas.search.bayesian import BayesianParetoSearch
from fastnas.search.controller import LSTMController
from fastnas.search.evolution import AgingEvolution, Nsga2
from fastnas.search.rewards import CasSchedule, CasState, cas_reward, enas_reward, sms_reward
from fastnas.spaces.base import Candidates

STRATEGIES = ("cas", "sms", "enas", "random", "evolution", "nsga2", "mobo")
# The reward each strategy's policy learns from. Aging evolution takes the CAS reward as
# its fitness, so the population follows the annealed FLOPs target along the front;
# NSGA-II ranks (accuracy, FLOPs) itself and reports accuracy as its reward.
# mobo models accuracy and ranks by the hypervolume it expects to add, like NSGA-II.
REWARDS = {"cas": "cas", "sms": "sms", "enas": "enas", "random": "enas", "evolution": "cas", "nsga2": "enas",
           "mobo": "enas"}
POPULATION_STRATEGIES = ("evolution", "nsga2")
REINFORCE_STRATEGIES = ("cas", "sms", "enas")
# Strategies that model accuracies as fixed facts of each architecture: a table's, not
# a supernet's, whose accuracies drift as it trains.
TABULAR_ONLY_STRATEGIES = ("mobo",)


class RewardFunction:
    """The reward of a strategy at a schedule step. Every strategy runs for
    ``schedule.total_steps`` steps; only CAS anneals its target."""

    def __init__(self, strategy: str, schedule: CasSchedule, sms_target: float | None = None):
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
        self.strategy = strategy
        self.reward = REWARDS[strategy]
        self.schedule = schedule
        self.sms_target = sms_target if sms_target is not None else schedule.f_max

    def state(self, step: int) -> CasState:
        if self.reward == "cas":
            return self.schedule.at(step)
        target = self.sms_target if self.reward == "sms" else None
        return CasState(self.reward, target, 1.0, None)

    def __call__(self, accuracy: float, flops: float, step: int) -> float:
        if self.reward == "cas":
            s = self.schedule.at(step)
            return cas_reward(accuracy, flops, s.target, s.lam, s.delta)
        if self.reward == "sms":
            return sms_reward(accuracy, flops, self.sms_target)
        return enas_reward(accuracy)


@dataclass
class PolicyUpdate:
    loss: float
    baseline: float
    mean_reward: float


class ReinforcePolicy:
    """LSTM controller trained with REINFORCE and a moving-average baseline. Lives on
    the CPU and draws from its own generator, so a run is reproducible and resumable."""

    def __init__(
        self,
        decisions: Sequence[int],
        lr: float = 1e-3,
        tanh_constant: float = 1.5,
        entropy_weight: float = 0.1,
        baseline_decay: float = 0.99,
        hidden_size: int = 64,
        seed: int = 0,
    ):
        with torch.random.fork_rng(devices=[]):  # seed the initialisation only
            torch.manual_seed(seed)
            self.controller = LSTMController(decisions, hidden_size, tanh_constant)
        self.optimizer = torch.optim.Adam(self.controller.parameters(), lr=lr)
        self.entropy_weight = entropy_weight
        self.baseline_decay = baseline_decay
        self.baseline: float | None = None
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, n: int):
        return self.controller(n, generator=self.generator)

    def choice_probabilities(self) -> list[list[float]]:
        """Per decision, the controller's probabilities along its most likely architecture."""
        return self.controller.greedy()[1]

    def update(self, sample, rewards: Sequence[float], objectives=None) -> PolicyUpdate:
        """``objectives`` ((accuracy, flops) per architecture) is for the policies that
        rank both; REINFORCE learns from the rewards alone."""
        rewards_t = torch.tensor(list(rewards), dtype=torch.float32)
        rewards_t = rewards_t + self.entropy_weight * sample.entropy.detach()
        mean = float(rewards_t.mean())
        baseline = mean if self.baseline is None else self.baseline
        loss = -((rewards_t - baseline) * sample.log_prob).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.baseline = self.baseline_decay * baseline + (1 - self.baseline_decay) * mean
        return PolicyUpdate(float(loss.detach()), self.baseline, mean)

    def state_dict(self) -> dict:
        return {
            "controller": self.controller.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "baseline": self.baseline,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.controller.load_state_dict(state["controller"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.baseline = state["baseline"]
        self.generator.set_state(state["generator"])


@dataclass
class RandomSample:
    archs: list[tuple[int, ...]]


class RandomPolicy:
    """Uniform sampling, over the space or over ``candidates`` (a table's rows); learns
    nothing."""

    def __init__(self, decisions: Sequence[int], seed: int = 0, candidates: Sequence[Sequence[int]] | None = None):
        self.decisions = tuple(decisions)
        self.candidates = None if candidates is None else Candidates(candidates)
        self.generator = torch.Generator().manual_seed(seed)
        self.baseline = None

    def choice_probabilities(self) -> list[list[float]]:
        return [[1.0 / k] * k for k in self.decisions]

    def sample(self, n: int) -> RandomSample:
        if self.candidates is not None:
            return RandomSample(self.candidates.draw(n, self.generator))
        columns = [torch.randint(k, (n,), generator=self.generator) for k in self.decisions]
        return RandomSample([tuple(int(c[i]) for c in columns) for i in range(n)])

    def update(self, sample, rewards: Sequence[float], objectives=None) -> PolicyUpdate:
        return PolicyUpdate(0.0, float("nan"), sum(rewards) / max(1, len(rewards)))

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def population_options(strategy: str, evaluations: int) -> dict:
    """Population sizes derived from how many architectures the search will evaluate:
    50 (Real et al. and Deb et al. use 20..100) while that is at most a tenth of the
    evaluations, so most of the budget goes to offspring; never below 10. The aging
    tournament takes a fifth of the population."""
    size = min(50, max(10, evaluations // 10))
    return {"population_size": size, **({"tournament_size": max(2, size // 5)} if strategy == "evolution" else {})}


def make_policy(strategy: str, decisions: Sequence[int], seed: int = 0, flops=None, candidates=None, **options):
    """The policy of a strategy; ``options`` go to its constructor (controller options for
    the REINFORCE strategies, population options for evolution and nsga2). mobo needs
    ``flops`` (arch -> FLOPs). ``candidates`` (the architectures that exist, when not
    all of the space does) restricts what mobo, random and the population strategies
    sample; the REINFORCE controller samples the whole space and refuses them."""
    if strategy == "mobo":
        if flops is None:
            raise ValueError("mobo needs flops, a function giving each architecture's FLOPs")
        return BayesianParetoSearch(decisions, flops, candidates, seed=seed, **options)
    if strategy == "random":
        return RandomPolicy(decisions, seed, candidates)
    if strategy == "evolution":
        return AgingEvolution(decisions, seed=seed, candidates=candidates, **options)
    if strategy == "nsga2":
        return Nsga2(decisions, seed=seed, candidates=candidates, **options)
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
    if candidates is not None:
        raise ValueError(f"{strategy} samples from the whole space through its controller, so it cannot keep to "
                         f"{len(candidates)} candidate architectures; use random, evolution, nsga2 or mobo, or a "
                         "table that holds every architecture of its space")
    return ReinforcePolicy(decisions, seed=seed, **options)
