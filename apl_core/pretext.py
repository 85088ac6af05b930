"""The pretext tasks APL is compared with (notebook 07), each on APL's own transformer and
data, each a model with a head and one loss next to APL's (`objective.position_loss`):

    rotation   Gidaris, Singh and Komodakis 2018: every image in its four rotations (0, 90,
               180, 270 degrees), the mean over tokens classified into the four. No positional
               embedding: the answer is in each patch's content (skies up, ground down).
    jigsaw     Noroozi and Favaro 2016: the G x G tiles shuffled by one of a fixed set of
               permutations chosen to be as different as possible, the permutation's index
               classified from the tokens concatenated slot by slot. A positional embedding
               per slot: the answer is an order, so the model must know which slot holds
               which tile.
    mae        He et al. 2022: 75 % of the tokens hidden, the encoder sees the rest, a small
               decoder fills the hidden ones in from a shared mask token, and the loss is the
               squared error of the hidden tokens' pixels, each patch normalised by its own
               mean and variance. Positional embeddings in encoder and decoder, as the paper:
               the decoder cannot tell where a hidden token goes otherwise.
    mp3        Zhai et al. 2022: APL's position prediction with a share of the tokens masked
               as keys: every token still predicts its position, but only the unmasked ones
               can be attended to, so a token must be placed from less context. No
               positional embedding (it would give the answer away); fine-tuning may add one.

`build_pretext_model(config)` builds the model of config.pretext and `pretext_loss(pretext)`
gives its loss; both give APL's own for pretext='apl'. Every model keeps the transformer as
`.transformer`, so its checkpoint fine-tunes, and its features are probed, as APL's are. A
loss only calls its model (whatever draws the task's randomness is in the model's forward), so
that it runs on the model wrapped for several GPUs or compiled as on the model itself. A
loss returns (loss, top-k hits, count) as `objective.position_loss` does; MAE's is a
regression, so its hits are zero and its curve is the loss.
"""
from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import PretrainConfig, token_dim
from .model import (
    APLPretrainModel, APLTransformer, Block, TransformerConfig, build_pretrain_model,
)
from .objective import LossFn, position_loss, topk_hits

ROTATIONS = 4
JIGSAW_PERMUTATIONS = 100  # Noroozi and Favaro's smaller set (they also use 1000)
JIGSAW_CANDIDATES = 10_000  # random permutations drawn to choose from where G^2! is larger
JIGSAW_SEED = 0  # the set is part of the task: one set for every run
MASK_RATIO = 0.75  # MAE's share of hidden tokens
# MP3's share of tokens masked as keys: MAE's share; the paper treats it as a setting to tune,
# and it is not tuned here
KEY_MASK_RATIO = 0.75


def random_subset(batch: int, tokens: int, ratio: float, device=None) -> torch.Tensor:
    """(B, T) bool: round(ratio T) tokens of each image drawn uniformly without replacement
    (True), the same number in every image."""
    chosen = round(ratio * tokens)
    ranks = torch.rand(batch, tokens, device=device).argsort(dim=1).argsort(dim=1)
    return ranks < chosen


# ---------------------------------------------------------------- rotation

def rotate_all(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, N, N) -> every image in its four rotations (4B, C, N, N), rotation r (r x 90
    degrees counter-clockwise) of all images first, then r + 1; and the labels r (4B,)."""
    rotated = torch.cat([torch.rot90(images, r, dims=(2, 3)) for r in range(ROTATIONS)])
    labels = torch.arange(ROTATIONS, device=images.device).repeat_interleave(len(images))
    return rotated, labels


class RotationModel(nn.Module):
    """Transformer + a linear head on the mean over tokens: which of the four rotations."""

    def __init__(self, transformer: APLTransformer):
        super().__init__()
        self.transformer = transformer
        self.rotation_head = nn.Linear(transformer.dim, ROTATIONS)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features, _, _ = self.transformer(images)
        return self.rotation_head(features.mean(dim=1))


def rotation_loss(model: nn.Module, images: torch.Tensor, labels=None):
    """Cross-entropy of the rotation of every image in all four rotations (the paper's batch:
    four times the images, four times APL's cost per image)."""
    rotated, targets = rotate_all(images)
    logits = model(rotated)
    count = torch.full((), len(targets), dtype=torch.float32, device=images.device)
    return F.cross_entropy(logits.float(), targets), topk_hits(logits, targets), count


# ---------------------------------------------------------------- jigsaw

def hamming(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """(P, T) and (Q, T) permutations -> (P, Q): in how many slots each pair differs."""
    return (first[:, None, :] != second[None, :, :]).sum(-1)


def jigsaw_permutations(tiles: int, count: int = JIGSAW_PERMUTATIONS, seed: int = JIGSAW_SEED,
                        candidates: int = JIGSAW_CANDIDATES) -> torch.Tensor:
    """(count, tiles) permutations as different as possible, Noroozi and Favaro's greedy
    choice: from every permutation (or `candidates` random ones when tiles! is larger),
    start with a random one, then add the one whose Hamming distance to the nearest chosen
    one is largest, until `count` (at most tiles!). Seeded: the same set every time."""
    generator = torch.Generator().manual_seed(seed)
    count = min(count, math.factorial(tiles))
    if math.factorial(tiles) <= candidates:
        pool = torch.tensor(list(itertools.permutations(range(tiles))))
    else:
        pool = torch.stack([torch.randperm(tiles, generator=generator)
                            for _ in range(candidates)])
    chosen = [int(torch.randint(len(pool), (1,), generator=generator))]
    nearest = hamming(pool, pool[chosen[0]][None])[:, 0]
    while len(chosen) < count:
        pick = int(nearest.argmax())
        chosen.append(pick)
        nearest = torch.minimum(nearest, hamming(pool, pool[pick][None])[:, 0])
    return pool[chosen]


def shuffle_tiles(patches: torch.Tensor, permutations: torch.Tensor,
                  index: torch.Tensor) -> torch.Tensor:
    """(B, T, ...) patches -> slot s of image b holds tile permutations[index[b], s]."""
    order = permutations[index]
    return patches[torch.arange(len(patches), device=patches.device)[:, None], order]


class JigsawModel(nn.Module):
    """Transformer (with a positional embedding per slot) + a linear head on the tokens
    concatenated slot by slot: which permutation of the fixed set shuffled the tiles."""

    def __init__(self, transformer: APLTransformer):
        super().__init__()
        if transformer.position_embedding is None:
            raise ValueError("jigsaw's answer is an order: its transformer needs a positional "
                             "embedding (positional_embedding=True)")
        self.transformer = transformer
        self.register_buffer("permutations", jigsaw_permutations(transformer.num_tokens))
        self.permutation_head = nn.Linear(transformer.num_tokens * transformer.dim,
                                          len(self.permutations))

    def forward(self, images: torch.Tensor, index: torch.Tensor | None = None):
        """Images and each one's permutation index (B,), drawn uniformly when not given ->
        (permutation logits (B, count), index)."""
        if index is None:
            index = torch.randint(len(self.permutations), (len(images),), device=images.device)
        patches = shuffle_tiles(self.transformer.patches(images), self.permutations, index)
        features, _, _ = self.transformer.contextualize(patches)
        return self.permutation_head(features.flatten(1)), index


def jigsaw_loss(model: nn.Module, images: torch.Tensor, labels=None):
    """Cross-entropy of the permutation index, one drawn uniformly per image."""
    logits, index = model(images)
    count = torch.full((), len(images), dtype=torch.float32, device=images.device)
    return F.cross_entropy(logits.float(), index), topk_hits(logits, index), count


# ---------------------------------------------------------------- MAE

class MAEModel(nn.Module):
    """MAE on the transformer: the encoder (patch encoder, positional embedding, blocks; no
    PatchDropout: the hiding replaces it) runs on the visible tokens only, and a small decoder
    of post-LN blocks with positional embeddings of its own predicts every token's pixels.
    The decoder is trained with the encoder and left behind at fine-tuning, as in the paper."""

    def __init__(self, transformer: APLTransformer, decoder_dim: int = 128,
                 decoder_blocks: int = 2, decoder_heads: int = 4):
        super().__init__()
        if transformer.position_embedding is None:
            raise ValueError("MAE's decoder must know where each hidden token goes: its "
                             "transformer needs a positional embedding "
                             "(positional_embedding=True)")
        self.transformer = transformer
        t = transformer.num_tokens
        self.to_decoder = nn.Linear(transformer.dim, decoder_dim)
        self.mask_token = nn.Parameter(nn.init.normal_(torch.zeros(1, 1, decoder_dim), std=0.02))
        self.decoder_position = nn.Parameter(
            nn.init.trunc_normal_(torch.zeros(1, t, decoder_dim), std=0.02))
        self.decoder = nn.ModuleList(Block(decoder_dim, decoder_heads, 4, 0.0)
                                     for _ in range(decoder_blocks))
        pixels = token_dim(transformer.image_size, transformer.grid, transformer.crop)
        self.to_pixels = nn.Linear(decoder_dim, pixels)

    def forward(self, images: torch.Tensor):
        """Images -> (predicted pixels (B, T, 3 s^2), the normalised pixels they are scored
        against, the hidden tokens (B, T): MASK_RATIO of each image's, drawn uniformly)."""
        patches = self.transformer.patches(images)
        hidden = random_subset(*patches.shape[:2], MASK_RATIO, device=images.device)
        return self.predict(patches, hidden), normalized_pixels(patches.float()), hidden

    def predict(self, patches: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """Patches (B, T, 3, s, s) and the hidden tokens (B, T) bool, the same number per
        image -> predicted pixels of every token (B, T, 3 s^2)."""
        b, t = hidden.shape
        x = self.transformer.encoder(patches) + self.transformer.position_embedding
        x = x[~hidden].reshape(b, -1, x.shape[-1])
        for block in self.transformer.blocks:
            x, _ = block(x)
        visible = self.to_decoder(x)
        tokens = self.mask_token.expand(b, t, -1).clone()
        tokens[~hidden] = visible.flatten(0, 1).to(tokens.dtype)
        x = tokens + self.decoder_position
        for block in self.decoder:
            x, _ = block(x)
        return self.to_pixels(x)


def normalized_pixels(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(B, T, 3, s, s) -> (B, T, 3 s^2): each patch's pixels less their mean, over their
    standard deviation (MAE's norm_pix_loss target)."""
    pixels = patches.flatten(2)
    mean, var = pixels.mean(-1, keepdim=True), pixels.var(-1, keepdim=True)
    return (pixels - mean) / (var + eps).sqrt()


def mae_loss(model: nn.Module, images: torch.Tensor, labels=None):
    """Mean squared error of the hidden tokens' normalised pixels (MASK_RATIO of the tokens
    hidden, drawn per image); the visible tokens are not scored."""
    predicted, target, hidden = model(images)
    errors = (predicted.float() - target).square().mean(-1)
    weights = hidden.float()
    count = weights.sum()
    loss = (errors * weights).sum() / count
    return loss, torch.zeros(3, device=images.device), count


# ---------------------------------------------------------------- MP3

class MP3Model(APLPretrainModel):
    """APL's model (transformer + position head shared by all tokens) with KEY_MASK_RATIO of
    each image's tokens masked as keys in every block, drawn anew for every batch (also in
    evaluation: it is the task). Every token, masked or not, is a query and is scored."""

    def __init__(self, transformer: APLTransformer, mlp_head: bool = False):
        if transformer.position_embedding is not None:
            raise ValueError("MP3 predicts positions: a positional embedding would give them "
                             "away (positional_embedding=False)")
        super().__init__(transformer, mlp_head)

    def forward(self, images: torch.Tensor):
        """Images -> (position logits (B, T, T), keep mask (B, T)), as APLPretrainModel."""
        patches = self.transformer.patches(images)
        attendable = ~random_subset(*patches.shape[:2], KEY_MASK_RATIO, device=images.device)
        logits, keep, _ = self.position_logits(patches, attendable=attendable)
        return logits, keep


# ---------------------------------------------------------------- dispatch

def build_pretext_model(config: PretrainConfig) -> nn.Module:
    """The pretraining model of config.pretext on config's transformer."""
    if config.pretext == "apl":
        return build_pretrain_model(config)
    transformer = APLTransformer(TransformerConfig.of(config))
    if config.pretext == "mp3":
        return MP3Model(transformer, config.mlp_head)
    return {"rotation": RotationModel, "jigsaw": JigsawModel, "mae": MAEModel}[
        config.pretext](transformer)


PRETEXT_LOSSES: dict[str, LossFn] = {"apl": position_loss, "rotation": rotation_loss,
                                     "jigsaw": jigsaw_loss, "mae": mae_loss,
                                     "mp3": position_loss}


def pretext_loss(pretext: str) -> LossFn:
    """The loss of `pretext` (its model's, from build_pretext_model)."""
    return PRETEXT_LOSSES[pretext]
