"""Analysis of a trained model: the solved puzzle, confusion, attention, kNN."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from apl_core.analysis import (
    accuracy_vs_patch_dropout, attention_maps, knn_accuracy, knn_vote, position_analysis,
    probe_loss, solve_puzzles,
)
from apl_core.augment import normalize
from apl_core.data import ImageSet, held_out_images
from apl_core.model import PatchDropout
from apl_core.puzzle import extract_patches
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
    result = position_analysis(model, held_out_images(config))
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


# A G = 2 grid (T = 4) with scripted predictions, for results known exactly.
T4 = 4


def _scripted_log_probs() -> torch.Tensor:
    """(4, T4, T4) log-probabilities: 0.7 on one position per token, 0.1 elsewhere.
    Image 0 is right everywhere; image 1 puts tokens 0 and 1 both at position 1 (token 0
    only just: one-to-one, it takes position 0); image 2 rotates tokens 0 -> 1 -> 2 -> 0;
    image 3 swaps tokens 0 and 3."""
    targets = torch.tensor([[0, 1, 2, 3], [1, 1, 2, 3], [1, 2, 0, 3], [3, 1, 2, 0]])
    probs = torch.full((4, T4, T4), 0.1).scatter(-1, targets[..., None], 0.7)
    probs[1, 0] = torch.tensor([0.3, 0.4, 0.2, 0.1])
    probs[1, 1] = torch.tensor([0.05, 0.9, 0.03, 0.02])
    return probs.log()


def _id_images(n: int) -> torch.Tensor:
    """uint8 images whose first pixel holds their index, the rest mid-grey."""
    images = torch.full((n, 3, 4, 4), 128, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)
    return images


class ScriptedModel(nn.Module):
    """Reads the image's index off its first (normalised) pixel and returns that image's
    scripted logits; records whether it was in training mode and computing gradients."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits, self.modes, self.grads = logits, [], []
        self.transformer = nn.Module()
        self.transformer.patches = lambda images: images

    def position_logits(self, patches, return_attention=False):
        self.modes.append(self.training)
        self.grads.append(torch.is_grad_enabled())
        index = ((patches[:, 0, 0, 0] + 1) * 255 / 2).round().long()
        return self.logits[index], torch.ones(len(index), T4, dtype=torch.bool), []


def test_position_analysis_counts_scripted_predictions_exactly():
    log_probs = _scripted_log_probs()
    model = ScriptedModel(log_probs).train()
    result = position_analysis(model, _id_images(4), batch_size=3)
    assert torch.allclose(result.log_probs, log_probs) and result.log_probs.dtype == torch.float32
    assert torch.equal(result.probs, result.log_probs.exp())
    assert result.confusion.tolist() == [[1, 2, 0, 1], [0, 3, 1, 0], [1, 0, 3, 0], [1, 0, 0, 3]]
    assert result.per_position_accuracy.tolist() == [0.25, 0.75, 0.75, 0.75]
    assert result.accuracy == 10 / 16
    assert result.assignment.tolist() == [[0, 1, 2, 3], [0, 1, 2, 3], [1, 2, 0, 3],
                                          [3, 1, 2, 0]]
    assert result.assignment.dtype == torch.int64, "positions index tensors"
    assert result.solved_share == 0.5 and result.assigned_accuracy == 11 / 16
    assert model.modes == [False, False] and model.training, "eval mode for the analysis only"
    assert model.grads == [False, False] and torch.is_grad_enabled(), "no gradients, only there"
    as_set = position_analysis(model.eval(), ImageSet(_id_images(4), None, []))
    assert as_set.confusion.tolist() == result.confusion.tolist() and not model.training


def test_position_accuracy_of_a_single_image():
    result = position_analysis(ScriptedModel(_scripted_log_probs()[1:2]), _id_images(1))
    assert result.per_position_accuracy.tolist() == [0.0, 1.0, 1.0, 1.0]
    assert result.accuracy == 0.75 and result.solved_share == 1.0
    # the last position is never predicted here: the matrix is T x T all the same
    swapped = position_analysis(ScriptedModel(_scripted_log_probs()[3:4]), _id_images(1))
    assert swapped.confusion.tolist() == [[0, 0, 0, 1], [0, 1, 0, 0], [0, 0, 1, 0],
                                          [1, 0, 0, 0]]


def test_grid_errors_tell_neighbours_and_mirrored_columns_apart():
    from apl_core.analysis import grid_errors

    # G = 3, cells (row, column). Three wrong tokens: 3 (1, 0) -> 5 (1, 2): same row, mirrored,
    # 2 cells; 4 (1, 1) -> 7 (2, 1): a neighbour in another row; 8 (2, 2) -> 6 (2, 0): same
    # row, mirrored, 2 cells.
    errors = grid_errors(torch.tensor([[0, 1, 2, 5, 7, 5, 6, 7, 6]]), grid=3)
    assert errors == {"row_accuracy": pytest.approx(8 / 9), "column_accuracy": pytest.approx(7 / 9),
                      "error_distance": pytest.approx(5 / 3), "random_distance": pytest.approx(2.0),
                      "neighbour_share_of_errors": pytest.approx(1 / 3),
                      "mirror_share_of_errors": pytest.approx(2 / 3)}


def test_grid_errors_of_a_perfect_prediction_and_a_one_cell_grid():
    from apl_core.analysis import grid_errors

    perfect = grid_errors(torch.arange(9).repeat(2, 1), grid=3)
    assert perfect == {"row_accuracy": 1.0, "column_accuracy": 1.0, "error_distance": 0.0,
                       "random_distance": pytest.approx(2.0),
                       "neighbour_share_of_errors": 0.0, "mirror_share_of_errors": 0.0}
    # one cell: no wrong guess exists, so no pair of distinct cells either
    assert grid_errors(torch.zeros(3, 1, dtype=torch.long), grid=1)["random_distance"] == 0.0


def test_attention_entropy_averages_over_heads_and_images():
    from apl_core.analysis import attention_entropy

    # image 0: head 0 uniform, head 1 one-hot; image 1: both heads one-hot
    uniform, one_hot = torch.full((4, 4), 0.25), torch.eye(4)
    attention = torch.stack([torch.stack([uniform, one_hot]), torch.stack([one_hot, one_hot])])
    entropy = attention_entropy([attention, attention.flip(1)], query=2)
    assert entropy == pytest.approx([math.log(4) / 4] * 2)


def test_uniform_attention_distance_is_the_mean_distance_between_two_cells():
    from apl_core.analysis import uniform_attention_distance

    # G = 2: of the 16 ordered pairs, 4 are a cell with itself, 8 neighbours, 4 diagonal
    assert uniform_attention_distance(2) == pytest.approx((8 + 4 * math.sqrt(2)) / 16)


class ScriptedTransformer(nn.Module):
    """Its 'attention' and token features are the normalised pixels, in float64."""

    def __init__(self):
        super().__init__()
        self.modes, self.grads = [], []
        self.patches = lambda images: images

    def contextualize(self, patches, return_attention=False):
        self.modes.append(self.training)
        self.grads.append(torch.is_grad_enabled())
        attention = [patches.double(), 2 * patches.double()] if return_attention else []
        return patches, None, attention

    def forward(self, images):
        self.modes.append(self.training)
        self.grads.append(torch.is_grad_enabled())
        return images.flatten(2).transpose(1, 2).double(), None, []  # a token per pixel


def test_attention_maps_are_every_blocks_weights_in_fp32_in_eval_mode():
    images = random_images(2, size=4)
    transformer = ScriptedTransformer().train()
    maps = attention_maps(transformer, images)
    expected = normalize(images)
    assert [m.dtype for m in maps] == [torch.float32] * 2
    assert torch.allclose(maps[0], expected) and torch.allclose(maps[1], 2 * expected)
    assert transformer.modes == [False] and transformer.training
    assert transformer.grads == [False] and torch.is_grad_enabled()


def test_pooled_features_average_the_tokens_in_fp32_in_eval_mode():
    from apl_core.analysis import features, pooled_features

    images = random_images(5, size=4)
    transformer = ScriptedTransformer().train()
    pooled = pooled_features(transformer, images, batch_size=2)
    mean_colour = normalize(images).mean(dim=(2, 3))
    assert pooled.dtype == torch.float32 and torch.allclose(pooled, mean_colour, atol=1e-6)
    assert transformer.modes == [False] * 3 and transformer.training
    assert transformer.grads == [False] * 3 and torch.is_grad_enabled()
    normalised = features(transformer, images, batch_size=2)
    assert torch.allclose(normalised, mean_colour / mean_colour.norm(dim=1, keepdim=True),
                          atol=1e-6)


def _vote(similarities, labels, **kwargs):
    """knn_vote of one query (label 0) whose similarity to each bank item is given."""
    bank = torch.tensor(similarities)[:, None]
    return knn_vote(bank, torch.tensor(labels), torch.ones(1, 1), torch.zeros(1, dtype=int),
                    **kwargs)


def test_knn_vote_weighs_near_neighbours_exponentially():
    # one close neighbour of class 0 outvotes two farther ones of class 1 at temperature
    # 0.07 (e^(0.9/0.07) > 2 e^(0.5/0.07)), not at temperature 1 nor in a plain count
    assert _vote([0.9, 0.5, 0.5], [0, 1, 1]) == 1.0
    assert _vote([0.9, 0.5, 0.5], [0, 1, 1], temperature=1.0) == 0.0


def test_knn_vote_asks_20_neighbours_by_default_and_at_most_the_whole_bank():
    # 10 neighbours of class 0 just closer than 10 of class 1: the 21st (class 1) would tip it
    similarities = [0.3] * 10 + [0.2999] * 10 + [0.2998]
    labels = [0] * 10 + [1] * 11
    assert _vote(similarities, labels) == 1.0 and _vote(similarities, labels, k=21) == 0.0
    assert _vote([0.9, 0.5, 0.5], [0, 1, 1], k=50, temperature=1.0) == 0.0


def test_knn_vote_scores_every_query_in_batches():
    bank = torch.eye(3)
    queries = torch.eye(3)[[0, 1, 2, 0, 1]]
    query_labels = torch.tensor([0, 1, 2, 1, 1])
    assert knn_vote(bank, torch.arange(3), queries, query_labels, k=1, batch_size=2) == 0.8


class DropoutRecorder(nn.Module):
    """Places a kept token t at t unless t is a multiple of 3, a dropped (zeroed) one at t only
    if t is even; records the keep masks. Its ordinary dropout would scramble the placements."""

    def __init__(self):
        super().__init__()
        self.transformer = nn.Module()
        self.transformer.patch_dropout = PatchDropout(0.25)
        self.dropout = nn.Dropout(0.9)
        self.transformer.patches = lambda images: images.flatten(1)[:, :T, None]
        self.keeps = []

    def position_logits(self, patches, return_attention=False):
        tokens, keep = self.transformer.patch_dropout(patches)
        self.keeps.append(keep)
        t = torch.arange(T)
        right = torch.where(keep, t % 3 != 0, t % 2 == 0)
        placed = torch.where(right, t, (t + 1) % T)
        logits = self.dropout(torch.nn.functional.one_hot(placed, T).float() + 0.01)
        return logits, keep, []


def test_accuracy_vs_patch_dropout_scores_kept_and_dropped_tokens_apart():
    model = DropoutRecorder().train()
    rng = torch.get_rng_state()
    rows = accuracy_vs_patch_dropout(model, random_images(5), ps=(0.0, 0.5, 1.0), batch_size=2)
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.training and model.transformer.patch_dropout.p == 0.25
    assert [row["p"] for row in rows] == [0.0, 0.5, 1.0]
    keep = torch.cat(model.keeps[3:6])  # p = 0.5: three batches of 2, 2 and 1 images
    t = torch.arange(T)
    assert rows[1] == {
        "p": 0.5,
        "kept_accuracy": pytest.approx((keep & (t % 3 != 0)).sum().item() / keep.sum().item()),
        "dropped_accuracy": pytest.approx((~keep & (t % 2 == 0)).sum().item()
                                          / (~keep).sum().item())}
    assert rows[0] == {"p": 0.0, "kept_accuracy": pytest.approx(10 / 16),
                       "dropped_accuracy": None}
    assert rows[2] == {"p": 1.0, "kept_accuracy": 0.0, "dropped_accuracy": 0.5}


def test_accuracy_vs_patch_dropout_by_default_tries_p_0_to_0_9_with_seed_0():
    images = random_images(2)
    rows = accuracy_vs_patch_dropout(DropoutRecorder(), images)
    assert [row["p"] for row in rows] == pytest.approx([i / 10 for i in range(10)])
    assert rows == accuracy_vs_patch_dropout(DropoutRecorder(), images, seed=0)
    assert rows != accuracy_vs_patch_dropout(DropoutRecorder(), images, seed=1)


class PixelReader(nn.Module):
    """Places token t at t if one pixel (channel, row, column) of its 4 x 4 patch is not
    blank (0), else at position 0, more surely the larger t is (so that the argmax along the
    token axis instead of the position axis would not find the same hits)."""

    def __init__(self, pixel):
        super().__init__()
        self.pixel = pixel
        self.transformer = nn.Module()
        self.transformer.num_tokens = T
        self.transformer.patches = lambda images: images.view(len(images), T, 3, 4, 4)

    def position_logits(self, patches, return_attention=False):
        seen = patches[(..., *self.pixel)] != 0  # (B, T)
        first = torch.eye(T)[0] * torch.arange(1, T + 1)[:, None]  # token t: t + 1 on position 0
        return torch.where(seen[..., None], torch.eye(T), first), None, []


@pytest.mark.parametrize("pixel, blanked", [
    ((0, 1, 1), 1.0), ((2, 2, 2), 1.0),  # inside: kept
    ((0, 0, 1), 1 / T), ((1, 3, 2), 1 / T), ((2, 1, 0), 1 / T), ((0, 2, 3), 1 / T),
])
def test_border_blanking_blanks_the_outermost_pixel_of_every_patch_only(pixel, blanked):
    from apl_core.analysis import border_blanking

    images = torch.full((5, 3, 16, 16), 255, dtype=torch.uint8)  # normalised: 1 everywhere
    result = border_blanking(PixelReader(pixel), images, batch_size=2)
    assert result == {"intact": 1.0, "blanked": pytest.approx(blanked)}


class MaskRecorder(nn.Module):
    """8 x 8 patches (a 2 x 2 grid of 16-pixel images); keeps every patch batch it is shown
    and places token t at t when its pixel (0, 0, 0), on the border, is not blank."""

    def __init__(self):
        super().__init__()
        self.seen = []
        self.transformer = nn.Module()
        self.transformer.num_tokens = 4
        self.transformer.patches = lambda images: extract_patches(images, 2, 0)

    def position_logits(self, patches, return_attention=False):
        self.seen.append(patches)
        placed = (patches[..., 0, 0, 0] != 0).float()  # (B, T)
        return placed[..., None] * torch.eye(4) + (1 - placed[..., None]) * torch.eye(4)[0], \
            None, []


def test_interior_blanking_blanks_as_many_pixels_as_the_ring_inside_it():
    from apl_core.analysis import interior_blanking

    images = torch.full((3, 3, 16, 16), 255, dtype=torch.uint8)
    reader = MaskRecorder()
    result = interior_blanking(reader, images, seed=4)
    assert result == {"intact": 1.0, "blanked": 1.0}  # a border reader loses nothing
    intact, masked = reader.seen[-2:]
    assert (intact != 0).all()
    blank = masked == 0  # (3, 4, 3, 8, 8)
    assert torch.equal(blank, blank[:1, :1, :1].expand_as(blank))  # the same in every patch
    blank = blank[0, 0, 0]
    assert blank.sum() == 8 * 8 - 6 * 6  # the 1-pixel ring's 28 pixels
    ring = torch.ones(8, 8, dtype=torch.bool)
    ring[1:-1, 1:-1] = False
    assert not (blank & ring).any()
    interior_blanking(reader, images, seed=4)
    assert torch.equal(reader.seen[-1] == 0, masked == 0)  # seeded
    interior_blanking(reader, images, seed=5)
    assert not torch.equal(reader.seen[-1] == 0, masked == 0)


def test_border_blanking_and_its_control_blank_equal_counts():
    from apl_core.analysis import border_blanking, interior_blanking

    images = torch.full((2, 3, 32, 32), 255, dtype=torch.uint8)  # 16 x 16 patches
    reader = MaskRecorder()
    assert border_blanking(reader, images, width=2) == {"intact": 1.0, "blanked": 0.25}
    ring_blank = (reader.seen[-1][0, 0, 0] == 0).sum()
    interior_blanking(reader, images, width=2)
    assert (reader.seen[-1][0, 0, 0] == 0).sum() == ring_blank == 16 * 16 - 12 * 12


def test_interior_blanking_refuses_patches_too_small_for_the_control():
    from apl_core.analysis import interior_blanking

    images = torch.full((1, 3, 16, 16), 255, dtype=torch.uint8)
    with pytest.raises(ValueError, match="a 4 x 4 patch has 4 pixels inside its 1-pixel ring, "
                                         "fewer than the ring's 12: the control needs patches "
                                         "of 7 x 7 or more"):
        interior_blanking(PixelReader((0, 1, 1)), images)


def test_knn_accuracy_passes_k_and_temperature_on():
    # pooled colour features: the query (red) is nearest to one red image, then two orange
    # images of another class
    colours = torch.tensor([[250, 10, 10], [250, 120, 10], [250, 120, 10]], dtype=torch.uint8)
    images = colours.view(3, 3, 1, 1).expand(3, 3, 4, 4).contiguous()
    bank = ImageSet(images, torch.tensor([0, 1, 1]), ["red", "orange"])
    query = ImageSet(torch.full((1, 3, 4, 4), 10, dtype=torch.uint8).index_fill_(
        1, torch.tensor([0]), 255), torch.tensor([0]), ["red", "orange"])
    assert knn_accuracy(ColourFeatures(), bank, query, batch_size=1) == 1.0
    assert knn_accuracy(ColourFeatures(), bank, query, k=3, temperature=10.0) == 0.0
    assert knn_accuracy(ColourFeatures(), bank, query, k=1, temperature=10.0) == 1.0


def test_feature_probe_does_not_depend_on_the_features_units():
    from apl_core.analysis import feature_probe

    train, val, test = (_clusters(n, 4, 8, seed, spread=2.0)
                        for n, seed in ((40, 0), (40, 1), (40, 2)))
    result = feature_probe(train, val, test, penalties=(1e-3, 1e-1))
    assert 0.5 < result.test_top1 < 1
    for scale, shift in ((1e-3, 5.0), (1e3, -7.0)):
        rescaled = [(x * scale + shift, y) for x, y in (train, val, test)]
        assert feature_probe(*rescaled, penalties=(1e-3, 1e-1)) == result


def test_a_too_large_probe_penalty_predicts_the_majority_class_and_is_not_chosen():
    from apl_core.analysis import feature_probe

    x, y = _clusters(40, 2, 4, seed=0)
    unbalanced = torch.cat([torch.arange(0, 24, 2), torch.tensor([1, 3])])  # 12 vs 2 images
    train, val = (x[unbalanced], y[unbalanced]), (x[24:], y[24:])  # val: 8 of each class
    test = val
    result = feature_probe(train, val, test, penalties=(1e3, 1e-3))
    assert result.val_top1 == {1e3: 0.5, 1e-3: 1.0}
    assert result.penalty == 1e-3 and result.test_top1 == 1.0


def test_feature_probe_chooses_the_first_of_equally_good_penalties():
    from apl_core.analysis import feature_probe

    train, val, test = (_clusters(n, 3, 8, seed) for n, seed in ((30, 0), (30, 1), (30, 2)))
    assert feature_probe(train, val, test, penalties=(1e-2, 1e-4, 1e-3)).penalty == 1e-2
    assert feature_probe(train, val, test, penalties=(1e-3, 1e-2)).penalty == 1e-3


def test_knn_accuracy_asks_20_neighbours_by_default():
    # 10 bank images of the query's class just nearer than 10 of another: the 21st tips it
    greens = [140] * 10 + [141] * 10 + [142]
    colours = torch.tensor([[255, g, 128] for g in greens], dtype=torch.uint8)
    bank = ImageSet(colours.view(21, 3, 1, 1).expand(21, 3, 4, 4).contiguous(),
                    torch.tensor([0] * 10 + [1] * 11), ["a", "b"])
    query = ImageSet(torch.tensor([255, 128, 128], dtype=torch.uint8).view(1, 3, 1, 1)
                     .expand(1, 3, 4, 4).contiguous(), torch.tensor([0]), ["a", "b"])
    assert knn_accuracy(ColourFeatures(), bank, query) == 1.0
    assert knn_accuracy(ColourFeatures(), bank, query, k=21) == 0.0


def test_probe_loss_is_the_cross_entropy_plus_the_weights_squared_norm():
    head = nn.Linear(3, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, -2.0, 0.0], [0.5, 0.0, 1.0]]))
        head.bias.copy_(torch.tensor([3.0, -1.0]))  # large, and not penalised
    x, y = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]]), torch.tensor([1, 0])
    logits = x @ head.weight.T + head.bias
    cross_entropy = -(logits.log_softmax(1)[[0, 1], [1, 0]]).mean()
    squared_norm = 1 + 4 + 0.25 + 1
    torch.testing.assert_close(probe_loss(head, x, y, 0.0), cross_entropy)
    torch.testing.assert_close(probe_loss(head, x, y, 0.1), cross_entropy + 0.1 * squared_norm)
