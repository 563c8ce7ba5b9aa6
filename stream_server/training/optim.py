"""Training primitives both training loops share: soft targets, the learning-rate schedule, and
a resumable phase (a model, its AdamW optimiser and its epoch count).

Losses take ``(batch, labels)`` logits and probability targets; steps and epochs are counts.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["NO_DECAY", "Phase", "lr_at", "seed_for", "smooth", "soft_cross_entropy"]


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy of ``(batch, labels)`` logits against probability targets."""
    return -(targets * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1).mean()


def smooth(targets: Tensor, eps: float) -> Tensor:
    """Label smoothing of ``(batch, labels)`` probability targets."""
    return targets * (1.0 - eps) + eps / targets.shape[-1]


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to zero at ``total``."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


NO_DECAY = ("token", "position", "attention_bias")


class Phase:
    """One training phase (teacher or student) with resumable state.

    Parameters whose names hold one of :data:`NO_DECAY` (tokens, positions, attention biases)
    and all one-dimensional ones (norms, biases) get no weight decay.
    """

    def __init__(
        self,
        name: str,
        model: nn.Module,
        epochs: int,
        lr: float,
        weight_decay: float,
        steps_per_epoch: int,
        warmup_epochs: int,
    ) -> None:
        self.name = name
        self.model = model
        self.epochs = epochs
        self.base_lr = lr
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        for pname, p in model.named_parameters():
            (no_decay if p.ndim <= 1 or any(k in pname for k in NO_DECAY) else decay).append(p)
        self.optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=lr,
        )
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = max(1, epochs * steps_per_epoch)
        self.warmup_steps = warmup_epochs * steps_per_epoch
        self.epoch = 0

    def step_lr(self, step: int) -> None:
        lr = lr_at(step, self.total_steps, self.warmup_steps, self.base_lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
        }

    def load(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = int(state["epoch"])


def seed_for(seed: int, phase: str, epoch: int) -> int:
    """The seed of one epoch of one phase: every epoch draws its own, reproducibly."""
    return (seed * 1_000_003 + (0 if phase == "teacher" else 500_009) + epoch * 7919) % (2**31)
