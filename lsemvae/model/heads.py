"""Task heads: one per task, on the fused latent, the concatenated per-lead means (faithful probe), or both
(compact: per-lead means in LEADS_12 slots plus the fused mean)."""

from __future__ import annotations

from torch import Tensor, nn

from lsemvae.leads import LEADS_12
from lsemvae.model.config import ModelConfig, TaskHeadSpec


class TaskHead(nn.Module):
    """Linear, or Linear -> ReLU -> Dropout -> Linear when ``hidden > 0`` (the paper's probe).

    ``zero_init``: the output layer starts at zero, so a new head predicts nothing instead of a random
    projection of the latent. Under DP a few noisy steps cannot undo a random start; a zero start also
    sends no random gradients into the pretrained encoders on the first step.
    """

    def __init__(self, in_dim: int, spec: TaskHeadSpec, hidden: int, dropout: float, zero_init: bool = False):
        super().__init__()
        if hidden:
            self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, spec.n_outputs))
        else:
            self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, spec.n_outputs))
        if zero_init:
            nn.init.zeros_(self.net[-1].weight)
            nn.init.zeros_(self.net[-1].bias)

    def forward(self, h: Tensor) -> Tensor:
        return self.net(h)


def head_input_dim(cfg: ModelConfig) -> int:
    slots = {"fused": 1, "concat": len(cfg.head_leads), "leads+fused": len(LEADS_12) + 1}[cfg.head_input]
    return cfg.latent_dim * slots


def build_heads(cfg: ModelConfig) -> nn.ModuleDict:
    dim = head_input_dim(cfg)
    return nn.ModuleDict({name: TaskHead(dim, spec, cfg.head_hidden, cfg.head_dropout, cfg.head_init == "zero")
                          for name, spec in cfg.tasks.items()})
