import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from apl_core.baselines import SCNN
from apl_core.config import FinetuneConfig, PretrainConfig
from apl_core.model import (APLClassifier, APLPretrainModel, APLTransformer, Block, DropPath,
                            PatchDropout, SelfAttention, TransformerConfig, build_classifier,
                            build_encoder, build_finetune_model, build_pretrain_model,
                            drop_path_rates, mlp)
from apl_core.puzzle import position_targets

# the textbook transcription of the original (benchmarks/naive_model.py) that the model is
# checked against
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

SMALL = dict(image_size=32, grid=4, crop=1, heads=3, blocks=2, hidden_mult=2)


def small_transformer(**changes) -> APLTransformer:
    return APLTransformer(TransformerConfig(**{**SMALL, **changes}))


@pytest.mark.parametrize("encoder", ["flatten", "cnn", "resnet18"])
def test_permuting_tokens_permutes_position_logits(encoder):
    """No positional leak: the model is equivariant to the order of its tokens."""
    torch.manual_seed(0)
    heads = 3 if encoder == "flatten" else 4
    model = build_pretrain_model(PretrainConfig(**{**SMALL, "heads": heads}, encoder=encoder)).eval()
    patches = model.transformer.patches(torch.randn(2, 3, 32, 32))
    permutation = torch.randperm(16)
    with torch.no_grad():
        logits, _, _ = model.position_logits(patches)
        shuffled, _, _ = model.position_logits(patches[:, permutation])
    torch.testing.assert_close(shuffled, logits[:, permutation], atol=1e-4, rtol=1e-4)


def test_positional_embedding_makes_the_model_see_token_order():
    """The ViT baseline: a learned embedding per grid position, added to each token, so the
    model is no longer equivariant to the order of its tokens."""
    torch.manual_seed(0)
    transformer = small_transformer(positional_embedding=True).eval()
    assert transformer.position_embedding.shape == (1, 16, transformer.dim)
    assert 0 < transformer.position_embedding.std() < 0.05  # ViT's initialisation, std 0.02
    assert any(p is transformer.position_embedding for p in transformer.parameters())
    patches = transformer.patches(torch.randn(2, 3, 32, 32))
    permutation = torch.randperm(16)
    with torch.no_grad():
        features, _, _ = transformer.contextualize(patches)
        shuffled, _, _ = transformer.contextualize(patches[:, permutation])
        transformer.position_embedding.zero_()
        zero, _, _ = transformer.contextualize(patches[:, permutation])
        unpermuted, _, _ = transformer.contextualize(patches)
    assert not torch.allclose(shuffled, features[:, permutation], atol=1e-3)
    torch.testing.assert_close(zero, unpermuted[:, permutation], atol=1e-4, rtol=1e-4)
    assert small_transformer().position_embedding is None


def test_positional_embedding_is_added_to_each_token():
    """Token i gets embedding i added before the blocks: the model with the embedding computes
    what the same model without it computes on the tokens shifted by the embedding."""
    torch.manual_seed(0)
    with_positions = small_transformer(positional_embedding=True).eval()
    without = small_transformer().eval()
    without.load_state_dict(with_positions.state_dict(), strict=False)
    with torch.no_grad():
        with_positions.position_embedding.normal_()
        patches = with_positions.patches(torch.randn(2, 3, 32, 32))
        shifted = patches + with_positions.position_embedding.view(1, 16, *patches.shape[2:])
        torch.testing.assert_close(with_positions.contextualize(patches)[0],
                                   without.contextualize(shifted)[0])


def test_linear_probe_keeps_the_frozen_transformer_in_evaluation_mode():
    """A probe trains its head on the features the frozen model computes: no dropout, no
    PatchDropout in the transformer even in training mode; the full fine-tune keeps both."""
    images = torch.randn(4, 3, 32, 32)
    probe = APLClassifier(small_transformer(dropout=0.5, patch_dropout=0.5), 10,
                          frozen_transformer=True).train()
    assert probe.training and probe.class_head.training
    assert not any(m.training for m in probe.transformer.modules())
    assert {n for n, p in probe.named_parameters() if p.requires_grad} == {
        "class_head.weight", "class_head.bias"}
    torch.testing.assert_close(probe(images), probe(images))
    assert not probe.eval().training and not probe.train().transformer.training
    full = APLClassifier(small_transformer(dropout=0.5, patch_dropout=0.5), 10).train()
    assert all(m.training for m in full.transformer.modules())
    assert all(p.requires_grad for p in full.parameters())
    assert not torch.allclose(full(images), full(images))


def test_output_shapes():
    config = PretrainConfig(**SMALL)
    model = build_pretrain_model(config)
    logits, keep = model(torch.randn(5, 3, 32, 32))
    assert logits.shape == (5, 16, 16) and keep.shape == (5, 16)
    features, _, _ = model.transformer(torch.randn(5, 3, 32, 32))
    assert features.shape == (5, 16, config.token_dim)


def test_patch_dropout_rate_and_zeroing():
    torch.manual_seed(0)
    dropout = PatchDropout(0.3).train()
    tokens = torch.randn(400, 50, 8) + 5  # never zero by chance
    dropped, keep = dropout(tokens)
    n = keep.numel()
    rate = 1 - keep.float().mean().item()
    assert abs(rate - 0.3) < 4 * math.sqrt(0.3 * 0.7 / n)
    assert torch.all(dropped[~keep] == 0)
    assert torch.equal(dropped[keep], tokens[keep])
    kept_all, keep_eval = dropout.eval()(tokens)
    assert keep_eval.all() and torch.equal(kept_all, tokens)


def test_attention_weights_on_request():
    model = build_pretrain_model(PretrainConfig(**SMALL)).eval()
    patches = model.transformer.patches(torch.randn(3, 3, 32, 32))
    logits, _, attention = model.position_logits(patches, return_attention=True)
    assert len(attention) == 2
    for weights in attention:
        assert weights.shape == (3, 3, 16, 16)
        torch.testing.assert_close(weights.sum(-1), torch.ones(3, 3, 16))
    # the explicit path computes the same function as the fused one
    fused, _, no_attention = model.position_logits(patches)
    assert no_attention == []
    torch.testing.assert_close(fused, logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("scale", ["standard", "original"])
def test_a_key_mask_hides_the_masked_tokens_on_both_attention_paths(scale):
    torch.manual_seed(0)
    attention = SelfAttention(12, 3, scale)
    x = torch.randn(2, 5, 12)
    everyone = torch.ones(2, 5, dtype=torch.bool)
    for return_attention in (False, True):
        torch.testing.assert_close(attention(x, return_attention, everyone)[0],
                                   attention(x, return_attention)[0])
    attendable = torch.tensor([[True, False, True, True, False], [False] * 4 + [True]])
    explicit, weights = attention(x, return_attention=True, attendable=attendable)
    assert torch.all(weights.masked_select(~attendable[:, None, None, :]) == 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3, 5))
    torch.testing.assert_close(attention(x, attendable=attendable)[0], explicit)
    changed = x.clone()
    changed[~attendable] += 1  # a masked token's content reaches no other token
    torch.testing.assert_close(attention(changed, attendable=attendable)[0][attendable],
                               explicit[attendable])


def test_classifier_pools_tokens_and_counts_classes():
    tune = FinetuneConfig(image_size=32, num_classes=7, mlp_head=True, dropout=0.05)
    classifier = build_classifier(tune, PretrainConfig(**SMALL))
    assert classifier(torch.randn(4, 3, 32, 32)).shape == (4, 7)
    dropouts = [m.p for m in classifier.transformer.blocks.modules()
                if isinstance(m, torch.nn.Dropout)]
    assert dropouts and all(p == 0.05 for p in dropouts)
    # the pretraining and fine-tuning models share the transformer's parameter names
    pretrain_keys = {k for k in build_pretrain_model(PretrainConfig(**SMALL)).state_dict()
                     if k.startswith("transformer.")}
    assert pretrain_keys == {k for k in classifier.state_dict() if k.startswith("transformer.")}


def test_freeze_encoder_keeps_only_the_patch_encoder_as_pretrained():
    pretrained = PretrainConfig(**{**SMALL, "heads": 4}, encoder="cnn")  # weights to freeze
    frozen = build_classifier(FinetuneConfig(image_size=32, freeze_encoder=True), pretrained)
    encoder = {id(p) for p in frozen.transformer.encoder.parameters()}
    assert encoder and all(p.requires_grad == (id(p) not in encoder)
                           for p in frozen.parameters())
    trained = build_classifier(FinetuneConfig(image_size=32), pretrained)
    assert all(p.requires_grad for p in trained.parameters())


def test_the_classifier_drops_patches_in_evaluation_only_when_the_config_says_so():
    pretrained = PretrainConfig(**SMALL)
    for at_eval in (True, False):
        tune = FinetuneConfig(image_size=32, patch_dropout=0.25, patch_dropout_at_eval=at_eval)
        assert build_classifier(tune, pretrained).transformer.patch_dropout.at_eval is at_eval


def test_classifier_trains_with_the_finetuning_dropout_not_the_pretraining_one():
    pretrained = PretrainConfig(**SMALL, dropout=0.15, patch_dropout=0.1)
    model = build_classifier(FinetuneConfig(dropout=0.4, patch_dropout=0.25), pretrained)
    assert all(b.dropout.p == 0.4 for b in model.transformer.blocks)
    assert model.transformer.patch_dropout.p == 0.25


def test_drop_path_drops_whole_images_and_rescales_the_kept_ones():
    torch.manual_seed(0)
    drop = DropPath(0.25)
    x = torch.ones(4000, 3, 5)
    out = drop(x)
    per_image = out[:, 0, 0]
    # every image kept whole (scaled by 1 / 0.75) or dropped whole
    assert torch.equal(out, per_image[:, None, None].expand_as(out))
    assert per_image.unique().tolist() == pytest.approx([0.0, 1 / 0.75])
    assert 0.22 < (per_image == 0).float().mean() < 0.28  # Binomial(4000, 0.25): sd 0.7 %
    assert out.mean().item() == pytest.approx(1.0, abs=0.03)  # the expected output is kept
    drop.eval()
    assert drop(x) is x
    assert DropPath(0.0).train()(x) is x
    with pytest.raises(ValueError, match=r"drop_path=1.0 must be in \[0, 1\)"):
        DropPath(1.0)
    with pytest.raises(ValueError, match=r"drop_path=-0.1 must be in \[0, 1\)"):
        DropPath(-0.1)


def test_drop_path_of_a_low_precision_batch_keeps_its_dtype_and_device():
    x = torch.ones(8, 2, 3, dtype=torch.bfloat16)
    assert DropPath(0.5)(x).dtype == torch.bfloat16
    assert DropPath(0.5)(x.to("meta")).device.type == "meta"


def test_stochastic_depth_rises_linearly_to_the_last_block():
    assert drop_path_rates(0.1, 4) == pytest.approx([0.0, 0.1 / 3, 0.2 / 3, 0.1])
    assert drop_path_rates(0.2, 2) == [0.0, 0.2]
    assert drop_path_rates(0.1, 1) == [0.1]  # one block: the last
    model = build_classifier(FinetuneConfig(drop_path=0.3), PretrainConfig(**{**SMALL,
                                                                              "blocks": 3}))
    assert [b.drop_path.p for b in model.transformer.blocks] == pytest.approx([0.0, 0.15, 0.3])
    assert {b.drop_path.p for b in small_transformer().blocks} == {0.0}  # off by default
    assert {b.drop_path.p for b in build_pretrain_model(PretrainConfig(**SMALL)).transformer
            .blocks} == {0.0}


def test_a_block_drops_each_residual_branch_per_image_while_training():
    """Stochastic depth acts on the two residual branches (attention, feed-forward), each with
    its own draw, before each LayerNorm; the input's own path is never dropped."""
    torch.manual_seed(0)
    block = Block(dim=6, heads=2, hidden_mult=2, dropout=0.0, drop_path=0.5)
    assert isinstance(block.drop_path, DropPath) and block.drop_path.p == 0.5
    scales = iter([torch.tensor([0.0, 2.0, 0.0, 2.0]), torch.tensor([0.0, 0.0, 2.0, 2.0])])

    class Recorded(torch.nn.Module):  # DropPath with its draws fixed: per image, per call
        def forward(self, branch):
            return branch * next(scales)[:, None, None]

    x = torch.randn(4, 3, 6)
    attended, _ = block.attn(x)
    expected = []
    for attention_scale, ff_scale in ((0, 0), (2, 0), (0, 2), (2, 2)):
        y = block.norm1(x + attention_scale * attended)
        expected.append(block.norm2(y + ff_scale * block.ff(y)))
    block.drop_path = Recorded()
    out, _ = block(x)
    for i in range(4):
        torch.testing.assert_close(out[i], expected[i][i])
    plain = Block(dim=6, heads=2, hidden_mult=2, dropout=0.0)
    plain.load_state_dict(block.state_dict())
    block.drop_path = DropPath(0.5)
    block.eval()
    torch.testing.assert_close(block(x)[0], plain.eval()(x)[0])  # evaluation: no drop


def test_classifier_keeps_a_pretrained_positional_embedding_and_freezes_a_probe():
    """The embedding is there when the fine-tuning config adds one or the pretrained model has
    one; head_only freezes the transformer."""
    plain, leak = PretrainConfig(**SMALL), PretrainConfig(**SMALL, positional_embedding=True)
    for tune, architecture, embedded in ((FinetuneConfig(), plain, False),
                                         (FinetuneConfig(), leak, True),
                                         (FinetuneConfig(positional_embedding=True), plain, True)):
        transformer = build_classifier(tune, architecture).transformer
        assert (transformer.position_embedding is not None) == embedded
    probe = build_classifier(FinetuneConfig(head_only=True), plain)
    assert not any(p.requires_grad for p in probe.transformer.parameters())
    assert all(p.requires_grad for p in build_classifier(FinetuneConfig(), plain).parameters())


def test_a_finetune_model_is_built_on_the_pretrained_architecture_else_on_its_own():
    """On a pretrained run's config when given, else BENCHMARK's config.architecture; the CNN
    baselines need neither."""
    architecture = {name: value for name, value in SMALL.items() if name != "image_size"}
    tune = FinetuneConfig(image_size=32, architecture={**architecture, "blocks": 1})
    assert len(build_finetune_model(tune).transformer.blocks) == 1
    assert len(build_finetune_model(tune, PretrainConfig(**SMALL)).transformer.blocks) == 2
    assert isinstance(build_finetune_model(FinetuneConfig(model="s-cnn", image_size=32)), SCNN)
    images = torch.randn(2, 3, 32, 32)
    for model in ("s-cnn", "s-resnet"):
        baseline = build_finetune_model(FinetuneConfig(model=model, image_size=32, num_classes=7))
        assert baseline.eval()(images).shape == (2, 7), model
    assert build_finetune_model(tune).transformer.config.image_size == 32


def test_a_transformer_keeps_its_config_and_drop_path_defaults_to_the_identity():
    config = TransformerConfig(**SMALL)
    assert APLTransformer(config).config is config
    x = torch.randn(3, 4, 5)
    assert DropPath().train()(x) is x


def test_a_key_mask_reaches_every_block_of_the_transformer():
    """The masked tokens' content reaches no other token's features, through every block."""
    torch.manual_seed(0)
    transformer = small_transformer().eval()
    patches = transformer.patches(torch.randn(2, 3, 32, 32))
    attendable = torch.rand(2, 16) < 0.5
    features, _, attention = transformer.contextualize(patches, True, attendable)
    assert all(torch.all(w.masked_select(~attendable[:, None, None, :]) == 0) for w in attention)
    changed = patches.clone()
    changed[~attendable] += 1
    torch.testing.assert_close(transformer.contextualize(changed, False, attendable)[0][attendable],
                               features[attendable])


def test_module_defaults_are_the_configs_defaults():
    # the paper's architecture is written down in config.py; the modules must agree with it
    config, tune = PretrainConfig(), FinetuneConfig()
    assert TransformerConfig() == TransformerConfig.of(config)
    assert TransformerConfig().drop_path == tune.drop_path
    default = APLTransformer(TransformerConfig())
    for name in ("image_size", "grid", "crop", "num_tokens"):
        assert getattr(default, name) == getattr(config, name), name
    assert default.dim == config.token_dim
    assert len(default.blocks) == config.blocks
    assert {b.attn.heads for b in default.blocks} == {config.heads}
    assert {b.ff[0].out_features for b in default.blocks} == {config.hidden_mult * default.dim}
    assert {b.dropout.p for b in default.blocks} == {config.dropout}
    assert {b.drop_path.p for b in default.blocks} == {tune.drop_path}
    assert default.patch_dropout.p == PatchDropout().p == config.patch_dropout
    assert isinstance(default.encoder, type(build_encoder(config.encoder, config.crop)))
    assert isinstance(APLPretrainModel(default).position_head, torch.nn.Linear)  # no mlp_head
    classifier = APLClassifier(default)
    assert isinstance(classifier.class_head, torch.nn.Linear) and not tune.mlp_head
    assert classifier.class_head.out_features == tune.num_classes


def test_mlp_heads_are_two_layers_with_relu_and_dropout():
    head = mlp(6, 4)
    assert [type(m) for m in head] == [torch.nn.Linear, torch.nn.ReLU, torch.nn.Dropout,
                                       torch.nn.Linear]
    assert (head[0].in_features, head[0].out_features, head[3].out_features) == (6, 18, 4)
    assert head[2].p == 0.1
    model = build_pretrain_model(PretrainConfig(**SMALL, mlp_head=True))
    assert [type(m) for m in model.position_head] == [type(m) for m in head]
    assert (model.position_head[0].in_features, model.position_head[-1].out_features) == (
        model.transformer.dim, model.transformer.num_tokens)
    classifier = build_classifier(FinetuneConfig(num_classes=7, mlp_head=True),
                                  PretrainConfig(**SMALL))
    assert [type(m) for m in classifier.class_head] == [type(m) for m in head]
    assert classifier.class_head[-1].out_features == 7
    assert isinstance(build_classifier(FinetuneConfig(), PretrainConfig(**SMALL)).class_head,
                      torch.nn.Linear)


@pytest.mark.parametrize("crop", [0, 1, 2])
def test_cnn_encoder_is_two_relu_convolutions_and_a_spatial_mean(crop):
    encoder = build_encoder("cnn", crop).train()  # train mode: no dropout either
    first, second = (m for m in encoder.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.weight.shape == (64, 3, 3, 3) and second.weight.shape == (128, 64, 3, 3)
    patches = torch.randn(2, 5, 3, 8 - crop, 8 - crop)
    padding = 1 if crop else 0  # the original pads only cropped patches
    x = F.relu(F.conv2d(patches.flatten(0, 1), first.weight, first.bias, padding=padding))
    x = F.relu(F.conv2d(x, second.weight, second.bias, padding=padding))
    expected = x.mean(dim=(2, 3)).reshape(2, 5, 128)
    torch.testing.assert_close(encoder(patches), expected)


def test_unknown_encoder_is_refused_with_the_choices():
    with pytest.raises(ValueError) as error:
        build_encoder("vit", 1)
    assert str(error.value) == "encoder='vit' is invalid: choose flatten, cnn or resnet18"


def test_keep_mask_is_a_boolean_per_token_in_every_mode():
    tokens = torch.randn(3, 5, 4)
    for dropout in (PatchDropout(0.5).eval(), PatchDropout(0.0).train(),
                    PatchDropout(0.5).train()):
        out, keep = dropout(tokens)
        assert keep.dtype == torch.bool and keep.shape == (3, 5)
    assert not PatchDropout(1.0).train()(tokens)[1].any()  # p is the share dropped, up to all
    # the mask is made on the tokens' device (meta stands in for a GPU)
    meta = torch.zeros(3, 5, 4, device="meta")
    for dropout in (PatchDropout(0.5).eval(), PatchDropout(0.5).train()):
        out, keep = dropout(meta)
        assert out.device.type == keep.device.type == "meta"


def test_attention_weights_only_when_asked():
    block = Block(dim=6, heads=2, hidden_mult=2, dropout=0.0)
    out, weights = block(torch.randn(2, 4, 6))
    assert out.shape == (2, 4, 6) and weights is None
    model = build_pretrain_model(PretrainConfig(**SMALL))
    features, keep, attention = model.transformer(torch.randn(2, 3, 32, 32))
    assert attention == []


def test_tiny_model_overfits_one_batch_of_the_puzzle():
    """The puzzle is learnable: one fixed batch is solved (position accuracy -> 100%)."""
    torch.manual_seed(0)
    model = build_pretrain_model(PretrainConfig(**SMALL, dropout=0.0, patch_dropout=0.0))
    images = torch.rand(8, 3, 32, 32) * 2 - 1
    targets = position_targets(8, 16)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(150):
        logits, _ = model(images)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(images)[0].argmax(-1) == targets).float().mean().item()
    assert accuracy == 1.0


def _naive_twin(fast, phase="pretrain", **kwargs):
    """The textbook model of benchmarks/naive_model.py with `fast`'s weights."""
    from naive_model import NaiveClassifier, NaivePretrainModel, from_fast
    cls = NaivePretrainModel if phase == "pretrain" else NaiveClassifier
    return from_fast(cls(**kwargs), fast)


@pytest.mark.parametrize("attention", ["bmm", "loop"])
def test_naive_benchmark_model_computes_the_same_function(attention):
    """The throughput benchmark compares our model with the textbook one: same weights, same
    outputs and same gradients (with dropout off), so only the speed differs."""
    torch.manual_seed(0)
    config = PretrainConfig(**SMALL, dropout=0.0, patch_dropout=0.0)
    fast = build_pretrain_model(config)
    arch = dict(image_size=32, grid=4, crop=1, blocks=2, heads=3, hidden_mult=2,
                dropout=0.0, patch_dropout=0.0, attention=attention)
    naive = _naive_twin(fast, **arch)
    images = torch.randn(3, 3, 32, 32)
    ours, _ = fast(images)
    theirs, _ = naive(images)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    ours.square().sum().backward()
    theirs.square().sum().backward()
    qkv = fast.transformer.blocks[0].attn.qkv.weight.grad
    naive_attention = naive.transformer.blocks[0].attention
    torch.testing.assert_close(qkv, torch.cat([naive_attention.toqueries.weight.grad,
                                               naive_attention.tokeys.weight.grad,
                                               naive_attention.tovalues.weight.grad]),
                               atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fast.position_head.weight.grad, naive.position_head.weight.grad,
                               atol=1e-4, rtol=1e-4)

    tune = FinetuneConfig(image_size=32, dropout=0.0, patch_dropout=0.0)
    classifier = build_classifier(tune, PretrainConfig(**SMALL)).eval()
    naive_classifier = _naive_twin(classifier, "finetune", num_classes=10, **arch).eval()
    torch.testing.assert_close(classifier(images), naive_classifier(images),
                               atol=1e-5, rtol=1e-5)


def test_attention_splits_heads_as_the_fused_projection_orders_them():
    """qkv's output features are [q | k | v], each head-major: head h of q is features
    h * D/H .. (h+1) * D/H - 1. Check against a per-head computation by hand."""
    torch.manual_seed(0)
    d, heads = 12, 3
    block = build_pretrain_model(PretrainConfig(**SMALL)).transformer.blocks[0].attn
    attention = type(block)(d, heads)
    x = torch.randn(2, 5, d)
    out, _ = attention(x)
    wq, wk, wv = attention.qkv.weight.chunk(3)
    s = d // heads
    per_head = []
    for h in range(heads):
        rows = slice(h * s, (h + 1) * s)
        q, k, v = x @ wq[rows].T, x @ wk[rows].T, x @ wv[rows].T
        per_head.append(torch.softmax(q @ k.transpose(1, 2) / s**0.5, dim=-1) @ v)
    expected = attention.proj(torch.cat(per_head, dim=-1))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    # the head size is a size to slice and pad by (benchmarks/padded_heads.py): an integer
    assert attention.head_dim == s and isinstance(attention.head_dim, int)


def test_original_benchmark_step_trains_on_the_original_data_path():
    """The original's data path (benchmarks/naive_model.py) cuts the tokens the model would cut
    from the augmented image, and the original's step trains on them: finite logged numbers,
    changed weights."""
    from naive_model import (NaivePretrainModel, OriginalDataset, naive_patches,
                             original_pretrain_step, original_scaler)
    torch.manual_seed(0)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    dataset = OriginalDataset(images, grid=4, crop=1)
    tokens = torch.stack([dataset[i] for i in range(len(dataset))])
    assert tokens.shape == (4, 16, 147) and tokens.abs().max() <= 1
    model = NaivePretrainModel(image_size=32, grid=4, crop=1, blocks=2, heads=3, hidden_mult=2,
                               scale="original")
    augmented = torch.rand(2, 3, 32, 32) * 2 - 1
    model.eval()
    with torch.no_grad():  # images or the tokens cut from them: the same logits
        torch.testing.assert_close(model(augmented)[0], model(naive_patches(augmented, 4, 1))[0])
    model.train()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss, accuracy = original_pretrain_step(model, optimizer, original_scaler(torch.device("cpu")),
                                            tokens)
    assert math.isfinite(loss) and 0 <= accuracy <= 1
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_attention_layer_returns_weights_only_when_asked():
    attn = SelfAttention(6, 2)
    x = torch.randn(2, 4, 6)
    assert attn(x)[1] is None
    assert attn(x, return_attention=True)[1].shape == (2, 2, 4, 4)


def test_heads_that_do_not_divide_the_token_dimension_are_refused():
    with pytest.raises(ValueError, match=r"^heads=5 must divide the token dimension 147$"):
        SelfAttention(147, 5)


@pytest.mark.parametrize("attention", ["bmm", "loop"])
def test_original_attention_scale_is_the_originals_including_the_value_path(attention):
    """attention_scale="original" computes what the original's attention computes: q, k and v
    each divided by D^(1/4) (the transcription in benchmarks/naive_model.py), and differs
    from the standard scaling by more than rounding."""
    torch.manual_seed(0)
    config = PretrainConfig(**SMALL, dropout=0.0, patch_dropout=0.0, attention_scale="original")
    ours = build_pretrain_model(config)
    original = _naive_twin(ours, image_size=32, grid=4, crop=1, blocks=2, heads=3,
                           hidden_mult=2, dropout=0.0, patch_dropout=0.0, attention=attention,
                           scale="original")
    images = torch.randn(3, 3, 32, 32)
    logits, _ = ours(images)
    torch.testing.assert_close(logits, original(images)[0], atol=1e-5, rtol=1e-5)
    standard = build_pretrain_model(config.replace(attention_scale="standard"))
    standard.load_state_dict(ours.state_dict())
    assert (standard(images)[0] - logits).abs().max() > 1e-2
    attention_module = ours.transformer.blocks[0].attn
    d = ours.transformer.dim
    assert attention_module.logit_scale == pytest.approx(d ** -0.5)
    assert attention_module.value_scale == pytest.approx(d ** -0.25)


def test_original_scale_returns_the_weights_it_uses():
    """The attention weights shown in the notebooks are the ones the output is computed from,
    with either scaling."""
    torch.manual_seed(0)
    transformer = small_transformer(dropout=0.0, patch_dropout=0.0,
                                    attention_scale="original").eval()
    x = torch.randn(2, 16, transformer.dim)
    attention = transformer.blocks[0].attn
    fused, _ = attention(x)
    explicit, weights = attention(x, return_attention=True)
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3, 16))


def test_unknown_attention_scale_is_refused():
    with pytest.raises(ValueError) as error:
        SelfAttention(6, 2, "sqrt")
    assert str(error.value) == ("attention_scale='sqrt' is invalid: choose one of "
                                "('standard', 'original')")


def test_patch_dropout_at_eval_drops_patches_in_evaluation_mode_too():
    """The original's PatchDropout has no training switch; at_eval=True reproduces it, the
    default drops only while training."""
    torch.manual_seed(0)
    tokens = torch.ones(400, 16, 8)
    standard, original = PatchDropout(0.25).eval(), PatchDropout(0.25, at_eval=True).eval()
    kept, keep = standard(tokens)
    assert keep.all() and torch.equal(kept, tokens)
    kept, keep = original(tokens)
    assert 0.7 < keep.float().mean() < 0.8
    assert torch.equal(kept, tokens * keep.unsqueeze(-1))
    model = build_pretrain_model(PretrainConfig(**SMALL, patch_dropout=0.25,
                                                patch_dropout_at_eval=True)).eval()
    _, keep = model(torch.randn(50, 3, 32, 32))
    assert not keep.all()
