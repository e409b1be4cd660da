"""Training a chosen architecture from scratch with seed 000's protocol: SGD (momentum
0.9, weight decay 2.5e-4), batch 128, lr 0.02 with cosine annealing and warm restarts
(period 10 epochs, minimum 5e-4), random crop (+ flip on CIFAR) augmentation."""

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fastnas import data as data_module
from fastnas.distributed import DistributedContext
from fastnas.flops import count
from fastnas.precision import autocast
from fastnas.spaces.canas import CanasSpace
from fastnas.spaces.darts import Genotype, NetworkCIFAR
from fastnas.spaces.enas_chain import EnasChainSpace


@dataclass
class TrainConfig:
    epochs: int = 300
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 2.5e-4
    batch_size: int = 128
    restart_period: int | None = 10  # cosine with warm restarts; None: one cosine annealing
    min_lr: float = 5e-4
    resize: int | None = None
    auxiliary_weight: float = 0.4  # for networks that return (logits, auxiliary logits)
    drop_path_prob: float = 0.0  # raised linearly to this over training (DARTS networks)
    cutout: int = 0  # side of the cutout square, 0 = off
    grad_clip: float | None = None
    amp: str | None = None  # "bf16": forward passes under torch.autocast (fastnas.precision)
    seed: int = 0


# The DARTS evaluation protocol (Liu et al. 2019) for genotypes.
DARTS_TRAIN = dict(lr=0.025, weight_decay=3e-4, batch_size=96, restart_period=None, min_lr=0.0,
                   drop_path_prob=0.2, cutout=16, grad_clip=5.0, epochs=600)


@dataclass
class ModelSpec:
    """What ``fastnas train`` builds: a CANAS architecture or a DARTS genotype."""

    description: str
    build: Callable[[int, int], nn.Module]  # (num_classes, in_channels) -> network
    is_genotype: bool


def load_model_spec(path: str | Path, darts_channels: int = 36, darts_layers: int = 20) -> ModelSpec:
    """Reads chosen.json (CANAS search) or genotype.json (DARTS search)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"--arch: {path} does not exist; pass the chosen.json or genotype.json a search wrote") from None
    try:
        content = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"--arch: {path} is not JSON ({error})") from None
    if isinstance(content, dict) and "cells" in content:
        try:
            genotype = Genotype.from_json(text)
        except ValueError as error:
            raise ValueError(f"--arch: {path} is not a genotype.json from fastnas search ({error})") from None
        return ModelSpec(
            f"DARTS network (C={darts_channels}, {darts_layers} cells, auxiliary head) of\n{genotype}",
            lambda classes, channels: NetworkCIFAR(darts_channels, classes, darts_layers, True, genotype,
                                                   in_channels=channels),
            True,
        )
    space, arch = load_architecture(path)
    return ModelSpec(f"{space.name} network {space.encode(arch)}", lambda classes, channels: space.build(arch), False)


def load_weights(path: str | Path, model: torch.nn.Module) -> dict:
    """The state dict in a model.pt written by ``fastnas train``, checked against `model`."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"--weights: {path} does not exist; pass the model.pt fastnas train wrote") from None
    except Exception as error:  # torch.load raises UnpicklingError, RuntimeError, EOFError, ... on other files
        raise ValueError(f"--weights: {path} is not a checkpoint written by fastnas train "
                         f"({type(error).__name__})") from None
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"--weights: {path} has no 'state_dict'; pass the model.pt fastnas train wrote")
    expected = model.state_dict()
    mismatched = [k for k in expected if k not in state or tuple(state[k].shape) != tuple(expected[k].shape)]
    if mismatched or len(state) != len(expected):
        raise ValueError(f"--weights: {path} holds the weights of another network ({len(mismatched)} of "
                         f"{len(expected)} tensors missing or shaped differently, e.g. {mismatched[:1]}); pass the "
                         f"model.pt trained from this --arch (and the same --channels/--layers/--dataset)")
    return state


def space_from_spec(spec: dict):
    """The space described by a chosen.json's "space" entry."""
    if spec.get("name") == "canas":
        return CanasSpace(spec["variant"], num_classes=spec["num_classes"], width_mult=spec.get("width_mult", 1.0))
    if spec.get("name") == "enas_chain":
        return EnasChainSpace(spec["channels"], spec["num_classes"], spec["in_channels"], spec["input_size"])
    raise ValueError(f"fastnas train builds CANAS or ENAS-chain architectures, not space {spec.get('name')!r}")


def load_architecture(path: str | Path):
    """Reads a chosen.json written by ``fastnas search``."""
    path = Path(path)
    try:
        chosen = json.loads(path.read_text())
        space = space_from_spec(chosen["space"])
        return space, space.validate(chosen["arch"])
    except FileNotFoundError:
        raise FileNotFoundError(f"--arch: {path} does not exist; pass the chosen.json a search wrote") from None
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as error:
        raise ValueError(f"--arch: {path} is not a chosen.json from fastnas search ({error})") from None


def cutout(x: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Zeroes one size x size square per image (DeVries & Taylor 2017), centred anywhere."""
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n, 1, 1), generator=generator).to(x.device)
    cx = torch.randint(0, w, (n, 1, 1), generator=generator).to(x.device)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    inside = ((rows - cy).abs() <= size // 2) & ((cols - cx).abs() <= size // 2)
    return x * (~inside).unsqueeze(1).to(x.dtype)


def evaluate(model: nn.Module, split: data_module.ImageSplit, dataset: str, device, resize=None,
             batch_size: int = 256, amp: str | None = None, distributed: DistributedContext | None = None) -> float:
    """Accuracy on `split`; with several ranks each counts its contiguous share."""
    distributed = distributed or DistributedContext(device=torch.device(device))
    share = -(-len(split) // distributed.world_size)
    lo, hi = distributed.rank * share, min(len(split), (distributed.rank + 1) * share)
    mine = data_module.ImageSplit(split.images[lo:hi], split.labels[lo:hi])
    model.eval()
    correct = 0
    with torch.no_grad(), autocast(device, amp):
        for x, y in data_module.iterate(mine, dataset, batch_size, device, resize):
            correct += int((model(x).argmax(1) == y).sum())
    return distributed.sum(correct) / len(split)


def train_network(model: nn.Module, splits: data_module.DataSplits, config: TrainConfig, device,
                  on_epoch: Callable[[dict], None] | None = None,
                  distributed: DistributedContext | None = None) -> dict:
    """Trains on train + validation (the search split is not needed any more) and
    reports test accuracy, MACs and parameters. With a `distributed` context of several
    ranks, each trains on its share of every global batch of config.batch_size and the
    gradients are averaged (fastnas.distributed)."""
    distributed = distributed or DistributedContext(device=torch.device(device))
    if config.epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {config.epochs}")
    device = torch.device(device)
    model.to(device)
    train_split = data_module.ImageSplit(torch.cat([splits.train.images, splits.valid.images]),
                                         torch.cat([splits.train.labels, splits.valid.labels]))
    loader = data_module.BatchLoader(train_split, splits.name, config.batch_size, device, augment=True,
                                     resize=config.resize, seed=config.seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    if config.restart_period:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=config.restart_period,
                                                                         eta_min=config.min_lr)
    else:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.epochs, eta_min=config.min_lr)
    steps_per_epoch = max(1, len(train_split) // loader.batch_size)
    history = []
    communicated = 0
    for epoch in range(config.epochs):
        model.train()
        if hasattr(model, "drop_path_prob"):
            model.drop_path_prob = config.drop_path_prob * epoch / config.epochs
        total = 0.0
        for _ in range(steps_per_epoch):
            x, y = loader.next()
            if config.cutout:
                x = cutout(x, config.cutout, loader.generator)
            x, y = distributed.shard(x, y)
            with autocast(device, config.amp):
                out = model(x)
                if isinstance(out, tuple):  # (logits, auxiliary logits)
                    loss = F.cross_entropy(out[0], y) + config.auxiliary_weight * F.cross_entropy(out[1], y)
                else:
                    loss = F.cross_entropy(out, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            communicated = distributed.average_gradients(model.parameters())
            if config.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            total += float(loss.detach())
        scheduler.step()
        mean_loss = distributed.sum(total) / distributed.world_size / steps_per_epoch
        entry = {"epoch": epoch + 1, "loss": mean_loss, "lr": optimizer.param_groups[0]["lr"]}
        history.append(entry)
        if on_epoch is not None:
            on_epoch(entry)
    size = config.resize or splits.image_size
    counts = count(model, torch.zeros(1, splits.in_channels, size, size, device=device))
    return {
        "test_accuracy": evaluate(model, splits.test, splits.name, device, config.resize, amp=config.amp,
                                  distributed=distributed),
        "processes": distributed.world_size,
        "allreduce_bytes_per_step": communicated,
        "flops": counts.macs,
        "params": counts.params,
        "history": history,
    }
