"""The pretext tasks APL is compared with (apl_core.pretext): what each asks, its loss, and a
pretraining of each through the engine that fine-tunes and probes as APL's does."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from apl_core import pretext
from apl_core.config import PretrainConfig
from apl_core.model import APLPretrainModel, APLTransformer, TransformerConfig
from apl_core.pretext import (
    JigsawModel, MAEModel, MP3Model, RotationModel, build_pretext_model,
    hamming, jigsaw_permutations, mae_loss, normalized_pixels, pretext_loss, random_subset,
    rotate_all, rotation_loss, shuffle_tiles,
)
from apl_core.puzzle import extract_patches
from apl_core.train import finetune, load_pretrained, pretrain
from conftest import smoke_finetune_config, smoke_pretrain_config

SMALL = dict(image_size=16, grid=4, crop=1, heads=3, blocks=2, hidden_mult=2, dropout=0.0,
             patch_dropout=0.0)


def transformer(positional_embedding: bool = False) -> APLTransformer:
    torch.manual_seed(0)
    return APLTransformer(TransformerConfig(**SMALL, positional_embedding=positional_embedding)).eval()


def images(batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------- rotation

def test_every_image_comes_in_its_four_rotations_labelled_by_the_rotation():
    x = images(2)
    rotated, labels = rotate_all(x)
    assert rotated.shape == (8, 3, 16, 16)
    assert labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    for i, label in enumerate(labels.tolist()):
        image = x[i % 2]
        # undoing `label` quarter turns gives the image back; the pixel at the top-left
        # corner of a quarter turn counter-clockwise is the original's top-right one
        assert torch.equal(torch.rot90(rotated[i], -label, dims=(1, 2)), image)
    assert torch.equal(rotated[2][:, 0, 0], x[0][:, 0, -1])


def test_the_rotation_loss_is_the_cross_entropy_of_the_four_rotations():
    model = RotationModel(transformer())
    x = images(2)
    loss, hits, count = rotation_loss(model, x)
    rotated, labels = rotate_all(x)
    logits = model(rotated)
    assert logits.shape == (8, 4) and count.item() == 8
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels))
    assert hits[0].item() == (logits.argmax(1) == labels).sum().item()


def test_the_rotation_head_reads_the_mean_over_tokens():
    """Pooled: the tokens' order does not matter, as the transformer has no positions."""
    model = RotationModel(transformer())
    x = images(2)
    features, _, _ = model.transformer(x)
    torch.testing.assert_close(model(x), model.rotation_head(features.mean(1)))


# ---------------------------------------------------------------- jigsaw

def test_the_permutations_are_distinct_and_chosen_greedily_by_hamming_distance():
    chosen = jigsaw_permutations(4, count=10)
    assert chosen.shape == (10, 4)
    assert all(sorted(p.tolist()) == [0, 1, 2, 3] for p in chosen)
    assert len({tuple(p.tolist()) for p in chosen}) == 10
    every = torch.tensor(list(itertools.permutations(range(4))))
    for k in range(1, 10):
        # each added permutation is as far from the ones before it as any permutation is
        farthest = hamming(every, chosen[:k]).min(1).values.max()
        assert hamming(chosen[k:k + 1], chosen[:k]).min() == farthest


def test_the_permutation_set_is_seeded_and_at_most_every_permutation():
    assert torch.equal(jigsaw_permutations(9, count=20), jigsaw_permutations(9, count=20))
    assert not torch.equal(jigsaw_permutations(9, count=20, seed=1),
                           jigsaw_permutations(9, count=20))
    assert len(jigsaw_permutations(3, count=100)) == math.factorial(3)


def test_every_permutation_is_a_candidate_when_there_are_no_more_than_the_candidates():
    six = jigsaw_permutations(3, count=6, candidates=6)
    assert sorted(map(tuple, six.tolist())) == sorted(itertools.permutations(range(3)))


def test_sixteen_tiles_get_a_hundred_permutations_far_apart():
    chosen = jigsaw_permutations(16)
    distances = hamming(chosen, chosen) + 16 * torch.eye(len(chosen), dtype=torch.long)
    assert chosen.shape == (100, 16) and distances.min() >= 12


def test_slot_s_holds_the_tile_the_permutation_names():
    patches = torch.arange(2 * 4).reshape(2, 4, 1).float()
    permutations = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]])
    shuffled = shuffle_tiles(patches, permutations, torch.tensor([1, 0]))
    assert shuffled[..., 0].tolist() == [[3, 2, 1, 0], [4, 5, 6, 7]]


def test_the_jigsaw_model_classifies_the_concatenated_tokens_of_the_shuffled_tiles():
    model = JigsawModel(transformer(positional_embedding=True))
    x, index = images(2), torch.tensor([5, 0])
    logits, given = model(x, index)
    assert logits.shape == (2, 100) and given is index
    patches = shuffle_tiles(extract_patches(x, 4, 1), model.permutations, index)
    features, _, _ = model.transformer.contextualize(patches)
    torch.testing.assert_close(logits, model.permutation_head(features.flatten(1)))
    with pytest.raises(ValueError, match=r"^jigsaw's answer is an order: its transformer "
                                         r"needs a positional embedding "
                                         r"\(positional_embedding=True\)$"):
        JigsawModel(transformer())


def test_the_jigsaw_loss_is_the_cross_entropy_of_a_permutation_drawn_per_image():
    model = JigsawModel(transformer(positional_embedding=True))
    x = images(4)
    torch.manual_seed(3)
    loss, hits, count = pretext.jigsaw_loss(model, x)
    torch.manual_seed(3)
    logits, index = model(x)
    torch.testing.assert_close(loss, F.cross_entropy(logits, index))
    assert count.item() == 4 and hits[0].item() == (logits.argmax(1) == index).sum().item()
    assert len(set(model(images(64))[1].tolist())) > 20  # drawn from the whole set


# ---------------------------------------------------------------- MAE

def test_the_same_share_of_tokens_is_hidden_in_every_image():
    hidden = random_subset(5, 16, 0.75)
    assert hidden.sum(1).tolist() == [12] * 5
    assert len({tuple(row.tolist()) for row in hidden}) > 1


def test_the_target_is_each_patchs_pixels_normalised_by_its_own_statistics():
    patches = torch.rand(2, 4, 3, 3, 3) * 5 + 2
    target = normalized_pixels(patches)
    assert target.shape == (2, 4, 27)
    torch.testing.assert_close(target.mean(-1), torch.zeros(2, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(target.var(-1), torch.ones(2, 4), atol=1e-3, rtol=0)


def test_a_flat_patch_has_a_target_of_zeros_not_a_division_by_zero():
    flat = torch.full((1, 2, 3, 3, 3), 0.5)
    assert torch.equal(normalized_pixels(flat), torch.zeros(1, 2, 27))


def test_the_mae_decoder_is_two_small_blocks_with_positions_and_a_mask_token_of_its_own():
    torch.manual_seed(0)
    model = MAEModel(transformer(positional_embedding=True))
    assert len(model.decoder) == 2
    assert all(block.ff[0].out_features == 4 * 128 for block in model.decoder)
    assert model.mask_token.shape == (1, 1, 128) and model.decoder_position.shape == (1, 16, 128)
    for start in (model.mask_token, model.decoder_position):
        assert 0.01 < start.std().item() < 0.03  # MAE's initialisation, std 0.02


def test_the_mae_prediction_is_the_encoder_on_the_visible_tokens_then_the_decoder_on_all():
    torch.manual_seed(0)
    model = MAEModel(transformer(positional_embedding=True))
    patches = extract_patches(images(2), 4, 1)
    hidden = random_subset(2, 16, 0.75)
    encoder = model.transformer
    x = (encoder.encoder(patches) + encoder.position_embedding)[~hidden].reshape(2, 4, -1)
    for block in encoder.blocks:
        x, _ = block(x)
    tokens = torch.where(hidden[..., None], model.mask_token, torch.zeros(2, 16, 128))
    tokens[~hidden] = model.to_decoder(x).flatten(0, 1)
    x = tokens + model.decoder_position
    for block in model.decoder:
        x, _ = block(x)
    torch.testing.assert_close(model.predict(patches, hidden), model.to_pixels(x))


def test_mae_trains_under_bfloat16_autocast():
    model = MAEModel(transformer(positional_embedding=True))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _, count = mae_loss(model, images(2))
    assert math.isfinite(loss.item()) and count.item() == 24


def test_the_mae_loss_scores_the_hidden_tokens_only(monkeypatch):
    torch.manual_seed(0)
    model = MAEModel(transformer(positional_embedding=True))
    x = images(2)
    hidden = random_subset(2, 16, 0.75)
    monkeypatch.setattr(pretext, "random_subset", lambda *args, **kw: hidden)
    loss, hits, count = mae_loss(model, x)
    patches = extract_patches(x, 4, 1)
    errors = (model.predict(patches, hidden) - normalized_pixels(patches)).square().mean(-1)
    torch.testing.assert_close(loss, errors[hidden].mean())
    assert count.item() == 24 and hits.tolist() == [0, 0, 0]


def test_the_mae_encoder_sees_no_hidden_token():
    """Changing a hidden patch changes no prediction; changing a visible one does."""
    model = MAEModel(transformer(positional_embedding=True))
    patches = extract_patches(images(1), 4, 1)
    hidden = torch.zeros(1, 16, dtype=torch.bool)
    hidden[0, :12] = True
    changed = patches.clone()
    changed[0, 0] += 1
    torch.testing.assert_close(model.predict(changed, hidden), model.predict(patches, hidden))
    changed = patches.clone()
    changed[0, 15] += 1
    assert not torch.allclose(model.predict(changed, hidden), model.predict(patches, hidden))
    with pytest.raises(ValueError, match=r"^MAE's decoder must know where each hidden token "
                                         r"goes: its transformer needs a positional embedding "
                                         r"\(positional_embedding=True\)$"):
        MAEModel(transformer())


# ---------------------------------------------------------------- MP3

def test_masked_keys_receive_no_attention_and_do_not_change_the_others():
    model = MP3Model(transformer())
    patches = extract_patches(images(2), 4, 1)
    attendable = ~random_subset(2, 16, 0.75)
    logits, keep, attention = model.position_logits(patches, return_attention=True,
                                                    attendable=attendable)
    assert logits.shape == (2, 16, 16) and keep.all() and len(attention) == 2
    for weights in attention:
        masked = ~attendable[:, None, None, :].expand_as(weights)
        assert weights[masked].abs().max() == 0
        torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))
    changed = patches.clone()
    changed[~attendable] += 1  # the masked tokens' content reaches no other token
    changed_logits, _, _ = model.position_logits(changed, attendable=attendable)
    torch.testing.assert_close(changed_logits[attendable], logits[attendable])
    torch.testing.assert_close(model.position_logits(patches, attendable=attendable)[0], logits)


def test_mp3_draws_the_key_mask_per_batch_and_scores_positions_as_apl(monkeypatch):
    model = MP3Model(transformer())
    drawn = []
    real = pretext.random_subset
    monkeypatch.setattr(pretext, "random_subset",
                        lambda *args, **kw: drawn.append(args) or real(*args, **kw))
    logits, keep = model(images(2))
    assert drawn == [(2, 16, pretext.KEY_MASK_RATIO)]
    loss, _, count = pretext_loss("mp3")(model, images(2))
    assert count.item() == 32 and math.isfinite(loss.item())
    with pytest.raises(ValueError, match=r"^MP3 predicts positions: a positional embedding "
                                         r"would give them away "
                                         r"\(positional_embedding=False\)$"):
        MP3Model(transformer(positional_embedding=True))


def test_mp3_masks_the_drawn_keys_and_can_read_positions_with_an_mlp(monkeypatch):
    model = MP3Model(transformer())
    masked = random_subset(2, 16, pretext.KEY_MASK_RATIO)
    monkeypatch.setattr(pretext, "random_subset", lambda *args, **kw: masked)
    logits, _ = model(images(2))
    expected, _, attention = model.position_logits(extract_patches(images(2), 4, 1),
                                                   attendable=~masked)
    torch.testing.assert_close(logits, expected)
    assert attention == []  # the weights only when asked
    mlp_head = MP3Model(transformer(), mlp_head=True)
    assert isinstance(mlp_head.position_head, torch.nn.Sequential)
    assert mlp_head(images(2))[0].shape == (2, 16, 16)


# ---------------------------------------------------------------- through the engine

class OnlyForward(torch.nn.Module):
    """A wrapper that, like DistributedDataParallel, exposes the model's forward and nothing
    else of it."""

    def __init__(self, model):
        super().__init__()
        self.wrapped = model

    def forward(self, *args):
        return self.wrapped(*args)

TASKS = {"rotation": {}, "jigsaw": {"positional_embedding": True},
         "mae": {"positional_embedding": True}, "mp3": {}}


def test_the_model_of_each_task_keeps_the_transformer_the_fine_tuning_loads():
    models = {"apl": APLPretrainModel, "rotation": RotationModel, "jigsaw": JigsawModel,
              "mae": MAEModel, "mp3": MP3Model}
    for task, settings in TASKS.items():
        model = build_pretext_model(PretrainConfig(pretext=task, **SMALL, **settings))
        assert type(model) is models[task] and isinstance(model.transformer, APLTransformer)
    for task in ("apl", "mp3"):  # the position head as the config asks
        model = build_pretext_model(PretrainConfig(pretext=task, **SMALL, mlp_head=True))
        assert isinstance(model.position_head, torch.nn.Sequential), task


@pytest.mark.parametrize("task", sorted(TASKS))
def test_each_loss_only_calls_its_model_so_a_wrapped_model_trains_the_same(task):
    model = build_pretext_model(PretrainConfig(pretext=task, **SMALL, **TASKS[task])).eval()
    torch.manual_seed(5)
    direct = pretext_loss(task)(model, images(4))
    torch.manual_seed(5)
    wrapped = pretext_loss(task)(OnlyForward(model), images(4))
    for mine, theirs in zip(direct, wrapped):
        torch.testing.assert_close(mine, theirs)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_each_task_pretrains_its_loss_down_and_fine_tunes_from_its_transformer(tmp_path, task):
    config = smoke_pretrain_config(tmp_path, pretext=task, epochs=3, num_images=512,
                                   holdout_images=128, **TASKS[task])
    result = pretrain(config)
    losses = [row["train_loss"] for row in result.metrics]
    assert all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < losses[0], losses
    assert "val_loss" in result.metrics[-1]
    model, loaded = load_pretrained(result.checkpoint)
    assert loaded.pretext == task and type(model) is type(build_pretext_model(loaded))
    tuned = finetune(smoke_finetune_config(tmp_path, pretrained=str(result.run_dir), epochs=1))
    assert math.isfinite(tuned.metrics[-1]["train_loss"])
