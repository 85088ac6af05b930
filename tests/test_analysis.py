"""Analysis of a trained model: the solved puzzle, confusion, attention, kNN."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from apl_core.analysis import (
    accuracy_vs_patch_dropout, attention_maps, knn_accuracy, position_analysis, solve_puzzles,
)
from apl_core.data import ImageSet, load_split, split_holdout
from apl_core.model import PatchDropout
from apl_core.train import load_pretrained

T = 16


class OracleModel(nn.Module):
    """Knows every token's position (token t -> position t), with a little noise."""

    def __init__(self):
        super().__init__()
        self.transformer = nn.Module()
        self.transformer.patches = lambda images: images.flatten(1)[:, :T]

    def position_logits(self, patches, return_attention=False):
        b = patches.shape[0]
        logits = 10 * torch.eye(T).expand(b, T, T) + torch.rand(b, T, T)
        return logits, torch.ones(b, T, dtype=torch.bool), []


def random_images(n, size=32, seed=0):
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


def test_hungarian_assignment_is_a_permutation():
    log_probs = torch.randn(20, T, T).log_softmax(-1)
    assignment = solve_puzzles(log_probs)
    assert torch.equal(assignment.sort(1).values, torch.arange(T).expand(20, T))


def test_oracle_solves_every_puzzle():
    result = position_analysis(OracleModel(), random_images(12))
    assert result.solved_share == 1 and result.accuracy == 1 and result.assigned_accuracy == 1
    assert torch.equal(result.confusion, 12 * torch.eye(T, dtype=result.confusion.dtype))


def test_pretrained_model_analysis(pretrained_run):
    model, config = load_pretrained(pretrained_run.checkpoint)
    images = random_images(40)
    result = position_analysis(model, ImageSet(images, None, []), batch_size=16)
    assert result.probs.shape == (40, T, T)
    assert torch.allclose(result.probs.sum(-1), torch.ones(40, T), atol=1e-4)
    assert torch.equal(result.confusion.sum(1), torch.full((T,), 40))
    assert result.accuracy == pytest.approx(result.confusion.diag().sum().item() / (40 * T))
    assert torch.equal(result.assignment.sort(1).values, torch.arange(T).expand(40, T))
    assert 0 <= result.solved_share <= result.assigned_accuracy <= 1

    maps = attention_maps(model.transformer, images[:3])
    assert len(maps) == config.blocks and maps[0].shape == (3, config.heads, T, T)
    assert torch.allclose(maps[0].sum(-1), torch.ones(3, config.heads, T), atol=1e-4)

    rng = torch.get_rng_state()
    rows = accuracy_vs_patch_dropout(model, images, ps=(0.0, 0.5), seed=1)
    assert torch.equal(torch.get_rng_state(), rng)
    assert [row["p"] for row in rows] == [0.0, 0.5]
    assert rows[0]["kept_accuracy"] == pytest.approx(result.accuracy)
    assert rows == accuracy_vs_patch_dropout(model, images, ps=(0.0, 0.5), seed=1)
    assert model.transformer.patch_dropout.p == config.patch_dropout and not model.training


def test_analysis_agrees_with_the_runs_held_out_accuracy(pretrained_run):
    model, config = load_pretrained(pretrained_run.run_dir)
    images = load_split(config.dataset, "unlabeled", config.data_dir, config.image_size,
                        limit=config.num_images, seed=config.seed)
    _, held_out = split_holdout(images, config.holdout_images, config.seed)
    result = position_analysis(model, held_out)
    assert result.accuracy == pytest.approx(pretrained_run.metrics[-1]["val_top1"], abs=1e-6)


class ColourFeatures(nn.Module):
    """A 'transformer' whose token features are the mean colour of the image."""

    def __init__(self):
        super().__init__()
        self.patch_dropout = PatchDropout(0.0)

    def forward(self, images):
        return images.mean(dim=(2, 3)).unsqueeze(1), None, []


def test_knn_votes_by_nearest_features():
    colours = torch.tensor([[255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=torch.uint8)
    labels = torch.arange(30) % 3
    images = colours[labels].view(30, 3, 1, 1).expand(30, 3, 8, 8).contiguous()
    bank = ImageSet(images, labels, ["r", "g", "b"])
    assert knn_accuracy(ColourFeatures(), bank, bank, k=5) == 1.0
    shuffled = ImageSet(images, labels.roll(1), ["r", "g", "b"])
    assert knn_accuracy(ColourFeatures(), bank, shuffled, k=5) == 0.0


def test_grid_errors_on_a_hand_made_prediction():
    from apl_core.analysis import grid_errors

    # G = 2: positions 0 1 / 2 3. Token 0 -> 1 (same row, mirrored column, neighbour),
    # token 2 -> 1 (diagonal: 2 cells away), tokens 1 and 3 right.
    errors = grid_errors(torch.tensor([[1, 1, 1, 3]]), grid=2)
    assert errors["row_accuracy"] == 0.75 and errors["column_accuracy"] == 0.5
    assert errors["error_distance"] == 1.5
    assert errors["neighbour_share_of_errors"] == 0.5
    assert errors["mirror_share_of_errors"] == 0.5
    assert errors["random_distance"] == pytest.approx(16 / 12)
    perfect = grid_errors(torch.arange(9)[None], grid=3)
    assert perfect["row_accuracy"] == 1 and perfect["error_distance"] == 0


def test_attention_entropy_is_log_t_for_uniform_and_zero_for_one_hot():
    from apl_core.analysis import attention_entropy

    uniform = torch.full((1, 2, 4, 4), 0.25)
    one_hot = torch.eye(4).expand(1, 2, 4, 4)
    entropy = attention_entropy([uniform, one_hot], query=1)
    assert entropy[0] == pytest.approx(math.log(4)) and entropy[1] == pytest.approx(0, abs=1e-6)


def _one_hot_attention(targets: torch.Tensor) -> torch.Tensor:
    """(1, 1, T, T) attention where query t attends only to key targets[t]."""
    return torch.nn.functional.one_hot(targets, len(targets)).float()[None, None]


def test_mean_attention_distance_is_in_patches_between_cell_centres():
    from apl_core.analysis import mean_attention_distance

    grid = 3
    t = grid * grid
    itself = _one_hot_attention(torch.arange(t))
    right = _one_hot_attention(torch.tensor([1, 2, 1, 4, 5, 4, 7, 8, 7]))  # a neighbour
    corner = _one_hot_attention(torch.full((t,), 8))  # everyone looks at the bottom right
    uniform = torch.full((2, 1, t, t), 1 / t)
    distance = mean_attention_distance([itself, right, corner, uniform], grid)
    assert distance.shape == (4, 1)
    assert distance[0, 0] == pytest.approx(0.0)
    assert distance[1, 0] == pytest.approx(1.0)
    to_corner = [math.dist((r, c), (2, 2)) for r in range(3) for c in range(3)]
    assert distance[2, 0] == pytest.approx(sum(to_corner) / t)
    pairs = [math.dist((r, c), (u, v)) for r in range(3) for c in range(3)
             for u in range(3) for v in range(3)]
    assert distance[3, 0] == pytest.approx(sum(pairs) / t**2)


def test_mean_attention_distance_is_per_head():
    from apl_core.analysis import mean_attention_distance

    local = _one_hot_attention(torch.arange(4))
    far = _one_hot_attention(torch.tensor([3, 2, 1, 0]))  # the opposite corner of a 2 x 2 grid
    distance = mean_attention_distance([torch.cat([local, far], dim=1)], grid=2)
    assert distance[0].tolist() == pytest.approx([0.0, math.sqrt(2)])


def _clusters(n: int, classes: int, dim: int, seed: int, spread: float = 0.3):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(99)) * 3
    labels = torch.arange(n) % classes
    return centres[labels] + spread * torch.randn(n, dim, generator=generator), labels


def test_feature_probe_separates_what_is_separable_and_not_noise():
    from apl_core.analysis import PROBE_PENALTIES, feature_probe

    train, val, test = (_clusters(n, 4, 16, seed) for n, seed in ((80, 0), (40, 1), (40, 2)))
    result = feature_probe(train, val, test)
    assert result.test_top1 == 1.0 and result.penalty in PROBE_PENALTIES
    assert set(result.val_top1) == set(PROBE_PENALTIES)
    noise = [(torch.randn(200, 16, generator=torch.Generator().manual_seed(s)),
              torch.arange(200) % 4) for s in (0, 1, 2)]
    assert feature_probe(*noise).test_top1 < 0.45  # chance is 0.25


def test_feature_probe_chooses_on_validation_and_never_on_test():
    """Whatever the test labels say, the choice (and the validation scores) stay the same."""
    from apl_core.analysis import feature_probe

    train, val, test = (_clusters(n, 4, 16, seed, spread=2.0)
                        for n, seed in ((60, 0), (40, 1), (40, 2)))
    honest = feature_probe(train, val, test)
    scrambled = feature_probe(train, val, (test[0], test[1].roll(1)))
    assert scrambled.penalty == honest.penalty and scrambled.val_top1 == honest.val_top1
    assert scrambled.test_top1 < honest.test_top1


def test_knn_vote_on_features_matches_knn_accuracy():
    from apl_core.analysis import features, knn_vote

    colours = torch.tensor([[255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=torch.uint8)
    labels = torch.arange(30) % 3
    images = (colours[labels].view(30, 3, 1, 1).expand(30, 3, 8, 8)
              + torch.randint(0, 60, (30, 3, 8, 8), generator=torch.Generator().manual_seed(0))
              ).to(torch.uint8)
    bank = ImageSet(images, labels, ["r", "g", "b"])
    queries = ImageSet(images.flip(0), labels.flip(0), ["r", "g", "b"])
    feats = features(ColourFeatures(), images)
    assert knn_vote(feats, labels, feats.flip(0), labels.flip(0), k=5) == \
        knn_accuracy(ColourFeatures(), bank, queries, k=5)


class BorderReader(nn.Module):
    """Places token t at position t only if its border pixels say so (border = t / 16 in
    normalised units); the inside of the patch is ignored."""

    def __init__(self):
        super().__init__()
        self.transformer = nn.Module()
        self.transformer.num_tokens = T
        self.transformer.patches = lambda images: images.view(len(images), T, 3, 4, 4)

    def position_logits(self, patches, return_attention=False):
        border = patches[..., 0, 0, 0]  # one border pixel per token, (B, T)
        logits = -(border.unsqueeze(-1) - torch.arange(T) / T).abs() * 100
        return logits, None, []


def test_border_blanking_finds_a_model_that_reads_only_the_borders():
    from apl_core.analysis import border_blanking

    # images whose normalised pixels are t / 16 in patch t: uint8 = 127.5 * (1 + t / 16)
    values = (127.5 * (1 + torch.arange(T) / T)).round().to(torch.uint8)
    images = values.view(1, T, 1, 1, 1).expand(5, T, 3, 4, 4).reshape(5, 3 * T * 16)
    images = images.view(5, 3, 16, 16)  # the reader's patches view reshapes it back
    result = border_blanking(BorderReader(), images)
    assert result["intact"] == 1.0
    assert result["blanked"] == pytest.approx(1 / T)  # only token 0 (border 0) is still placed
