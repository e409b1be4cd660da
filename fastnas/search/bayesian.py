"""Multi-objective Bayesian optimisation for spaces whose FLOPs are known without a
query: only accuracy costs anything, so the strategy models accuracy alone and asks for
the architectures whose expected hypervolume improvement (EHVI) over the front found so
far is largest.

Model: a Gaussian process on the decisions with the kernel

    k(x, y) = s^2 exp(-sum_i theta_i [x_i != y_i] - (z_x - z_y)^2 / (2 l^2)),

an exponentiated Hamming distance with one weight per decision (categorical choices have
no order; a decision that barely matters gets a small weight) times a squared
exponential in standardised log FLOPs (accuracy follows capacity). The hyperparameters
maximise the marginal likelihood and are refitted whenever the data has grown by a
quarter, so a run costs a few dozen fits; in between the posterior is recomputed with
the last ones. The accuracies it fits are clamped at their lower fence (``lower_fence``).

Acquisition: at FLOPs f, an accuracy a adds to a 2-D staircase front the area
sum_k len_k max(0, a - level_k) over the front's segments right of f. Under the normal
posterior its expectation is the segments' expected improvements summed, in closed form.
A batch is chosen greedily; each pick conditions the posterior on its predicted mean
(kriging believer), which shrinks the variance around it, so the next pick goes
elsewhere. The first ``local_share`` of each batch is picked among the unseen
single-decision neighbours of the found front (a local search ranked by EHVI): the best
architectures of a graph table are needles that the model predicts poorly, but most of
them sit next to other good ones (on NAS-Bench-Graph Cora this found one of the 3 best in
35 of 100 runs instead of 12). Candidates: the whole space when it is small or given (a table's
architectures), else a pool of single-decision mutations of the front and uniform draws.

Every random number comes from the policy's generator and the whole state is in
``state_dict``, so a search resumes exactly.
"""

import itertools
import math
import statistics
from collections.abc import Callable, Sequence

import torch

from fastnas.search.evolution import PopulationSample, PopulationUpdate
from fastnas.search.pareto import pareto_front
from fastnas.spaces.base import Candidates, choice_counts

Architecture = tuple[int, ...]
# Spaces up to this size are enumerated once; larger ones are searched through pools.
ENUMERATION_LIMIT = 1 << 16
# Refit the hyperparameters when the observations have grown by this factor.
REFIT_GROWTH = 1.25
FIRST_FIT_STEPS, REFIT_STEPS = 150, 40
# Bounds of the log hyperparameters (standardised accuracies): keep the kernel matrix
# well conditioned and the fit away from degenerate optima.
LOG_BOUNDS = {"theta": (math.log(1e-3), math.log(20.0)), "lengthscale": (math.log(0.05), math.log(20.0)),
              "signal": (math.log(0.05), math.log(20.0)), "noise": (math.log(1e-4), math.log(1.0))}


class GaussianProcess:
    """Exact GP regression on (architecture, log FLOPs) with the kernel above, float64."""

    def __init__(self, decisions: Sequence[int]):
        self.decisions = tuple(decisions)
        self.offsets = torch.tensor([0, *itertools.accumulate(self.decisions)][:-1])
        d = len(self.decisions)
        self.raw = torch.tensor([math.log(1.0 / d)] * d + [0.0, 0.0, math.log(0.1)], dtype=torch.float64)
        self.fitted_size = 0

    def one_hot(self, archs: Sequence[Architecture]) -> torch.Tensor:
        index = torch.tensor(archs, dtype=torch.long) + self.offsets
        out = torch.zeros(len(archs), sum(self.decisions), dtype=torch.float64)
        return out.scatter_(1, index, 1.0)

    def _parts(self) -> dict:
        d = len(self.decisions)
        return {"theta": slice(0, d), "lengthscale": slice(d, d + 1), "signal": slice(d + 1, d + 2),
                "noise": slice(d + 2, d + 3)}

    def _unpack(self, raw: torch.Tensor) -> dict:
        values = {key: raw[part].exp() for key, part in self._parts().items()}
        counts = torch.tensor(self.decisions)
        values["weights"] = torch.repeat_interleave(values["theta"], counts)
        return values

    def _kernel(self, raw, a_hot, a_z, b_hot, b_z) -> torch.Tensor:
        p = self._unpack(raw)
        # sum_i theta_i [x_i != y_i] = sum_i theta_i - sum_i theta_i [x_i == y_i]
        distance = p["theta"].sum() - (a_hot * p["weights"]) @ b_hot.T
        distance = distance + (a_z[:, None] - b_z[None, :]) ** 2 / (2 * p["lengthscale"] ** 2)
        return p["signal"] ** 2 * torch.exp(-distance)

    def _clamp(self) -> None:
        for key, part in self._parts().items():
            self.raw[part] = self.raw[part].clamp(*LOG_BOUNDS[key])

    def fit(self, archs: Sequence[Architecture], z: torch.Tensor, y: torch.Tensor) -> None:
        """Posterior on the observations; hyperparameters refitted when the data grew."""
        self.hot, self.z = self.one_hot(archs), z
        self.y_mean, self.y_scale = float(y.mean()), max(float(y.std()) if len(y) > 1 else 1.0, 1e-9)
        target = (y - self.y_mean) / self.y_scale
        if len(archs) >= REFIT_GROWTH * self.fitted_size:
            self._maximise_likelihood(target, FIRST_FIT_STEPS if self.fitted_size == 0 else REFIT_STEPS)
            self.fitted_size = len(archs)
        with torch.no_grad():
            self.cholesky = self._cholesky(self.raw)
            self.alpha = torch.cholesky_solve(target[:, None], self.cholesky)[:, 0]

    def _cholesky(self, raw: torch.Tensor) -> torch.Tensor:
        noise = self._unpack(raw)["noise"]
        gram = self._kernel(raw, self.hot, self.z, self.hot, self.z)
        eye = torch.eye(len(gram), dtype=gram.dtype)
        factor, info = torch.linalg.cholesky_ex(gram + noise ** 2 * eye)
        jitter = 1e-8
        while int(info) != 0:  # rounding can make a near-singular matrix indefinite
            factor, info = torch.linalg.cholesky_ex(gram + (noise ** 2 + jitter) * eye)
            jitter *= 10
        return factor

    def _maximise_likelihood(self, target: torch.Tensor, steps: int) -> None:
        raw = self.raw.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([raw], lr=0.1)
        for _ in range(steps):
            factor = self._cholesky(raw)
            solved = torch.cholesky_solve(target[:, None], factor)[:, 0]
            negative_log_likelihood = 0.5 * target @ solved + factor.diagonal().log().sum()
            optimizer.zero_grad()
            negative_log_likelihood.backward()
            optimizer.step()
            with torch.no_grad():
                self.raw = raw.detach().clone()
                self._clamp()
                raw.copy_(self.raw)

    def predict(self, archs: Sequence[Architecture], z: torch.Tensor):
        """(mean, variance, cross) of the latent accuracy at ``archs``; ``cross`` is what
        ``covariance`` needs."""
        with torch.no_grad():
            hot = self.one_hot(archs)
            cross = self._kernel(self.raw, hot, z, self.hot, self.z)
            mean = self.y_mean + self.y_scale * (cross @ self.alpha)
            whitened = torch.linalg.solve_triangular(self.cholesky, cross.T, upper=False)
            variance = (self._unpack(self.raw)["signal"] ** 2 - (whitened ** 2).sum(0)).clamp_min(1e-12) * self.y_scale ** 2
            return mean, variance, (hot, z, whitened)

    def covariance(self, cross, index: int) -> torch.Tensor:
        """Posterior covariance of every predicted point with point ``index``."""
        hot, z, whitened = cross
        with torch.no_grad():
            prior = self._kernel(self.raw, hot, z, hot[index:index + 1], z[index:index + 1])[:, 0]
            return (prior - whitened.T @ whitened[:, index]) * self.y_scale ** 2

    @property
    def noise_variance(self) -> float:
        return float(self._unpack(self.raw)["noise"]) ** 2 * self.y_scale ** 2


def expected_hypervolume_improvement(flops: torch.Tensor, mean: torch.Tensor, sd: torch.Tensor,
                                     front: Sequence[tuple[float, float]], ref_flops: float,
                                     ref_accuracy: float) -> torch.Tensor:
    """EHVI of points at exact ``flops`` with accuracy ~ N(mean, sd^2) over ``front``
    ((flops, accuracy) pairs of a non-dominated set), area bounded by the reference."""
    kept = sorted((f, a) for f, a in front if f < ref_flops and a > ref_accuracy)
    starts = torch.tensor([-math.inf] + [f for f, _ in kept], dtype=torch.float64)
    ends = torch.tensor([f for f, _ in kept] + [ref_flops], dtype=torch.float64)
    levels = torch.tensor([ref_accuracy] + [a for _, a in kept], dtype=torch.float64)
    lengths = (ends[None, :] - torch.maximum(flops[:, None], starts[None, :])).clamp_min(0)
    sd = sd.clamp_min(1e-12)[:, None]
    u = (mean[:, None] - levels[None, :]) / sd
    normal = torch.distributions.Normal(0.0, 1.0)
    improvement = sd * (u * normal.cdf(u) + normal.log_prob(u).exp())
    return (lengths * improvement).sum(1)


class BayesianParetoSearch:
    """The ``mobo`` strategy: GP model of accuracy, EHVI acquisition over exact FLOPs.

    ``flops(arch)`` must be cheap and exact (a table's column, a space's cost tables).
    ``candidates`` restricts the search to those architectures (a table's rows); without
    it the space is enumerated when it has at most 65,536 architectures, else searched
    through pools of ``pool_size``. ``update`` needs the objectives: one (accuracy,
    flops) pair per sampled architecture."""

    def __init__(self, decisions: Sequence[int], flops: Callable[[Architecture], float],
                 candidates: Sequence[Architecture] | None = None, initial_samples: int = 10,
                 pool_size: int = 4096, max_observations: int = 1000, local_share: float = 0.7,
                 seed: int = 0):
        self.decisions = choice_counts(decisions)
        if not 0.0 <= local_share <= 1.0:
            raise ValueError(f"local_share is the share of each batch picked next to the front, "
                             f"between 0 and 1; got {local_share}")
        self.local_share = local_share
        for name, value, low in (("initial_samples", initial_samples, 1), ("pool_size", pool_size, 1),
                                 ("max_observations", max_observations, 2)):
            if value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        self.flops_of = flops
        size = math.prod(self.decisions)
        if candidates is None and size <= ENUMERATION_LIMIT:
            candidates = list(itertools.product(*(range(n) for n in self.decisions)))
        self.candidates = None if candidates is None else Candidates(candidates)
        self._flops_cache: dict[Architecture, float] = {}
        self.ref_flops = (max(self._flops(a) for a in self.candidates) if self.candidates is not None
                          else -math.inf)
        self.initial_samples = initial_samples
        self.pool_size = pool_size
        self.max_observations = max_observations
        self.generator = torch.Generator().manual_seed(seed)
        self.model = GaussianProcess(self.decisions)
        self.observations: list[tuple[Architecture, float, float]] = []  # (arch, accuracy, flops)
        self.seen: set[Architecture] = set()
        self.baseline = None  # the REINFORCE policy's field; records read it

    # ---- candidates ----------------------------------------------------------------
    def _flops(self, arch: Architecture) -> float:
        if arch not in self._flops_cache:
            self._flops_cache[arch] = float(self.flops_of(arch))
        return self._flops_cache[arch]

    def _allowed(self, arch: Architecture) -> bool:
        return self.candidates is None or arch in self.candidates

    def _uniform_draws(self, count: int, exclude: set[Architecture]) -> list[Architecture]:
        """Up to ``count`` distinct unseen candidates, uniformly drawn."""
        drawn: dict[Architecture, None] = {}
        for _ in range(4):  # a few rounds: most of a table may be seen already
            if self.candidates is not None:
                archs = self.candidates.draw(2 * count, self.generator)
            else:
                columns = [torch.randint(n, (2 * count,), generator=self.generator).tolist() for n in self.decisions]
                archs = list(zip(*columns))
            for arch in archs:
                if arch not in self.seen and arch not in exclude and len(drawn) < count:
                    drawn[arch] = None
            if len(drawn) >= count:
                break
        return list(drawn)

    def _pool(self, neighbours: dict[Architecture, None]) -> list[Architecture]:
        """The unseen candidates when they fit, else uniform draws and ``neighbours``
        (the front's, from ``_front_neighbours``)."""
        if self.candidates is not None and len(self.candidates) - len(self.seen) <= self.pool_size:
            return [a for a in self.candidates if a not in self.seen]
        uniform = self._uniform_draws(max(self.pool_size - len(neighbours), self.pool_size // 2), neighbours)
        return uniform + list(neighbours)

    def _front_neighbours(self) -> dict[Architecture, None]:
        """The unseen candidates one decision away from a member of the found front."""
        neighbours: dict[Architecture, None] = {}
        for arch in (self.observations[i][0] for i in self._front_indices()):
            for i, n in enumerate(self.decisions):
                for value in range(n):
                    child = arch[:i] + (value,) + arch[i + 1:]
                    if value != arch[i] and child not in self.seen and self._allowed(child):
                        neighbours[child] = None
        return neighbours

    # ---- the policy interface --------------------------------------------------------
    def sample(self, n: int) -> PopulationSample:
        if len(self.observations) < self.initial_samples:
            return PopulationSample(self._uniform_draws(n, set()))
        neighbours = self._front_neighbours()
        pool = self._pool(neighbours)
        if not pool:
            return PopulationSample([])
        # The front's area is counted above the space's median accuracy, estimated by the
        # uniform initial design.
        ref_accuracy = statistics.median(acc for _, acc, _ in self.observations[:self.initial_samples])
        recent = self.observations[-self.max_observations:]
        log_flops = _log(torch.tensor([f for _, _, f in recent], dtype=torch.float64))
        centre, scale = float(log_flops.mean()), float(log_flops.std()) if len(recent) > 1 else 1.0
        scale = scale if scale > 0 else 1.0
        pool_flops = torch.tensor([self._flops(a) for a in pool], dtype=torch.float64)
        self.ref_flops = max(self.ref_flops, float(pool_flops.max()), max(f for _, _, f in self.observations))
        observed = [acc for _, acc, _ in recent]
        accuracy = torch.tensor(observed, dtype=torch.float64).clamp_min(lower_fence(observed))
        self.model.fit([a for a, _, _ in recent], (log_flops - centre) / scale, accuracy)
        mean, variance, cross = self.model.predict(pool, (_log(pool_flops) - centre) / scale)
        front = [(f, a) for _, a, f in (self.observations[i] for i in self._front_indices())]
        local = torch.tensor([a in neighbours for a in pool])
        local_picks = round(self.local_share * n)
        chosen: list[int] = []
        conditioned: list[torch.Tensor] = []  # per pick, its normalised covariance with the pool
        noise = self.model.noise_variance
        for pick in range(min(n, len(pool))):
            gain = expected_hypervolume_improvement(pool_flops, mean, variance.sqrt(), front, self.ref_flops,
                                                    ref_accuracy)
            gain[chosen] = -1.0
            if pick < local_picks:
                local_gain = torch.where(local, gain, torch.full_like(gain, -2.0))
                if float(local_gain.max()) > -1.0:  # an unchosen neighbour is left
                    gain = local_gain
            best = int(gain.argmax())
            if float(gain[best]) <= 0:  # nothing is expected to improve the front: explore
                left = [i for i in range(len(pool)) if i not in chosen]
                best = left[int(torch.randint(len(left), (1,), generator=self.generator))]
            chosen.append(best)
            covariance = self.model.covariance(cross, best)
            for earlier in conditioned:
                covariance = covariance - earlier * earlier[best]
            conditioned.append(covariance / math.sqrt(float(covariance[best]) + noise))
            variance = (variance - conditioned[-1] ** 2).clamp_min(1e-12)
            front = _non_dominated(front + [(float(pool_flops[best]), float(mean[best]))])
        return PopulationSample([pool[i] for i in chosen])

    def _front_indices(self) -> list[int]:
        return pareto_front([f for _, _, f in self.observations], [a for _, a, _ in self.observations])

    def update(self, sample, rewards: Sequence[float], objectives=None) -> PopulationUpdate:
        if objectives is None or len(objectives) != len(sample.archs):
            raise ValueError("mobo needs objectives: one (accuracy, flops) pair per sampled architecture")
        for arch, (accuracy, flops) in zip(sample.archs, objectives):
            self.seen.add(arch)
            self.observations.append((arch, float(accuracy), float(flops)))
        return PopulationUpdate(0.0, float("nan"), sum(rewards) / max(1, len(rewards)))

    def leading(self, n: int) -> list[Architecture]:
        """The found front, most accurate first, then the other observations by accuracy."""
        front = self._front_indices()
        rest = sorted(set(range(len(self.observations))) - set(front), key=lambda i: -self.observations[i][1])
        ordered = sorted(front, key=lambda i: -self.observations[i][1]) + rest
        return list(dict.fromkeys(self.observations[i][0] for i in ordered))[:n]

    def choice_probabilities(self) -> list[list[float]]:
        """Per decision, how often each choice occurs on the found front."""
        members = [self.observations[i][0] for i in self._front_indices()]
        if not members:
            return [[1.0 / k] * k for k in self.decisions]
        return [[sum(a[i] == c for a in members) / len(members) for c in range(k)]
                for i, k in enumerate(self.decisions)]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "seen": sorted(self.seen),
                "observations": [(list(a), acc, f) for a, acc, f in self.observations],
                "hyperparameters": self.model.raw.tolist(), "fitted_size": self.model.fitted_size,
                "ref_flops": self.ref_flops}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.seen = {tuple(a) for a in state["seen"]}
        self.observations = [(tuple(a), float(acc), float(f)) for a, acc, f in state["observations"]]
        self.model.raw = torch.tensor(state["hyperparameters"], dtype=torch.float64)
        self.model.fitted_size = int(state["fitted_size"])
        self.ref_flops = float(state["ref_flops"])


def lower_fence(values: Sequence[float]) -> float:
    """Tukey's lower fence, Q1 - 1.5 IQR, of ``values``; -inf for fewer than two.

    The model sees accuracies clamped there: below it sit the outliers (a broken cell
    near chance accuracy), whose distance from the rest would only blur the model's
    picture of the top. Clamping at the reference accuracy instead made every
    architecture next to a clamped one look as likely as not to clear the reference,
    and the search kept querying them."""
    if len(values) < 2:
        return -math.inf
    first, _, third = statistics.quantiles(values, n=4)
    return first - 1.5 * (third - first)


def _log(flops: torch.Tensor) -> torch.Tensor:
    return flops.clamp_min(1e-30).log()  # a zero-cost architecture stays finite


def _non_dominated(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    flops, accuracy = [f for f, _ in points], [a for _, a in points]
    return [points[i] for i in pareto_front(flops, accuracy)]
