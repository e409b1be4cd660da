"""Data-parallel runs on torch.distributed, launched by torchrun (NCCL on GPUs, gloo on
CPUs): ``torchrun --standalone --nproc_per_node N -m fastnas train ...``.

Every rank draws the same global batch (the same loader, seed and augmentation draws) and
keeps its share, so N ranks x B/N give the update of one process with batch B: gradients
are averaged over the ranks, batch-norm statistics are taken over the global batch where
asked for (``sync_batch_norm``), and evaluation counts are summed. Rank 0 alone writes
files. Without torchrun (no WORLD_SIZE) the context is a single process and every
operation here is a no-op.
"""

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

# A rank that waits longer than this for the others (one was killed, or hangs) ends the
# job with an error instead of hanging.
TIMEOUT = datetime.timedelta(minutes=10)


@dataclass
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_environment(cls, device: torch.device, timeout: datetime.timedelta = TIMEOUT) -> "DistributedContext":
        """The torchrun launch this process is part of (RANK, WORLD_SIZE, LOCAL_RANK), its
        process group initialised; a single process without them. On CUDA each rank takes
        the GPU of its LOCAL_RANK."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls(device=device)
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout)
        return cls(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device)

    def shard(self, *tensors: torch.Tensor, even: bool = True) -> tuple[torch.Tensor, ...]:
        """This rank's share of a global batch (dimension 0). Training batches must divide
        evenly (each rank's mean loss then weighs alike); `even=False` gives evaluation
        batches contiguous shares of ceil(size / ranks), counted and summed."""
        if not self.active:
            return tensors
        size = tensors[0].shape[0]
        if even:
            self.check_batch_size(size)
        share = -(-size // self.world_size)
        return tuple(t[self.rank * share:(self.rank + 1) * share] for t in tensors)

    def check_batch_size(self, size: int) -> None:
        """Refuses a global training batch that does not split evenly over the ranks."""
        if size % self.world_size:
            raise ValueError(f"the global batch of {size} does not split over {self.world_size} ranks; "
                             f"choose a batch size divisible by the number of processes")

    def broadcast(self, value):
        """Rank 0's `value` (any picklable object) on every rank."""
        if not self.active:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def average_gradients(self, parameters) -> int:
        """Averages the gradients over the ranks, in one flat all-reduce; returns the bytes
        each rank sent."""
        return self.average([p.grad for p in parameters if p.grad is not None])

    def average(self, tensors) -> int:
        """Replaces each tensor (same dtype) by its mean over the ranks, in one flat
        all-reduce; returns the bytes each rank sent."""
        if not self.active or not tensors:
            return 0
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for t in tensors:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()
        return flat.numel() * flat.element_size()

    def sum(self, value: float) -> float:
        """A number summed over the ranks."""
        return self.sums(value)[0]

    def sums(self, *values: float) -> list[float]:
        """Numbers each summed over the ranks, in one all-reduce."""
        if not self.active:
            return list(values)
        totals = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(totals)
        return totals.tolist()


class _SyncBatchNormFunction(torch.autograd.Function):
    """Batch norm over the global batch: the per-channel sums (and in the backward the sums
    of the incoming gradient) are all-reduced, on any device and backend."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps):
        dims = (0, 2, 3)
        count = torch.tensor([x.numel() // x.shape[1]], dtype=torch.float64, device=x.device)
        sums = torch.cat([x.double().sum(dims), (x.double() ** 2).sum(dims), count])
        dist.all_reduce(sums)
        channels = x.shape[1]
        total = sums[-1]
        mean = sums[:channels] / total
        var = (sums[channels:2 * channels] / total - mean * mean).clamp_min(0)
        invstd = torch.rsqrt(var + eps)
        if running_mean is not None:
            with torch.no_grad():
                running_mean.mul_(1 - momentum).add_(momentum * mean.to(running_mean.dtype))
                unbiased = var * total / (total - 1).clamp_min(1)
                running_var.mul_(1 - momentum).add_(momentum * unbiased.to(running_var.dtype))
        shape = (1, channels, 1, 1)
        xhat = ((x.double() - mean.view(shape)) * invstd.view(shape)).to(x.dtype)
        ctx.save_for_backward(xhat, weight, invstd.to(x.dtype), total)
        out = xhat
        if weight is not None:
            out = out * weight.view(shape) + bias.view(shape)
        return out

    @staticmethod
    def backward(ctx, grad):
        xhat, weight, invstd, total = ctx.saved_tensors
        dims = (0, 2, 3)
        shape = (1, -1, 1, 1)
        grad_xhat = grad * weight.view(shape) if weight is not None else grad
        local = torch.cat([grad_xhat.double().sum(dims), (grad_xhat.double() * xhat.double()).sum(dims)])
        sums = local.clone()
        dist.all_reduce(sums)
        channels = xhat.shape[1]
        mean_g = (sums[:channels] / total).to(grad.dtype).view(shape)
        mean_gx = (sums[channels:] / total).to(grad.dtype).view(shape)
        grad_x = invstd.view(shape) * (grad_xhat - mean_g - xhat * mean_gx)
        grad_weight = (grad * xhat).sum(dims) if weight is not None else None
        grad_bias = grad.sum(dims) if weight is not None else None
        return grad_x, grad_weight, grad_bias, None, None, None, None


class SyncBatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d whose training statistics cover the batch of every rank."""

    @property
    def synchronized(self) -> bool:
        """Whether this forward takes its statistics over several processes."""
        return self.training and dist.is_initialized() and dist.get_world_size() > 1

    def _count_batch(self) -> float | None:
        """Counts a training batch as nn.BatchNorm2d does; the momentum it implies."""
        if not self.track_running_stats:
            return self.momentum
        self.num_batches_tracked.add_(1)
        if self.momentum is None:  # a cumulative average, as nn.BatchNorm2d
            return 1.0 / float(self.num_batches_tracked)
        return self.momentum

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.synchronized:
            return super().forward(x)
        momentum = self._count_batch()
        return _SyncBatchNormFunction.apply(x, self.weight, self.bias, self.running_mean if self.track_running_stats
                                            else None, self.running_var, momentum, self.eps)

    @staticmethod
    def normalize_together(inputs: list[torch.Tensor], norms: list["SyncBatchNorm2d"]) -> list[torch.Tensor]:
        """``[norm(x) for x, norm in zip(inputs, norms)]`` for non-affine norms with one
        all-reduce in the forward and one in the backward instead of one per norm: a DARTS
        edge's candidates (fastnas.ops.batch_norm_mixed_op)."""
        first = norms[0]
        if any(n.affine or n.eps != first.eps or n.momentum != first.momentum
               or n.track_running_stats != first.track_running_stats for n in norms):
            raise ValueError("normalize_together takes non-affine norms with one eps, momentum and tracking setting")
        momenta = [n._count_batch() for n in norms]
        track = first.track_running_stats
        running_mean = torch.cat([n.running_mean for n in norms]) if track else None
        running_var = torch.cat([n.running_var for n in norms]) if track else None
        out = _SyncBatchNormFunction.apply(torch.cat(inputs, 1), None, None, running_mean, running_var, momenta[0],
                                           first.eps)
        if track:
            with torch.no_grad():
                for norm, mean, var in zip(norms, running_mean.split(first.num_features),
                                           running_var.split(first.num_features)):
                    norm.running_mean.copy_(mean)
                    norm.running_var.copy_(var)
        return list(out.split(first.num_features, 1))


def end_process_group(completed: bool) -> None:
    """Leaves the process group ``from_environment`` joined, if any. After a completed
    run every rank first waits for the others: a rank that destroys its group while
    another's last collective is still in flight can be aborted by gloo at exit
    (SIGABRT, "terminate called without an active exception"; 3 of 12 two-rank runs on a
    2-core VM, none of 32 with the barrier). After an error the wait is skipped: the other
    ranks may be gone."""
    if not dist.is_initialized():
        return
    if completed:
        dist.barrier()
    dist.destroy_process_group()


def sync_batch_norm(model: nn.Module) -> nn.Module:
    """Replaces every nn.BatchNorm2d of `model` by SyncBatchNorm2d (same parameters and
    buffers), in place; returns the model."""
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            reference = child.weight if child.affine else child.running_mean
            synced = SyncBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                     child.track_running_stats,
                                     device=None if reference is None else reference.device,
                                     dtype=None if reference is None else reference.dtype)
            synced.load_state_dict(child.state_dict())
            setattr(model, name, synced)
        else:
            sync_batch_norm(child)
    return model
