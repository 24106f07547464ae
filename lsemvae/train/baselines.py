"""Baselines evaluated through the same folds and command as LS-EMVAE.

* :class:`ResNet1D`: a from-scratch 1-D ResNet on any lead set, leads as input channels.
  Measured: 0.846 macro AUROC on fold 10 of the PTB-XL subset with 6 limb leads, mean of 3 seeds
  (benchmarks/results/ptbxl_accuracy.json).
* Random-encoder probe: not built here, to keep one model implementation. It is the LS-EMVAE
  itself, ``build_model(config)`` from :mod:`lsemvae.model` with its default random
  initialisation (seeded) and **no pretrained checkpoint loaded**, fine-tuned in ``probe`` mode
  (encoders frozen, only gates and heads trained) by :mod:`lsemvae.train.finetune`. It measures
  what pretraining adds beyond the architecture and the probe.
* Fusion ablations (``poe``/``moe``/``hime``/``hime-gated``) are ``ModelConfig.fusion`` values.

Every classifier here follows the shared interface
``forward_logits(x [B,12,T], lead_mask [B,12]) -> {task: logits [B, n_out]}``; leads absent from a
record (mask False) are zeroed, so the same network serves records missing some of its leads.
"""

from __future__ import annotations

from typing import Literal, Mapping, Sequence

import torch
from pydantic import Field
from torch import Tensor, nn

from lsemvae.config import StrictModel
from lsemvae.leads import LIMB_LEADS, lead_index, resolve_lead_set


class ResNet1DConfig(StrictModel):
    """Everything needed to rebuild a :class:`ResNet1D`; ``architecture`` tells checkpoints apart.

    ``ResNet1D.config.model_dump()`` is what ``lsemvae.train.checkpoint.save_checkpoint`` stores as
    ``model_config``, so the CNN is saved and reloaded with the same checkpoint code as LS-EMVAE.
    """

    architecture: Literal["resnet1d"] = "resnet1d"
    tasks: dict[str, int] = Field(description="task name -> number of outputs")
    leads: tuple[str, ...] = LIMB_LEADS
    widths: tuple[int, ...] = (32, 64, 96, 112)
    kernel: int = Field(7, gt=0)
    dropout: float = Field(0.2, ge=0, lt=1)


def _group_norm(channels: int) -> nn.GroupNorm:
    # GroupNorm, not BatchNorm: per-sample statistics keep DP-SGD's per-sample gradients valid (Opacus).
    return nn.GroupNorm(min(8, channels), channels)


class _ResBlock(nn.Module):
    """Two k-wide convolutions with a projected shortcut when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int, kernel: int, dropout: float):
        super().__init__()
        pad = kernel // 2
        self.body = nn.Sequential(
            nn.Conv1d(c_in, c_out, kernel, stride=stride, padding=pad, bias=False), _group_norm(c_out), nn.ReLU(),
            nn.Dropout(dropout),
            nn.Conv1d(c_out, c_out, kernel, padding=pad, bias=False), _group_norm(c_out),
        )
        self.shortcut = (nn.Identity() if stride == 1 and c_in == c_out else
                         nn.Sequential(nn.Conv1d(c_in, c_out, 1, stride=stride, bias=False), _group_norm(c_out)))
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class ResNet1D(nn.Module):
    """From-scratch 1-D ResNet; about 0.73 M parameters at the defaults with 6 leads.

    ``tasks`` maps task name to its number of outputs (``Task.n_outputs``) or to a ``Task``.
    ``leads`` (a set name like ``"6L"`` or lead names) are the input channels; other leads of the 12-lead input are ignored.
    """

    reads_any_length = True  # features are a mean over time

    def __init__(self, tasks: Mapping[str, object], *, leads: str | Sequence[str] = LIMB_LEADS,
                 widths: Sequence[int] = (32, 64, 96, 112), kernel: int = 7, dropout: float = 0.2):
        super().__init__()
        self.leads = resolve_lead_set(leads)
        self.config = ResNet1DConfig(tasks={n: int(getattr(t, "n_outputs", t)) for n, t in tasks.items()},
                                     leads=self.leads, widths=tuple(widths), kernel=kernel, dropout=dropout)
        self.register_buffer("lead_rows", torch.tensor([lead_index(n) for n in self.leads]), persistent=False)
        self.stem = nn.Sequential(
            nn.Conv1d(len(self.leads), widths[0], 15, stride=2, padding=7), _group_norm(widths[0]), nn.ReLU(),
        )
        blocks, c = [], widths[0]
        for i, w in enumerate(widths):
            blocks += [_ResBlock(c, w, 1 if i == 0 else 2, kernel, dropout), _ResBlock(w, w, 1, kernel, dropout)]
            c = w
        self.blocks = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleDict({
            name: nn.Linear(c, int(getattr(t, "n_outputs", t))) for name, t in tasks.items()
        })

    def features(self, x: Tensor, lead_mask: Tensor) -> Tensor:
        """Pooled features ``[B, C]`` from the configured leads (absent ones zeroed)."""
        rows = self.lead_rows
        h = x[:, rows] * lead_mask[:, rows].unsqueeze(-1).to(x.dtype)
        h = self.blocks(self.stem(h))
        return h.mean(-1)

    def forward_logits(self, x: Tensor, lead_mask: Tensor) -> dict[str, Tensor]:
        h = self.dropout(self.features(x, lead_mask))
        return {name: head(h) for name, head in self.heads.items()}

    def forward(self, x: Tensor, lead_mask: Tensor) -> dict[str, Tensor]:
        return self.forward_logits(x, lead_mask)


def build_resnet1d(config: ResNet1DConfig | Mapping) -> ResNet1D:
    """Rebuild a :class:`ResNet1D` from its config (e.g. a checkpoint's ``model_config``)."""
    cfg = config if isinstance(config, ResNet1DConfig) else ResNet1DConfig.model_validate(dict(config))
    return ResNet1D(cfg.tasks, leads=cfg.leads, widths=cfg.widths, kernel=cfg.kernel, dropout=cfg.dropout)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
