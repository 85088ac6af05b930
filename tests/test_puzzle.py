import dataclasses

import pytest
import torch

from apl_core.puzzle import (crop_offset, extract_patches, mosaic, mosaic_cells, patchify,
                             position_targets, puzzle_stats, random_order, to_display,
                             unpatchify)


G, N = 3, 24
T = G * G


def image(seed=0):
    """A random (3, N, N) uint8 image."""
    return torch.randint(0, 256, (3, N, N), generator=torch.Generator().manual_seed(seed),
                         dtype=torch.uint8)


def numbered_image(channels: int, size: int) -> torch.Tensor:
    """Pixel value = c * 1000 + row * 100 + col, so every pixel says where it came from."""
    c = torch.arange(channels).view(channels, 1, 1) * 1000
    r = torch.arange(size).view(1, size, 1) * 100
    k = torch.arange(size).view(1, 1, size)
    return (c + r + k).unsqueeze(0).float()


def test_patchify_hand_computed_example_with_odd_crop():
    # N = 7, G = 2: P = 3, the last row and column are dropped; K = 1 crops the
    # bottom/right pixel only (torchvision's CenterCrop offset int(round(0.5)) = 0).
    tokens = patchify(numbered_image(3, 7), grid=2, crop=1)
    assert tokens.shape == (1, 4, 3 * 2 * 2)
    # token 1 = row 0, column 1: pixels rows 0-1, columns 3-4, in (channel, row, col) order
    expected = [3, 4, 103, 104, 1003, 1004, 1103, 1104, 2003, 2004, 2103, 2104]
    assert tokens[0, 1].tolist() == expected
    # token 2 = row 1, column 0: rows 3-4, columns 0-1
    assert tokens[0, 2, :4].tolist() == [300, 301, 400, 401]


def test_crop_three_takes_two_from_top_left():
    assert [crop_offset(k) for k in range(6)] == [0, 0, 1, 2, 2, 2]
    patches = extract_patches(numbered_image(1, 8), grid=1, crop=3)  # P = 8, cropped 5
    assert patches.shape == (1, 1, 1, 5, 5)
    assert patches[0, 0, 0, 0, 0].item() == 2 * 100 + 2
    assert patches[0, 0, 0, -1, -1].item() == 6 * 100 + 6


@pytest.mark.parametrize("n,g,k", [(96, 7, 1), (96, 8, 0), (48, 4, 1), (32, 3, 2), (10, 10, 0)])
def test_token_count_and_dimension(n, g, k):
    tokens = patchify(torch.rand(2, 3, n, n), g, k)
    p = n // g
    assert tokens.shape == (2, g * g, 3 * (p - k) ** 2)
    stats = puzzle_stats(n, g, k)
    assert (stats.tokens, stats.token_dim) == (g * g, 3 * (p - k) ** 2)


def test_paper_configuration_figures():
    stats = puzzle_stats(96, 7, 1)
    assert (stats.patch_size, stats.cropped_size, stats.token_dim, stats.tokens) == (13, 12, 432, 49)
    assert stats.information_loss == pytest.approx(1 - 144 / 169)
    assert stats.pixels_kept == pytest.approx(49 * 144 / 96**2)


def test_unpatchify_places_each_token_at_its_cell():
    images = torch.rand(2, 3, 12, 12)
    mosaic = unpatchify(patchify(images, grid=3, crop=0), grid=3, gap=1, fill=-1.0)
    assert mosaic.shape == (2, 3, 14, 14)
    assert torch.equal(mosaic[:, :, 5:9, 10:14], images[:, :, 4:8, 8:12])
    assert torch.all(mosaic[:, :, 4, :] == -1.0)


def test_unpatchify_separates_the_cells_with_white_lines_by_default():
    mosaic = unpatchify(patchify(torch.zeros(1, 3, 8, 8), grid=2, crop=0), grid=2)
    assert mosaic.shape == (1, 3, 10, 10)  # two 4-pixel cells and a 2-pixel line between
    assert torch.all(mosaic[:, :, 4:6, :] == 1.0) and torch.all(mosaic[:, :, :, 4:6] == 1.0)
    assert torch.all(mosaic[:, :, :4, :4] == 0.0)


def test_invalid_puzzles_are_refused():
    with pytest.raises(ValueError, match="0 <= K"):
        patchify(torch.rand(1, 3, 12, 12), grid=4, crop=3)
    with pytest.raises(ValueError, match="square, got 12 x 10"):
        patchify(torch.rand(1, 3, 12, 10), grid=2, crop=0)
    with pytest.raises(ValueError, match=r"N=12, G=13, K=0.*1 <= G <= N"):
        puzzle_stats(12, 13, 0)
    with pytest.raises(ValueError, match=r"K=3.*0 <= K < N // G"):
        puzzle_stats(12, 4, 3)  # P = 3: cropping 3 pixels would leave nothing
    assert puzzle_stats(12, 1, 11).cropped_size == 1  # the smallest grid, the largest crop
    with pytest.raises(ValueError, match="5 tokens do not form a 2 x 2 grid"):
        unpatchify(torch.zeros(1, 5, 12), grid=2)
    with pytest.raises(ValueError, match="token dimension 10 is not 3 x s x s"):
        unpatchify(torch.zeros(1, 4, 10), grid=2)


def test_puzzle_stats_row_names_the_configuration():
    row = puzzle_stats(48, 4, 1).as_row()
    assert {k: row[k] for k in ("image_size", "grid", "crop")} == {
        "image_size": 48, "grid": 4, "crop": 1}
    assert set(row) == {f.name for f in dataclasses.fields(puzzle_stats(48, 4, 1))}


def test_position_targets_are_token_indices():
    targets = position_targets(3, 5)
    assert targets.shape == (3, 5) and torch.equal(targets[2], torch.arange(5))
    # made on the device asked for (meta stands in for a GPU)
    assert position_targets(3, 5, device="meta").device.type == "meta"


def test_stats_rows_give_every_valid_grid_and_crop():
    from apl_core.puzzle import STATS_COLUMNS, stats_rows

    rows = stats_rows(32, [4, 16], [0, 1, 2])
    assert [(r["grid"], r["crop"]) for r in rows] == [(4, 0), (4, 1), (4, 2), (16, 0), (16, 1)]
    assert list(rows[0]) == list(STATS_COLUMNS)
    # N = 10, G = 3: P = 3 (the last pixel dropped), so K = 3 would leave nothing
    assert stats_rows(10, [3], [2, 3]) == [puzzle_stats(10, 3, 2).as_row()]


def test_random_order_is_seeded_and_never_identity():
    assert torch.equal(random_order(3, 5), random_order(3, 5))
    for seed in range(20):
        assert not torch.equal(random_order(2, seed), torch.arange(4))
    assert torch.equal(random_order(1, 0), torch.tensor([0]))  # one patch: its only order


def test_to_display_reads_a_channels_first_image_in_each_value_range():
    u8 = image()
    as_float = u8.float() / 255
    normalised = as_float * 2 - 1
    for x in (u8, as_float, normalised, u8.numpy(), normalised.clone().requires_grad_()):
        shown = to_display(x)
        assert shown.shape == (N, N, 3)
        assert abs(shown - u8.permute(1, 2, 0).numpy() / 255).max() < 1e-5
    # an interpolation's overshoot past either end of the range is clipped
    overshoot = torch.tensor([-1.2, -1.0, 1.0, 1.2]).view(1, 1, 4).expand(3, 4, 4)
    assert to_display(overshoot)[0, :, 0].tolist() == [0.0, 0.0, 1.0, 1.0]
    channels_last = r"expected one image \(3, H, W\), got shape \(24, 24, 3\)"
    with pytest.raises(ValueError, match=channels_last):
        to_display(u8.permute(1, 2, 0))


def test_mosaic_places_patch_order_and_rejects_non_permutations():
    img = image()
    in_order = mosaic(img, G, 0, gap=0)
    assert in_order.shape == (N, N, 3)  # G divides N, no crop, no gap: the image itself
    assert abs(in_order - to_display(img)).max() < 1e-6
    swapped = mosaic(img, G, 0, order=[1, 0] + list(range(2, T)), gap=0)
    p = N // G
    assert abs(swapped[:p, :p] - in_order[:p, p:2 * p]).max() < 1e-6
    with pytest.raises(ValueError, match=r"order must be a permutation of 0\.\.8$"):
        mosaic(img, G, 0, order=[0] * T)


@pytest.mark.parametrize("size, crop, gap", [(33, 2, 1), (33, 1, 2)])  # sides 9 and 10
def test_mosaic_cells_say_where_each_patch_of_a_mosaic_sits(size, crop, gap):
    side, cell_gap = mosaic_cells(size, G, crop)
    assert (side, cell_gap) == (size // G - crop, gap)  # thin gaps between small patches
    img = torch.zeros(3, size, size, dtype=torch.uint8)
    img[:, size // G:2 * size // G, :size // G] = 255  # the patch at row 1, column 0 white
    shown = mosaic(img, G, crop)
    assert shown.shape[0] == G * side + (G - 1) * cell_gap
    row_1 = side + cell_gap
    assert (shown[row_1:row_1 + side, :side] == 1).all()
    assert (shown[:side, :side] == 0).all() and (shown[side:row_1, :side] == 1).all()  # a gap
