"""Statistics of the global batch, whatever the number of data-parallel ranks: the one place where a figure that
crosses rows is taken (token means of losses, whitening, logged means and spreads).

Each rank holds its shard of every global batch (rank r: its contiguous share of the prompts, their k answers
each). A statistic over the shard alone would change with the number of ranks (REINFORCE++ whitened with each
rank's own mean and variance; a loss averaged over a rank's own tokens weighs that rank's tokens differently),
so every such figure is all-reduced here: N ranks compute what one process computes on the whole batch.
Statistics within a prompt's group of k answers (GRPO's, RLOO's, ReMax's baseline) need no reduction: a group
never spans two ranks.

References: verl's ``agg_loss`` (token-mean: the sum over the global batch's tokens divided by their count);
OpenRLHF normalises REINFORCE++ returns over the whole rollout batch.
"""

from __future__ import annotations

import torch


class GlobalBatch:
    """All-reduces over the default process group when ``world_size`` > 1; plain local figures otherwise."""

    def __init__(self, world_size: int = 1, device: torch.device | str = "cpu"):
        self.world_size = world_size
        self.device = torch.device(device)

    def _sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over the ranks (a detached copy; gloo and NCCL reduce on the tensor's own device)."""
        tensor = tensor.detach().clone()
        if self.world_size > 1:
            torch.distributed.all_reduce(tensor)
        return tensor

    def count(self, mask: torch.Tensor) -> torch.Tensor:
        """Masked entries (tokens) of the global batch."""
        return self._sum(mask.sum().float())

    def loss_mean(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Differentiable mean of ``values`` over the masked tokens of the global batch, as this rank's part.

        Data parallelism averages gradients over the ranks (DeepSpeed, DDP), so each rank divides its own token
        sum by the global token count over the number of ranks: the averaged gradient is that of the global
        token mean, the very gradient one process computes on the whole batch."""
        return (values * mask).sum() * self.world_size / self.count(mask).clamp(min=1)

    def mean(self, values: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean over the (masked) entries of the global batch, the same on every rank; no gradient flows."""
        mask = torch.ones_like(values) if mask is None else mask
        totals = self._sum(torch.stack([(values * mask).sum().float(), mask.sum().float()]))
        return (totals[0] / totals[1].clamp(min=1)).to(values.dtype)

    def var(self, values: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Population variance over the (masked) entries of the global batch."""
        mask = torch.ones_like(values) if mask is None else mask
        return self.mean((values - self.mean(values, mask)) ** 2, mask)

    def whiten(self, values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
        """(x - mean) / sqrt(var + eps) with the global batch's statistics; masked entries become 0."""
        mean, var = self.mean(values, mask), self.var(values, mask)
        return ((values - mean) * torch.rsqrt(var + eps) * mask).detach()

    def gather(self, values: torch.Tensor) -> torch.Tensor:
        """Every rank's rows, in rank order (ranks hold equal shares)."""
        if self.world_size == 1:
            return values
        parts = [torch.empty_like(values) for _ in range(self.world_size)]
        torch.distributed.all_gather(parts, values.contiguous())
        return torch.cat(parts)

    def scalar(self, value: torch.Tensor | float) -> float:
        """A logged figure that is a mean over this rank's equal share, averaged over the ranks."""
        if self.world_size == 1:
            return float(value)
        return float(self._sum(torch.tensor(float(value), dtype=torch.float64, device=self.device))) / self.world_size

    def total(self, value: torch.Tensor | float) -> float:
        """A logged count summed over the ranks."""
        if self.world_size == 1:
            return float(value)
        return float(self._sum(torch.tensor(float(value), dtype=torch.float64, device=self.device)))
