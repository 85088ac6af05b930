"""The APL transformer: patch encoder -> PatchDropout -> post-LayerNorm blocks, with no
positional information anywhere, so the model only sees the set of tokens and is
permutation-equivariant. Two models put a head on it: `APLPretrainModel` (pretraining, one
position classifier shared by all tokens) and `APLClassifier` (fine-tuning, a class head on
the mean over tokens).

`TransformerConfig` is the transformer's architecture and regularisation, built from a
pretraining config by `TransformerConfig.of`. `build_pretrain_model`, `build_classifier` and
`build_finetune_model` build the models from the phases' configs, untrained: a pretrained
run's weights are loaded by `apl_core.train`.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18

from .baselines import SCNN, s_resnet18
from .config import ATTENTION_SCALES, FinetuneConfig, PretrainConfig, token_dim
from .puzzle import extract_patches


class FlattenEncoder(nn.Module):
    """The original's MECHANICAL encoder (the advised one): the token is the flattened patch."""

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return patches.flatten(2)


class CNNEncoder(nn.Module):
    """Small per-patch CNN: conv3x3 3->64, ReLU, Dropout2d, conv3x3 64->128, ReLU, spatial mean."""

    def __init__(self, crop: int, dropout: float = 0.0):
        super().__init__()
        padding = 1 if crop > 0 else 0  # as the original
        self.net = nn.Sequential(
            nn.Conv2d(3, 64, 3, padding=padding), nn.ReLU(), nn.Dropout2d(dropout),
            nn.Conv2d(64, 128, 3, padding=padding), nn.ReLU(),
        )

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        b, t = patches.shape[:2]
        return self.net(patches.flatten(0, 1)).mean(dim=(2, 3)).reshape(b, t, -1)


class ResNetEncoder(nn.Module):
    """A ResNet-18 trunk from scratch applied to every patch (D = 512)."""

    def __init__(self):
        super().__init__()
        self.net = resnet18(weights=None)
        self.net.fc = nn.Identity()

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        b, t = patches.shape[:2]
        return self.net(patches.flatten(0, 1)).reshape(b, t, -1)


def build_encoder(kind: str, crop: int) -> nn.Module:
    if kind == "flatten":
        return FlattenEncoder()
    if kind == "cnn":
        return CNNEncoder(crop)
    if kind == "resnet18":
        return ResNetEncoder()
    raise ValueError(f"encoder={kind!r} is invalid: choose flatten, cnn or resnet18")


class PatchDropout(nn.Module):
    """Zero each token of each image independently with probability p, while training.

    Dropped tokens stay in the sequence; the returned keep mask (B, T) tells the loss which
    tokens to score. No rescaling: a dropped token is an empty patch, not a noisy one.
    at_eval=True drops in evaluation mode too, as the original's module, which has no
    training switch, does: its test accuracies are measured with a share p of the patches
    missing.
    """

    def __init__(self, p: float = 0.1, at_eval: bool = False):
        super().__init__()
        self.p, self.at_eval = p, at_eval

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, t = tokens.shape[:2]
        if not (self.training or self.at_eval) or self.p == 0:
            return tokens, torch.ones(b, t, dtype=torch.bool, device=tokens.device)
        keep = torch.rand(b, t, device=tokens.device) >= self.p
        return tokens * keep.unsqueeze(-1).to(tokens.dtype), keep


class DropPath(nn.Module):
    """Stochastic depth: while training, drop a residual branch for a whole image with
    probability p and scale the images that keep it by 1 / (1 - p), so its expected output is
    unchanged; the identity in evaluation."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"drop_path={p} must be in [0, 1)")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = torch.rand(x.shape[0], *(1,) * (x.ndim - 1), device=x.device) >= self.p
        return x * keep.to(x.dtype) / (1 - self.p)


class SelfAttention(nn.Module):
    """Multi-head self-attention: fused q/k/v projection without bias, output projection
    with bias.

    scale="standard" divides the logits by sqrt(D/H), the head dimension, as transformers
    do. scale="original" is the original's: it divides q, k and v each by D^(1/4), the whole
    token dimension, so the logits are divided by sqrt(D) and the attention's output by
    D^(1/4) (about 4.6 for D = 432). Dividing v is the same as dividing the output, because
    the output is linear in v, so both run on the same fused kernel.
    """

    def __init__(self, dim: int, heads: int, scale: str = "standard"):
        super().__init__()
        if dim % heads:
            raise ValueError(f"heads={heads} must divide the token dimension {dim}")
        if scale not in ATTENTION_SCALES:
            raise ValueError(f"attention_scale={scale!r} is invalid: choose one of "
                             f"{ATTENTION_SCALES}")
        self.heads, self.head_dim = heads, dim // heads
        self.logit_scale = (dim if scale == "original" else self.head_dim) ** -0.5
        self.value_scale = dim ** -0.25 if scale == "original" else 1.0
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, return_attention: bool = False,
                attendable: torch.Tensor | None = None):
        """x (B, T, D) -> (output (B, T, D), weights (B, H, T, T) when asked, else None).
        attendable (B, T), bool: only these tokens serve as keys (MP3's masked keys); None:
        every token."""
        b, t, _ = x.shape
        # (B, T, 3 H s) -> q, k, v as (B, H, T, s) strided views, no copy. unbind(2) rather
        # than permute(2, 0, 3, 1, 4) + unbind(0): the same views, but then the backward pass
        # stacks the three gradients straight into the (B, T, 3, H, s) layout of the qkv
        # output, with no second copy to undo a permutation.
        q, k, v = (part.transpose(1, 2) for part in
                   self.qkv(x).view(b, t, 3, self.heads, -1).unbind(2))
        key_mask = None if attendable is None else attendable[:, None, None, :]
        if return_attention:
            # scaled_dot_product_attention hides the weights; compute them only when asked.
            logits = q @ k.transpose(-2, -1) * self.logit_scale
            if key_mask is not None:
                logits = logits.masked_fill(~key_mask, float("-inf"))
            weights = torch.softmax(logits, dim=-1)
            out = weights @ v
        else:
            weights = None
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask,
                                                 scale=self.logit_scale)
        if self.value_scale != 1.0:
            out = out * self.value_scale
        # SDPA's fused kernels (CPU flash, CUDA flash and memory-efficient) return
        # (B, H, T, s) laid out as (B, T, H, s): this transpose + reshape is a view. s is the
        # size the projections store (benchmarks/padded_heads.py pads it).
        out = self.proj(out.transpose(1, 2).reshape(b, t, -1))
        return out, weights


class Block(nn.Module):
    """Post-LayerNorm transformer block, as the original:
    x = LN1(x + Attn(x)); x = Dropout(x); x = LN2(x + FF(x)); x = Dropout(x).
    With drop_path > 0 each residual branch (Attn, FF) is dropped per image (DropPath)."""

    def __init__(self, dim: int, heads: int, hidden_mult: int, dropout: float,
                 attention_scale: str = "standard", drop_path: float = 0.0):
        super().__init__()
        self.drop_path = DropPath(drop_path)
        self.attn = SelfAttention(dim, heads, attention_scale)
        self.norm1 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(
            nn.Linear(dim, hidden_mult * dim), nn.ReLU(), nn.Linear(hidden_mult * dim, dim)
        )
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, return_attention: bool = False,
                attendable: torch.Tensor | None = None):
        attended, weights = self.attn(x, return_attention, attendable)
        x = self.dropout(self.norm1(x + self.drop_path(attended)))
        x = self.dropout(self.norm2(x + self.drop_path(self.ff(x))))
        return x, weights


@dataclass(frozen=True)
class TransformerConfig:
    """APLTransformer's architecture and regularisation; the defaults are the paper's."""

    image_size: int = 96
    grid: int = 7
    crop: int = 1
    encoder: str = "flatten"  # flatten | cnn | resnet18
    blocks: int = 4
    heads: int = 16
    hidden_mult: int = 3  # the feed-forward layer's width, in token dimensions
    attention_scale: str = "standard"  # or "original": the original's (SelfAttention)
    positional_embedding: bool = False  # a learned one per grid position, as a ViT's
    dropout: float = 0.15
    patch_dropout: float = 0.1
    patch_dropout_at_eval: bool = False  # drop in evaluation too, as the original
    drop_path: float = 0.0  # stochastic depth of the last block

    @classmethod
    def of(cls, config: PretrainConfig) -> TransformerConfig:
        """A pretraining config's transformer (pretraining has no stochastic depth)."""
        return cls(**{f.name: getattr(config, f.name) for f in fields(cls)
                      if f.name != "drop_path"})

    @property
    def dim(self) -> int:
        return token_dim(self.image_size, self.grid, self.crop, self.encoder)


class APLTransformer(nn.Module):
    """Images -> contextualised token features (B, T, D). No positional information, unless
    positional_embedding adds a learned one to each token as a ViT does (the baseline APL is
    compared with, and notebook 06's positional leak). attention_scale and
    patch_dropout_at_eval select the original's own behaviour (SelfAttention, PatchDropout).
    drop_path: stochastic depth of the last block, rising linearly from 0 at the first (DeiT's
    rule: the early blocks' features are the ones every later block builds on)."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.image_size, self.grid, self.crop = config.image_size, config.grid, config.crop
        self.encoder = build_encoder(config.encoder, config.crop)
        self.dim = config.dim
        self.position_embedding = None
        if config.positional_embedding:  # ViT's initialisation
            self.position_embedding = nn.Parameter(
                nn.init.trunc_normal_(torch.zeros(1, config.grid**2, self.dim), std=0.02))
        self.patch_dropout = PatchDropout(config.patch_dropout, config.patch_dropout_at_eval)
        self.blocks = nn.ModuleList(
            Block(self.dim, config.heads, config.hidden_mult, config.dropout,
                  config.attention_scale, rate)
            for rate in drop_path_rates(config.drop_path, config.blocks)
        )

    @property
    def num_tokens(self) -> int:
        return self.grid**2

    def patches(self, images: torch.Tensor) -> torch.Tensor:
        return extract_patches(images, self.grid, self.crop)

    def contextualize(self, patches: torch.Tensor, return_attention: bool = False,
                      attendable: torch.Tensor | None = None):
        """Cropped patches (B, T, 3, s, s), in any order (in grid order with a positional
        embedding) -> (features (B, T, D), keep mask (B, T), attention weights: one
        (B, H, T, T) per block when asked, else []). attendable (B, T): the tokens every
        block may attend to (SelfAttention); None: all."""
        x = self.encoder(patches)
        if self.position_embedding is not None:
            x = x + self.position_embedding
        x, keep = self.patch_dropout(x)
        attention = []
        for block in self.blocks:
            x, weights = block(x, return_attention, attendable)
            if return_attention:
                attention.append(weights)
        return x, keep, attention

    def forward(self, images: torch.Tensor):
        return self.contextualize(self.patches(images))


def drop_path_rates(drop_path: float, blocks: int) -> list[float]:
    """Each block's DropPath rate: 0 at the first, drop_path at the last, linear between."""
    if blocks == 1:
        return [drop_path]
    return [drop_path * i / (blocks - 1) for i in range(blocks)]


def mlp(dim: int, out: int, dropout: float = 0.1) -> nn.Sequential:
    """The original's NN_HEAD / MLP_HEAD: D -> 3D, ReLU, Dropout, -> out."""
    return nn.Sequential(nn.Linear(dim, 3 * dim), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(3 * dim, out))


class APLPretrainModel(nn.Module):
    """Transformer + a position classifier shared by all tokens ("patch-wise linear")."""

    def __init__(self, transformer: APLTransformer, mlp_head: bool = False):
        super().__init__()
        self.transformer = transformer
        t, d = transformer.num_tokens, transformer.dim
        self.position_head = mlp(d, t) if mlp_head else nn.Linear(d, t)

    def position_logits(self, patches: torch.Tensor, return_attention: bool = False,
                        attendable: torch.Tensor | None = None):
        """Patches (B, T, 3, s, s) -> (position logits (B, T, T), keep mask, attention).
        attendable (B, T): the tokens that can be attended to (MP3's masked keys); None: all."""
        features, keep, attention = self.transformer.contextualize(patches, return_attention,
                                                                   attendable)
        return self.position_head(features), keep, attention

    def forward(self, images: torch.Tensor):
        """Images -> (position logits (B, T, T), keep mask (B, T))."""
        logits, keep, _ = self.position_logits(self.transformer.patches(images))
        return logits, keep


class APLClassifier(nn.Module):
    """Transformer + global average pooling over tokens + a class head.

    frozen_transformer: head-only training. Only the head trains, and the transformer stays in
    evaluation mode (no dropout, no PatchDropout) even while the head trains, as linear probes
    are run: the head then fits the features the frozen model computes."""

    def __init__(self, transformer: APLTransformer, num_classes: int = 10,
                 mlp_head: bool = False, frozen_transformer: bool = False):
        super().__init__()
        self.transformer = transformer
        d = transformer.dim
        self.class_head = mlp(d, num_classes) if mlp_head else nn.Linear(d, num_classes)
        self.frozen_transformer = frozen_transformer
        if frozen_transformer:
            self.transformer.requires_grad_(False)

    def train(self, mode: bool = True) -> APLClassifier:
        super().train(mode)
        if self.frozen_transformer:
            self.transformer.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features, _, _ = self.transformer(images)
        return self.class_head(features.mean(dim=1))


def build_pretrain_model(config: PretrainConfig) -> APLPretrainModel:
    return APLPretrainModel(APLTransformer(TransformerConfig.of(config)), config.mlp_head)


def build_classifier(config: FinetuneConfig, architecture: PretrainConfig) -> APLClassifier:
    """The fine-tuning model on `architecture` (a pretrained run's config, or BENCHMARK's),
    with the fine-tuning dropout, PatchDropout and stochastic depth, and a positional
    embedding when the config adds one or the pretrained model has one; frozen for head-only
    training, its patch encoder frozen with freeze_encoder."""
    transformer = APLTransformer(replace(
        TransformerConfig.of(architecture), dropout=config.dropout,
        patch_dropout=config.patch_dropout, patch_dropout_at_eval=config.patch_dropout_at_eval,
        drop_path=config.drop_path,
        positional_embedding=config.positional_embedding or architecture.positional_embedding))
    classifier = APLClassifier(transformer, config.num_classes, config.mlp_head,
                               frozen_transformer=config.head_only)
    if config.freeze_encoder:  # a learned patch encoder stays as pretrained
        transformer.encoder.requires_grad_(False)
    return classifier


def build_finetune_model(config: FinetuneConfig,
                         pretrained: PretrainConfig | None = None) -> nn.Module:
    """The model a fine-tuning run trains, before any pretrained weights are loaded: a CNN
    baseline, or the APL classifier on the architecture of `pretrained` (the pretrained run's
    config) or, for BENCHMARK, of config.architecture."""
    if config.model == "s-cnn":
        return SCNN(config.image_size, config.num_classes)
    if config.model == "s-resnet":
        return s_resnet18(config.num_classes)
    if pretrained is None:
        try:
            pretrained = PretrainConfig(image_size=config.image_size, **config.architecture)
        except ValueError as error:
            raise ValueError(f"BENCHMARK builds the APL architecture from `architecture` "
                             f"(else PretrainConfig's defaults): {error}") from error
    return build_classifier(config, pretrained)
