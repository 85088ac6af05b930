"""Batched data augmentation on the training device.

The original augments one PIL image at a time in DataLoader workers (flip, random resized
crop, grayscale, Gaussian blur, normalize). That runs at a few hundred images per second
per CPU core, so a GPU spends most of its time waiting. Here the same recipe runs on a
whole uint8 batch at once, on whatever device holds it, with random parameters drawn per
sample from a `torch.Generator`.

Why by hand: torchvision's v2 transforms draw one set of parameters per call and apply it
to the whole batch (every image would get the same crop), and kornia, which has per-sample
batched versions, is not a dependency. Each op is a few lines of plain torch:

- flip + random resized crop: one axis-aligned affine map per sample (crop box, and a
  negative x scale for a flip) sampled with a single `grid_sample` call;
- grayscale: ITU-R 601 luma, the weights torchvision uses;
- blur: a separable Gaussian with a per-sample sigma, as a grouped convolution over the
  blurred samples only, with reflect padding like torchvision's `gaussian_blur`;
- normalize: mean 0.5, std 0.5 on every channel, i.e. [0, 255] -> [-1, 1].

The small-data recipe adds two steps, both torchvision's `transforms.v2`:

- a policy (`AugmentSpec.policy`: TrivialAugmentWide or RandAugment) after the crop, on the
  uint8 image as the PIL pipeline sees it there; v2 would draw one op for a whole batch, so it
  runs image by image, each with its own op and magnitude;
- MixUp or CutMix (`MixSpec`, `mix`) on the finished batch: v2's batch transforms, one mixing
  weight per batch (as timm's default), each image mixed with its neighbour in the batch, the
  labels turned into the matching soft targets.

Both draw from torch's global random stream (v2 takes no generator), which a run seeds and
its checkpoint saves, so a run stays reproducible, also when resumed.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale


@dataclass(frozen=True)
class AugmentSpec:
    """The original recipe (docs/method.md); fine-tuning uses scale=(0.8, 1.0)."""

    flip_p: float = 0.5
    scale: tuple[float, float] = (0.6, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    gray_p: float = 0.2
    blur_p: float = 0.5
    blur_kernel: int = 9
    blur_sigma: tuple[float, float] = (0.1, 0.5)
    policy: str = "none"  # none | trivialaugment | randaugment (POLICIES), per image

    def __post_init__(self) -> None:
        for name in ("flip_p", "gray_p", "blur_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name}={getattr(self, name)} must be a probability in [0, 1]")
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"scale={self.scale} must satisfy 0 < low <= high <= 1")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio={self.ratio} must satisfy 0 < low <= high")
        if self.blur_kernel < 1 or self.blur_kernel % 2 == 0:
            raise ValueError(f"blur_kernel={self.blur_kernel} must be a positive odd integer")
        if not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError(f"blur_sigma={self.blur_sigma} must satisfy 0 < low <= high")
        if self.policy != "none" and self.policy not in POLICIES:
            raise ValueError(f"policy={self.policy!r} must be 'none' or one of {list(POLICIES)}")


# torchvision's defaults: TrivialAugment has no parameters; RandAugment two ops of magnitude 9
# (of 31 bins), DeiT's setting.
POLICIES = {"trivialaugment": v2.TrivialAugmentWide(), "randaugment": v2.RandAugment()}


@dataclass(frozen=True)
class MixSpec:
    """MixUp and CutMix of a labelled batch (DeiT's recipe: 0.8 and 1.0, one of the two per
    batch). An alpha of 0 leaves that one out; both 0 is no mixing."""

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    num_classes: int = 10

    def __post_init__(self) -> None:
        for name in ("mixup_alpha", "cutmix_alpha"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0 (0: off)")
        if self.num_classes < 2:
            raise ValueError(f"num_classes={self.num_classes} must be >= 2 to mix labels")


def mix(images: torch.Tensor, labels: torch.Tensor,
        spec: MixSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch (B, 3, H, W) float and its int labels (B,) -> the mixed batch and its soft
    targets (B, num_classes) float, rows summing to 1: MixUp or CutMix (each equally likely
    when both are on), or one-hot targets of the unchanged batch when neither is."""
    mixers = []
    if spec.mixup_alpha > 0:
        mixers.append(v2.MixUp(alpha=spec.mixup_alpha, num_classes=spec.num_classes))
    if spec.cutmix_alpha > 0:
        mixers.append(v2.CutMix(alpha=spec.cutmix_alpha, num_classes=spec.num_classes))
    if not mixers:
        return images, F.one_hot(labels, spec.num_classes).float()
    return v2.RandomChoice(mixers)(images, labels)


def apply_policy(x: torch.Tensor, policy: str) -> torch.Tensor:
    """POLICIES[policy] on every image of a float batch in [0, 1], each image with its own
    draw, through uint8 (the policies' posterize and equalize need it)."""
    transform = POLICIES[policy]
    pixels = x.mul(255).round_().clamp_(0, 255).to(torch.uint8)
    return torch.stack([transform(image) for image in pixels]).float().div_(255)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]: ToTensor then Normalize(mean 0.5, std 0.5)."""
    return images.float().mul_(2 / 255).sub_(1)


def augment(images: torch.Tensor, spec: AugmentSpec, generator: torch.Generator) -> torch.Tensor:
    """Augment a uint8 batch (B, 3, S, S) -> normalized float32 (B, 3, S, S).

    Every sample gets its own flip, crop, grayscale and blur parameters, drawn from
    `generator` (which must live on the images' device), so a seeded generator gives the
    same batch every time; spec.policy's op per image comes from torch's global stream.
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(
            f"expected a uint8 batch (B, 3, H, W), got {images.dtype} {tuple(images.shape)}"
        )
    b, _, height, width = images.shape
    device = images.device

    def uniform(*shape: int, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
        return torch.rand(shape, generator=generator, device=device).mul_(high - low).add_(low)

    top, left, crop_h, crop_w = resized_crop_boxes(
        b, height, width, spec.scale, spec.ratio, uniform
    )
    flip = uniform(b) < spec.flip_p
    x = crop_resize(images.float().div_(255), top, left, crop_h, crop_w, flip)
    if spec.policy != "none":
        x = apply_policy(x, spec.policy)

    gray = (uniform(b) < spec.gray_p).nonzero().squeeze(1)
    if len(gray):
        weights = torch.tensor(GRAY_WEIGHTS, device=device).view(1, 3, 1, 1)
        x[gray] = (x[gray] * weights).sum(dim=1, keepdim=True).expand(-1, 3, -1, -1)

    blur = (uniform(b) < spec.blur_p).nonzero().squeeze(1)
    sigma = uniform(b, low=spec.blur_sigma[0], high=spec.blur_sigma[1])
    if len(blur):
        x[blur] = gaussian_blur(x[blur], spec.blur_kernel, sigma[blur])
    return x.mul_(2).sub_(1)


def resized_crop_boxes(
    batch: int, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
    uniform: Callable[..., torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample (top, left, h, w) boxes with RandomResizedCrop.get_params' semantics.

    torchvision tries up to 10 (area, aspect) draws and takes the first box that fits in the
    image, else falls back to a center crop of the whole image clamped to `ratio`. Here all
    10 tries are drawn for every sample at once and the first that fits is picked.
    """
    tries = 10
    area = height * width
    target_area = area * uniform(batch, tries, low=scale[0], high=scale[1])
    aspect = torch.exp(uniform(batch, tries, low=math.log(ratio[0]), high=math.log(ratio[1])))
    w = torch.round(torch.sqrt(target_area * aspect))
    h = torch.round(torch.sqrt(target_area / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.float().argmax(dim=1, keepdim=True)  # index of the first try that fits
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)
    # the offsets are uniform integers in [0, size - crop], like torch.randint
    top = torch.floor(uniform(batch) * (height - h + 1))
    left = torch.floor(uniform(batch) * (width - w + 1))

    fallback_h, fallback_w = _center_crop_size(height, width, ratio)
    none_fits = ~fits.any(dim=1)
    h = torch.where(none_fits, torch.full_like(h, fallback_h), h)
    w = torch.where(none_fits, torch.full_like(w, fallback_w), w)
    top = torch.where(none_fits, torch.full_like(top, (height - fallback_h) // 2), top)
    left = torch.where(none_fits, torch.full_like(left, (width - fallback_w) // 2), left)
    return top, left, h, w


def _center_crop_size(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int]:
    """The fallback box of RandomResizedCrop: the whole image, clamped to the aspect range."""
    in_ratio = width / height
    if in_ratio < ratio[0]:
        return int(round(width / ratio[0])), width
    if in_ratio > ratio[1]:
        return height, int(round(height * ratio[1]))
    return height, width


def crop_resize(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, crop_h: torch.Tensor,
                crop_w: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Cut box (top, left, crop_h, crop_w) out of every image, resize it bilinearly to the
    input size and mirror the samples where `flip` is set, in one `grid_sample`.

    With align_corners=False, output pixel centre u in [-1, 1] (normalized) maps to input
    coordinate (w / W) u + (2 left + w) / W - 1, which is the pixel-centre convention of
    torchvision's resize of the crop. The box is upsampled (it is never larger than the
    output), so no antialiasing is needed. Sample points are clamped to the centres of the
    box's edge pixels, so, as in torchvision, nothing outside the box leaks in.
    """
    b, _, height, width = x.shape

    def sample_points(size: int, start: torch.Tensor, length: torch.Tensor, sign: torch.Tensor):
        """(B, size) normalized input coordinates for the output pixel centres."""
        out = (torch.arange(size, device=x.device, dtype=x.dtype) * 2 + 1) / size - 1
        points = (sign * length / size)[:, None] * out + ((2 * start + length) / size - 1)[:, None]
        first_centre = (2 * start + 1) / size - 1
        last_centre = (2 * (start + length) - 1) / size - 1
        return points.clamp(first_centre[:, None], last_centre[:, None])

    grid_x = sample_points(width, left, crop_w, 1 - 2 * flip.to(x.dtype))
    grid_y = sample_points(height, top, crop_h, torch.ones_like(crop_h))
    grid = torch.empty(b, height, width, 2, device=x.device, dtype=x.dtype)
    grid[..., 0] = grid_x[:, None, :]
    grid[..., 1] = grid_y[:, :, None]
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def gaussian_kernels(kernel_size: int, sigma: torch.Tensor) -> torch.Tensor:
    """(B,) sigmas -> (B, kernel_size) normalized 1-D Gaussians (torchvision's formula)."""
    half = (kernel_size - 1) / 2
    offsets = torch.linspace(-half, half, kernel_size, device=sigma.device, dtype=sigma.dtype)
    pdf = torch.exp(-0.5 * (offsets / sigma[:, None]) ** 2)
    return pdf / pdf.sum(dim=1, keepdim=True)


def gaussian_blur(x: torch.Tensor, kernel_size: int, sigma: torch.Tensor) -> torch.Tensor:
    """Blur float images (B, C, H, W), sample b with its own sigma[b].

    The 2-D Gaussian is separable, so it is two 1-D passes. Folding the batch into the
    channel axis and convolving with groups = B * C gives every (sample, channel) plane its
    own kernel in a single conv call per pass.
    """
    b, c, height, width = x.shape
    pad = kernel_size // 2
    kernels = gaussian_kernels(kernel_size, sigma).repeat_interleave(c, dim=0)  # (B*C, k)
    planes = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    planes = planes.reshape(1, b * c, height + 2 * pad, width + 2 * pad)
    planes = F.conv2d(planes, kernels[:, None, None, :], groups=b * c)
    planes = F.conv2d(planes, kernels[:, None, :, None], groups=b * c)
    return planes.reshape(b, c, height, width)
