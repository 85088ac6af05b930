"""Batched augmentation: shapes, per-sample randomness, and agreement with torchvision."""
from __future__ import annotations

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import RandomResizedCrop

from torchvision.transforms import v2

from apl_core.augment import (
    POLICIES, AugmentSpec, MixSpec, apply_policy, augment, crop_resize, gaussian_blur, mix,
    normalize, resized_crop_boxes,
)

OFF = dict(flip_p=0.0, scale=(1.0, 1.0), ratio=(1.0, 1.0), gray_p=0.0, blur_p=0.0)


def random_images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=generator, dtype=torch.uint8)


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_output_shape_dtype_and_range():
    images = random_images(64)
    images[0] = 0
    images[1] = 255
    out = augment(images, AugmentSpec(), generator())
    assert out.shape == images.shape and out.dtype == torch.float32
    assert out.min() >= -1 and out.max() <= 1
    assert out[0].eq(-1).all() and out[1].eq(1).all()


def test_everything_off_is_plain_normalization():
    images = random_images(16)
    out = augment(images, AugmentSpec(**OFF), generator())
    assert torch.allclose(out, normalize(images), atol=1e-5)
    assert torch.allclose(normalize(images), images.float() / 127.5 - 1, atol=1e-6)


def test_same_seed_same_output_other_seed_other_output():
    images = random_images(32)
    a = augment(images, AugmentSpec(), generator(7))
    assert torch.equal(a, augment(images, AugmentSpec(), generator(7)))
    assert not torch.allclose(a, augment(images, AugmentSpec(), generator(8)))


def test_flip_is_drawn_per_sample():
    images = random_images(1).expand(200, -1, -1, -1).contiguous()
    out = augment(images, AugmentSpec(**{**OFF, "flip_p": 0.5}), generator())
    plain, mirrored = normalize(images[:1]), normalize(images[:1]).flip(-1)
    is_plain = (out - plain).abs().amax(dim=(1, 2, 3)) < 1e-5
    is_mirrored = (out - mirrored).abs().amax(dim=(1, 2, 3)) < 1e-5
    assert (is_plain ^ is_mirrored).all()
    assert 60 < is_mirrored.sum() < 140  # Binomial(200, 0.5): mean 100, sd 7


def test_crop_is_drawn_per_sample():
    images = random_images(1, size=48).expand(64, -1, -1, -1).contiguous()
    out = augment(images, AugmentSpec(**{**OFF, "scale": (0.3, 1.0), "ratio": (3 / 4, 4 / 3)}), generator())
    distinct = {tuple(sample.flatten()[:200].tolist()) for sample in out}
    assert len(distinct) > 55  # identical inputs, (almost) all different crops
    top, left, h, w = resized_crop_boxes(1000, 96, 96, (0.6, 1.0), (3 / 4, 4 / 3), _uniform(generator()))
    assert len(set(zip(top.tolist(), left.tolist(), h.tolist(), w.tolist()))) > 900
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 96).all() and (left + w <= 96).all()


def _uniform(gen: torch.Generator):
    def uniform(*shape, low=0.0, high=1.0):
        return torch.rand(shape, generator=gen) * (high - low) + low
    return uniform


def test_crop_boxes_match_torchvision_distribution():
    n, size = 4000, 96
    top, left, h, w = resized_crop_boxes(n, size, size, (0.6, 1.0), (3 / 4, 4 / 3), _uniform(generator()))
    torch.manual_seed(0)
    reference = torch.tensor(
        [RandomResizedCrop.get_params(torch.empty(1, size, size), [0.6, 1.0], [3 / 4, 4 / 3]) for _ in range(n)],
        dtype=torch.float32,
    )
    ours = torch.stack((top, left, h, w), dim=1)
    for name, column in (("area", lambda b: b[:, 2] * b[:, 3] / size**2), ("aspect", lambda b: b[:, 3] / b[:, 2]),
                         ("top", lambda b: b[:, 0]), ("left", lambda b: b[:, 1])):
        a, b = column(ours), column(reference)
        assert a.mean() == pytest.approx(b.mean().item(), rel=0.05), name
        assert a.std() == pytest.approx(b.std().item(), rel=0.1), name
    # full-size crops happen when an area near 1 has an aspect that still fits
    assert (ours[:, 2:] == size).all(dim=1).float().mean() > 0


def test_crop_falls_back_to_a_center_crop_like_torchvision():
    # no draw can fit: aspect 2..3 with the full area never fits in a square
    top, left, h, w = resized_crop_boxes(5, 90, 90, (1.0, 1.0), (2.0, 3.0), _uniform(generator()))
    expected = RandomResizedCrop.get_params(torch.empty(1, 90, 90), [1.0, 1.0], [2.0, 3.0])
    assert (top == expected[0]).all() and (left == expected[1]).all()
    assert (h == expected[2]).all() and (w == expected[3]).all()


def test_crop_resize_and_flip_equal_torchvision_per_image():
    images = random_images(3, size=40).float() / 255
    top, left = torch.tensor([0.0, 5.0, 11.0]), torch.tensor([0.0, 13.0, 2.0])
    h, w = torch.tensor([40.0, 27.0, 29.0]), torch.tensor([40.0, 22.0, 38.0])
    flip = torch.tensor([False, True, False])
    out = crop_resize(images, top, left, h, w, flip)
    for i in range(3):
        box = [int(v[i]) for v in (top, left, h, w)]
        expected = TF.resized_crop(images[i], *box, [40, 40], antialias=True)
        if flip[i]:
            expected = expected.flip(-1)
        assert torch.allclose(out[i], expected, atol=1e-4)


def test_gaussian_blur_equals_torchvision_per_sigma():
    images = random_images(3).float() / 255
    sigma = torch.tensor([0.1, 0.3, 0.5])
    out = gaussian_blur(images, 9, sigma)
    for i in range(3):
        expected = TF.gaussian_blur(images[i], [9, 9], [sigma[i].item()] * 2)
        assert torch.allclose(out[i], expected, atol=1e-5)
    assert not torch.allclose(out[2], images[2], atol=1e-2)


def test_grayscale_fraction_and_luma():
    images = random_images(2000, size=8)
    out = augment(images, AugmentSpec(**{**OFF, "gray_p": 0.2}), generator())
    gray = (out[:, 0] == out[:, 1]).all(dim=(1, 2)) & (out[:, 1] == out[:, 2]).all(dim=(1, 2))
    # Binomial(2000, 0.2): mean 400, sd 17.9; these bounds are 5 sd
    assert 310 < gray.sum() < 490
    expected = TF.rgb_to_grayscale(images[gray].float() / 255, num_output_channels=3) * 2 - 1
    assert torch.allclose(out[gray], expected, atol=1e-5)


def test_blur_is_applied_to_about_half_the_samples():
    images = random_images(400, size=16)
    # sigma near 0.1 leaves an image unchanged (neighbour weights ~1e-22), so test with large ones
    spec = AugmentSpec(**{**OFF, "blur_p": 0.5, "blur_sigma": (0.4, 0.5)})
    out = augment(images, spec, generator())
    changed = (out - normalize(images)).abs().amax(dim=(1, 2, 3)) > 1e-3
    assert 140 < changed.sum() < 260  # Binomial(400, 0.5): mean 200, sd 10


@pytest.mark.parametrize("field,value,rule", [
    ("flip_p", 1.5, "must be a probability in [0, 1]"),
    ("gray_p", -0.1, "must be a probability in [0, 1]"),
    ("blur_p", 1.01, "must be a probability in [0, 1]"),
    ("scale", (0.0, 1.0), "must satisfy 0 < low <= high <= 1"),
    ("scale", (0.9, 0.5), "must satisfy 0 < low <= high <= 1"),
    ("scale", (0.5, 1.5), "must satisfy 0 < low <= high <= 1"),
    ("ratio", (0.0, 1.0), "must satisfy 0 < low <= high"),
    ("ratio", (2.0, 1.0), "must satisfy 0 < low <= high"),
    ("blur_kernel", 4, "must be a positive odd integer"),
    ("blur_kernel", 0, "must be a positive odd integer"),
    ("blur_kernel", -1, "must be a positive odd integer"),
    ("blur_sigma", (0.0, 0.5), "must satisfy 0 < low <= high"),
    ("blur_sigma", (0.5, 0.1), "must satisfy 0 < low <= high"),
])
def test_invalid_specs_name_the_field_the_value_and_the_rule(field, value, rule):
    with pytest.raises(ValueError) as error:
        AugmentSpec(**{field: value})
    assert str(error.value) == f"{field}={value} {rule}"


def test_an_unknown_policy_is_refused_with_the_known_ones():
    with pytest.raises(ValueError) as error:
        AugmentSpec(policy="autoaugment")
    assert str(error.value) == ("policy='autoaugment' must be 'none' or one of "
                                "['trivialaugment', 'randaugment']")
    assert {AugmentSpec(policy=p).policy for p in ("none", *POLICIES)} == {"none", *POLICIES}


def test_the_policies_are_torchvisions():
    assert isinstance(POLICIES["trivialaugment"], v2.TrivialAugmentWide)
    randaugment = POLICIES["randaugment"]
    assert isinstance(randaugment, v2.RandAugment)
    assert (randaugment.num_ops, randaugment.magnitude) == (2, 9)  # DeiT's rand-m9, two ops


@pytest.mark.parametrize("policy", list(POLICIES))
def test_a_policy_draws_its_op_per_image(policy):
    """One image repeated 64 times: each copy gets its own op and magnitude, so the copies
    differ from each other (v2 on the whole batch would give every copy the same)."""
    torch.manual_seed(0)
    x = random_images(1).expand(64, -1, -1, -1).float() / 255
    out = apply_policy(x, policy)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    distinct = {tuple(image.flatten()[:200].tolist()) for image in out}
    assert len(distinct) > 8


def test_a_policy_runs_on_the_uint8_image_the_pil_pipeline_sees():
    """Image by image, apply_policy is torchvision's transform of the image rounded to uint8,
    with the same draws."""
    x = random_images(3).float() / 255 + 0.001  # off the uint8 grid: rounded first
    torch.manual_seed(5)
    out = apply_policy(x, "trivialaugment")
    torch.manual_seed(5)
    pixels = (x * 255).round().to(torch.uint8)
    expected = torch.stack([POLICIES["trivialaugment"](image) for image in pixels])
    assert torch.equal(out, expected.float() / 255)


def test_augment_applies_the_policy_after_the_crop(monkeypatch):
    calls = []
    monkeypatch.setattr("apl_core.augment.apply_policy",
                        lambda x, policy: calls.append((x.clone(), policy)) or 1 - x)
    images = random_images(4)
    out = augment(images, AugmentSpec(**OFF, policy="randaugment"), generator())
    (seen, policy), = calls
    assert policy == "randaugment"
    assert torch.allclose(seen, images.float() / 255, atol=1e-6)  # the crop is the identity here
    assert torch.allclose(out, 1 - 2 * seen, atol=1e-6)  # normalized after the policy
    calls.clear()
    augment(images, AugmentSpec(**OFF), generator())
    assert calls == []  # 'none' calls nothing


def test_mix_spec_refuses_negative_alphas_and_a_single_class():
    for field in ("mixup_alpha", "cutmix_alpha"):
        with pytest.raises(ValueError) as error:
            MixSpec(**{field: -0.5})
        assert str(error.value) == f"{field}=-0.5 must be >= 0 (0: off)"
    with pytest.raises(ValueError, match="num_classes=1 must be >= 2 to mix labels"):
        MixSpec(mixup_alpha=0.8, num_classes=1)
    assert MixSpec(num_classes=2).mixup_alpha == 0.0


def test_mixup_blends_each_image_with_its_neighbour_and_its_label_alike():
    torch.manual_seed(0)
    images = torch.randn(6, 3, 4, 4)
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    mixed, targets = mix(images, labels, MixSpec(mixup_alpha=0.8, num_classes=8))
    assert targets.shape == (6, 8) and targets.dtype == torch.float32
    torch.testing.assert_close(targets.sum(1), torch.ones(6))
    weight = targets[0, 0].item()  # one weight for the whole batch
    assert 0 < weight < 1
    for i in range(6):
        assert targets[i, i].item() == pytest.approx(weight)
        assert targets[i, (i - 1) % 6].item() == pytest.approx(1 - weight)
        torch.testing.assert_close(mixed[i], weight * images[i] + (1 - weight) * images[i - 1])


def test_cutmix_pastes_a_box_of_the_neighbour_and_weights_the_labels_by_its_area():
    torch.manual_seed(1)
    images = torch.stack([torch.full((3, 8, 8), float(i)) for i in range(4)])
    mixed, targets = mix(images, torch.arange(4), MixSpec(cutmix_alpha=1.0, num_classes=4))
    for i in range(4):
        own = (mixed[i, 0] == i).float().mean().item()  # the share of the image left
        assert targets[i, i].item() == pytest.approx(own)
        assert set(mixed[i].unique().tolist()) <= {float(i), float((i - 1) % 4)}


def test_with_both_each_batch_takes_mixup_or_cutmix_and_neither_gives_one_hot_targets():
    images = torch.stack([torch.full((3, 8, 8), float(i)) for i in range(4)])
    kinds = set()
    torch.manual_seed(2)
    for _ in range(40):
        mixed, _ = mix(images, torch.arange(4), MixSpec(mixup_alpha=0.8, cutmix_alpha=1.0,
                                                        num_classes=4))
        values = set(mixed[1].unique().tolist())
        kinds.add("cutmix" if values <= {0.0, 1.0} else "mixup")
    assert kinds == {"mixup", "cutmix"}
    same, one_hot = mix(images, torch.tensor([3, 0, 1, 2]), MixSpec(num_classes=4))
    assert same is images
    assert one_hot.tolist() == [[0, 0, 0, 1], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]


def test_specs_on_the_edge_are_accepted():
    edge = dict(flip_p=1.0, gray_p=0.0, blur_p=1.0, scale=(0.5, 0.5), ratio=(1.0, 1.0),
                blur_kernel=1, blur_sigma=(0.3, 0.3))
    spec = AugmentSpec(**edge)
    assert {name: getattr(spec, name) for name in edge} == edge


def test_only_uint8_rgb_batches_are_augmented():
    for images in (torch.zeros(2, 3, 8, 8), torch.zeros(3, 8, 8, dtype=torch.uint8),
                   torch.zeros(2, 1, 8, 8, dtype=torch.uint8)):
        with pytest.raises(ValueError) as error:
            augment(images, AugmentSpec(), generator())
        assert str(error.value) == (f"expected a uint8 batch (B, 3, H, W), got {images.dtype} "
                                    f"{tuple(images.shape)}")


def test_random_parameters_are_drawn_from_the_ranges_of_the_spec(monkeypatch):
    import apl_core.augment as module

    drawn = {}
    real_boxes, real_blur = module.resized_crop_boxes, module.gaussian_blur

    def boxes(batch, height, width, scale, ratio, uniform):
        drawn["uniform"] = uniform
        return real_boxes(batch, height, width, scale, ratio, uniform)

    def blur(x, kernel_size, sigma):
        drawn["sigma"] = sigma
        return real_blur(x, kernel_size, sigma)

    monkeypatch.setattr(module, "resized_crop_boxes", boxes)
    monkeypatch.setattr(module, "gaussian_blur", blur)
    augment(random_images(500, size=8), AugmentSpec(blur_p=1.0, blur_sigma=(0.2, 0.4)),
            generator())
    sigma = drawn["sigma"]
    assert len(sigma) == 500 and 0.2 <= sigma.min() < 0.21 and 0.39 < sigma.max() <= 0.4
    values = drawn["uniform"](20_000, low=-3.0, high=5.0)
    assert values.shape == (20_000,) and -3 <= values.min() and values.max() < 5
    assert values.mean().item() == pytest.approx(1.0, abs=0.1)


def scripted(fits_from: dict[int, int]):
    """A `uniform` for resized_crop_boxes whose (batch, tries) draws are 1.0 (the largest
    area, the widest aspect) before try fits_from[row] and 0.0 (the smallest) from it on;
    other draws are 0.5."""
    def uniform(*shape, low=0.0, high=1.0):
        if len(shape) == 1:
            return torch.full(shape, 0.5)
        u = torch.ones(shape)
        for row, first in fits_from.items():
            u[row, first:] = 0.0
        return low + (high - low) * u
    return uniform


def test_the_fallback_comes_after_ten_tries_like_torchvision():
    # tries 0-9: the whole area at aspect 2 (too wide); an 11th try would fit
    top, left, h, w = resized_crop_boxes(1, 90, 90, (0.1, 1.0), (0.5, 2.0), scripted({0: 10}))
    assert (top.item(), left.item(), h.item(), w.item()) == (0, 0, 90, 90)
    # the first try that fits is taken, per sample: row 1 never fits and falls back
    top, left, h, w = resized_crop_boxes(2, 90, 90, (0.1, 1.0), (0.5, 2.0), scripted({0: 3}))
    # try 3: a tenth of the area (810 pixels) at aspect w / h = 0.5
    assert (h[0].item(), w[0].item()) == (round((810 / 0.5) ** 0.5), round((810 * 0.5) ** 0.5))
    assert (top[1].item(), left[1].item(), h[1].item(), w[1].item()) == (0, 0, 90, 90)


@pytest.mark.parametrize("height,width,scale,ratio", [
    (40, 91, 1.0, (0.5, 1.5)),  # the full area at any of these aspects is too tall
    (91, 40, 1.0, (2 / 3, 2.0)),  # too wide
    (40, 40, 1e-4, (0.1, 0.1)),  # 0.16 pixels: 0 wide and 1 high
    (40, 40, 1e-4, (10.0, 10.0)),  # 1 wide and 0 high
])
def test_fallback_when_no_try_fits_is_torchvisions(height, width, scale, ratio):
    top, left, h, w = resized_crop_boxes(3, height, width, (scale, scale), ratio,
                                         _uniform(generator()))
    expected = RandomResizedCrop.get_params(torch.empty(1, height, width), [scale, scale],
                                            list(ratio))
    for ours, theirs in zip((top, left, h, w), expected):
        assert (ours == theirs).all()


def test_crops_of_one_pixel_are_allowed_and_empty_ones_are_not():
    top, left, h, w = resized_crop_boxes(50, 4, 4, (1 / 16, 1 / 16), (1.0, 1.0),
                                         _uniform(generator()))
    assert (h == 1).all() and (w == 1).all()  # area 1 pixel
    top, left, h, w = resized_crop_boxes(50, 4, 4, (0.01, 0.01), (1.0, 1.0),
                                         _uniform(generator()))
    assert (h == 4).all() and (w == 4).all()  # rounds to 0 pixels: the whole-image fallback


def test_crop_areas_stay_in_the_scale_range():
    top, left, h, w = resized_crop_boxes(2000, 96, 96, (0.2, 0.4), (1.0, 1.0),
                                         _uniform(generator()))
    area = h * w / 96**2
    assert area.min() >= 0.19 and area.max() <= 0.41 and area.mean() == pytest.approx(0.3, abs=0.01)


def test_crop_and_blur_stay_on_the_device_of_their_input():
    # meta tensors stand in for a GPU: mixing them with CPU tensors fails
    x = torch.zeros(2, 3, 8, 8, device="meta")
    zero, full = torch.zeros(2, device="meta"), torch.full((2,), 8.0, device="meta")
    flip = torch.zeros(2, dtype=torch.bool, device="meta")
    assert crop_resize(x, zero, zero, full, full, flip).device.type == "meta"
    assert gaussian_blur(x, 3, torch.ones(2, device="meta")).device.type == "meta"
