"""Training throughput of the APL model against a naive implementation and the matmul ceiling.

    python benchmarks/throughput.py                        # CPU, the paper model, batch 64
    python benchmarks/throughput.py --device cuda          # GPU: batch 1024, bf16, projection
    python benchmarks/throughput.py --precision fp32,bf16 --compile   # compare options
    python benchmarks/throughput.py --config quick --steps 20

For pretraining and fine-tuning it measures, in one run and interleaved round by round (so
that a noisy machine disturbs every variant alike):

- the training step of our model (forward, loss on the kept tokens, backward, Adam step,
  zero_grad), through the training engine's own `apl_core.train.train_one_epoch`, with its
  optimizer (`make_optimizer`), loss functions and autocast choice;
- the same step of the naive textbook model (benchmarks/naive_model.py) with the same
  weights, in fp32;
- one large square matrix product per precision used (the machine's ceiling);

and reports images/s (median of the timed steps, and the spread), model FLOPs per image
(forward + backward, counted with FlopCounterMode), achieved GFLOP/s, the ceiling in GFLOP/s
and their ratio (MFU), and our speed-up over the naive step. With --compile it adds the
torch.compile'd step, its compile time and after how many steps it pays back.

The epoch measurement runs `train_one_epoch` over a `BatchLoader` of random uint8 images
(images -> device -> batched augmentation -> patchify -> step), so its images/s includes the
data path; from it the script projects a 300-epoch pretraining on 100,000 images (STL-10
unlabeled), evaluation and checkpoints excluded.

Writes everything to --json (default benchmarks/results/throughput.json).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from naive_model import (NaiveClassifier, NaivePretrainModel, from_fast,  # noqa: E402
                         naive_finetune_step, naive_kwargs, naive_pretrain_step)

from apl_core.config import FinetuneConfig, PretrainConfig, profile_config  # noqa: E402
from apl_core.model import build_classifier, build_pretrain_model  # noqa: E402

try:  # the training engine's own step; a minimal equivalent below if it cannot be imported
    from apl_core import train as engine
    from apl_core.distributed import DistContext
except ImportError as error:  # pragma: no cover - only while the engine is being written
    engine, ENGINE_ERROR = None, repr(error)

RESULTS = Path(__file__).resolve().parent / "results" / "throughput.json"
STL10_UNLABELED, PAPER_EPOCHS = 100_000, 300
ARCH_OPTIONS = ("image_size", "grid", "crop", "blocks", "heads", "hidden_mult")


# ---------------------------------------------------------------- timing helpers

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def spread(times: list[float]) -> dict:
    ordered = sorted(times)
    q1, q3 = (statistics.quantiles(ordered, n=4)[i] for i in (0, 2)) if len(ordered) > 1 \
        else (ordered[0], ordered[0])
    return {"median_s": statistics.median(ordered), "min_s": ordered[0], "max_s": ordered[-1],
            "q1_s": q1, "q3_s": q3, "count": len(ordered)}


# ---------------------------------------------------------------- FLOPs

def _sdpa_cpu_forward(query, key, value, *args, out_shape=None, **kwargs):
    return flop_counter.sdpa_flop_count(query, key, value)


def _sdpa_cpu_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs):
    return flop_counter.sdpa_backward_flop_count(grad_out, query, key, value)


# FlopCounterMode knows the CUDA attention kernels but not the CPU flash kernel.
CUSTOM_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_forward,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward,
}


def flops_per_image(model: torch.nn.Module, loss_of_batch, images: torch.Tensor) -> int:
    """Model FLOPs of one training forward + backward, per image (matmuls and attention:
    what FlopCounterMode counts; elementwise work and the optimizer are not counted)."""
    model.train()
    with FlopCounterMode(display=False, custom_mapping=CUSTOM_FLOPS) as counter:
        loss_of_batch(model, images).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() // images.shape[0]


# ---------------------------------------------------------------- the ceiling

class Ceiling:
    """A square matrix product in the precision the model computes in, through the same op
    and dispatch (F.linear under autocast) as the model's linear layers: on a CPU without
    native bf16, torch.mm of two bf16 matrices takes a far slower path than F.linear (about
    1 against 7 GFLOP/s here), so the op matters. The size is calibrated once (largest
    of `sizes` whose product takes under `max_s`), then one product runs per round."""

    def __init__(self, device, dtype, sizes, max_s=1.0):
        self.device, self.dtype = device, dtype
        for n in sizes:
            self._make(n)
            seconds = self.run()
            self.run()
            if seconds > max_s:
                break
        self.times: list[float] = []

    def _make(self, n):
        self.n = n
        generator = torch.Generator().manual_seed(0)
        self.a = torch.randn(n, n, generator=generator).to(self.device)
        self.b = torch.randn(n, n, generator=generator).to(self.device)

    def run(self) -> float:
        sync(self.device)
        start = time.perf_counter()
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            F.linear(self.a, self.b)  # a @ b.T: the op (and kernel) of the model's layers
        sync(self.device)
        return time.perf_counter() - start

    def round(self) -> None:
        self.times.append(self.run())

    def result(self) -> dict:
        s = spread(self.times)
        return {"n": self.n, "dtype": str(self.dtype or torch.float32).replace("torch.", ""),
                "gflops": 2 * self.n**3 / s["median_s"] / 1e9,
                "gflops_best": 2 * self.n**3 / s["min_s"] / 1e9, **s}


# ---------------------------------------------------------------- the steps we time

class RepeatLoader:
    """A loader that yields the same batch `steps` times and times each step: from the
    moment the batch is handed out to the moment the next one is asked for, i.e. exactly
    one iteration of train_one_epoch's loop (with a device sync at both ends)."""

    def __init__(self, images, labels, steps, device, times):
        self.images, self.labels, self.steps = images, labels, steps
        self.device, self.times = device, times

    def __len__(self):
        return self.steps

    def set_epoch(self, epoch):
        pass

    def __iter__(self):
        for _ in range(self.steps):
            sync(self.device)
            start = time.perf_counter()
            yield self.images, self.labels
            sync(self.device)
            self.times.append(time.perf_counter() - start)


def _minimal_position_loss(model, images, labels=None):
    logits, keep = model(images)
    targets = torch.arange(keep.shape[1], device=images.device).expand_as(keep)
    losses = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none")
    weights = keep.flatten().float()
    count = weights.sum()
    hits = torch.zeros(3, device=images.device)
    return (losses * weights).sum() / count.clamp(min=1), hits, count


def _minimal_class_loss(model, images, labels):
    count = torch.full((), labels.shape[0], dtype=torch.float32, device=labels.device)
    hits = torch.zeros(3, device=images.device)
    return F.cross_entropy(model(images).float(), labels), hits, count


class OurStep:
    """Our model trained by the engine's train_one_epoch (or, if apl_core.train cannot be
    imported, a minimal step that does the same: autocast forward + loss, zero_grad with
    set_to_none, backward, Adam with foreach/fused)."""

    def __init__(self, model, phase, config, device, dtype, compile_model=False):
        self.model, self.config, self.device, self.dtype = model, config, device, dtype
        params = [p for p in model.parameters() if p.requires_grad]
        if engine is not None:
            self.loss_fn = engine.position_loss if phase == "pretrain" else engine.class_loss
            self.optimizer = engine.make_optimizer(params, config, device)
        else:
            self.loss_fn = _minimal_position_loss if phase == "pretrain" else _minimal_class_loss
            speed = {"fused": True} if device.type == "cuda" else {"foreach": True}
            self.optimizer = torch.optim.Adam(params, lr=config.lr, **speed)
        self.scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        self.train_model = torch.compile(model) if compile_model else model
        self.times: list[float] = []
        self.epoch = 0

    def run(self, images, labels, steps=1, record=True):
        times = self.times if record else []
        loader = RepeatLoader(images, labels, steps, self.device, times)
        self.run_loader(loader)
        return times[-steps:]

    def run_loader(self, loader):
        if engine is not None:
            result = engine.train_one_epoch(self.train_model, self.loss_fn, loader,
                                            self.optimizer, self.scaler, self.epoch, self.config,
                                            self.dtype, DistContext())
        else:
            self.train_model.train()
            for images, labels in loader:
                with torch.autocast(self.device.type, dtype=self.dtype,
                                    enabled=self.dtype is not None):
                    loss, _, _ = self.loss_fn(self.train_model, images, labels)
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            result = {}
        self.epoch += 1
        return result


class NaiveStep:
    """The naive model's textbook step (per-tensor Adam loop, .item() every step)."""

    def __init__(self, model, phase, lr, device):
        self.model, self.phase, self.device = model.train(), phase, device
        self.optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        self.times: list[float] = []

    def run(self, images, labels, steps=1, record=True):
        for _ in range(steps):
            sync(self.device)
            start = time.perf_counter()
            if self.phase == "pretrain":
                naive_pretrain_step(self.model, self.optimizer, images)
            else:
                naive_finetune_step(self.model, self.optimizer, images, labels)
            sync(self.device)
            if record:
                self.times.append(time.perf_counter() - start)


# ---------------------------------------------------------------- configuration

def build_configs(args, device):
    overrides = {name: getattr(args, name) for name in ARCH_OPTIONS
                 if getattr(args, name) is not None}
    common = dict(device=device.type, batch_size=args.batch_size)
    pre = profile_config(args.config, "pretrain", **common, **overrides)
    ft_overrides = {"image_size": pre.image_size} if "image_size" in overrides else {}
    ft = profile_config(args.config, "finetune", **common, **ft_overrides)
    return pre, ft


def precision_dtype(name: str, device: torch.device):
    if engine is not None:
        return engine.autocast_dtype(name, device)
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def dtype_name(dtype) -> str:
    return "fp32" if dtype is None else {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


# ---------------------------------------------------------------- the measurements

def measure_phase(phase, pre, ft, args, device, dtypes, ceilings, report):
    """Interleaved rounds: one ceiling product per precision, then one step of every
    variant. Returns the rows of the table."""
    torch.manual_seed(0)
    b, n = args.batch_size, pre.image_size
    images = torch.rand(b, 3, n, n, device=device) * 2 - 1
    labels = torch.randint(0, ft.num_classes, (b,), device=device)
    config = pre if phase == "pretrain" else ft

    def fresh_model():
        torch.manual_seed(0)
        model = build_pretrain_model(pre) if phase == "pretrain" else build_classifier(ft, pre)
        return model.to(device)

    def loss_of_batch(model, x):
        if phase == "pretrain":
            logits, keep = model(x)
            targets = torch.arange(keep.shape[1], device=x.device).expand_as(keep)
            return F.cross_entropy(logits[keep], targets[keep])
        return F.cross_entropy(model(x), labels)

    variants = {}
    for dtype in dtypes:
        variants[f"ours {dtype_name(dtype)}"] = OurStep(fresh_model(), phase, config, device, dtype)
    compile_info = {}
    if args.compile:
        for dtype in dtypes:
            name = f"ours {dtype_name(dtype)} compiled"
            step = OurStep(fresh_model(), phase, config, device, dtype, compile_model=True)
            start = time.perf_counter()
            first = step.run(images, labels, 1, record=False)
            compile_info[name] = {"first_step_s": first[0],
                                  "first_step_wall_s": time.perf_counter() - start}
            variants[name] = step
    naive = None
    if not args.no_naive:
        naive_model_cls = NaivePretrainModel if phase == "pretrain" else NaiveClassifier
        kwargs = naive_kwargs(pre)
        if phase == "finetune":
            kwargs.update(dropout=ft.dropout, patch_dropout=ft.patch_dropout,
                          num_classes=ft.num_classes)
        naive_model = naive_model_cls(**kwargs, attention=args.naive_attention)
        naive = from_fast(naive_model, fresh_model().cpu()).to(device)
        variants["naive fp32"] = NaiveStep(naive, phase, config.lr, device)

    flops = flops_per_image(fresh_model(), loss_of_batch, images)
    naive_flops = flops_per_image(naive, loss_of_batch, images) if naive is not None else None

    for step in variants.values():  # warm-up (compiled: after its first, compiling step)
        step.run(images, labels, args.warmup, record=False)
    for _ in range(args.steps):
        for ceiling in ceilings.values():
            ceiling.round()
        for step in variants.values():
            step.run(images, labels, 1)

    rows = []
    naive_median = spread(variants["naive fp32"].times)["median_s"] if naive is not None else None
    for name, step in variants.items():
        s = spread(step.times)
        precision = name.split()[1]
        ceiling = ceilings[precision].result() if precision in ceilings else None
        achieved = flops * b / s["median_s"] / 1e9
        row = {"phase": phase, "variant": name, "batch_size": b,
               "images_per_s": b / s["median_s"],
               "images_per_s_range": [b / s["max_s"], b / s["min_s"]],
               "step": s, "flops_per_image": flops, "achieved_gflops": achieved,
               "ceiling_gflops": ceiling["gflops"] if ceiling else None,
               "mfu": achieved / ceiling["gflops"] if ceiling else None,
               "speedup_vs_naive": naive_median / s["median_s"] if naive_median else None}
        if name in compile_info:
            eager = spread(variants[name.replace(" compiled", "")].times)["median_s"]
            overhead = compile_info[name]["first_step_s"] - s["median_s"]
            gain = eager - s["median_s"]
            steps_per_epoch = STL10_UNLABELED // b if args.config == "paper" else \
                max(1, (pre.num_images or STL10_UNLABELED) // b)
            row["compile"] = {
                **compile_info[name], "compile_overhead_s": overhead,
                "gain_per_step_s": gain,
                "pays_back_after_steps": overhead / gain if gain > 0 else None,
                "pays_back_after_epochs": overhead / gain / steps_per_epoch if gain > 0 else None,
            }
        rows.append(row)
    report["flops"][phase] = {"ours_per_image": flops, "naive_per_image": naive_flops}
    return rows


def measure_epoch(pre, args, device, dtype, report):
    """train_one_epoch over a BatchLoader of random uint8 images with the pretraining
    augmentation: the whole path from uint8 images to the optimizer step."""
    if engine is None:
        report["epoch"] = {"skipped": f"apl_core.train not importable: {ENGINE_ERROR}"}
        return
    from apl_core.augment import AugmentSpec
    from apl_core.data import BatchLoader, ImageSet
    b = args.batch_size
    count = args.epoch_images or b * (8 if device.type == "cpu" else 40)
    count = max(b, count // b * b)
    generator = torch.Generator().manual_seed(0)
    n = pre.image_size
    data = ImageSet(torch.randint(0, 256, (count, 3, n, n), dtype=torch.uint8,
                                  generator=generator), None, [])
    loader = BatchLoader(data, b, shuffle=True, drop_last=True, device=device,
                         augment=AugmentSpec(scale=(pre.crop_scale, 1.0)), seed=0)
    # the data path alone: uint8 -> device -> augment (patchify runs inside the model)
    loader.set_epoch(0)
    sync(device)
    start = time.perf_counter()
    for images, _ in loader:
        pass
    sync(device)
    data_seconds = time.perf_counter() - start
    torch.manual_seed(0)
    step = OurStep(build_pretrain_model(pre).to(device), "pretrain", pre, device, dtype,
                   compile_model=args.compile)
    loader.set_epoch(1)
    step.run_loader(loader)  # warm-up epoch (and compilation)
    loader.set_epoch(2)
    sync(device)
    start = time.perf_counter()
    step.run_loader(loader)
    sync(device)
    seconds = time.perf_counter() - start
    images_per_s = count / seconds
    report["epoch"] = {
        "images": count, "batch_size": b, "precision": dtype_name(dtype),
        "compiled": args.compile, "epoch_s": seconds, "images_per_s": images_per_s,
        "data_path_images_per_s": count / data_seconds,
        "projected_300_epochs_stl10_s": PAPER_EPOCHS * STL10_UNLABELED / images_per_s,
        "note": "train_one_epoch over BatchLoader(augment=AugmentSpec()); evaluation, "
                "checkpoints and logging of the real run are not included",
    }


# ---------------------------------------------------------------- output

def machine(device) -> dict:
    info = {"torch": torch.__version__, "python": platform.python_version(),
            "device": device.type, "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    return info


def print_table(report) -> None:
    m = report["machine"]
    print(f"\n{m.get('gpu', m['cpu'])} | torch {m['torch']} | {m['threads']} threads | "
          f"step: {report['step_code']}")
    header = (f"{'phase':9} {'variant':22} {'img/s':>8} {'range':>13} {'GFLOP/img':>9} "
              f"{'GFLOP/s':>8} {'ceiling':>8} {'MFU':>6} {'vs naive':>8}")
    print(header)
    print("-" * len(header))
    for row in report["rows"]:
        low, high = row["images_per_s_range"]
        ceiling = f"{row['ceiling_gflops']:.0f}" if row["ceiling_gflops"] else "-"
        mfu = f"{100 * row['mfu']:.0f}%" if row["mfu"] is not None else "-"
        speed = f"{row['speedup_vs_naive']:.2f}x" if row["speedup_vs_naive"] else "-"
        print(f"{row['phase']:9} {row['variant']:22} {row['images_per_s']:8.1f} "
              f"{low:6.1f}-{high:<6.1f} {row['flops_per_image'] / 1e9:9.3f} "
              f"{row['achieved_gflops']:8.1f} {ceiling:>8} {mfu:>6} {speed:>8}")
        if "compile" in row:
            c = row["compile"]
            back = (f"pays back after {c['pays_back_after_steps']:.0f} steps "
                    f"({c['pays_back_after_epochs']:.2f} epochs)"
                    if c["pays_back_after_steps"] else "never pays back (not faster)")
            print(f"{'':9} {'':22} compile: first step {c['first_step_s']:.1f}s, {back}")
    for name, c in report["ceilings"].items():
        print(f"ceiling {name}: {c['n']}x{c['n']} matmul, {c['gflops']:.1f} GFLOP/s median "
              f"({c['gflops_best']:.1f} best)")
    epoch = report.get("epoch")
    if epoch and "images_per_s" in epoch:
        minutes = epoch["projected_300_epochs_stl10_s"] / 60
        print(f"epoch (augment + step, {epoch['images']} images, {epoch['precision']}"
              f"{', compiled' if epoch['compiled'] else ''}): {epoch['images_per_s']:.1f} img/s; "
              f"data path alone {epoch['data_path_images_per_s']:.0f} img/s; projected 300 "
              f"epochs x 100,000 images: {minutes:.1f} min "
              f"(issue 6's GPU target: under 15 min: {'met' if minutes < 15 else 'not met'})")
    elif epoch:
        print(f"epoch: {epoch['skipped']}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--config", default="paper", choices=("paper", "quick", "smoke"),
                        help="the profile whose architecture is measured")
    for name in ARCH_OPTIONS:
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=None,
                            help=f"override the profile's {name}")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="default: 64 on CPU, 1024 on CUDA")
    parser.add_argument("--precision", default="auto",
                        help="fp32, bf16, fp16 or auto (the engine's choice), or a comma list "
                             "to compare, e.g. fp32,bf16")
    parser.add_argument("--compile", action="store_true",
                        help="also time the torch.compile'd step (and compile the epoch run)")
    parser.add_argument("--steps", type=int, default=10, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant")
    parser.add_argument("--phases", default="pretrain,finetune")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive model")
    parser.add_argument("--naive-attention", default="bmm", choices=("bmm", "loop"),
                        help="the naive model's attention: batched bmm (the original) or a "
                             "loop over heads")
    parser.add_argument("--no-epoch", action="store_true", help="skip the epoch measurement")
    parser.add_argument("--epoch-images", type=int, default=0,
                        help="images in the epoch measurement (default: 8 batches on CPU, "
                             "40 on CUDA)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--json", type=Path, default=RESULTS, help="where to write the results")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = engine.resolve_device(args.device) if engine is not None else torch.device(
        "cuda" if args.device == "auto" and torch.cuda.is_available() else
        ("cpu" if args.device == "auto" else args.device))
    if args.batch_size is None:
        args.batch_size = 1024 if device.type == "cuda" else 64
    pre, ft = build_configs(args, device)
    dtypes = []
    for name in args.precision.split(","):
        dtype = precision_dtype(name.strip(), device)
        if dtype not in dtypes:
            dtypes.append(dtype)
    sizes = (1024, 2048, 4096) if device.type == "cpu" else (4096, 8192, 16384)
    ceilings = {dtype_name(d): Ceiling(device, d, sizes) for d in dtypes}
    if not args.no_naive and "fp32" not in ceilings:
        ceilings["fp32"] = Ceiling(device, None, sizes)
    report = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "machine": machine(device),
        "step_code": "apl_core.train.train_one_epoch" if engine is not None
        else f"benchmark's minimal step (apl_core.train: {ENGINE_ERROR})",
        "config": {"profile": args.config, **{k: getattr(pre, k) for k in ARCH_OPTIONS},
                   "token_dim": pre.token_dim, "tokens": pre.num_tokens,
                   "batch_size": args.batch_size, "steps": args.steps, "warmup": args.warmup,
                   "precisions": [dtype_name(d) for d in dtypes], "compile": args.compile},
        "flops": {}, "rows": [],
    }
    for phase in args.phases.split(","):
        report["rows"] += measure_phase(phase.strip(), pre, ft, args, device, dtypes, ceilings,
                                        report)
    report["ceilings"] = {name: c.result() for name, c in ceilings.items()}
    if not args.no_epoch:
        measure_epoch(pre, args, device, dtypes[0], report)
    report["machine"]["load_average_end"] = os.getloadavg()
    print_table(report)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
