"""What a trained model knows, for the notebooks: where it places every token, which
positions it confuses, what it attends to, how it copes with missing patches, and how
well its frozen features separate classes (kNN)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from .augment import normalize
from .data import ImageSet


@dataclass
class PositionAnalysis:
    probs: torch.Tensor  # (N, T, T) predicted position distribution of every token
    confusion: torch.Tensor  # (T, T) counts, rows = true position, columns = predicted
    per_position_accuracy: torch.Tensor  # (T,)
    accuracy: float  # top-1 over all tokens
    assignment: torch.Tensor  # (N, T) Hungarian: position assigned to token t
    solved_share: float  # share of images whose assignment is entirely right
    assigned_accuracy: float  # token accuracy after the one-to-one assignment


def _uint8(images: ImageSet | torch.Tensor) -> torch.Tensor:
    return images.images if isinstance(images, ImageSet) else images


class _EvalMode:
    """Put a module in eval mode for a block and restore its previous mode afterwards."""

    def __init__(self, module: nn.Module):
        self.module, self.was_training = module, module.training

    def __enter__(self):
        self.module.eval()

    def __exit__(self, *exc):
        self.module.train(self.was_training)


@torch.no_grad()
def _position_log_probs(model, images: torch.Tensor, batch_size: int, device) -> torch.Tensor:
    """(N, T, T) log-probabilities of each token's position, in eval mode, on the CPU."""
    out = []
    with _EvalMode(model):
        for start in range(0, len(images), batch_size):
            batch = normalize(images[start:start + batch_size].to(device))
            logits, _, _ = model.position_logits(model.transformer.patches(batch))
            out.append(F.log_softmax(logits.float(), dim=-1).cpu())
    return torch.cat(out)


def solve_puzzles(log_probs: torch.Tensor) -> torch.Tensor:
    """(N, T, T) log-probabilities -> (N, T) one-to-one assignment of positions to tokens
    that maximises each image's total log-probability (the Hungarian algorithm)."""
    assignment = np.empty(log_probs.shape[:2], dtype=np.int64)
    for i, scores in enumerate(log_probs.numpy()):
        tokens, positions = linear_sum_assignment(scores, maximize=True)
        assignment[i, tokens] = positions
    return torch.from_numpy(assignment)


def position_analysis(model, images: ImageSet | torch.Tensor, batch_size: int = 256,
                      device="cpu") -> PositionAnalysis:
    """Predicted positions of every token of every image (uint8), the T x T confusion
    matrix, per-position accuracy, and the puzzles solved one-to-one."""
    log_probs = _position_log_probs(model, _uint8(images), batch_size, device)
    n, t, _ = log_probs.shape
    truth = torch.arange(t).expand(n, t)
    predicted = log_probs.argmax(-1)
    confusion = torch.bincount((truth * t + predicted).flatten(), minlength=t * t).reshape(t, t)
    assignment = solve_puzzles(log_probs)
    return PositionAnalysis(
        probs=log_probs.exp(),
        confusion=confusion,
        per_position_accuracy=confusion.diag() / confusion.sum(1).clamp(min=1),
        accuracy=(predicted == truth).float().mean().item(),
        assignment=assignment,
        solved_share=(assignment == truth).all(1).float().mean().item(),
        assigned_accuracy=(assignment == truth).float().mean().item(),
    )


@torch.no_grad()
def grid_errors(predicted: torch.Tensor, grid: int) -> dict[str, float]:
    """Where the wrong guesses land on the G x G grid. predicted: (N, T) position predicted
    for token t (true position t). Returns the share of tokens placed in the right row and in
    the right column, the mean Manhattan distance of the wrong guesses (and of a random wrong
    guess, for comparison), the share of wrong guesses on a direct neighbour, and the share in
    the right row at the mirrored column (left <-> right, what horizontal flips make ambiguous)."""
    tokens = grid * grid
    truth = torch.arange(tokens)
    rows, cols = truth // grid, truth % grid
    predicted = predicted.reshape(-1, tokens).cpu()
    wrong = predicted != truth
    distance = (rows[predicted] - rows).abs() + (cols[predicted] - cols).abs()
    mirrored = (rows[predicted] == rows) & (cols[predicted] == grid - 1 - cols)
    pairwise = (rows[:, None] - rows[None]).abs() + (cols[:, None] - cols[None]).abs()
    errors = int(wrong.sum())

    def share(mask: torch.Tensor) -> float:
        return mask[wrong].float().mean().item() if errors else 0.0

    return {
        "row_accuracy": (rows[predicted] == rows).float().mean().item(),
        "column_accuracy": (cols[predicted] == cols).float().mean().item(),
        "error_distance": distance[wrong].float().mean().item() if errors else 0.0,
        "random_distance": pairwise.sum().item() / (tokens * (tokens - 1)) if tokens > 1 else 0.0,
        "neighbour_share_of_errors": share(distance == 1),
        "mirror_share_of_errors": share(mirrored),
    }


def attention_entropy(attention: list[torch.Tensor], query: int) -> list[float]:
    """Per block, the entropy (nats) of the query token's attention, averaged over heads and
    images; log T means the query attends to every token alike. attention: per block
    (B, H, T, T)."""
    return [-(a[:, :, query] * a[:, :, query].clamp_min(1e-12).log()).sum(-1).mean().item()
            for a in attention]


def attention_maps(model, images_uint8: torch.Tensor, device="cpu") -> list[torch.Tensor]:
    """Attention weights of every block, (B, H, T, T) each, in eval mode, on the CPU."""
    with _EvalMode(model):
        batch = normalize(images_uint8.to(device))
        _, _, attention = model.position_logits(model.transformer.patches(batch),
                                                return_attention=True)
    return [weights.float().cpu() for weights in attention]


@torch.no_grad()
def accuracy_vs_patch_dropout(model, images: ImageSet | torch.Tensor,
                              ps=tuple(i / 10 for i in range(10)), seed: int = 0,
                              device="cpu", batch_size: int = 256) -> list[dict]:
    """Position accuracy when a share p of the tokens is zeroed (PatchDropout at test time):
    one row per p with the accuracy on kept tokens and on dropped ones (can the model tell
    where a missing patch was? None when none was dropped). Only PatchDropout is active,
    dropout stays off, and the global RNG is left as it was."""
    images = _uint8(images)
    patch_dropout = model.transformer.patch_dropout
    p_before = patch_dropout.p
    rows = []
    with _EvalMode(model), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        patch_dropout.train()
        try:
            for p in ps:
                patch_dropout.p = p
                hits = torch.zeros(2)
                counts = torch.zeros(2)
                for start in range(0, len(images), batch_size):
                    batch = normalize(images[start:start + batch_size].to(device))
                    logits, keep, _ = model.position_logits(model.transformer.patches(batch))
                    t = keep.shape[1]
                    correct = (logits.argmax(-1) == torch.arange(t, device=keep.device)).cpu()
                    keep = keep.cpu()
                    hits += torch.stack([(correct & keep).sum(), (correct & ~keep).sum()])
                    counts += torch.stack([keep.sum(), (~keep).sum()])
                kept, dropped = (hits / counts.clamp(min=1)).tolist()
                rows.append({"p": p, "kept_accuracy": kept,
                             "dropped_accuracy": dropped if counts[1] else None})
        finally:
            patch_dropout.p = p_before
    return rows


@torch.no_grad()
def features(transformer, images: torch.Tensor, device="cpu", batch_size: int = 256):
    """(N, D) L2-normalised global-average-pooled token features, in eval mode."""
    out = []
    with _EvalMode(transformer):
        for start in range(0, len(images), batch_size):
            tokens, _, _ = transformer(normalize(images[start:start + batch_size].to(device)))
            out.append(F.normalize(tokens.float().mean(dim=1), dim=-1))
    return torch.cat(out)


@torch.no_grad()
def knn_accuracy(transformer, train: ImageSet, test: ImageSet, k: int = 20,
                 temperature: float = 0.07, device="cpu", batch_size: int = 256) -> float:
    """Top-1 accuracy of a weighted k-nearest-neighbour vote on frozen features, as in DINO:
    cosine similarity to the training images, the k most similar vote for their class with
    weight exp(similarity / temperature). A cheap probe of representation quality."""
    bank = features(transformer, train.images, device, batch_size)
    queries = features(transformer, test.images, device, batch_size)
    bank_labels = train.labels.to(bank.device)
    classes = int(max(train.labels.max(), test.labels.max())) + 1
    k = min(k, len(bank))
    correct = 0
    for start in range(0, len(queries), batch_size):
        similarity, index = (queries[start:start + batch_size] @ bank.T).topk(k, dim=1)
        votes = torch.zeros(len(index), classes, device=bank.device)
        votes.scatter_add_(1, bank_labels[index], (similarity / temperature).exp())
        predicted = votes.argmax(1).cpu()
        correct += (predicted == test.labels[start:start + batch_size]).sum().item()
    return correct / len(queries)
