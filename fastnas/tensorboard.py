"""Logs a search or training run for TensorBoard (``--tensorboard DIR``; view it with
``tensorboard --logdir DIR``): losses, rewards, sampled and target FLOPs, accuracies, the
controller's choice probabilities and the DARTS architecture weights."""

from pathlib import Path

import torch


class TensorBoardLog:
    def __init__(self, log_dir: str | Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ValueError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
        self.writer = SummaryWriter(str(log_dir))

    def search_step(self, record: dict, choice_probabilities: list[list[float]]) -> None:
        """One weight-sharing search step (a record of WeightSharingSearch.run)."""
        step = record["step"]
        for tag, key in (("loss/train", "train_loss"), ("reward/mean", "reward"), ("accuracy/valid", "acc_valid"),
                         ("accuracy/test", "acc_test")):
            self.writer.add_scalar(tag, record[key], step)
        self.writer.add_scalar("flops/sampled_M", record["flops"] / 1e6, step)
        if record["target_flops"] is not None:  # strategies without a FLOPs target have none
            self.writer.add_scalar("flops/target_M", record["target_flops"] / 1e6, step)
        for decision, probabilities in enumerate(choice_probabilities):
            for choice, probability in enumerate(probabilities):
                self.writer.add_scalar(f"controller/decision_{decision}/choice_{choice}", probability, step)

    def darts_step(self, step: int, loss: float) -> None:
        self.writer.add_scalar("loss/train", loss, step)

    def darts_epoch(self, record: dict, alphas: dict[str, torch.Tensor], op_names) -> None:
        """One DARTS epoch: the supernet's accuracy and entropy, and every edge's softmax
        weights over its ops."""
        epoch = record["epoch"]
        self.writer.add_scalar("accuracy/supernet", record["supernet_accuracy"], epoch)
        self.writer.add_scalar("entropy", record["entropy"], epoch)
        for cell, weights in alphas.items():
            for edge, row in enumerate(torch.softmax(weights.detach().float().cpu(), dim=-1)):
                for name, probability in zip(op_names, row):
                    self.writer.add_scalar(f"alphas/{cell}/edge_{edge}/{name}", float(probability), epoch)

    def train_epoch(self, entry: dict) -> None:
        self.writer.add_scalar("loss/train", entry["loss"], entry["epoch"])
        self.writer.add_scalar("lr", entry["lr"], entry["epoch"])

    def close(self) -> None:
        self.writer.close()
