"""What training minimises, and how: the loss of each phase, its top-k metrics, and the
optimizer and learning-rate schedule that step it.

    position_loss   pretraining: cross-entropy of each kept token's position logits
    class_loss      fine-tuning: cross-entropy of the class logits (hard or soft targets,
                    label smoothing)
    top1_correct    which rows have their target as their top logit
    learning_rate   linear warm-up times cosine annealing, a pure function of progress
    make_optimizer  Adam, AdamW or SGD with Nesterov momentum

The loop that calls them is `apl_core.train.train_one_epoch`.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .config import Config
from .puzzle import position_targets

TOP_K = (1, 3, 5)


def topk_hits(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None):
    """(3,) float tensor: how many rows have their target among the 1, 3, 5 top logits."""
    top = logits.topk(min(max(TOP_K), logits.shape[-1]), dim=-1).indices
    found = top == targets.unsqueeze(-1)
    hits = [found[..., :k].any(-1) for k in TOP_K]
    if mask is not None:
        hits = [hit & mask for hit in hits]
    return torch.stack([hit.sum() for hit in hits]).float()


def top1_correct(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B,) bool: whether each row's top logit is its target, as topk_hits' top-1 counts it
    (the same topk call, so ties break the same way)."""
    return logits.topk(min(max(TOP_K), logits.shape[-1]), dim=-1).indices[..., 0] == targets


def position_loss(model: nn.Module, images: torch.Tensor, labels=None):
    """Pretraining: cross-entropy of each kept token's position logits against its position t.
    Tokens removed by PatchDropout are not scored. Returns (loss, top-k hits, tokens scored)."""
    logits, keep = model(images)
    targets = position_targets(*keep.shape, device=images.device)
    losses = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none")
    weights = keep.flatten().float()
    count = weights.sum()
    loss = (losses * weights).sum() / count.clamp(min=1)
    return loss, topk_hits(logits, targets, keep), count


def class_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
               label_smoothing: float = 0.0):
    """Fine-tuning: cross-entropy of the class logits against int labels (B,) or soft targets
    (B, classes) (a MixUp / CutMix batch), with `label_smoothing` of the target spread over
    the classes. The hits of a soft target count against its largest class: the label of the
    image that has the larger share of the mix. Returns (loss, top-k hits, images)."""
    logits = model(images)
    count = torch.full((), labels.shape[0], dtype=torch.float32, device=labels.device)
    hard = labels.argmax(dim=-1) if labels.is_floating_point() else labels
    loss = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
    return loss, topk_hits(logits, hard), count


LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor | None], tuple]


def summarize(totals: torch.Tensor) -> dict:
    """Device sums [loss x count, hits@1, hits@3, hits@5, count] -> means (one host sync)."""
    loss_sum, *hits, count = totals.tolist()
    count = max(count, 1.0)
    return {"loss": loss_sum / count, **{f"top{k}": h / count for k, h in zip(TOP_K, hits)}}


def learning_rate(progress: float, config: Config) -> float:
    """The learning rate after `progress` epochs (fractional when stepped per batch).

    Linear warm-up from warmup_start x lr over the first warmup_frac of the epochs, multiplied
    by cosine annealing over all epochs from 1 down to final_lr_frac: the original chains
    LinearLR and CosineAnnealingLR, stepped once per epoch."""
    warmup_epochs = config.warmup_frac * config.epochs
    warm = 1.0
    if progress < warmup_epochs:
        warm = config.warmup_start + (1 - config.warmup_start) * progress / warmup_epochs
    done = min(progress / config.epochs, 1.0)
    final = config.final_lr_frac
    cosine = final + (1 - final) * 0.5 * (1 + math.cos(math.pi * done))
    return config.lr * warm * cosine


def make_optimizer(params: list[nn.Parameter], config: Config, device: torch.device):
    """Adam (the original: L2 weight decay), AdamW (decoupled) or SGD with Nesterov momentum
    0.9 (the CNNs' standard recipe), fused kernels on CUDA."""
    speed = {"fused": True} if device.type == "cuda" else {"foreach": True}
    common = dict(lr=learning_rate(0, config), weight_decay=config.weight_decay, **speed)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, momentum=0.9, nesterov=True, **common)
    kind = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return kind(params, **common)
