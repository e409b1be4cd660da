"""The weight-sharing search loop of seed 000 (Algorithm CAS; ENAS, SMS, random search,
aging evolution and NSGA-II through the same loop).

Every step: train the shared supernet weights on the train split for ``child_steps``
minibatches, each on one path sampled from the policy (M = 1); update the controller
``controller_steps`` times, each from N sampled paths rewarded on a validation
minibatch; sample an architecture m, measure it on the validation and test splits and
record {m, flops, params, acc_valid, acc_test}. After every step the whole search state
is saved atomically, so a killed search resumes where it stopped.
"""

import contextlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fastnas import data as data_module
from fastnas.distributed import DistributedContext, sync_batch_norm
from fastnas.precision import autocast
from fastnas.search.checkpoint import atomic_save, load_checked
from fastnas.search.policies import (POPULATION_STRATEGIES, TABULAR_ONLY_STRATEGIES, RewardFunction, make_policy,
                                     population_options)
from fastnas.search.rewards import CasSchedule
from fastnas.spaces.canas import CanasSpace
from fastnas.spaces.enas_chain import EnasChainSpace

CHECKPOINT = "checkpoint.pt"
RECORDS = "records.jsonl"


@dataclass
class SearchConfig:
    space: str = "canas"  # or "enas_chain"
    strategy: str = "cas"
    dataset: str = "digits"
    variant: str = "mnist"
    width_mult: float = 1.0
    resize: int | None = None  # bilinear upsampling of the inputs (224 as in seed 000)
    schedule: CasSchedule = field(default_factory=CasSchedule)
    sms_target: float | None = None
    child_steps: int = 10
    controller_steps: int = 1
    controller_samples: int = 10
    controller_lr: float = 1e-3
    tanh_constant: float = 1.5
    entropy_weight: float = 0.1
    baseline_decay: float = 0.99
    child_lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 2.5e-4
    batch_size: int = 128
    grad_clip: float = 5.0
    eval_batches: int = 4  # batches of each of the validation and test splits per record
    chain_channels: int = 32  # enas_chain only
    amp: str | None = None  # "bf16": forward passes under torch.autocast (fastnas.precision)
    seed: int = 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["schedule"] = self.schedule.to_dict()
        return d

    def validate(self) -> None:
        for name in ("child_steps", "controller_samples", "batch_size", "eval_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.controller_steps < 0:
            raise ValueError(f"controller_steps must be >= 0, got {self.controller_steps}")
        if self.strategy in TABULAR_ONLY_STRATEGIES:
            raise ValueError(f"strategy {self.strategy} models each architecture's accuracy as fixed, and a "
                             "supernet's drifts as it trains; run it on a table (--space nasbench201 or table), "
                             "or use evolution or nsga2 over the supernet")


@contextlib.contextmanager
def batch_statistics(model: nn.Module):
    """BatchNorm on batch statistics without touching the running averages: a shared
    supernet's running statistics mix every path, so rewards use the batch's own."""
    saved = [(m, m.training, m.momentum) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    try:
        for m, _, _ in saved:
            m.train()
            m.momentum = 0.0
        yield
    finally:
        for m, training, momentum in saved:
            m.train(training)
            m.momentum = momentum


def make_space(config: SearchConfig, splits: data_module.DataSplits):
    """The weight-sharing space a config names, shaped for the dataset."""
    if config.space == "enas_chain":
        return EnasChainSpace(config.chain_channels, splits.num_classes, splits.in_channels, splits.image_size)
    if config.space != "canas":
        raise ValueError(f"unknown weight-sharing space {config.space!r}; choose canas or enas_chain")
    space = CanasSpace(config.variant, num_classes=splits.num_classes, width_mult=config.width_mult)
    if splits.in_channels != space.layout.in_channels:
        raise ValueError(
            f"dataset {splits.name} has {splits.in_channels} input channels but the {config.variant} variant "
            f"expects {space.layout.in_channels}; pick a matching --variant"
        )
    return space


def path_accuracy(supernet, arch, batches, distributed: DistributedContext | None = None) -> float:
    """Accuracy of one path on `batches`; with several ranks each scores its share of every
    batch and the counts are summed."""
    distributed = distributed or DistributedContext()
    correct = total = 0
    with torch.no_grad(), batch_statistics(supernet):
        for batch in batches:
            x, y = distributed.shard(*batch, even=False)
            correct += int((supernet(x, arch).argmax(dim=1) == y).sum())
            total += len(y)
    correct, total = distributed.sums(correct, total)
    return correct / max(1, total)


class WeightSharingSearch:
    """A resumable search over the CANAS space."""

    def __init__(self, config: SearchConfig, splits: data_module.DataSplits, out_dir: str | Path,
                 device: str | torch.device = "cpu", fused: bool = True,
                 distributed: DistributedContext | None = None):
        """With a `distributed` context of several ranks, every rank trains the same path on
        its share of each global batch (gradients averaged, batch norm over the global batch),
        rewards and accuracies count every rank's share, and rank 0 alone writes."""
        config.validate()
        self.config = config
        self.out_dir = Path(out_dir)
        self.device = torch.device(device)
        self.distributed = distributed or DistributedContext(device=self.device)
        self.splits = splits
        self.space = make_space(config, splits)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.supernet = self.space.supernet(fused=fused).to(self.device)
        if self.distributed.active:
            sync_batch_norm(self.supernet)
        self.optimizer = torch.optim.SGD(self.supernet.parameters(), lr=config.child_lr,
                                         momentum=config.momentum, weight_decay=config.weight_decay)
        if config.strategy == "random":
            policy_options = {}
        elif config.strategy in POPULATION_STRATEGIES:
            evaluations = config.schedule.total_steps * config.controller_steps * config.controller_samples
            policy_options = population_options(config.strategy, evaluations)
        else:
            policy_options = dict(lr=config.controller_lr, tanh_constant=config.tanh_constant,
                                  entropy_weight=config.entropy_weight, baseline_decay=config.baseline_decay)
        self.policy = make_policy(config.strategy, self.space.decisions, seed=config.seed, **policy_options)
        self.reward_fn = RewardFunction(config.strategy, config.schedule, config.sms_target)
        self.train_loader = data_module.BatchLoader(splits.train, splits.name, config.batch_size, self.device,
                                                    augment=True, resize=config.resize, seed=config.seed)
        self.valid_loader = data_module.BatchLoader(splits.valid, splits.name, config.batch_size, self.device,
                                                    augment=False, resize=config.resize, seed=config.seed + 1)
        self.step = 0
        self.records: list[dict] = []

    # ---- checkpointing ---------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "format": "fastnas-search-1",
            "config": self.config.to_dict(),
            "world_size": self.distributed.world_size,
            "step": self.step,
            "supernet": self.supernet.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "policy": self.policy.state_dict(),
            "train_loader": self.train_loader.state_dict(),
            "valid_loader": self.valid_loader.state_dict(),
            "records": self.records,
        }

    def save(self) -> None:
        if self.distributed.is_main:
            atomic_save(self.state_dict(), self.out_dir / CHECKPOINT)

    def resume(self) -> None:
        state = load_checked(self.out_dir / CHECKPOINT, self.device, "fastnas-search-1", self.config.to_dict(),
                             self.distributed.world_size)
        self.supernet.load_state_dict(state["supernet"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.policy.load_state_dict(state["policy"])
        self.train_loader.load_state_dict(state["train_loader"])
        self.valid_loader.load_state_dict(state["valid_loader"])
        self.step = state["step"]
        self.records = list(state["records"])
        if self.distributed.is_main:  # a kill between the checkpoint and the log's line leaves them apart
            (self.out_dir / RECORDS).write_text("".join(json.dumps(r) + "\n" for r in self.records))

    # ---- one search step -----------------------------------------------------------
    def _sample_path(self) -> tuple[int, ...]:
        """One path from the policy, decided by rank 0 (every rank draws alike; the
        broadcast guarantees it)."""
        with torch.no_grad():
            arch = self.policy.sample(1).archs[0]
        return tuple(self.distributed.broadcast(arch))

    def _train_shared_weights(self) -> tuple[float, int]:
        """Mean training loss and the bytes this rank all-reduced."""
        self.supernet.train()
        total, sent = 0.0, 0
        for _ in range(self.config.child_steps):
            arch = self._sample_path()
            x, y = self.distributed.shard(*self.train_loader.next())
            loss = F.cross_entropy(self.supernet(x, arch), y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            sent += self.distributed.average_gradients(self.supernet.parameters())
            nn.utils.clip_grad_norm_(self.supernet.parameters(), self.config.grad_clip)
            self.optimizer.step()
            total += float(loss.detach())
        return self.distributed.sum(total) / self.distributed.world_size / self.config.child_steps, sent

    def _train_controller(self) -> float:
        reward = float("nan")
        for _ in range(self.config.controller_steps):
            sample = self.policy.sample(self.config.controller_samples)
            batch = [self.valid_loader.next()]
            objectives = [(path_accuracy(self.supernet, arch, batch, self.distributed), self.space.flops(arch))
                          for arch in sample.archs]
            rewards = [self.reward_fn(accuracy, flops, self.step) for accuracy, flops in objectives]
            reward = self.policy.update(sample, rewards, objectives).mean_reward
        return reward

    def _record(self, loss: float, reward: float) -> dict:
        arch = self._sample_path()
        batches = self.config.eval_batches
        size = self.config.batch_size
        valid = data_module.iterate(self.splits.valid, self.splits.name, size, self.device, self.config.resize, batches)
        test = data_module.iterate(self.splits.test, self.splits.name, size, self.device, self.config.resize, batches)
        state = self.reward_fn.state(self.step)
        return {
            "step": self.step,
            "phase": state.phase,
            "target_flops": state.target,
            "arch": list(arch),
            "encoding": self.space.encode(arch),
            "flops": self.space.flops(arch),
            "params": self.space.params(arch),
            "acc_valid": path_accuracy(self.supernet, arch, valid, self.distributed),
            "acc_test": path_accuracy(self.supernet, arch, test, self.distributed),
            "train_loss": loss,
            "reward": reward,
        }

    def final_scores(self) -> list[dict]:
        """Every distinct architecture of the records scored again with the final shared
        weights, in the order first sampled: accuracies comparable across architectures,
        where each record's own were taken mid-training (as acc_valid_when_sampled)."""
        size, batches = self.config.batch_size, self.config.eval_batches
        first = {}
        precision = autocast(self.device, self.config.amp)
        for record in self.records:
            first.setdefault(tuple(record["arch"]), record)
        scored = []
        for arch, record in first.items():
            valid = data_module.iterate(self.splits.valid, self.splits.name, size, self.device, self.config.resize,
                                        batches)
            test = data_module.iterate(self.splits.test, self.splits.name, size, self.device, self.config.resize,
                                       batches)
            with precision:
                scored.append({**record, "acc_valid_when_sampled": record["acc_valid"],
                               "acc_valid": path_accuracy(self.supernet, arch, valid, self.distributed),
                               "acc_test": path_accuracy(self.supernet, arch, test, self.distributed)})
        return scored

    def select_and_finetune(self, samples: int, train_config) -> dict:
        """Seed 003's last step: sample ``samples`` architectures from the trained
        controller (the leading members of an evolved population), keep the best on the validation split, and fine-tune it (starting
        from the shared weights) with ``train_config``."""
        from fastnas.train import train_network

        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        if self.config.strategy in POPULATION_STRATEGIES:
            drawn = self.policy.leading(samples)  # evaluated members, not untried offspring
        else:
            with torch.no_grad():
                drawn = self.policy.sample(samples).archs
        candidates = self.distributed.broadcast(list(dict.fromkeys(drawn)))
        size, batches = self.config.batch_size, self.config.eval_batches
        scored = [
            (path_accuracy(self.supernet, arch, data_module.iterate(self.splits.valid, self.splits.name, size,
                                                                     self.device, self.config.resize, batches),
                           self.distributed), arch)
            for arch in candidates
        ]
        accuracy, best = max(scored, key=lambda s: s[0])
        network = self.supernet.extract(best)
        result = train_network(network, self.splits, train_config, self.device, distributed=self.distributed)
        return {"arch": list(best), "encoding": self.space.encode(best), "acc_valid_shared": accuracy,
                "candidates": len(candidates), **result, "network": network}

    def run(self, on_step: Callable[[dict], None] | None = None) -> list[dict]:
        """Runs the remaining steps; ``on_step`` sees every new record."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        total = self.config.schedule.total_steps
        with (self.out_dir / RECORDS).open("a") if self.distributed.is_main else contextlib.nullcontext() as log:
            while self.step < total:
                with autocast(self.device, self.config.amp):
                    loss, sent = self._train_shared_weights()
                    reward = self._train_controller()
                    record = {**self._record(loss, reward), "allreduce_bytes": sent}
                self.records.append(record)
                self.step += 1
                self.save()
                if log is not None:
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                if on_step is not None:
                    on_step(record)
        return self.records
