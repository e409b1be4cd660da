"""DARTS and multi-level DARTS with the architecture-entropy regulariser (seed 002).

Bilevel optimisation on two halves of the training split: the weights w on S_train
(SGD, lr 0.025 cosine-annealed to 0.001, momentum 0.9, weight decay 3e-4, clip 5), the
architecture parameters on S_val (Adam, lr 3e-4, betas (0.5, 0.999), weight decay 1e-3)
with the loss L_val + gamma * L_entropy (Eq. 7; gamma = 1 in the seed, 0 switches it
off). First order by default; ``second_order`` uses DARTS's unrolled step with the
finite-difference Hessian-vector product (no double backward through the kernels).
After every epoch the genotype is derived (per level when multi-level) and the skip
count per cell set and the architecture entropy are logged; the whole state is saved
atomically so a killed search resumes.

Data-parallel under torchrun (fastnas.distributed): every rank draws the same global
batches and keeps its share; batch norm takes its statistics over all ranks, and the
weight and architecture gradients (each of the second-order step's three gradients too)
are averaged, so N ranks make the update of one process with the global batch.
"""

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fastnas import data as data_module
from fastnas.distributed import DistributedContext, sync_batch_norm
from fastnas.precision import autocast
from fastnas.search.checkpoint import atomic_save, load_checked
from fastnas.spaces.darts import DartsSupernet, Genotype, skip_counts

CHECKPOINT = "checkpoint.pt"


@dataclass
class DartsConfig:
    multilevel: bool = False
    dataset: str = "digits"
    channels: int = 16
    layers: int = 8
    epochs: int = 50
    steps_per_epoch: int | None = None  # default: one pass over S_train
    batch_size: int = 64
    w_lr: float = 0.025
    w_lr_min: float = 0.001
    momentum: float = 0.9
    w_weight_decay: float = 3e-4
    grad_clip: float = 5.0
    arch_lr: float = 3e-4
    arch_weight_decay: float = 1e-3
    gamma: float = 1.0
    second_order: bool = False
    eval_batches: int = 4
    amp: str | None = None  # "bf16": forward passes under torch.autocast (fastnas.precision)
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        for name in ("channels", "epochs", "batch_size", "eval_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {self.steps_per_epoch}")
        if self.gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {self.gamma}")


def _halves(split: data_module.ImageSplit, seed: int) -> tuple[data_module.ImageSplit, data_module.ImageSplit]:
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    half = len(split) // 2
    pick = lambda idx: data_module.ImageSplit(split.images[idx], split.labels[idx])  # noqa: E731
    return pick(order[:half]), pick(order[half:])


class DartsSearch:
    def __init__(self, config: DartsConfig, splits: data_module.DataSplits, out_dir: str | Path,
                 device: str | torch.device = "cpu", fused: bool = True,
                 distributed: DistributedContext | None = None):
        config.validate()
        self.config = config
        self.splits = splits
        self.out_dir = Path(out_dir)
        self.device = torch.device(device)
        self.distributed = distributed or DistributedContext(device=self.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.model = DartsSupernet(config.channels, splits.num_classes, config.layers, config.multilevel,
                                       in_channels=splits.in_channels, fused=fused).to(self.device)
        if self.distributed.active:
            sync_batch_norm(self.model)
            self.distributed.check_batch_size(config.batch_size)
        s_train, s_val = _halves(splits.train, config.seed)
        self.train_loader = data_module.BatchLoader(s_train, splits.name, config.batch_size, self.device,
                                                    augment=True, seed=config.seed)
        self.val_loader = data_module.BatchLoader(s_val, splits.name, config.batch_size, self.device,
                                                  augment=True, seed=config.seed + 1)
        self.steps_per_epoch = config.steps_per_epoch or max(1, len(s_train) // self.train_loader.batch_size)
        self.w_optimizer = torch.optim.SGD(self.model.weight_parameters(), config.w_lr, momentum=config.momentum,
                                           weight_decay=config.w_weight_decay)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.w_optimizer, config.epochs,
                                                                    eta_min=config.w_lr_min)
        self.arch_optimizer = torch.optim.Adam(self.model.arch_parameters(), lr=config.arch_lr, betas=(0.5, 0.999),
                                               weight_decay=config.arch_weight_decay)
        self.epoch = 0
        self.history: list[dict] = []
        self.allreduce_bytes = 0  # sent by this rank since the epoch began

    # ---- optimisation ------------------------------------------------------------------
    def arch_loss(self, x, y) -> torch.Tensor:
        loss = F.cross_entropy(self.model(x), y)
        if self.config.gamma > 0:
            loss = loss + self.config.gamma * self.model.entropy()
        return loss

    def _arch_step_first_order(self, x_val, y_val) -> float:
        alphas = self.model.arch_parameters()
        with self.model.frozen_weights():
            loss = self.arch_loss(x_val, y_val)
            grads = torch.autograd.grad(loss, alphas)
        self.allreduce_bytes += self.distributed.average(grads)
        for a, g in zip(alphas, grads):
            a.grad = g
        return float(loss.detach())

    def _arch_step_second_order(self, x_train, y_train, x_val, y_val) -> float:
        """DARTS Eq. 7-8: grad_a L_val(w', a) - xi * (grad_a L_train(w+, a) - grad_a L_train(w-, a)) / (2 eps),
        w' = w - xi * (momentum + grad_w L_train + wd * w), w+- = w +- eps * grad_w' L_val(w', a)."""
        weights = self.model.weight_parameters()
        alphas = self.model.arch_parameters()
        xi = self.w_optimizer.param_groups[0]["lr"]
        original = [w.detach().clone() for w in weights]
        train_grads = self._averaged(weights, torch.autograd.grad(F.cross_entropy(self.model(x_train), y_train),
                                                                  weights, allow_unused=True))
        with torch.no_grad():
            for w, g in zip(weights, train_grads):
                momentum = self.w_optimizer.state.get(w, {}).get("momentum_buffer")
                step = g + self.config.w_weight_decay * w
                if momentum is not None:
                    step = step + self.config.momentum * momentum
                w.sub_(xi * step)
        loss = self.arch_loss(x_val, y_val)
        grads = self._averaged(alphas + weights, torch.autograd.grad(loss, alphas + weights, allow_unused=True))
        alpha_grads, weight_grads = grads[:len(alphas)], grads[len(alphas):]
        eps = 0.01 / torch.sqrt(sum((g * g).sum() for g in weight_grads)).clamp_min(1e-12)

        def alpha_grad_at(sign: float):
            with torch.no_grad():
                for w, w0, g in zip(weights, original, weight_grads):
                    w.copy_(w0 + sign * eps * g)
            return self._averaged(alphas, torch.autograd.grad(F.cross_entropy(self.model(x_train), y_train), alphas))

        plus, minus = alpha_grad_at(1.0), alpha_grad_at(-1.0)
        with torch.no_grad():
            for w, w0 in zip(weights, original):
                w.copy_(w0)
        for a, g, gp, gm in zip(alphas, alpha_grads, plus, minus):
            a.grad = g - xi * (gp - gm) / (2 * eps)
        return float(loss.detach())

    def _averaged(self, parameters, grads) -> list[torch.Tensor]:
        """The gradients (zeros for unused parameters) averaged over the ranks."""
        grads = [g if g is not None else torch.zeros_like(p) for p, g in zip(parameters, grads)]
        self.allreduce_bytes += self.distributed.average(grads)
        return grads

    def step(self) -> tuple[float, float]:
        """One architecture update on S_val and one weight update on S_train."""
        with autocast(self.device, self.config.amp):
            return self._step()

    def _step(self) -> tuple[float, float]:
        self.model.train()
        x_train, y_train = self.distributed.shard(*self.train_loader.next())
        x_val, y_val = self.distributed.shard(*self.val_loader.next())
        self.arch_optimizer.zero_grad(set_to_none=True)
        if self.config.second_order:
            arch_loss = self._arch_step_second_order(x_train, y_train, x_val, y_val)
        else:
            arch_loss = self._arch_step_first_order(x_val, y_val)
        self.arch_optimizer.step()
        self.w_optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.model(x_train), y_train)
        loss.backward()
        for a in self.model.arch_parameters():
            a.grad = None  # the weight step must not move the architecture
        self.allreduce_bytes += self.distributed.average_gradients(self.model.weight_parameters())
        nn.utils.clip_grad_norm_(self.model.weight_parameters(), self.config.grad_clip)
        self.w_optimizer.step()
        loss_sum, arch_loss_sum = self.distributed.sums(float(loss.detach()), arch_loss)
        return loss_sum / self.distributed.world_size, arch_loss_sum / self.distributed.world_size

    @torch.no_grad()
    def supernet_accuracy(self) -> float:
        self.model.eval()
        correct = total = 0
        for batch in data_module.iterate(self.splits.valid, self.splits.name, self.config.batch_size, self.device,
                                         max_batches=self.config.eval_batches):
            x, y = self.distributed.shard(*batch, even=False)
            with autocast(self.device, self.config.amp):
                logits = self.model(x)
            correct += int((logits.argmax(1) == y).sum())
            total += len(y)
        correct, total = self.distributed.sums(correct, total)
        return correct / max(1, total)

    # ---- epochs, checkpoints -------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "format": "fastnas-darts-1", "config": self.config.to_dict(), "epoch": self.epoch,
            "model": self.model.state_dict(), "w_optimizer": self.w_optimizer.state_dict(),
            "arch_optimizer": self.arch_optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "train_loader": self.train_loader.state_dict(), "val_loader": self.val_loader.state_dict(),
            "history": self.history, "world_size": self.distributed.world_size,
        }

    def resume(self) -> None:
        state = load_checked(self.out_dir / CHECKPOINT, self.device, "fastnas-darts-1", self.config.to_dict(),
                             self.distributed.world_size)
        self.model.load_state_dict(state["model"])
        self.w_optimizer.load_state_dict(state["w_optimizer"])
        self.arch_optimizer.load_state_dict(state["arch_optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.train_loader.load_state_dict(state["train_loader"])
        self.val_loader.load_state_dict(state["val_loader"])
        self.epoch = state["epoch"]
        self.history = list(state["history"])

    def run(self, on_step: Callable[[int, float], None] | None = None,
            on_epoch: Callable[[dict], None] | None = None) -> Genotype:
        if self.distributed.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        while self.epoch < self.config.epochs:
            losses = []
            self.allreduce_bytes = 0
            for i in range(self.steps_per_epoch):
                loss, _ = self.step()
                losses.append(loss)
                if on_step is not None:
                    on_step(i, loss)
            self.scheduler.step()
            genotype = self.model.genotype()
            record = {
                "epoch": self.epoch + 1,
                "train_loss": sum(losses) / len(losses),
                "supernet_accuracy": self.supernet_accuracy(),
                "entropy": float(self.model.entropy().detach()),
                "skip_connect": skip_counts(genotype),
                "genotype": json.loads(genotype.to_json()),
                "allreduce_bytes_per_step": self.allreduce_bytes // self.steps_per_epoch,
            }
            self.history.append(record)
            self.epoch += 1
            if self.distributed.is_main:
                atomic_save(self.state_dict(), self.out_dir / CHECKPOINT)
            if on_epoch is not None:
                on_epoch(record)
        return self.model.genotype()

