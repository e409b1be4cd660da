"""The autoregressive LSTM controller of ENAS / CANAS (seed 000, Eq. 1).

It samples one choice per decision; the embedding of each choice is the next step's
input. Logits are squashed to ``tanh_constant * tanh(logits)`` (1.5 in the seed) so the
policy does not collapse early. The controller is tiny: the search keeps it on the CPU,
so sampling never synchronises with an accelerator.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from fastnas.spaces.base import choice_counts


@dataclass
class ControllerSample:
    archs: list[tuple[int, ...]]
    log_prob: torch.Tensor  # (N,) sum over decisions of log P(a_g | a_<g)
    entropy: torch.Tensor  # (N,) sum over decisions of the policy entropy


class LSTMController(nn.Module):
    def __init__(self, decisions: Sequence[int], hidden_size: int = 64, tanh_constant: float | None = 1.5):
        super().__init__()
        self.decisions = choice_counts(decisions)
        self.tanh_constant = tanh_constant
        self.start = nn.Parameter(torch.zeros(1, hidden_size))
        self.cell = nn.LSTMCell(hidden_size, hidden_size)
        # One embedding table and one classifier per distinct choice count.
        counts = sorted(set(self.decisions))
        self.embeddings = nn.ModuleDict({str(n): nn.Embedding(n, hidden_size) for n in counts})
        self.classifiers = nn.ModuleDict({str(n): nn.Linear(hidden_size, n) for n in counts})
        for p in self.parameters():
            nn.init.uniform_(p, -0.1, 0.1)

    def _logits(self, hidden: torch.Tensor, n: int) -> torch.Tensor:
        logits = self.classifiers[str(n)](hidden)
        if self.tanh_constant is not None:
            logits = self.tanh_constant * torch.tanh(logits)
        return logits

    def forward(self, num_samples: int, generator: torch.Generator | None = None,
                archs: Sequence[Sequence[int]] | None = None) -> ControllerSample:
        """Samples ``num_samples`` architectures, or scores the given ``archs``."""
        if archs is not None:
            num_samples = len(archs)
            given = torch.tensor([list(a) for a in archs], device=self.start.device)
        inputs = self.start.expand(num_samples, -1)
        state = None
        log_prob = torch.zeros(num_samples, device=self.start.device)
        entropy = torch.zeros(num_samples, device=self.start.device)
        choices = []
        for g, n in enumerate(self.decisions):
            state = self.cell(inputs, state)
            logits = self._logits(state[0], n)
            log_p = torch.log_softmax(logits, dim=-1)
            if archs is not None:
                choice = given[:, g]
            else:
                choice = torch.multinomial(log_p.exp().detach(), 1, generator=generator).squeeze(1)
            log_prob = log_prob + log_p.gather(1, choice.unsqueeze(1)).squeeze(1)
            entropy = entropy - (log_p.exp() * log_p).sum(dim=-1)
            choices.append(choice)
            inputs = self.embeddings[str(n)](choice)
        stacked = torch.stack(choices, dim=1).tolist()
        return ControllerSample([tuple(a) for a in stacked], log_prob, entropy)

    @torch.no_grad()
    def most_likely(self) -> tuple[int, ...]:
        """Greedy decoding: the most probable choice at every step."""
        return self.greedy()[0]

    @torch.no_grad()
    def greedy(self) -> tuple[tuple[int, ...], list[list[float]]]:
        """Greedy decoding, and at every step the probabilities of its choices (given the
        greedy choices before it); draws no random numbers."""
        inputs = self.start
        state = None
        arch, probabilities = [], []
        for n in self.decisions:
            state = self.cell(inputs, state)
            logits = self._logits(state[0], n)
            probabilities.append(torch.softmax(logits, dim=-1)[0].tolist())
            choice = logits.argmax(dim=-1)
            arch.append(int(choice))
            inputs = self.embeddings[str(n)](choice)
        return tuple(arch), probabilities
