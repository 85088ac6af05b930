"""What a trained model knows, for the notebooks: where it places every token, which
positions it confuses, what it attends to and how far, how it copes with missing patches,
and how well its frozen features separate classes (kNN and a linear probe)."""
from __future__ import annotations

import math
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
    log_probs: torch.Tensor  # (N, T, T) log of each token's predicted position distribution
    probs: torch.Tensor  # (N, T, T) that distribution
    confusion: torch.Tensor  # (T, T) counts, rows = true position, columns = predicted
    per_position_accuracy: torch.Tensor  # (T,)
    accuracy: float  # top-1 over all tokens
    assignment: torch.Tensor  # (N, T) Hungarian: position assigned to token t
    solved_share: float  # share of images whose assignment is entirely right
    assigned_accuracy: float  # token accuracy after the one-to-one assignment


def _uint8(images: ImageSet | torch.Tensor) -> torch.Tensor:
    return images.images if isinstance(images, ImageSet) else images


class _EvalNoGrad:
    """Run a block with a module in eval mode and without gradients, and restore its previous
    mode afterwards (docs/testing.md says why a context rather than @torch.no_grad())."""

    def __init__(self, module: nn.Module):
        self.module, self.was_training = module, module.training
        self.no_grad = torch.no_grad()

    def __enter__(self):
        self.no_grad.__enter__()
        self.module.eval()

    def __exit__(self, *exc):
        self.module.train(self.was_training)
        self.no_grad.__exit__(*exc)


def _position_log_probs(model, images: torch.Tensor, batch_size: int, device) -> torch.Tensor:
    """(N, T, T) log-probabilities of each token's position, in eval mode, on the CPU."""
    out = []
    with _EvalNoGrad(model):
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
        log_probs=log_probs,
        probs=log_probs.exp(),
        confusion=confusion,
        per_position_accuracy=confusion.diag() / confusion.sum(1).clamp(min=1),
        accuracy=(predicted == truth).float().mean().item(),
        assignment=assignment,
        solved_share=(assignment == truth).all(1).float().mean().item(),
        assigned_accuracy=(assignment == truth).float().mean().item(),
    )


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


def attention_maps(transformer, images_uint8: torch.Tensor, device="cpu") -> list[torch.Tensor]:
    """Attention weights of every block, (B, H, T, T) each, with the tokens in grid order,
    in eval mode, on the CPU."""
    with _EvalNoGrad(transformer):
        batch = normalize(images_uint8.to(device))
        _, _, attention = transformer.contextualize(transformer.patches(batch),
                                                    return_attention=True)
    return [weights.float().cpu() for weights in attention]


def mean_attention_distance(attention: list[torch.Tensor], grid: int) -> np.ndarray:
    """(blocks, heads) mean attention distance in patches, as in the ViT paper's figure: the
    distance between the centres of query and key cell, weighted by the attention and
    averaged over queries and images. Attending to every cell alike gives the mean distance
    between two cells; a local head stays near 1 (neighbours), a head on itself near 0.
    attention: per block (B, H, T, T), tokens in grid order."""
    index = torch.arange(grid * grid)
    cells = torch.stack([index // grid, index % grid], dim=1).float()
    distance = torch.cdist(cells, cells)  # (T, T) in patches
    return np.array([(weights * distance).sum(-1).mean(dim=(0, 2)).numpy()
                     for weights in attention])


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
    with _EvalNoGrad(model), torch.random.fork_rng(devices=[]):
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


def uniform_attention_distance(grid: int) -> float:
    """The mean attention distance of a head that attends to every cell alike: the mean
    distance between two cells of the grid (its own cell included)."""
    t = grid * grid
    return float(mean_attention_distance([torch.full((1, 1, t, t), 1 / t)], grid)[0, 0])


def _top1_intact_and_masked(model, images: torch.Tensor, keep: torch.Tensor, device,
                            batch_size: int) -> dict[str, float]:
    """Position top-1 with every patch intact, and with the pixels where `keep` (s, s) is
    False set to 0 (the normalised images' mid-grey) in every patch."""
    hits = torch.zeros(2)
    with _EvalNoGrad(model):
        for start in range(0, len(images), batch_size):
            patches = model.transformer.patches(
                normalize(images[start:start + batch_size].to(device)))
            masked = patches * keep.to(patches.device)
            for i, version in enumerate((patches, masked)):
                logits, _, _ = model.position_logits(version)
                targets = torch.arange(logits.shape[1], device=logits.device)
                hits[i] += (logits.argmax(-1) == targets).sum().cpu()
    tokens = len(images) * model.transformer.num_tokens
    intact, masked = (hits / tokens).tolist()
    return {"intact": intact, "blanked": masked}


def _patch_side(model, images: torch.Tensor) -> int:
    return model.transformer.patches(normalize(images[:1])).shape[-1]


def border_blanking(model, images: ImageSet | torch.Tensor, width: int = 1, device="cpu",
                    batch_size: int = 256) -> dict[str, float]:
    """Position top-1 with every patch intact, and with the `width` outermost pixels of every
    patch blanked (set to 0, the normalised images' mid-grey): how much the model leans on
    the pixels at the patch borders. With K = 0 neighbouring patches touch there, so matching
    borders solves the puzzle without understanding the image."""
    images = _uint8(images)
    side = _patch_side(model, images)
    keep = torch.zeros(side, side)
    keep[width:side - width, width:side - width] = 1
    return _top1_intact_and_masked(model, images, keep, device, batch_size)


def interior_blanking(model, images: ImageSet | torch.Tensor, width: int = 1, seed: int = 0,
                      device="cpu", batch_size: int = 256) -> dict[str, float]:
    """The border test's control: position top-1 intact, and with as many pixels blanked as
    `border_blanking` blanks, chosen at random (seeded; the same pixels in every patch)
    inside the border ring. The border test's drop minus this drop is what the borders
    themselves are worth, beyond losing that many pixels."""
    images = _uint8(images)
    side = _patch_side(model, images)
    inner = side - 2 * width
    ring = side * side - inner * inner
    if inner * inner < ring:
        smallest = math.ceil(2 * width / (1 - 2 ** -0.5))  # where the inside holds the ring
        raise ValueError(f"a {side} x {side} patch has {max(inner, 0) ** 2} pixels inside its "
                         f"{width}-pixel ring, fewer than the ring's {ring}: the control needs "
                         f"patches of {smallest} x {smallest} or more (a smaller K or G)")
    chosen = torch.randperm(inner * inner, generator=torch.Generator().manual_seed(seed))[:ring]
    keep = torch.ones(side, side)
    keep[width + chosen // inner, width + chosen % inner] = 0
    return _top1_intact_and_masked(model, images, keep, device, batch_size)


def pooled_features(transformer, images: torch.Tensor, device="cpu",
                    batch_size: int = 256) -> torch.Tensor:
    """(N, D) global-average-pooled token features (what the class head sees), in eval mode,
    in fp32."""
    out = []
    with _EvalNoGrad(transformer):
        for start in range(0, len(images), batch_size):
            tokens, _, _ = transformer(normalize(images[start:start + batch_size].to(device)))
            out.append(tokens.float().mean(dim=1))
    return torch.cat(out)


def features(transformer, images: torch.Tensor, device="cpu", batch_size: int = 256):
    """(N, D) L2-normalised pooled features: the kNN's."""
    return F.normalize(pooled_features(transformer, images, device, batch_size), dim=-1)


def knn_vote(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor,
             query_labels: torch.Tensor, k: int = 20, temperature: float = 0.07,
             batch_size: int = 256) -> float:
    """Top-1 accuracy of a weighted k-nearest-neighbour vote, as in DINO: on L2-normalised
    features, the k training images most similar to a query vote for their class with
    weight exp(cosine similarity / temperature)."""
    bank_labels = bank_labels.to(bank.device)
    classes = int(max(bank_labels.max(), query_labels.max())) + 1
    k = min(k, len(bank))
    correct = 0
    for start in range(0, len(queries), batch_size):
        similarity, index = (queries[start:start + batch_size] @ bank.T).topk(k, dim=1)
        votes = torch.zeros(len(index), classes, device=bank.device)
        votes.scatter_add_(1, bank_labels[index], (similarity / temperature).exp())
        predicted = votes.argmax(1).cpu()
        correct += (predicted == query_labels[start:start + batch_size]).sum().item()
    return correct / len(queries)


def knn_accuracy(transformer, train: ImageSet, test: ImageSet, k: int = 20,
                 temperature: float = 0.07, device="cpu", batch_size: int = 256) -> float:
    """`knn_vote` of the test images among the training images, on the transformer's frozen
    features. A cheap probe of representation quality."""
    bank = features(transformer, train.images, device, batch_size)
    queries = features(transformer, test.images, device, batch_size)
    return knn_vote(bank, train.labels, queries, test.labels, k, temperature, batch_size)


# The L2 penalties the feature probe chooses from on the validation part: a 1000x span.
PROBE_PENALTIES = (1e-4, 1e-3, 1e-2, 1e-1)


def probe_loss(head: nn.Linear, features: torch.Tensor, labels: torch.Tensor,
               penalty: float) -> torch.Tensor:
    """The linear probe's objective: the cross-entropy of the head's class logits plus
    `penalty` times the squared L2 norm of its weights (the bias is not penalised)."""
    return F.cross_entropy(head(features), labels) + penalty * head.weight.square().sum()


@dataclass
class ProbeResult:
    penalty: float  # chosen on the validation part
    val_top1: dict[float, float]  # per penalty
    test_top1: float  # of the chosen penalty only


def feature_probe(train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor],
                  test: tuple[torch.Tensor, torch.Tensor], penalties=PROBE_PENALTIES,
                  iterations: int = 200) -> ProbeResult:
    """A linear probe on fixed (features, labels): multinomial logistic regression on
    features standardised with the training set's statistics, fitted to convergence with
    L-BFGS (deterministic, seconds on a CPU), its L2 penalty chosen on `val`; only the chosen
    one is scored on `test`. Unlike the fine-tuning engine's probe it sees every image
    once, without augmentation, so it measures the features and nothing else."""
    (x, y), (val_x, val_y), (test_x, test_y) = train, val, test
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)

    def standardise(features: torch.Tensor) -> torch.Tensor:
        return (features.double() - mean.double()) / std.double()

    x, val_x, test_x = standardise(x), standardise(val_x), standardise(test_x)
    classes = int(y.max()) + 1

    def fit(penalty: float) -> nn.Linear:
        head = nn.Linear(x.shape[1], classes).double()
        nn.init.zeros_(head.weight), nn.init.zeros_(head.bias)
        optimizer = torch.optim.LBFGS(head.parameters(), max_iter=iterations,
                                      line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            loss = probe_loss(head, x, y, penalty)
            loss.backward()
            return loss

        optimizer.step(closure)
        return head

    def top1(head: nn.Linear, features: torch.Tensor, labels: torch.Tensor) -> float:
        with torch.no_grad():
            return (head(features).argmax(1) == labels).double().mean().item()

    heads = {penalty: fit(penalty) for penalty in penalties}
    val_top1 = {penalty: top1(head, val_x, val_y) for penalty, head in heads.items()}
    best = max(penalties, key=lambda penalty: val_top1[penalty])  # the first of equals
    return ProbeResult(best, val_top1, top1(heads[best], test_x, test_y))
