"""You against the model (apl_core.game): drawing a puzzle, scoring a placement, the model's
one-to-one placement of the same shuffled tiles, the boards, the running score and the panel
driven as a student would (its buttons clicked from Python)."""
from __future__ import annotations

from io import BytesIO

import numpy as np
import pytest
import torch
from torch import nn

from apl_core import game as game_module
from apl_core.game import (
    UNPLACED, GamePanel, PuzzleGame, draw_puzzle, model_placement, reassemble, score,
    static_figure, tiles,
)
from apl_core.puzzle import mosaic, random_order

G, K, SIZE = 3, 1, 12  # 4 x 4 patches, 3 x 3 after the crop


def cell_images(n: int = 4) -> torch.Tensor:
    """(n, 3, SIZE, SIZE) uint8 images whose every pixel tells its grid cell (value 20 * cell
    + image), so a tile's content says where it belongs."""
    images = torch.empty(n, 3, SIZE, SIZE, dtype=torch.uint8)
    patch = SIZE // G
    for i in range(n):
        for cell in range(G * G):
            row, col = divmod(cell, G)
            images[i, :, row * patch:(row + 1) * patch, col * patch:(col + 1) * patch] = \
                20 * cell + i
    return images


class ContentReader(nn.Module):
    """A perfect (or, reversed, a perfectly wrong) position model: reads each tile's cell
    from its pixels, as the real model reads content; the tiles' order tells it nothing."""

    def __init__(self, reversed_answer: bool = False):
        super().__init__()
        self.reversed_answer = reversed_answer
        self.seen = []

    def position_logits(self, patches):
        self.seen.append(patches)
        pixel = (patches.flatten(2).mean(-1) + 1) * 255 / 2  # back from [-1, 1]
        cell = (pixel // 20).long()
        if self.reversed_answer:
            cell = G * G - 1 - cell
        return 10.0 * nn.functional.one_hot(cell, G * G).float(), None, []


def test_a_puzzle_is_a_seeded_draw_of_an_image_and_a_shuffle():
    images = cell_images()
    first, again = draw_puzzle(images, G, K, seed=3), draw_puzzle(images, G, K, seed=3)
    assert first.index == again.index and torch.equal(first.order, again.order)
    assert sorted(first.order.tolist()) == list(range(G * G))
    assert not torch.equal(first.order, torch.arange(G * G))
    assert torch.equal(first.order, random_order(G, 3))  # the puzzle's own shuffle
    assert torch.equal(first.image, images[first.index])
    draws = {(p.index, tuple(p.order.tolist())) for p in
             (draw_puzzle(images, G, K, seed) for seed in range(6))}
    assert len(draws) > 1


def test_the_tiles_are_the_cropped_patches_in_the_shuffled_order():
    puzzle = draw_puzzle(cell_images(), G, K, seed=0)
    shown = tiles(puzzle)
    assert shown.shape == (G * G, 3, 3, 3) and shown.dtype == torch.uint8
    for i, cell in enumerate(puzzle.order.tolist()):
        assert (shown[i] == 20 * cell + puzzle.index).all()


def test_score_counts_tiles_in_their_true_cell():
    puzzle = draw_puzzle(cell_images(), G, K, seed=1)
    assert score(puzzle, puzzle.order) == G * G
    assert score(puzzle, [UNPLACED] * (G * G)) == 0
    one_right = [UNPLACED] * (G * G)
    one_right[4] = int(puzzle.order[4])
    assert score(puzzle, one_right) == 1
    with pytest.raises(ValueError, match="a cell for each of the 9 tiles, got 2"):
        score(puzzle, [0, 1])
    with pytest.raises(ValueError, match="a cell for each of the 9 tiles, got none$"):
        score(puzzle, 4)


def test_the_model_places_the_shuffled_tiles_it_is_shown_one_to_one():
    puzzle = draw_puzzle(cell_images(), G, K, seed=2)
    reader = ContentReader()
    placement = model_placement(reader, puzzle)
    assert torch.equal(placement, puzzle.order)  # a perfect reader solves it
    seen = reader.seen[0]
    assert seen.shape == (1, G * G, 3, 3, 3)  # the tiles, normalized, in the shown order
    assert torch.allclose(seen[0], tiles(puzzle).float() * 2 / 255 - 1)
    wrong = model_placement(ContentReader(reversed_answer=True), puzzle)
    assert sorted(wrong.tolist()) == list(range(G * G))  # one-to-one
    assert score(puzzle, wrong) == 1  # only the centre cell maps onto itself


def test_model_placement_restores_the_models_mode():
    reader = ContentReader().train()
    model_placement(reader, draw_puzzle(cell_images(), G, K, seed=0))
    assert reader.training


def test_the_true_placement_reassembles_the_image_and_empty_cells_are_grey():
    puzzle = draw_puzzle(cell_images(), G, K, seed=0)
    assert np.allclose(reassemble(puzzle, puzzle.order), mosaic(puzzle.image, G, K))
    empty = reassemble(puzzle, [UNPLACED] * (G * G))
    assert empty.dtype == np.float32
    assert np.allclose(empty, mosaic(torch.full((3, SIZE, SIZE), 0.85), G, K))  # grey cells
    one = [UNPLACED] * (G * G)
    one[-1] = 0  # only the last tile shown, put in the first cell
    board = reassemble(puzzle, one)
    expected = (20 * int(puzzle.order[-1]) + puzzle.index) / 255
    assert np.allclose(board[:3, :3], expected) and np.allclose(board[-3:, -3:], 0.85)


def test_a_game_keeps_both_players_running_scores():
    game = PuzzleGame(ContentReader(), cell_images(), G, K, seed=5)
    first = game.puzzle
    one_right = [UNPLACED] * (G * G)
    one_right[2] = int(first.order[2])
    outcome = game.check(one_right)
    assert (outcome["student_right"], outcome["model_right"]) == (1, G * G)
    assert torch.equal(outcome["student"], torch.tensor(one_right))
    assert torch.equal(outcome["model"], first.order)
    game.new_puzzle()
    assert game.seed == 6
    outcome = game.check(game.puzzle.order)
    assert (game.student_right, game.model_right, game.played) == (G * G + 1, 2 * G * G, 2)
    assert game.standing() == "after 2 puzzle(s): you 10/18 tiles right, the model 18/18"


def test_the_panel_plays_a_puzzle_as_a_student_would():
    game = PuzzleGame(ContentReader(reversed_answer=True), cell_images(), G, K, seed=0)
    panel = GamePanel(game, scale=2)
    assert len(panel.dropdowns) == len(panel.tile_images) == G * G
    assert panel.dropdowns[0].options[1] == ("row 1, col 1", 0)
    empty_board = bytes(panel.board.value)
    assert empty_board.startswith(b"\x89PNG")
    for dropdown, cell in zip(panel.dropdowns, game.puzzle.order.tolist()):
        dropdown.value = cell
    assert bytes(panel.board.value) != empty_board  # the board follows the dropdowns
    panel.check.click()
    assert "you: 9/9 right, the model: 1/9 right" in panel.result.value
    assert panel.standing.value == game.standing() == \
        "after 1 puzzle(s): you 9/9 tiles right, the model 1/9"
    assert panel.check.disabled and all(d.disabled for d in panel.dropdowns)
    before = [bytes(image.value) for image in panel.tile_images]
    panel.new.click()
    assert game.seed == 1 and not panel.check.disabled
    assert all(d.value == UNPLACED and not d.disabled for d in panel.dropdowns)
    assert bytes(panel.board.value) == bytes(panel.model_board.value)  # both empty again
    assert [bytes(image.value) for image in panel.tile_images] != before


def widgets_in(widget):
    yield widget
    for child in getattr(widget, "children", ()):
        yield from widgets_in(child)


def test_the_panel_shows_tiles_and_boards_at_one_scale_with_its_labels():
    import ipywidgets

    game = PuzzleGame(ContentReader(), cell_images(), G, K, seed=0)
    panel = GamePanel(game)
    tile, board = f"{3 * 8}px", f"{(3 * 3 + 2 * 1) * 8}px"  # 3-pixel tiles, 1-pixel gaps, x 8
    assert {(i.format, i.layout.width, i.layout.height) for i in panel.tile_images} == \
        {("png", tile, tile)}
    assert {(b.format, b.layout.width, b.layout.height)
            for b in (panel.board, panel.model_board)} == {("png", board, board)}
    assert {d.layout.width for d in panel.dropdowns} == {"118px"}
    assert panel.dropdowns[0].options[0] == ("-", UNPLACED)
    assert (panel.check.description, panel.check.button_style, panel.new.description) == \
        ("check", "primary", "new puzzle")
    texts = [w.value for w in widgets_in(panel.widget) if isinstance(w, ipywidgets.HTML)]
    assert texts == ["<b>The shuffled tiles</b>: choose a cell for each",
                     "Place the tiles, then press <b>check</b>.", "<b>your board</b>",
                     "<b>the model's board</b>", game.standing()]
    rows = panel.widget.children[1:1 + G]
    assert [[box.children[0] for box in row.children] for row in rows] == \
        [panel.tile_images[r * G:(r + 1) * G] for r in range(G)]
    assert "apl-game" in panel.widget._dom_classes
    model_box = next(w for w in widgets_in(panel.widget)
                     if isinstance(w, ipywidgets.VBox) and panel.model_board in w.children)
    assert model_box.layout.margin == "0 0 0 32px"


def test_the_boards_are_the_reassembled_images_enlarged(tmp_path):
    import matplotlib.image

    game = PuzzleGame(ContentReader(), cell_images(), G, K, seed=0)
    panel = GamePanel(game, scale=2)
    for dropdown, cell in zip(panel.dropdowns, game.puzzle.order.tolist()):
        dropdown.value = cell
    shown = matplotlib.image.imread(BytesIO(bytes(panel.board.value)), format="png")
    expected = reassemble(game.puzzle, game.puzzle.order).repeat(2, 0).repeat(2, 1)
    assert shown.shape[:2] == expected.shape[:2] == (22, 22)
    assert np.allclose(shown[..., :3], expected, atol=1 / 255)


def test_the_static_figure_shows_the_puzzle_and_the_models_board(monkeypatch):
    shown = {}
    monkeypatch.setattr(game_module, "game_figure",
                        lambda *args: shown.setdefault("args", args) and "figure")
    game = PuzzleGame(ContentReader(), cell_images(), G, K, seed=0)
    assert static_figure(game) == "figure"
    shuffled, board, truth, right, total = shown["args"]
    puzzle = game.puzzle
    assert np.allclose(shuffled, mosaic(puzzle.image, G, K, puzzle.order))
    assert np.allclose(board, truth) and np.allclose(truth, mosaic(puzzle.image, G, K))
    assert (right, total) == (9, 9)
