"""The APL puzzle: cut an image into a G x G grid, center-crop every patch by K pixels,
flatten the patches into tokens in row-major order. Token t sits at row t // G, column t % G,
and its pretraining target is t itself. A shuffled puzzle is the tokens in a random order; a
mosaic lays the patches out on the grid in any order, as the figures and notebook 03's game
show them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .config import token_dim


def crop_offset(crop: int) -> int:
    """Top/left pixels removed by the center crop, as torchvision's CenterCrop does it:
    int(round(K / 2)) with Python's round-half-to-even (K = 1 -> 0, K = 3 -> 2)."""
    return int(round(crop / 2))


def extract_patches(images: torch.Tensor, grid: int, crop: int) -> torch.Tensor:
    """(B, C, N, N) images -> (B, G*G, C, P-K, P-K) cropped patches, row-major.

    P = N // G; when G does not divide N, the last N - G*P rows and columns are dropped.
    """
    b, c, h, w = images.shape
    if h != w:
        raise ValueError(f"images must be square, got {h} x {w}")
    patch = h // grid
    if not 0 <= crop < patch:
        raise ValueError(f"crop K={crop} must satisfy 0 <= K < N // G = {patch}")
    top = crop_offset(crop)
    size = patch - crop
    x = images[:, :, : grid * patch, : grid * patch]
    x = x.reshape(b, c, grid, patch, grid, patch).permute(0, 2, 4, 1, 3, 5)
    x = x[..., top : top + size, top : top + size]
    return x.reshape(b, grid * grid, c, size, size)


def patchify(images: torch.Tensor, grid: int, crop: int) -> torch.Tensor:
    """(B, 3, N, N) -> tokens (B, T, D), T = G^2, D = 3 (N // G - K)^2, each token flattened
    in (channel, row, column) order."""
    return extract_patches(images, grid, crop).flatten(2)


def unpatchify(tokens: torch.Tensor, grid: int, channels: int = 3, gap: int = 2,
               fill: float = 1.0) -> torch.Tensor:
    """Tokens (B, T, D) back to a G x G mosaic (B, C, H, W) with `gap` pixels of `fill`
    between the patches, for display. Token t goes to cell (t // G, t % G)."""
    b, t, d = tokens.shape
    if t != grid * grid:
        raise ValueError(f"{t} tokens do not form a {grid} x {grid} grid")
    size = int(round((d / channels) ** 0.5))
    if channels * size * size != d:
        raise ValueError(f"token dimension {d} is not {channels} x s x s")
    side = grid * size + (grid - 1) * gap
    board = tokens.new_full((b, channels, side, side), fill)
    patches = tokens.reshape(b, t, channels, size, size)
    for index in range(t):
        row, col = divmod(index, grid)
        y, x = row * (size + gap), col * (size + gap)
        board[:, :, y : y + size, x : x + size] = patches[:, index]
    return board


def random_order(grid: int, seed: int) -> torch.Tensor:
    """A seeded random permutation of the T = G^2 positions (never the identity for T > 1)."""
    g = torch.Generator().manual_seed(seed)
    t = grid * grid
    while True:
        order = torch.randperm(t, generator=g)
        if t == 1 or not torch.equal(order, torch.arange(t)):
            return order


def to_display(image) -> np.ndarray:
    """One (3, H, W) image, tensor or array, -> (H, W, 3) float array in [0, 1] for `imshow`.

    Its values: uint8 (0..255), float normalised to [-1, 1] (the training normalisation;
    recognised by negative values) or float in [0, 1]; what lies outside the range is clipped.
    """
    x = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"expected one image (3, H, W), got shape {x.shape}")
    x = x.transpose(1, 2, 0)
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    else:
        x = x.astype(np.float32)
        if x.min() < 0:
            x = (x + 1) / 2
    return np.clip(x, 0, 1)


def as_float_image(image) -> torch.Tensor:
    """(3, N, N) uint8 / [-1, 1] / [0, 1] -> (3, N, N) float tensor in [0, 1]."""
    return torch.from_numpy(to_display(image).transpose(2, 0, 1).copy())


def mosaic_cells(image_size: int, grid: int, crop: int) -> tuple[int, int]:
    """The side of a cropped patch in a mosaic and the gap between patches (thin gaps between
    small patches): cell (r, c) starts at (r, c) * (side + gap)."""
    side = image_size // grid - crop
    return side, 1 if side < 10 else 2


def mosaic(image, grid: int, crop: int, order: Sequence[int] | torch.Tensor | None = None,
           gap: int | None = None) -> np.ndarray:
    """The cropped patches of `image` laid out on the G x G grid with white gaps.

    `order[c]` is the patch shown in cell c (row-major); None keeps the original order,
    a permutation shows the shuffled puzzle. Returns an (H, W, 3) array in [0, 1].
    """
    x = as_float_image(image).unsqueeze(0)
    if gap is None:
        _, gap = mosaic_cells(x.shape[-1], grid, crop)
    tokens = patchify(x, grid, crop)  # (1, T, D)
    if order is not None:
        order = torch.as_tensor(order, dtype=torch.long)
        if sorted(order.tolist()) != list(range(grid * grid)):
            raise ValueError(f"order must be a permutation of 0..{grid * grid - 1}")
        tokens = tokens[:, order]
    return unpatchify(tokens, grid, gap=gap)[0].permute(1, 2, 0).numpy()


@dataclass(frozen=True)
class PuzzleStats:
    """The figures the original prints for each configuration."""

    image_size: int
    grid: int
    crop: int
    tokens: int
    patch_size: int
    cropped_size: int
    token_dim: int
    information_loss: float  # of one patch: 1 - (P-K)^2 / P^2
    pixels_kept: float  # of the whole image: T (P-K)^2 / N^2

    def as_row(self) -> dict:
        return dict(self.__dict__)


def puzzle_stats(image_size: int, grid: int, crop: int) -> PuzzleStats:
    patch = image_size // grid
    if not 1 <= grid <= image_size or not 0 <= crop < patch:
        raise ValueError(f"(N={image_size}, G={grid}, K={crop}) is not a valid puzzle: "
                         f"need 1 <= G <= N and 0 <= K < N // G")
    cropped = patch - crop
    return PuzzleStats(
        image_size=image_size, grid=grid, crop=crop, tokens=grid * grid, patch_size=patch,
        cropped_size=cropped, token_dim=token_dim(image_size, grid, crop),
        information_loss=1 - cropped**2 / patch**2,
        pixels_kept=grid * grid * cropped**2 / image_size**2,
    )


# the columns of a table of puzzle_stats rows, and how to show the shares
STATS_COLUMNS = ("image_size", "grid", "crop", "tokens", "patch_size", "cropped_size",
                 "token_dim", "information_loss", "pixels_kept")
STATS_FORMATS = {"information_loss": ".1%", "pixels_kept": ".1%"}


def stats_rows(image_size: int, grids, crops) -> list[dict]:
    """puzzle_stats of every valid (G, K) of `grids` x `crops` on N = image_size, as rows."""
    return [puzzle_stats(image_size, g, k).as_row() for g in grids for k in crops
            if k < image_size // g]


def position_targets(batch: int, tokens: int, device=None) -> torch.Tensor:
    """(B, T) targets: token t's position is t."""
    return torch.arange(tokens, device=device).expand(batch, tokens)
