"""Search strategies (library code): the LSTM controller with REINFORCE, the ENAS /
SMS / CAS rewards and schedule, random search, aging evolution and NSGA-II, and the
loops that run them."""

from fastnas.search.controller import LSTMController
from fastnas.search.evolution import AgingEvolution, Nsga2
from fastnas.search.pareto import hypervolume, pareto_front
from fastnas.search.policies import STRATEGIES, RandomPolicy, ReinforcePolicy, RewardFunction, make_policy
from fastnas.search.rewards import CasSchedule, cas_reward, enas_reward, sms_reward

__all__ = [
    "STRATEGIES",
    "AgingEvolution",
    "CasSchedule",
    "LSTMController",
    "RandomPolicy",
    "ReinforcePolicy",
    "RewardFunction",
    "cas_reward",
    "enas_reward",
    "hypervolume",
    "make_policy",
    "Nsga2",
    "pareto_front",
    "sms_reward",
]
