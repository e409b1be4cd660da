"""Rewards of seed 000 and the Cycle Annealing Search (CAS) schedule.

ENAS:  R = Acc
SMS:   R = Acc * (flops / F) ** alpha, alpha = -1 if flops > F else 0     (Eq. 2)
CAS:   R = Acc * exp(-|flops - F| / (lambda * delta))                      (Eq. 3)

CAS schedule (seed 000, Algorithm CAS), with its own step counter in each phase:
  warm (N_warm steps):   F = F_min, lambda = 1, delta = delta_warm
  slow anneal (N_slow):  lambda = 1, delta = delta_anneal, F = F_cycle(step)
  fast anneal (N_fast):  lambda_step = lambda ** ceil(step / T), delta = delta_anneal, F = F_cycle(step)
  F_cycle(step) = F_min + (F_max - F_min) / 2 * (1 - cos(2 pi * (step mod (T + 1)) / T))

The seed prints the cosine argument as ``step · mod(T+1) / T``; we read it as
``(step mod (T+1)) / T``: F rises from F_min to F_max and returns to F_min once every
T + 1 steps, which is the cycle the text describes ("F traverses F_min..F_max within
the period T").
Defaults are the seed's: F in [8e7, 1.2e8], T = 50, N = 50/50/200, delta_warm =
(F_max - F_min)/2, delta_anneal = (F_max - F_min)/(2 alpha) with alpha = 2. The fast
anneal base lambda is not given in the seed; we use 0.8 (lambda_step falls to 0.41 over
the paper's 200 fast steps).
"""

import math
from dataclasses import asdict, dataclass


def enas_reward(accuracy: float) -> float:
    return accuracy


def sms_reward(accuracy: float, flops: float, target: float) -> float:
    """Eq. 2: penalised only above the target."""
    return accuracy * (flops / target) ** (-1.0 if flops > target else 0.0)


def cas_reward(accuracy: float, flops: float, target: float, lam: float, delta: float) -> float:
    """Eq. 3."""
    return accuracy * math.exp(-abs(flops - target) / (lam * delta))


@dataclass(frozen=True)
class CasState:
    phase: str  # "warm", "slow", "fast"
    target: float | None  # F; None for rewards without a FLOPs target
    lam: float
    delta: float | None  # None outside CAS


@dataclass(frozen=True)
class CasSchedule:
    f_min: float = 8e7
    f_max: float = 1.2e8
    period: int = 50
    n_warm: int = 50
    n_slow: int = 50
    n_fast: int = 200
    anneal_alpha: float = 2.0
    fast_lambda: float = 0.8

    def __post_init__(self):
        if not 0 < self.f_min <= self.f_max:
            raise ValueError(f"need 0 < F_min <= F_max, got F_min={self.f_min:g}, F_max={self.f_max:g}")
        if self.period < 1:
            raise ValueError(f"the CAS period T must be >= 1, got {self.period}")
        if min(self.n_warm, self.n_slow, self.n_fast) < 0 or self.total_steps == 0:
            raise ValueError(
                f"the CAS schedule needs non-negative step counts and at least one step, got "
                f"N_warm={self.n_warm}, N_slow={self.n_slow}, N_fast={self.n_fast}"
            )
        if not 0 < self.fast_lambda < 1:
            raise ValueError(f"the fast-anneal lambda must be in (0, 1), got {self.fast_lambda}")
        if self.anneal_alpha <= 0:
            raise ValueError(f"anneal_alpha must be > 0, got {self.anneal_alpha}")

    @property
    def total_steps(self) -> int:
        return self.n_warm + self.n_slow + self.n_fast

    @property
    def delta_warm(self) -> float:
        # A zero-width range would make the penalty divide by zero; fall back to F_min.
        return (self.f_max - self.f_min) / 2 or self.f_min

    @property
    def delta_anneal(self) -> float:
        return (self.f_max - self.f_min) / (2 * self.anneal_alpha) or self.f_min

    def cycle_target(self, step: int) -> float:
        phase = 2 * math.pi * (step % (self.period + 1)) / self.period
        return self.f_min + (self.f_max - self.f_min) / 2 * (1 - math.cos(phase))

    def at(self, index: int) -> CasState:
        """The schedule at global step ``index`` (0-based over all phases)."""
        if not 0 <= index < self.total_steps:
            raise IndexError(f"step {index} is outside the schedule of {self.total_steps} steps")
        if index < self.n_warm:
            return CasState("warm", self.f_min, 1.0, self.delta_warm)
        step = index - self.n_warm + 1
        if step <= self.n_slow:
            return CasState("slow", self.cycle_target(step), 1.0, self.delta_anneal)
        step -= self.n_slow
        lam = self.fast_lambda ** math.ceil(step / self.period)
        return CasState("fast", self.cycle_target(step), lam, self.delta_anneal)

    def to_dict(self) -> dict:
        return asdict(self)
