"""Figures for the course notebooks, in one look.

Every function takes plain data (tensors, arrays, lists of metric rows), draws one figure
with a title, labelled axes and a colour bar or legend where colours carry meaning, and
returns the `matplotlib.figure.Figure` (the notebooks show it and `save` it). The course's look,
`theme()`, is a style context rather than a global setting (importing this module changes
none): each figure is made in it and, being a `ThemedFigure`, drawn in it whenever it is shown
or saved.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Iterable, Sequence

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.rcsetup import cycler
from matplotlib.ticker import MaxNLocator, NullFormatter

from .puzzle import (
    as_float_image, crop_offset, mosaic, mosaic_cells, random_order, to_display, unpatchify,
)
from .search import LONGEST, lengthens

PALETTE = "colorblind"
HEATMAP = "rocket_r"  # sequential, light = low: probabilities, counts, attention
ACCURACY_MAP = "viridis"


# ---------------------------------------------------------------- the look

# The settings of seaborn's set_theme(context="notebook", style="whitegrid", palette=PALETTE),
# plus the figure defaults.
THEME = {
    **sns.plotting_context("notebook"),
    **sns.axes_style("whitegrid"),
    "axes.prop_cycle": cycler("color", sns.color_palette(PALETTE)),
    "figure.dpi": 100, "savefig.dpi": 120, "savefig.bbox": "tight",
    "axes.titleweight": "bold", "figure.titleweight": "bold",
}
# What set_theme made of the colour code "k"; codes are not settings that a context can hold.
DARK = (0.1, 0.1, 0.1)


def theme():
    """The course's look, as a context: `with theme(): ...` draws in it."""
    return plt.rc_context(THEME)


def _themed(make_figure):
    """`make_figure` run inside `theme()`: its artists take the theme's settings."""
    @functools.wraps(make_figure)
    def themed(*args, **kwargs):
        with theme():
            return make_figure(*args, **kwargs)
    return themed


class ThemedFigure(Figure):
    """A figure that is also drawn, and measured for a tight bounding box, in `theme()`: a
    notebook shows it after the function that made it has returned, and the ticks an axis
    places, their labels' size and so the figure's extent are read from the settings then."""

    def draw(self, renderer):
        with theme():
            super().draw(renderer)

    def get_tightbbox(self, *args, **kwargs):
        with theme():
            return super().get_tightbbox(*args, **kwargs)


def _subplots(*args, **kwargs):
    """plt.subplots, making a ThemedFigure."""
    return plt.subplots(*args, FigureClass=ThemedFigure, **kwargs)


# ---------------------------------------------------------------- images and puzzles

def _image_axes(ax, title: str, size: int | None = None, unit: str = "pixels") -> None:
    ax.set_title(title)
    ax.grid(False)
    ax.set_xlabel(f"x ({unit})")
    ax.set_ylabel(f"y ({unit})")
    if size is not None:
        ax.set_xticks([0, size - 1])
        ax.set_yticks([0, size - 1])


def _draw_cuts(ax, size: int, grid: int, crop: int) -> None:
    """Grid lines where the image is cut, and the cropped-away border of every patch shaded."""
    patch = size // grid
    top = crop_offset(crop)
    for i in range(grid + 1):
        ax.axhline(i * patch - 0.5, color="white", lw=1.2)
        ax.axvline(i * patch - 0.5, color="white", lw=1.2)
    if crop:
        for r in range(grid):
            for c in range(grid):
                ax.add_patch(Rectangle((c * patch + top - 0.5, r * patch + top - 0.5),
                                       patch - crop, patch - crop, fill=False,
                                       edgecolor="yellow", lw=0.8, ls="--"))
    if grid * patch < size:  # the rows/columns that G does not divide are dropped
        ax.axhspan(grid * patch - 0.5, size - 0.5, color="black", alpha=0.5)
        ax.axvspan(grid * patch - 0.5, size - 0.5, color="black", alpha=0.5)


@_themed
def puzzle_figure(image, grid: int, crop: int, seed: int = 0, title: str | None = None) -> Figure:
    """The image with its cuts, its cropped patches in order, and the shuffled puzzle."""
    shown = to_display(image)
    size = shown.shape[0]
    order = random_order(grid, seed)
    fig, axes = _subplots(1, 3, figsize=(12, 4.4))
    axes[0].imshow(shown)
    _draw_cuts(axes[0], size, grid, crop)
    _image_axes(axes[0], f"image {size}x{size}, cut {grid}x{grid}", size)
    axes[1].imshow(mosaic(image, grid, crop))
    _image_axes(axes[1], f"patches cropped by K={crop}, in order", unit="mosaic px")
    axes[2].imshow(mosaic(image, grid, crop, order))
    _image_axes(axes[2], "shuffled: what the model is given", unit="mosaic px")
    fig.suptitle(title or f"The APL puzzle: G={grid} ({grid * grid} patches), K={crop}")
    fig.tight_layout()
    return fig


@_themed
def puzzle_grids_figure(image, grids: Iterable[int], crop: int, seed: int = 0,
                        title: str | None = None) -> Figure:
    """One column per grid size G: the patches in order (top) and shuffled (bottom)."""
    grids = list(grids)
    fig, axes = _subplots(2, len(grids), figsize=(3.2 * len(grids), 6.8), squeeze=False)
    for j, g in enumerate(grids):
        axes[0, j].imshow(mosaic(image, g, crop))
        _image_axes(axes[0, j], f"G={g}: T={g * g}, in order", unit="mosaic px")
        axes[1, j].imshow(mosaic(image, g, crop, random_order(g, seed)))
        _image_axes(axes[1, j], f"G={g}: shuffled", unit="mosaic px")
    fig.suptitle(title or f"Finer grids make harder puzzles (crop K={crop})")
    fig.tight_layout()
    return fig


@_themed
def patch_dropout_mask_figure(image, keep, grid: int, crop: int, p: float,
                              title: str | None = None) -> Figure:
    """One image's patches in order, and the same patches after PatchDropout: each dropped
    one (keep[t] False) zeroed, which is mid-grey in the normalised colours, and crossed out.
    keep: the (T,) keep mask that `model.PatchDropout` returned for this image."""
    keep = torch.as_tensor(keep, dtype=torch.bool).flatten().cpu()
    if len(keep) != grid * grid:
        raise ValueError(f"keep has {len(keep)} entries; a {grid} x {grid} grid has "
                         f"{grid * grid} patches")
    side, gap = mosaic_cells(to_display(image).shape[0], grid, crop)
    in_order = mosaic(image, grid, crop, gap=gap)
    corners = [(r * (side + gap), c * (side + gap))  # (y, x) of each dropped patch's cell
               for r, c in (divmod(t, grid) for t in torch.nonzero(~keep).flatten().tolist())]
    after = in_order.copy()
    for y, x in corners:
        after[y:y + side, x:x + side] = 0.5
    fig, axes = _subplots(1, 2, figsize=(9, 4.8))
    axes[0].imshow(in_order)
    _image_axes(axes[0], "the image's patches, in order", unit="mosaic px")
    axes[1].imshow(after)
    for y, x in corners:
        left, right, top, bottom = x - 0.5, x + side - 0.5, y - 0.5, y + side - 0.5
        axes[1].plot((left, right), (top, bottom), color="red", lw=2)
        axes[1].plot((left, right), (bottom, top), color="red", lw=2)
    _image_axes(axes[1], "what the blocks get: dropped patches zeroed", unit="mosaic px")
    fig.suptitle(title or f"PatchDropout with p = {p:g}: {int((~keep).sum())} of {len(keep)} "
                          f"patches of this image dropped (grey, crossed)")
    fig.tight_layout()
    return fig


@_themed
def image_samples_figure(images, labels=None, classes=None, n: int = 8,
                         title: str = "Samples of the dataset") -> Figure:
    """A row of images, with their class names when given."""
    n = min(n, len(images))
    fig, axes = _subplots(1, n, figsize=(1.8 * n, 2.4), squeeze=False)
    for i in range(n):
        ax = axes[0, i]
        ax.imshow(to_display(images[i]))
        ax.grid(False)
        ax.set_xticks([])
        ax.set_yticks([])
        if labels is not None:
            label = int(labels[i])
            ax.set_title(classes[label] if classes else f"class {label}", fontsize=9)
    axes[0, 0].set_ylabel(f"{images[0].shape[-1]} px")
    fig.supxlabel(f"{images[0].shape[-1]} x {images[0].shape[-1]} pixels each", fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- the puzzle's cost (notebook 01)

@_themed
def puzzle_stats_figure(stats: Sequence, title: str | None = None) -> Figure:
    """Token dimension and information loss against G, one line per crop K.
    `stats`: PuzzleStats (or their `as_row()` dicts) of one image size."""
    rows = [s if isinstance(s, dict) else s.as_row() for s in stats]
    crops = sorted({r["crop"] for r in rows})
    fig, axes = _subplots(1, 2, figsize=(11, 4))
    for k in crops:
        pts = sorted((r["grid"], r["token_dim"], 100 * r["information_loss"])
                     for r in rows if r["crop"] == k)
        g, d, loss = zip(*pts)
        axes[0].plot(g, d, marker="o", label=f"K={k}")
        axes[1].plot(g, loss, marker="o", label=f"K={k}")
    axes[0].set(title="Token dimension D = 3 (P-K)^2", xlabel="grid size G (patches per side)",
                ylabel="D (values per token, log scale)", yscale="log")
    axes[1].set(title="Information loss of a patch: 1 - (P-K)^2/P^2", ylim=(0, 100),
                xlabel="grid size G (patches per side)", ylabel="pixels cropped away (%)")
    for ax in axes:
        ax.legend(title="crop")
    fig.suptitle(title or f"What G and K cost (N = {rows[0]['image_size']} pixels)")
    fig.tight_layout()
    return fig


@_themed
def equivariance_figure(logits, logits_shuffled, order,
                        title: str = "No positional information: shuffle in, shuffle out"
                        ) -> Figure:
    """Three (T, T) position-logit matrices of one image: tokens in order, tokens shuffled
    by `order` (row i = token order[i]), and the shuffled result with its rows put back."""
    a = torch.as_tensor(logits).detach().float().cpu()
    b = torch.as_tensor(logits_shuffled).detach().float().cpu()
    order = torch.as_tensor(order, dtype=torch.long)
    back = torch.empty_like(b)
    back[order] = b
    vmin, vmax = float(a.min()), float(a.max())
    fig, axes = _subplots(1, 3, figsize=(15, 4.6))
    panels = ((a, "tokens in order", "token t (row-major)"),
              (b, "tokens shuffled", "input slot (shuffled tokens)"),
              (back, "shuffled output, rows put back", "token t (row-major)"))
    for ax, (m, name, ylabel) in zip(axes, panels):
        sns.heatmap(m.numpy(), ax=ax, cmap="vlag", vmin=vmin, vmax=vmax, square=True,
                    xticklabels=max(1, len(m) // 8), yticklabels=max(1, len(m) // 8),
                    cbar_kws={"label": "position logit"})
        ax.set(title=name, xlabel="predicted position", ylabel=ylabel)
    diff = (back - a).abs().max().item()
    fig.suptitle(f"{title} (max |left - right| = {diff:.1e})")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- training curves

def _series(rows: Sequence[dict], key: str) -> tuple[list, list]:
    xs, ys = [], []
    for row in rows:
        value = row.get(key)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            xs.append(row["epoch"])
            ys.append(value)
    return xs, ys


@_themed
def training_curves(metrics: Sequence[dict], chance: float | None = None,
                    title: str = "APL pretraining") -> Figure:
    """Loss, position top-1 accuracy (train and held-out) and learning rate per epoch."""
    fig, axes = _subplots(1, 3, figsize=(14, 4))
    colors = sns.color_palette(PALETTE)
    for key, label, color in (("train_loss", "train", colors[0]),
                              ("val_loss", "held-out", colors[1])):
        xs, ys = _series(metrics, key)
        if xs:
            axes[0].plot(xs, ys, marker="o", ms=3, label=label, color=color)
    if chance:
        axes[0].axhline(math.log(1 / chance), color="grey", ls=":", label="chance: log T")
    axes[0].set(title="Position loss", xlabel="epoch", ylabel="cross-entropy (nats)")
    axes[0].legend()
    for key, label, color, ls in (("train_top1", "train top-1", colors[0], "-"),
                                  ("val_top1", "held-out top-1", colors[1], "-"),
                                  ("val_top5", "held-out top-5", colors[1], "--")):
        xs, ys = _series(metrics, key)
        if xs:
            axes[1].plot(xs, [100 * y for y in ys], marker="o", ms=3, label=label,
                         color=color, ls=ls)
    if chance:
        axes[1].axhline(100 * chance, color="grey", ls=":", label=f"chance 1/T = {100 * chance:.1f}%")
    axes[1].set(title="Position accuracy", xlabel="epoch", ylabel="accuracy (%)", ylim=(0, 100))
    axes[1].legend()
    xs, ys = _series(metrics, "lr")
    axes[2].plot(xs, ys, marker="o", ms=3, color=colors[2], label="learning rate")
    axes[2].set(title="Learning rate schedule", xlabel="epoch", ylabel="learning rate")
    axes[2].ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    axes[2].legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- position analysis

@_themed
def confusion_heatmap(confusion, normalize: bool = True,
                      title: str = "Position confusion on held-out images") -> Figure:
    """T x T confusion (rows: true position, columns: predicted), rows normalised to shares."""
    c = torch.as_tensor(confusion, dtype=torch.float64).numpy()
    if normalize:
        c = c / np.maximum(c.sum(axis=1, keepdims=True), 1)
    return _position_heatmap(c, 1 if normalize else None,
                             "share of the row's tokens" if normalize else "tokens", title)


@_themed
def position_probabilities_figure(probabilities,
                                  title: str = "Where the model puts each patch of one image"
                                  ) -> Figure:
    """One image's (T, T) predicted position distributions (row t: the softmax of the logits
    of the patch that truly sits at t; columns: positions), with how many rows peak on t."""
    probs = torch.as_tensor(probabilities, dtype=torch.float64)
    t = len(probs)
    right = int((probs.argmax(-1) == torch.arange(t)).sum())
    return _position_heatmap(probs.numpy(), 1, "predicted probability",
                             f"{title}\n{right} of {t} patches placed right (top-1)")


def _position_heatmap(matrix: np.ndarray, vmax: float | None, colour_label: str,
                      title: str) -> Figure:
    """A T x T heatmap, rows: true position, columns: predicted, from 0 to vmax (None: the
    largest value), with a labelled colour bar."""
    t = matrix.shape[0]
    side = min(12, 4 + 0.18 * t)
    fig, ax = _subplots(figsize=(side + 1.5, side))
    step = max(1, t // 16)
    sns.heatmap(matrix, ax=ax, cmap=HEATMAP, square=True, vmin=0, vmax=vmax,
                xticklabels=step, yticklabels=step, cbar_kws={"label": colour_label})
    ax.set(title=title, xlabel="predicted position", ylabel="true position t")
    fig.tight_layout()
    return fig


@_themed
def position_accuracy_grid(per_position_accuracy, grid: int, chance: float | None = None,
                           title: str = "Top-1 accuracy of each position") -> Figure:
    """Per-position accuracy drawn where the positions sit in the image (G x G)."""
    acc = torch.as_tensor(per_position_accuracy, dtype=torch.float64).numpy().reshape(grid, grid)
    fig, ax = _subplots(figsize=(1.0 + 0.75 * grid + 1.5, 1.0 + 0.75 * grid))
    sns.heatmap(100 * acc, ax=ax, cmap=ACCURACY_MAP, vmin=0, vmax=100, square=True,
                annot=grid <= 10, fmt=".0f", annot_kws={"fontsize": 8},
                cbar_kws={"label": "top-1 accuracy (%)"})
    subtitle = f" (chance {100 * chance:.1f}%)" if chance else ""
    ax.set(title=title + subtitle, xlabel="grid column", ylabel="grid row")
    fig.tight_layout()
    return fig


def _cell_map(weights: np.ndarray, grid: int, patch: int, size: int) -> np.ndarray:
    """(T,) weights -> (size, size) map, each weight filling its patch's pixels."""
    m = np.kron(weights.reshape(grid, grid), np.ones((patch, patch)))
    out = np.full((size, size), np.nan)
    out[: grid * patch, : grid * patch] = m
    return out


@_themed
def attention_figure(image, attention: Sequence, query: int, grid: int,
                     max_heads: int = 6, title: str | None = None) -> Figure:
    """Where one query patch looks: its attention weights over the grid, drawn over the image,
    one row per block, one column per head and a last column with the mean over heads.

    `attention`: one (H, T, T) array/tensor per block for this image (a (1, H, T, T) batch
    of one is accepted too).
    """
    shown = to_display(image)
    size = shown.shape[0]
    patch = size // grid
    maps = [torch.as_tensor(a).detach().float().cpu() for a in attention]
    maps = [a[0] if a.dim() == 4 else a for a in maps]
    heads = maps[0].shape[0]
    show = list(range(min(heads, max_heads)))
    cols = len(show) + 1
    rows = len(maps)
    fig, axes = _subplots(rows, cols, figsize=(2.3 * cols + 1, 2.3 * rows + 0.6),
                             squeeze=False)
    gray = shown.mean(axis=-1)
    vmax = max(float(a[:, query].max()) for a in maps)
    qr, qc = divmod(query, grid)
    im = None
    for b, a in enumerate(maps):
        for j in range(cols):
            ax = axes[b, j]
            weights = a[show[j], query] if j < len(show) else a[:, query].mean(0)
            ax.imshow(gray, cmap="gray", vmin=0, vmax=1)
            im = ax.imshow(_cell_map(weights.numpy(), grid, patch, size), cmap="inferno",
                           alpha=0.65, vmin=0, vmax=vmax)
            ax.add_patch(Rectangle((qc * patch - 0.5, qr * patch - 0.5), patch, patch,
                                   fill=False, edgecolor="cyan", lw=2))
            ax.grid(False)
            ax.set_xticks([])
            ax.set_yticks([])
            if b == 0:
                ax.set_title(f"head {show[j]}" if j < len(show) else "mean of all heads",
                             fontsize=10)
            if j == 0:
                ax.set_ylabel(f"block {b + 1}\ny (pixels)")
            if b == rows - 1:
                ax.set_xlabel("x (pixels)")
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="attention weight")
    more = f"; first {len(show)} of {heads} heads" if heads > len(show) else ""
    fig.suptitle(title or f"Attention of query patch {query} (row {qr}, column {qc}, cyan){more}")
    return fig


@_themed
def reassembly_figure(images, assignment, grid: int, crop: int, seed: int = 0,
                      title: str | None = None) -> Figure:
    """For each image: the shuffled puzzle, the model's reassembly (token t placed at the
    position assigned to it, wrong places framed red) and the original order.

    `assignment[i, t]` is the position assigned to token t of image i (token t truly sits
    at position t). The model is permutation-equivariant, so its assignment of a shuffled
    puzzle is this one shuffled the same way: reassembling it undoes the shuffle.
    """
    assignment = torch.as_tensor(assignment, dtype=torch.long)
    n = len(images)
    size, gap = mosaic_cells(to_display(images[0]).shape[0], grid, crop)
    fig, axes = _subplots(3, n, figsize=(2.6 * n, 8.0), squeeze=False)
    for i in range(n):
        t = grid * grid
        shuffled = random_order(grid, seed + i)
        placed = torch.empty(t, dtype=torch.long)  # placed[c] = token shown in cell c
        placed[assignment[i]] = torch.arange(t)
        wrong = (assignment[i] != torch.arange(t)).sum().item()
        panels = ((mosaic(images[i], grid, crop, shuffled, gap), "shuffled input"),
                  (mosaic(images[i], grid, crop, placed, gap),
                   "solved" if wrong == 0 else f"reassembled: {wrong}/{t} wrong"),
                  (mosaic(images[i], grid, crop, gap=gap), "true order"))
        for r, (img, label) in enumerate(panels):
            ax = axes[r, i]
            ax.imshow(img)
            ax.grid(False)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(label, fontsize=10, color="C3" if r == 1 and wrong else "black")
            if r == 1 and wrong:
                for cell in range(t):
                    if placed[cell] != cell:
                        rr, cc = divmod(cell, grid)
                        ax.add_patch(Rectangle((cc * (size + gap) - 0.5, rr * (size + gap) - 0.5),
                                               size, size,
                                               fill=False, edgecolor="red", lw=1.5))
        axes[2, i].set_xlabel(f"image {i}")
    for r, label in enumerate(("shuffled", "model", "truth")):
        axes[r, 0].set_ylabel(label)
    fig.suptitle(title or "Puzzles reassembled from the model's position predictions "
                          "(Hungarian assignment)")
    fig.tight_layout()
    return fig


@_themed
def game_figure(shuffled, model_board, truth, model_right: int, tiles: int,
                title: str = "You against the model: one puzzle") -> Figure:
    """Notebook 03's game without widgets: the shuffled tiles as shown, the model's board
    (its one-to-one placement of those tiles) and the true image, as (H, W, 3) arrays."""
    fig, axes = _subplots(1, 3, figsize=(9.5, 3.8))
    panels = ((shuffled, "the shuffled tiles", "what both players see"),
              (model_board, "the model's board", f"{model_right}/{tiles} tiles right"),
              (truth, "the true image", "the answer"))
    for ax, (image, label, note) in zip(axes, panels):
        ax.imshow(image)
        ax.grid(False)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set(title=label, xlabel=note)
    axes[0].set_ylabel("held-out image")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


@_themed
def patch_dropout_figure(rows: Sequence[dict], chance: float | None = None,
                         title: str = "Position accuracy as patches are dropped") -> Figure:
    """Position accuracy against the share p of patches zeroed at test time. Rows:
    {'p', 'kept_accuracy', 'dropped_accuracy'} (analysis.accuracy_vs_patch_dropout)."""
    fig, ax = _subplots(figsize=(7, 4.4))
    labels = {"kept_accuracy": "patches kept: placed correctly",
              "dropped_accuracy": "patches dropped (zeroed): placed correctly"}
    for key, label in labels.items():
        pts = [(r["p"], 100 * r[key]) for r in rows
               if r.get(key) is not None and not math.isnan(r[key])]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=label)
    if chance:
        ax.axhline(100 * chance, color="grey", ls=":", label=f"chance 1/T = {100 * chance:.1f}%")
    ax.set(title=title, xlabel="PatchDropout p (share of patches zeroed)",
           ylabel="position top-1 accuracy (%)", ylim=(0, 100), xlim=(-0.02, 1.0))
    ax.legend(fontsize=9)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- fine-tuning

@_themed
def npc_figure(rows: Sequence[dict], metric: str = "test_top1", chance: float | None = 0.1,
               title: str = "Test accuracy against labelled images per class") -> Figure:
    """Accuracy vs NPC (log x), one line per method. Rows: {'method', 'npc', metric}; several
    rows of one (method, NPC) are seeds: the line goes through their mean, a bar spans one
    standard deviation either side, and each seed is a dot (the methods set a little apart
    so that their dots do not hide each other)."""
    fig, ax = _subplots(figsize=(9.5, 4.8))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    palette = dict(zip(methods, sns.color_palette(PALETTE, len(methods))))
    markers = "osD^vPX*"
    runs: dict[tuple[str, int], list[float]] = {}
    for r in rows:
        if r.get(metric) is not None:
            runs.setdefault((r["method"], r["npc"]), []).append(100 * r[metric])
    seeds = max(map(len, runs.values()), default=1)
    for m, method in enumerate(methods):
        npcs = sorted(n for (name, n) in runs if name == method)
        if not npcs:
            continue
        apart = 1.04 ** (m - (len(methods) - 1) / 2) if seeds > 1 else 1.0  # on the log axis
        xs = [n * apart for n in npcs]
        values = [runs[(method, n)] for n in npcs]
        ax.errorbar(xs, [float(np.mean(v)) for v in values],
                    yerr=[float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for v in values]
                    if seeds > 1 else None, capsize=3, marker=markers[m % len(markers)],
                    label=method, color=palette[method])
        if seeds > 1:
            ax.scatter([x for x, v in zip(xs, values) for _ in v],
                       [value for v in values for value in v], s=14, alpha=0.45,
                       color=palette[method], zorder=3)
    npcs = sorted({r["npc"] for r in rows})
    top = max([100 * r[metric] for r in rows if r.get(metric) is not None] + [10.0])
    ax.set_ylim(0, min(100, top + 10))  # from 0, so that noise does not look like a gap
    ax.set_xscale("log")
    ax.set_xticks(npcs)
    ax.set_xticklabels([str(n) for n in npcs])
    ax.minorticks_off()
    if chance:
        ax.axhline(100 * chance, color="grey", ls=":", label=f"chance {100 * chance:.0f}%")
    ax.set(title=title, xlabel="labelled images per class (NPC, log scale)",
           ylabel="test top-1 accuracy (%)")
    # beside the axes: inside, it hides the lines of the methods that learn least
    ax.legend(title=f"method: mean ± sd over up to {seeds} seeds,\neach a dot" if seeds > 1
              else "method", fontsize=9, title_fontsize=9, loc="upper left",
              bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig


@_themed
def convergence_figure(trials: Sequence[dict], chosen: dict,
                       methods: Sequence[str] | None = None, chance: float | None = 0.1,
                       title: str = "Is every choice inside its search?") -> Figure:
    """The converged search, one column per method. Top: validation top-1 against the
    learning rate (log scale), one line per NPC and recipe (the small-data recipe dotted),
    diverged trials crossed, the chosen rate ringed. Bottom: the length, shown by budget: the
    chosen run's best validation top-1 at 1x its steps and its longer runs' at 2x, 4x, ... up
    to search.LONGEST x, one line per NPC, each longer run filled where it won the paired test
    against the run before it, hollow where it did not (or had no per-image record to pair),
    crossed where it diverged, the adopted length ringed. Trials: apl_core.search rows; chosen:
    search.choose's result; methods: the columns' order (default: as the trials first name
    them)."""
    searched = dict.fromkeys(t["method"] for t in trials)
    methods = [m for m in methods if m in searched] if methods else list(searched)
    npcs = sorted({t["npc"] for t in trials})
    palette = dict(zip(npcs, sns.color_palette(PALETTE, len(npcs))))
    styles = {"base": "-", "small-data": ":"}
    multiples = [2 ** k for k in range(int(math.log2(LONGEST)) + 1)]
    fig, axes = _subplots(2, len(methods), figsize=(3.3 * len(methods) + 1.5, 6.6),
                          sharey=True, squeeze=False)
    for column, method in enumerate(methods):
        rates_ax, budget_ax = axes[0][column], axes[1][column]
        for npc in npcs:
            searched_here = [t for t in trials if (t["method"], t["npc"]) == (method, npc)
                             and lengthens(t) is None]
            if not searched_here:
                continue
            for recipe, style in styles.items():
                runs = sorted((t["lr"], 100 * t["val_top1"]) for t in searched_here
                              if t.get("recipe", "base") == recipe)
                if runs:
                    rates_ax.plot(*zip(*runs), marker="o", ms=4, color=palette[npc], ls=style,
                                  label=f"NPC {npc}" if recipe == "base" else None)
            for t in searched_here:
                if t.get("diverged"):
                    rates_ax.plot(t["lr"], 100 * t["val_top1"], "x", ms=8, color=palette[npc])
            pick = chosen[(method, npc)]
            rates_ax.plot(pick["lr"], 100 * pick["val_top1"], "o", ms=11, mfc="none",
                          mec=palette[npc], mew=1.5)
            lengths = [(1, 100 * pick["val_top1"])] + [(run["multiple"], 100 * run["val_top1"])
                                                       for run in pick["longer"]]
            budget_ax.plot(*zip(*lengths), color=palette[npc], marker="o", ms=5,
                           label=f"NPC {npc}")
            for run in pick["longer"]:
                point = (run["multiple"], 100 * run["val_top1"])
                if run.get("diverged"):
                    budget_ax.plot(*point, "x", ms=9, color=palette[npc])
                elif not run["better"]:
                    budget_ax.plot(*point, "o", ms=5, mfc="white", mec=palette[npc])
            adopted = pick["adopted"]
            budget_ax.plot(adopted["multiple"], 100 * adopted["val_top1"], "o", ms=11,
                           mfc="none", mec=palette[npc], mew=1.5)
        rates_ax.set_xscale("log")
        rates_ax.xaxis.set_minor_formatter(NullFormatter())  # labels of a narrow range collide
        rates_ax.set(title=method, xlabel="learning rate (log scale)",
                     ylabel="best validation top-1 (%)")
        budget_ax.set_xscale("log", base=2)
        budget_ax.set_xticks(multiples)
        budget_ax.set_xticklabels([f"{m}x" for m in multiples])
        budget_ax.minorticks_off()
        budget_ax.set(xlim=(0.8, LONGEST * 1.25), xlabel="steps, times the searched run's",
                      ylabel="best validation top-1 (%)")
        for ax in (rates_ax, budget_ax):
            if chance:
                ax.axhline(100 * chance, color="grey", ls=":")
    handles, labels = axes[0][0].get_legend_handles_labels()
    handles += [plt.Line2D([], [], color=DARK, marker="o", ms=11, mfc="none", ls="none"),
                plt.Line2D([], [], color=DARK, ls=":"),
                plt.Line2D([], [], color=DARK, marker="x", ms=8, ls="none"),
                plt.Line2D([], [], color=DARK, marker="o", ms=5, ls="none"),
                plt.Line2D([], [], color=DARK, marker="o", ms=5, mfc="white", ls="none")]
    labels += ["chosen rate, adopted length", "small-data recipe", "diverged",
               "longer run: won the paired test", "longer run: did not (or untested)"]
    fig.suptitle(title)
    fig.tight_layout()
    # outside the axes, to their right: a saved or shown figure's tight box takes it in
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=9)
    return fig


# ---------------------------------------------------------------- the controls (notebook 06)

@_themed
def controls_figure(rows: Sequence[dict], title: str = "What each control does to the "
                    "puzzle and to the features") -> Figure:
    """Notebook 06's summary, one bar per control: left, the pretext task (held-out position
    top-1, its chance level ticked); right, the frozen features (kNN and linear-probe top-1),
    with the random-init features as dashed floors. Rows from several seeds (a 'seed' key)
    give the mean and a standard-deviation bar."""
    import pandas as pd

    data = pd.DataFrame(rows)
    floor = data[data["position_top1"].isna()]
    trained = data[data["position_top1"].notna()]
    order = list(dict.fromkeys(trained["control"]))
    fig, (left, right) = _subplots(1, 2, figsize=(12, 0.5 * len(order) + 2.6), sharey=True,
                                      gridspec_kw={"width_ratios": (1, 1.4)})
    pretext = trained.assign(value=100 * trained["position_top1"])
    sns.barplot(pretext, x="value", y="control", order=order, ax=left, errorbar="sd",
                color=sns.color_palette(PALETTE)[0])
    chance = pretext.groupby("control", sort=False)["chance"].first().reindex(order)
    left.scatter(100 * chance.to_numpy(), range(len(order)), marker="|", s=300, color=DARK,
                 zorder=3, label="chance (1 / T)")
    left.set(title="pretext: where does each patch go?", xlabel="held-out position top-1 (%)",
             ylabel="control", xlim=(0, 100))
    left.legend(loc="lower right", fontsize=9)
    features = trained.melt(id_vars=["control"], value_vars=["knn_top1", "probe_top1"],
                            var_name="measure", value_name="top1")
    features["top1"] *= 100
    features["measure"] = features["measure"].map({"knn_top1": "kNN (k = 20)",
                                                   "probe_top1": "linear probe"})
    sns.barplot(features, x="top1", y="control", hue="measure", order=order, ax=right,
                errorbar="sd", palette=PALETTE)
    colors = sns.color_palette(PALETTE)
    for measure, color in (("knn_top1", colors[0]), ("probe_top1", colors[1])):
        if len(floor):
            right.axvline(100 * floor[measure].mean(), color=color, ls="--", lw=1.2)
    right.plot([], [], color="grey", ls="--", label="random init (same measure)")
    right.set(title="features: what do they know about the class?",
              xlabel="test top-1 on the labelled images (%)", ylabel="control")
    right.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


@_themed
def budget_curve_figure(rows: Sequence[dict], floor: dict | None = None,
                        title: str = "The frozen features along pretraining") -> Figure:
    """kNN and linear-probe top-1 against the pretraining epoch, one colour per control, a
    thin line per seed and their mean thick; the random-init floor dotted. Rows: controls'
    rows with 'control', 'seed' and 'budget_curve' ([{'epoch', 'knn_top1', 'probe_top1'}]);
    floor: {'knn_top1', 'probe_top1'} means of the random-init rows."""
    curves: dict[str, list[list[dict]]] = {}
    for row in rows:
        if row.get("budget_curve"):
            curves.setdefault(row["control"], []).append(row["budget_curve"])
    palette = dict(zip(curves, sns.color_palette(PALETTE, len(curves))))
    fig, axes = _subplots(1, 2, figsize=(11, 4.3), sharey=True)
    for ax, (key, label) in zip(axes, (("knn_top1", "kNN"), ("probe_top1", "linear probe"))):
        for control, seeds in curves.items():
            for curve in seeds:
                ax.plot([p["epoch"] for p in curve], [100 * p[key] for p in curve],
                        color=palette[control], lw=0.8, alpha=0.5)
            epochs = sorted({p["epoch"] for curve in seeds for p in curve})
            means = [100 * np.mean([p[key] for curve in seeds for p in curve
                                    if p["epoch"] == e]) for e in epochs]
            ax.plot(epochs, means, marker="o", ms=4, lw=2, color=palette[control],
                    label=f"{control} ({len(seeds)} seeds)")
        if floor:
            ax.axhline(100 * floor[key], color="grey", ls=":", label="random init")
        ax.set(title=label, xlabel="pretraining epoch", ylabel=f"{label} test top-1 (%)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].legend(fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


@_themed
def pretext_curves_figure(rows: Sequence[dict],
                          title: str = "Each task's own question, along pretraining") -> Figure:
    """One panel per task: its held-out pretext loss against the pretraining epoch, a thin
    line per seed and their mean thick, each task on its own scale (cross-entropy over its
    classes, MAE's a mean squared error on normalised pixels); the panel's title gives the
    held-out top-1 after the last epoch, mean over seeds, where the task has one. Rows:
    pretext_study.curve_rows ('task', 'seed', 'epoch', 'pretext_loss', 'pretext_top1')."""
    tasks = list(dict.fromkeys(row["task"] for row in rows))
    palette = dict(zip(tasks, sns.color_palette(PALETTE, len(tasks))))
    fig, axes = _subplots(1, len(tasks), figsize=(3.2 * len(tasks), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        mine = [row for row in rows if row["task"] == task]
        seeds = sorted({row["seed"] for row in mine})
        for seed in seeds:
            curve = [row for row in mine if row["seed"] == seed]
            ax.plot([r["epoch"] for r in curve], [r["pretext_loss"] for r in curve],
                    color=palette[task], lw=0.8, alpha=0.5)
        epochs = sorted({row["epoch"] for row in mine})
        ax.plot(epochs, [np.mean([r["pretext_loss"] for r in mine if r["epoch"] == e])
                         for e in epochs], marker="o", ms=3, lw=2, color=palette[task])
        last = [r["pretext_top1"] for r in mine if r["epoch"] == epochs[-1]]
        scored = (f"top-1 {100 * np.mean(last):.1f} % at epoch {epochs[-1]}"
                  if all(v for v in last) else "a regression: no top-1")
        ax.set(title=f"{task} ({len(seeds)} seeds)\n{scored}", xlabel="pretraining epoch",
               ylabel="held-out pretext loss")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title)
    fig.tight_layout()
    return fig


@_themed
def position_curves_figure(rows: Sequence[dict], controls: Sequence[str],
                           title: str = "How fast the puzzle is solved") -> Figure:
    """Held-out position top-1 after every epoch of pretraining, one line per control (rows
    with 'control', 'position_curve' and 'chance'), with each one's chance level dotted."""
    fig, ax = _subplots(figsize=(7.5, 4.5))
    colors = sns.color_palette(PALETTE, len(controls))
    for control, color in zip(controls, colors):
        row = next(r for r in rows if r["control"] == control)
        epochs = range(1, len(row["position_curve"]) + 1)
        ax.plot(epochs, [100 * v for v in row["position_curve"]], marker="o", color=color,
                label=control)
        ax.axhline(100 * row["chance"], color=color, ls=":", lw=1)
    ax.plot([], [], color="grey", ls=":", label="chance (1 / T)")
    ax.set(title=title, xlabel="epoch", ylabel="held-out position top-1 (%)", ylim=(0, 102))
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=9)
    fig.tight_layout()
    return fig


@_themed
def attention_distance_figure(distances: dict[str, np.ndarray], uniform: float | None = None,
                              title: str = "How far each head looks") -> Figure:
    """Mean attention distance (in patches) of every head, one dot per head, against the
    block, one colour per model (distances: name -> (blocks, heads) array), as in the ViT
    paper's figure; the line joins each block's mean over heads. uniform: the distance of a
    head that attends to every patch alike."""
    fig, ax = _subplots(figsize=(7.5, 4.8))
    colors = sns.color_palette(PALETTE, len(distances))
    width = 0.6 / max(1, len(distances))
    for m, ((name, distance), color) in enumerate(zip(distances.items(), colors)):
        distance = np.asarray(distance)
        offset = (m - (len(distances) - 1) / 2) * width
        blocks = np.arange(1, len(distance) + 1) + offset
        for block, heads in zip(blocks, distance):
            ax.scatter(np.full(len(heads), block), heads, color=color, s=22, alpha=0.8)
        ax.plot(blocks, distance.mean(axis=1), color=color, label=name)
    if uniform is not None:
        ax.axhline(uniform, color="grey", ls=":", label="attending to all patches alike")
    ax.set_xticks(range(1, max(len(np.asarray(d)) for d in distances.values()) + 1))
    ax.set(title=title, xlabel="block", ylabel="mean attention distance (patches)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=9, title="model (dots: heads)")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- the pretext tasks (notebook 07)

@_themed
def pretext_tasks_figure(image, grid: int, crop: int, permutation, hidden, attendable,
                         reconstruction=None, title: str | None = None) -> Figure:
    """What each pretext task of apl_core.pretext asks of one image: the image in its four
    rotations (rotation: which one?), its patches shuffled by one permutation of jigsaw's set
    (which one?), the patches MAE hides greyed out (what is under them?), the patches MP3
    masks as keys faded (where does each patch go, seeing only the others?) and, given
    `reconstruction` ((T, 3 s^2) tokens in the images' [-1, 1] colours), a trained MAE's
    answer. permutation: (T,) the tile each cell shows; hidden, attendable: (T,) bool."""
    x = as_float_image(image)
    side, gap = mosaic_cells(x.shape[-1], grid, crop)
    in_order = mosaic(x, grid, crop, gap=gap)

    def cells(chosen) -> list[tuple[slice, slice]]:
        return [(slice(r * (side + gap), r * (side + gap) + side),
                 slice(c * (side + gap), c * (side + gap) + side))
                for r, c in (divmod(t, grid) for t in
                             torch.nonzero(torch.as_tensor(chosen)).flatten().tolist())]

    masked, faded = in_order.copy(), in_order.copy()
    for cell in cells(hidden):
        masked[cell] = 0.5
    for cell in cells(~torch.as_tensor(attendable)):
        faded[cell] = 0.25 * faded[cell] + 0.75
    panels = [(torch.rot90(x, r, dims=(1, 2)).permute(1, 2, 0).numpy(), f"rotation {90 * r}°")
              for r in range(4)]
    panels += [(mosaic(x, grid, crop, order=permutation, gap=gap), "jigsaw: which order?"),
               (masked, f"MAE: {int(torch.as_tensor(hidden).sum())} patches hidden"),
               (faded, "MP3: faded ones unseen")]
    if reconstruction is not None:
        tokens = torch.as_tensor(reconstruction).detach().float().cpu()
        filled = unpatchify(((tokens[None] + 1) / 2).clamp(0, 1), grid, gap=gap)
        panels.append((filled[0].permute(1, 2, 0).numpy(), "MAE's answer"))
    fig, axes = _subplots(1, len(panels), figsize=(2.2 * len(panels), 2.9))
    for ax, (picture, name) in zip(axes, panels):
        ax.imshow(picture)
        ax.set_title(name, fontsize=9)
        ax.grid(False)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title or "What each pretext task asks of one image")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- files

@_themed
def save(fig: Figure, output_dir, name: str) -> Path:
    """Write `fig` as output_dir/name.png and return the path."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.png"
    fig.savefig(path)
    return path


__all__ = [
    "theme", "puzzle_figure", "puzzle_grids_figure", "patch_dropout_mask_figure",
    "image_samples_figure", "puzzle_stats_figure", "equivariance_figure", "training_curves",
    "confusion_heatmap", "position_probabilities_figure", "position_accuracy_grid",
    "attention_figure", "reassembly_figure", "game_figure", "patch_dropout_figure", "npc_figure",
    "convergence_figure", "controls_figure", "budget_curve_figure", "pretext_curves_figure",
    "position_curves_figure",
    "attention_distance_figure", "save",
]
