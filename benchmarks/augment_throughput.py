"""Augmentation throughput: the batched on-device `augment` against the original's per-image
torchvision/PIL pipeline, on the same cores in the same run.

    python benchmarks/augment_throughput.py            # CPU, 2 torch threads
    python benchmarks/augment_throughput.py --device cuda

Prints images/s of both and their ratio, and writes benchmarks/results/augment.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from naive_model import original_pipeline
from PIL import Image

from apl_core.augment import AugmentSpec, augment

RESULTS = Path(__file__).parent / "results" / "augment.json"


def time_original(images: torch.Tensor, seconds: float) -> float:
    """Images/s of the per-image pipeline over PIL images (decoding is not counted)."""
    pipeline = original_pipeline(images.shape[-1])
    pil_images = [Image.fromarray(image.permute(1, 2, 0).numpy()) for image in images]
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.stack([pipeline(image) for image in pil_images])
        done += len(pil_images)
    return done / (time.perf_counter() - start)


def time_batched(images: torch.Tensor, device: torch.device, seconds: float) -> float:
    """Images/s of `augment` on whole batches already on the device."""
    images = images.to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    spec = AugmentSpec()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(3):  # warm-up
        augment(images, spec, generator)
    sync()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        augment(images, spec, generator)
        sync()  # inside the loop, so the clock check sees finished work
        done += len(images)
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the batched augmentation runs (default: cuda when present)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--seconds", type=float, default=5.0, help="time per measurement")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.batch_size, 3, args.image_size, args.image_size),
                           generator=generator, dtype=torch.uint8)

    original = time_original(images, args.seconds)
    batched = time_batched(images, device, args.seconds)
    ratio = batched / original
    print(f"original per-image torchvision/PIL (CPU): {original:10.0f} images/s")
    print(f"batched augment ({device.type}):{' ' * (25 - len(device.type))}{batched:10.0f} images/s")
    print(f"speed-up: {ratio:.1f}x")

    result = {
        "original_images_per_s": original, "batched_images_per_s": batched, "speedup": ratio,
        "device": str(device), "threads": args.threads, "batch_size": args.batch_size,
        "image_size": args.image_size, "torch": torch.__version__, "machine": platform.machine(),
        "processor": platform.processor(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
