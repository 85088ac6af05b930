"""You against the model: the pretext task as a game, played on held-out images.

    draw_puzzle      one image's tiles, shuffled (a seeded draw)
    score            how many tiles a placement puts in their true cell
    model_placement  the pretrained model's one-to-one placement of the same shuffled tiles
    reassemble       the image a placement makes (empty cells blank)
    PuzzleGame       the state of a game: the current puzzle, the running score of both players
    static_figure    the same puzzle as a figure, for headless runs
    GamePanel        the ipywidgets panel of notebook 03 (a dropdown per tile, check, new puzzle)

A placement lists, for each shown tile, the grid cell it is put in (row-major, -1: not placed).
The model sees exactly the tiles the student sees, in the same shuffled order: it has no
positional information, so the order tells it nothing, and its answer is the Hungarian
assignment of its position logits (`analysis.solve_puzzles`), a placement too.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from io import BytesIO

import matplotlib.pyplot as plt
import numpy as np
import torch

from .analysis import solve_puzzles
from .augment import normalize
from .puzzle import extract_patches, mosaic, mosaic_cells, random_order, to_display
from .viz import game_figure

UNPLACED = -1


@dataclass
class Puzzle:
    image: torch.Tensor  # (3, N, N) uint8, the held-out image
    index: int  # its index among the images the game draws from
    grid: int
    crop: int
    order: torch.Tensor  # (T,) order[i] = true cell of the i-th tile shown


def draw_puzzle(images: torch.Tensor, grid: int, crop: int, seed: int) -> Puzzle:
    """Puzzle number `seed`: an image drawn from `images` (uint8, (N, 3, H, W)) and its tiles
    shuffled, both from the seed, so that a game replays the same puzzles."""
    generator = torch.Generator().manual_seed(seed)
    index = int(torch.randint(len(images), (1,), generator=generator))
    return Puzzle(images[index], index, grid, crop, random_order(grid, seed))


def tiles(puzzle: Puzzle) -> torch.Tensor:
    """(T, 3, s, s) uint8: the cropped patches in the order they are shown."""
    patches = extract_patches(puzzle.image.unsqueeze(0), puzzle.grid, puzzle.crop)[0]
    return patches[puzzle.order]


def score(puzzle: Puzzle, placement) -> int:
    """How many shown tiles the placement puts in their true cell."""
    placement = torch.as_tensor(placement, dtype=torch.long)
    if placement.shape != puzzle.order.shape:
        raise ValueError(f"a placement gives a cell for each of the {len(puzzle.order)} tiles, "
                         f"got {placement.shape[0] if placement.dim() else 'none'}")
    return int((placement == puzzle.order).sum())


def model_placement(model, puzzle: Puzzle, device="cpu") -> torch.Tensor:
    """(T,) the model's cell for each shown tile: its position logits of the shuffled tiles,
    assigned one-to-one (each cell to exactly one tile). The assignment of the logits is that
    of the log-probabilities: the softmax subtracts one constant per tile."""
    shown = normalize(tiles(puzzle).unsqueeze(0).to(device))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits, _, _ = model.position_logits(shown)
    model.train(was_training)
    return solve_puzzles(logits.float().cpu())[0]


def reassemble(puzzle: Puzzle, placement) -> np.ndarray:
    """(H, W, 3) float image: each placed tile in its cell, white gaps, empty cells grey. Two
    tiles in one cell: the later one shows."""
    size, gap = mosaic_cells(puzzle.image.shape[-1], puzzle.grid, puzzle.crop)
    side = puzzle.grid * size + (puzzle.grid - 1) * gap
    board = np.ones((side, side, 3), dtype=np.float32)
    shown = tiles(puzzle)
    for cell in range(puzzle.grid ** 2):
        row, col = divmod(cell, puzzle.grid)
        board[row * (size + gap):row * (size + gap) + size,
              col * (size + gap):col * (size + gap) + size] = 0.85
    for tile, cell in enumerate(torch.as_tensor(placement).tolist()):
        if cell == UNPLACED:
            continue
        row, col = divmod(cell, puzzle.grid)
        board[row * (size + gap):row * (size + gap) + size,
              col * (size + gap):col * (size + gap) + size] = to_display(shown[tile])
    return board


@dataclass
class PuzzleGame:
    """A game against `model` on `images` (uint8): puzzle after puzzle, both players' tiles
    right and the puzzles played so far."""

    model: torch.nn.Module
    images: torch.Tensor
    grid: int
    crop: int
    device: str = "cpu"
    seed: int = 0
    student_right: int = 0
    model_right: int = 0
    played: int = 0
    puzzle: Puzzle = field(init=False)

    def __post_init__(self):
        self.puzzle = draw_puzzle(self.images, self.grid, self.crop, self.seed)

    @property
    def tiles_per_puzzle(self) -> int:
        return self.grid ** 2

    def check(self, placement) -> dict:
        """Score the student's placement of the current puzzle against the model's, and add
        both to the running score. Returns both placements and both scores."""
        student = torch.as_tensor(placement, dtype=torch.long)
        model = model_placement(self.model, self.puzzle, self.device)
        result = {"student": student, "model": model,
                  "student_right": score(self.puzzle, student),
                  "model_right": score(self.puzzle, model)}
        self.student_right += result["student_right"]
        self.model_right += result["model_right"]
        self.played += 1
        return result

    def new_puzzle(self) -> Puzzle:
        self.seed += 1
        self.puzzle = draw_puzzle(self.images, self.grid, self.crop, self.seed)
        return self.puzzle

    def standing(self) -> str:
        tiles_played = self.played * self.tiles_per_puzzle
        return (f"after {self.played} puzzle(s): you {self.student_right}/{tiles_played} tiles "
                f"right, the model {self.model_right}/{tiles_played}")


def _png(array: np.ndarray, scale: int) -> bytes:
    """An (H, W, 3) float image as PNG bytes, enlarged `scale` times (nearest neighbour)."""
    buffer = BytesIO()
    plt.imsave(buffer, np.clip(array, 0, 1).repeat(scale, 0).repeat(scale, 1), format="png")
    return buffer.getvalue()


def static_figure(game: PuzzleGame):
    """The current puzzle without widgets (a headless run): the shuffled tiles, the model's
    board and the true image."""
    puzzle = game.puzzle
    placement = model_placement(game.model, puzzle, game.device)
    shown = mosaic(puzzle.image, puzzle.grid, puzzle.crop, puzzle.order)
    return game_figure(shown, reassemble(puzzle, placement),
                       mosaic(puzzle.image, puzzle.grid, puzzle.crop),
                       score(puzzle, placement), game.tiles_per_puzzle)


def cell_name(cell: int, grid: int) -> str:
    row, col = divmod(cell, grid)
    return f"row {row + 1}, col {col + 1}"


def _pixels(side: int):
    import ipywidgets as widgets

    return widgets.Layout(width=f"{side}px", height=f"{side}px")


class GamePanel:
    """The game as ipywidgets (`.widget`): the shuffled tiles, each with a dropdown of grid
    cells; your board as you place them; "check" scores both players and shows the model's
    board beside yours; "new puzzle" draws the next one; the running score below."""

    def __init__(self, game: PuzzleGame, scale: int = 8):
        import ipywidgets as widgets

        self.game, self.scale = game, scale
        choices = [("-", UNPLACED)] + [(cell_name(c, game.grid), c)
                                       for c in range(game.tiles_per_puzzle)]
        self.dropdowns = [widgets.Dropdown(options=choices, value=UNPLACED,
                                           layout=widgets.Layout(width="118px"))
                          for _ in range(game.tiles_per_puzzle)]
        # shown at their own size (a box would stretch them): tiles and boards at one scale
        tile_side, _ = mosaic_cells(game.images.shape[-1], game.grid, game.crop)
        board_side = reassemble(game.puzzle, [UNPLACED] * game.tiles_per_puzzle).shape[0]
        self.tile_images = [widgets.Image(format="png", layout=_pixels(tile_side * scale))
                            for _ in self.dropdowns]
        self.board, self.model_board = (widgets.Image(format="png",
                                                      layout=_pixels(board_side * scale))
                                        for _ in range(2))
        self.result, self.standing = widgets.HTML(), widgets.HTML(game.standing())
        self.check = widgets.Button(description="check", button_style="primary")
        self.new = widgets.Button(description="new puzzle")
        for dropdown in self.dropdowns:
            dropdown.observe(self._show_board, names="value")
        self.check.on_click(self._on_check)
        self.new.on_click(self._on_new)
        tiles_shown = [widgets.VBox([image, dropdown])
                       for image, dropdown in zip(self.tile_images, self.dropdowns)]
        grid = game.grid
        boards = widgets.HBox([
            widgets.VBox([widgets.HTML("<b>your board</b>"), self.board]),
            widgets.VBox([widgets.HTML("<b>the model's board</b>"), self.model_board],
                         layout=widgets.Layout(margin="0 0 0 32px"))])
        self.widget = widgets.VBox([
            widgets.HTML("<b>The shuffled tiles</b>: choose a cell for each"),
            *[widgets.HBox(tiles_shown[r * grid:(r + 1) * grid]) for r in range(grid)],
            widgets.HBox([self.check, self.new]), self.result, boards, self.standing])
        self.widget.add_class("apl-game")
        self._show_puzzle()

    def placement(self) -> list[int]:
        return [dropdown.value for dropdown in self.dropdowns]

    def _image(self, array: np.ndarray) -> bytes:
        return _png(array, self.scale)

    def _show_board(self, *_):
        self.board.value = self._image(reassemble(self.game.puzzle, self.placement()))

    def _show_puzzle(self):
        for image, tile in zip(self.tile_images, tiles(self.game.puzzle)):
            image.value = self._image(to_display(tile))
        for dropdown in self.dropdowns:
            dropdown.disabled = False
            dropdown.value = UNPLACED
        empty = [UNPLACED] * len(self.dropdowns)
        self.model_board.value = self._image(reassemble(self.game.puzzle, empty))
        self.result.value = "Place the tiles, then press <b>check</b>."
        self.check.disabled = False
        self._show_board()

    def _on_check(self, _):
        outcome = self.game.check(self.placement())
        self.model_board.value = self._image(reassemble(self.game.puzzle, outcome["model"]))
        tiles_per_puzzle = self.game.tiles_per_puzzle
        self.result.value = (f"<b class='apl-game-score'>you: {outcome['student_right']}/"
                             f"{tiles_per_puzzle} right, the model: {outcome['model_right']}/"
                             f"{tiles_per_puzzle} right</b>")
        self.standing.value = self.game.standing()
        self.check.disabled = True
        for dropdown in self.dropdowns:
            dropdown.disabled = True

    def _on_new(self, _):
        self.game.new_puzzle()
        self._show_puzzle()
