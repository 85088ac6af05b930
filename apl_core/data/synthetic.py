"""The embedded offline dataset: outdoor scenes with one object each, drawn procedurally with
torch, a whole batch at once (see `synthetic_split` for what the images show and why)."""
from __future__ import annotations

import math

import torch

from .imageset import ImageSet

SYNTHETIC_CLASSES = [
    "disk", "square", "triangle", "ring", "cross",
    "star", "house", "tree", "crescent", "striped disk",
]
SYNTHETIC_SIZES = {"unlabeled": 100_000, "train": 5_000, "test": 8_000}
OBJECT_RADIUS = (0.30, 0.45)  # range of the object's radius, in image widths
_SPLIT_IDS = {"unlabeled": 1, "train": 2, "test": 3}
_MASK32 = 0xFFFFFFFF


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (int64 tensors holding values < 2^32, products stay < 2^63)."""
    x = x & _MASK32
    x = ((x >> 16) ^ x) * 0x45D9F3B & _MASK32
    x = ((x >> 16) ^ x) * 0x45D9F3B & _MASK32
    return (x >> 16) ^ x


class _Draws:
    """Uniform random numbers that depend only on (seed, split, image index, draw number),
    so image i is the same whether it is generated alone or in any batch.

    Every image of a seed has its own key: (index, split) -> 4 index + split id is one-to-one,
    and so are the XOR with the seed's hash and `_hash32` (a bijection of 32-bit integers). No
    pretraining image can therefore share its scene with a test image, as it could with a
    symmetric mix such as hash(split) ^ hash(index)."""

    def __init__(self, seed: int, split: str, index: torch.Tensor):
        if len(index) and int(index.max()) >= 1 << 30:
            raise ValueError(f"image index {int(index.max())} is too large: indices < 2^30")
        slot = torch.as_tensor(index, dtype=torch.int64) * 4 + _SPLIT_IDS[split]
        self.keys = _hash32(slot ^ _hash32(torch.tensor(seed)))
        self.count = 0

    def uniform(self, low: float = 0.0, high: float = 1.0, *shape: int) -> torch.Tensor:
        """(B, *shape) uniform in [low, high)."""
        n = math.prod(shape)
        counter = torch.arange(self.count, self.count + n) * 0x9E3779B1
        self.count += n
        bits = _hash32(self.keys[:, None] ^ _hash32(counter)[None, :])
        values = bits.float().div_(2.0**32).mul_(high - low).add_(low)
        return values.reshape(len(self.keys), *shape)


def _soft(distance: torch.Tensor, pixel: torch.Tensor | float) -> torch.Tensor:
    """Coverage of a shape from its signed distance (negative inside): an antialiased edge
    one pixel wide."""
    return (0.5 - distance / pixel).clamp_(0, 1)


def _box(u: torch.Tensor, v: torch.Tensor, cu: float, cv: float, hu: float, hv: float):
    return torch.maximum((u - cu).abs() - hu, (v - cv).abs() - hv)


def _circle(u: torch.Tensor, v: torch.Tensor, cu: float, cv: float, radius: float):
    return torch.hypot(u - cu, v - cv) - radius


def _triangle_up(u: torch.Tensor, v: torch.Tensor, apex: float, base: float, half_width: float):
    """Isosceles triangle, apex (0, apex) above the base at height `base` (v points up)."""
    height = apex - base
    norm = math.hypot(height, half_width)
    side = (u.abs() * height + (v - apex) * half_width) / norm
    return torch.maximum(side, base - v)


def _shape_distance(label: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Signed distance of class `label`'s shape in object coordinates (u right, v up, the
    shape fits the unit disk). Union = min, intersection = max, cut = max(a, -b)."""
    if label in (0, 9):  # disk, striped disk (the stripes are painted later)
        return _circle(u, v, 0, 0, 0.9)
    if label == 1:
        return _box(u, v, 0, 0, 0.68, 0.68)
    if label == 2:
        return _triangle_up(u, v, 0.9, -0.7, 0.85)
    if label == 3:
        return (torch.hypot(u, v) - 0.68).abs() - 0.22
    if label == 4:
        return torch.minimum(_box(u, v, 0, 0, 0.25, 0.85), _box(u, v, 0, 0, 0.85, 0.25))
    if label == 5:  # five-pointed star, one point up
        angle = torch.atan2(u, v)
        return torch.hypot(u, v) - (0.6 + 0.32 * torch.cos(5 * angle))
    if label == 6:  # house: walls, a roof on top, a door cut out at the bottom
        walls = _box(u, v, 0, -0.4, 0.62, 0.5)
        roof = _triangle_up(u, v, 0.9, 0.1, 0.85)
        door = _box(u, v, 0.2, -0.65, 0.14, 0.26)
        return torch.maximum(torch.minimum(walls, roof), -door)
    if label == 7:  # tree: a trunk under a round crown
        return torch.minimum(_box(u, v, 0, -0.55, 0.13, 0.4), _circle(u, v, 0, 0.25, 0.6))
    if label == 8:
        return torch.maximum(_circle(u, v, 0, 0, 0.9), -_circle(u, v, 0.42, 0.18, 0.72))
    raise ValueError(f"unknown synthetic class {label}")


def _ellipse(x: torch.Tensor, y: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor,
             rx: torch.Tensor, ry: torch.Tensor, pixel: float) -> torch.Tensor:
    """Coverage (B, S, S) of axis-aligned ellipses, one per image ((B,) parameters).
    The x and y terms are computed on one row and one column and only then broadcast."""
    cx, cy, rx, ry = (t[:, None, None] for t in (cx, cy, rx, ry))
    q = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2
    return _soft((q.sqrt_() - 1) * torch.minimum(rx, ry), pixel)


def synthetic_images(seed: int, split: str, index: torch.Tensor, image_size: int) -> torch.Tensor:
    """Render images `index` of a synthetic split: uint8 (len(index), 3, S, S).

    Every random choice comes from `_Draws`, a hash of (seed, split, index, draw number), so
    an image never depends on which other images are rendered with it.
    """
    n, size = len(index), image_size
    labels = index % len(SYNTHETIC_CLASSES)
    draw = _Draws(seed, split, index)
    pixel = 1.0 / size
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    y = coords.view(1, size, 1)  # 0 at the top, 1 at the bottom
    x = coords.view(1, 1, size)

    def col(t: torch.Tensor) -> torch.Tensor:  # (B,) -> (B, 1, 1), to broadcast over pixels
        return t.view(n, 1, 1)

    def rgb(t: torch.Tensor) -> torch.Tensor:  # (B, 3) -> (B, 3, 1, 1)
        return t.view(n, 3, 1, 1)

    # Scene layout: a tilted horizon, the sun somewhere in the sky, an object on the ground.
    horizon_y = draw.uniform(0.35, 0.6)
    horizon = col(horizon_y) + col(draw.uniform(-0.1, 0.1)) * (x - 0.5)  # (B, S, S)
    sun_x, sun_y = draw.uniform(0.05, 0.95), horizon_y * draw.uniform(0.15, 0.7)
    radius = draw.uniform(*OBJECT_RADIUS)
    obj_x = 0.5 + (0.5 - radius) * draw.uniform(-0.8, 0.8)  # the object stays in the frame
    obj_y = horizon_y + (1 - radius - horizon_y) * draw.uniform(0.3, 1.0)
    angle = draw.uniform(-0.45, 0.45)  # radians: objects stay roughly upright
    sky_top, sky_low, ground_far, ground_near, obj_colour, stripe_colour, stone_colour = (
        draw.uniform(0, 1, 3) for _ in range(7)
    )
    sky_low = 0.5 * sky_low + 0.5  # pale near the horizon

    # Sky: a vertical gradient from the top to the horizon, brighter around the sun.
    t = (y / col(horizon_y)).clamp(0, 1)[:, None]  # (B, 1, S, 1)
    sky = rgb(sky_top) + (rgb(sky_low) - rgb(sky_top)) * t
    sun_distance = torch.hypot(x - col(sun_x), y - col(sun_y))
    sky = sky + (0.35 * torch.exp(-((sun_distance / 0.12) ** 2)))[:, None]

    # Ground: far colour at the horizon to near colour at the bottom, with furrows that get
    # denser towards the horizon (perspective).
    depth = ((y - horizon) / (1 - horizon)).clamp_(0, 1)  # 0 at the horizon, 1 at the bottom
    furrows = 1 + 0.12 * depth * torch.sin(3.0 / (depth + 0.08) + col(draw.uniform(0, 6.3)))
    ground = rgb(ground_far) + (rgb(ground_near) - rgb(ground_far)) * depth[:, None]
    ground = ground * furrows[:, None]

    # The object is lit from the sun and casts a shadow on the ground away from it.
    light = torch.stack((sun_x - obj_x, sun_y - obj_y), dim=1)
    light = light / light.norm(dim=1, keepdim=True)
    shadow = _ellipse(x, y, obj_x - light[:, 0] * radius * 0.9, obj_y + 0.85 * radius,
                      1.2 * radius, 0.22 * radius, pixel)
    ground = ground * (1 - 0.45 * shadow)[:, None]
    land = _soft(horizon - y, pixel)[:, None]  # 1 below the horizon
    image = torch.lerp(sky, ground, land)

    # Clutter: stones on the ground, larger towards the viewer; clouds in the sky.
    stones = torch.zeros(n, size, size)
    for _ in range(4):
        stone_depth = draw.uniform(0.05, 1)
        stone_size = 0.008 + 0.035 * stone_depth
        stone_y = horizon_y + stone_depth * (1 - horizon_y)
        stones = torch.maximum(stones, _ellipse(x, y, draw.uniform(0, 1), stone_y,
                                                1.6 * stone_size, stone_size, pixel))
    image = torch.lerp(image, rgb(stone_colour) * 0.6, stones[:, None])

    # Object coordinates: centred on the object, rotated, scaled to the unit disk, v up.
    dx, dy = (x - col(obj_x)) / col(radius), (col(obj_y) - y) / col(radius)
    cos, sin = col(torch.cos(angle)), col(torch.sin(angle))
    u, v = cos * dx + sin * dy, cos * dy - sin * dx
    distance = torch.empty(n, size, size)
    for label in range(len(SYNTHETIC_CLASSES)):
        rows = (labels == label).nonzero().squeeze(1)
        if len(rows):
            distance[rows] = _shape_distance(label, u[rows], v[rows])
    coverage = _soft(distance * col(radius), pixel)[:, None]
    shade = (0.8 + 0.3 * (dx * col(light[:, 0]) - dy * col(light[:, 1])).clamp_(-1, 1))[:, None]
    paint = rgb(obj_colour) * shade
    striped = (labels == 9).nonzero().squeeze(1)
    if len(striped):
        stripes = (torch.sin(7 * u[striped]) > 0)[:, None]
        stripe_paint = rgb(stripe_colour)[striped] * shade[striped]
        paint[striped] = torch.where(stripes, stripe_paint, paint[striped])
    image = torch.lerp(image, paint, coverage)

    clouds = torch.zeros(n, size, size)
    for _ in range(3):
        cloud = _ellipse(x, y, draw.uniform(0, 1), horizon_y * draw.uniform(0.1, 0.8),
                         draw.uniform(0.06, 0.16), draw.uniform(0.02, 0.05), pixel)
        clouds = torch.maximum(clouds, cloud)
    sun = _soft(sun_distance - 0.05, pixel)
    image = torch.lerp(image, torch.ones(()), torch.maximum(0.6 * clouds, sun)[:, None])

    image = image.add_(_pixel_noise(draw, size, amplitude=0.04)[:, None])
    return image.clamp_(0, 1).mul_(255).round_().to(torch.uint8)


def _pixel_noise(draw: "_Draws", size: int, amplitude: float) -> torch.Tensor:
    """(B, S, S) uniform noise in [-amplitude, amplitude]: a window, at a per-image random
    offset, into one fixed noise sequence (much cheaper than hashing every pixel)."""
    bank_size = 1 << 16
    bank = _hash32(torch.arange(bank_size + size * size) * 0x9E3779B1).float()
    bank = bank.div_(2.0**31).sub_(1).mul_(amplitude)
    offsets = (draw.uniform(0, 1) * bank_size).long()
    windows = bank.unfold(0, size * size, 1)[offsets]
    return windows.view(-1, size, size)


def synthetic_split(split: str, seed: int = 0, image_size: int = 96, limit: int = 0,
                    size: int | None = None, chunk: int = 128) -> ImageSet:
    """A split of the embedded offline dataset: images 0..n-1 with n = limit, or the split's
    size (SYNTHETIC_SIZES, which are STL-10's, or `size`) when limit is 0.


    Each image is a small outdoor scene drawn procedurally with torch, a whole batch at once:
    a sky whose colour runs from the top of the image down to a slightly tilted horizon (at 35-60%
    of the height), brighter around a sun and dotted with soft clouds; below it, ground whose colour
    changes from the horizon to the bottom edge, with furrows that get denser towards the horizon
    and stones that get larger towards the viewer (perspective); and one object standing on the
    ground, lit from the side of the sun (a brightness gradient across it) and casting a shadow
    on the ground away from the sun. The class is the object's shape: disk, square, triangle, ring,
    cross, star, house (walls, roof and door), tree (trunk under a crown), crescent and striped disk
    (a disk told apart only by its texture). Every colour is drawn at random independently of the
    class, and the object's position, size (radius 30-45% of the width) and rotation (up to 26
    degrees) vary, next to clutter (clouds, stones) and pixel noise, so a classifier has to learn
    shapes. The object is large on purpose: at 48 px on a 4 x 4 grid it spans about three patches
    each way, so its parts (a roof, a trunk, a star's points) fall in different patches, and
    placing a patch of the object means recognising which part of which shape it shows.
    For the puzzle, position is partly inferable: a patch of sky belongs near the top, furrow
    density and stone size tell the distance from the horizon, and the parts of an object (a roof
    above walls, a crown above a trunk) only fit together one way; but colours change from image
    to image, so no single pixel gives its position away, and left and right are only told apart
    by the sun and the light and shadow it causes.
    Image i of a split depends only on (seed, split, i): every random number is a hash of those
    (no sequential random generator), so any subset is cheap to make and always the same.
    Labels are i % 10, so every split is balanced. Edges are antialiased from signed distance
    functions, so the images look alike at any size.
    """
    if split not in SYNTHETIC_SIZES:
        raise ValueError(f"split={split!r} is invalid: choose one of {tuple(SYNTHETIC_SIZES)}")
    total = size if size is not None else SYNTHETIC_SIZES[split]
    n = min(limit, total) if limit > 0 else total
    index = torch.arange(n)
    images = torch.empty(n, 3, image_size, image_size, dtype=torch.uint8)
    # chunks keep the intermediate images in the CPU cache
    for start in range(0, n, chunk):
        part = index[start : start + chunk]
        images[start : start + chunk] = synthetic_images(seed, split, part, image_size)
    if split == "unlabeled":
        return ImageSet(images, None, [])
    return ImageSet(images, index % len(SYNTHETIC_CLASSES), list(SYNTHETIC_CLASSES))
