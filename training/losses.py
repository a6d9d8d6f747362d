"""Losses from the competition recipe: cross-entropy with label smoothing, class-weighted
cross-entropy, and focal loss."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from feeding import checks


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017): cross-entropy scaled by (1 - p_true)^gamma, averaged.

    It down-weights examples the model already gets right; at gamma 0 it is cross-entropy.
    """

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.gamma = checks.number("focal gamma", gamma, minimum=0)
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits.float(), dim=1).gather(1, target[:, None]).squeeze(1)
        loss = -((1 - log_p.exp()) ** self.gamma) * log_p
        if self.weight is not None:
            loss = loss * self.weight[target]
        return loss.mean()


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights, n / (classes present * count): the mean weight per image is 1.

    A class absent from training gets weight 0 (it is never a target there).
    """
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(num_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)


def create_loss(name: str, train_labels: np.ndarray, num_classes: int, label_smoothing: float = 0.0,
                gamma: float = 2.0) -> nn.Module:
    """``ce`` | ``weighted_ce`` (weights from the training labels) | ``focal``."""
    if name == "ce":
        return nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    if name == "weighted_ce":
        return nn.CrossEntropyLoss(weight=class_weights(train_labels, num_classes), label_smoothing=label_smoothing)
    if name == "focal":
        if label_smoothing:
            raise ValueError("label smoothing is not combined with focal loss; use --loss ce or weighted_ce")
        return FocalLoss(gamma)
    raise ValueError(f"unknown loss {name!r}")
