"""The original's training, written the way the original writes it: the yardstick
`throughput.py` measures ours against.

The model: separate query/key/value `Linear` layers, heads split with
`.transpose(1, 2).contiguous().view(b * h, t, s)` copies, the attention as two `torch.bmm`
calls around an explicit softmax (or, with attention="loop", one head at a time), plain
`nn.Dropout`, the patches cut with `unfold` and center-cropped, the PatchDropout mask drawn on
the CPU and moved to the device. The step (`original_pretrain_step`, `original_finetune_step`):
fp16 autocast with a GradScaler on CUDA (fp32 on a CPU, where the original has no mixed
precision), torch.optim.Adam's default implementation (the per-tensor loop on a CPU, foreach
on CUDA), boolean indexing of the kept tokens, and the logged loss and accuracy read with
`.item()` every step. The data path (`OriginalDataset`):
one PIL image per sample through per-image torchvision transforms, patchified in the
DataLoader's workers.

It computes the same function as `apl_core.model` given the same weights (`from_fast` copies
them; tests/test_model.py checks it), so the two differ only in how they compute. One knob
keeps the original's own scaling: scale="original" divides q, k and v by D^(1/4) each (the
logits by sqrt(D), the output by D^(1/4)), as `attention_scale="original"` does in ours; the
speed does not depend on it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision import transforms


def naive_patches(images: torch.Tensor, grid: int, crop: int) -> torch.Tensor:
    """(B, 3, N, N) -> (B, T, 3 (P-K)^2): unfold into a G x G grid, center-crop every patch
    (top/left offset round(K / 2), as torchvision's CenterCrop), flatten row-major."""
    b, c, n, _ = images.shape
    p = n // grid
    size, top = p - crop, int(round(crop / 2))
    x = images.unfold(2, p, p).unfold(3, p, p)[:, :, :grid, :grid]  # (B, C, G, G, P, P)
    x = x.permute(0, 2, 3, 1, 4, 5).contiguous()  # (B, G, G, C, P, P)
    x = x[..., top:top + size, top:top + size].contiguous()
    return x.view(b, grid * grid, c * size * size)


class NaiveSelfAttention(nn.Module):
    def __init__(self, emb: int, heads: int, attention: str = "bmm", scale: str = "head"):
        super().__init__()
        self.emb, self.heads, self.attention = emb, heads, attention
        s = emb // heads
        # standard 1/sqrt(s) on the logits, split as s^(-1/4) on q and on k (the original's
        # style); "original" uses D instead of s and divides v by D^(1/4) too
        self.root = (emb if scale == "original" else s) ** 0.25
        self.value_root = self.root if scale == "original" else 1.0
        self.toqueries = nn.Linear(emb, emb, bias=False)
        self.tokeys = nn.Linear(emb, emb, bias=False)
        self.tovalues = nn.Linear(emb, emb, bias=False)
        self.unifyheads = nn.Linear(emb, emb)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, e = x.size()
        h = self.heads
        s = e // h
        queries = self.toqueries(x).view(b, t, h, s)
        keys = self.tokeys(x).view(b, t, h, s)
        values = self.tovalues(x).view(b, t, h, s)
        if self.attention == "loop":  # one head at a time
            outs = []
            for i in range(h):
                q = queries[:, :, i].contiguous() / self.root
                k = keys[:, :, i].contiguous() / self.root
                v = values[:, :, i].contiguous() / self.value_root
                w = F.softmax(torch.bmm(q, k.transpose(1, 2)), dim=2)
                outs.append(torch.bmm(w, v))
            return self.unifyheads(torch.cat(outs, dim=2))
        queries = queries.transpose(1, 2).contiguous().view(b * h, t, s) / self.root
        keys = keys.transpose(1, 2).contiguous().view(b * h, t, s) / self.root
        values = values.transpose(1, 2).contiguous().view(b * h, t, s) / self.value_root
        dot = F.softmax(torch.bmm(queries, keys.transpose(1, 2)), dim=2)
        out = torch.bmm(dot, values).view(b, h, t, s)
        out = out.transpose(1, 2).contiguous().view(b, t, s * h)
        return self.unifyheads(out)


class NaiveBlock(nn.Module):
    """x = LN1(x + Attn(x)); x = Dropout(x); x = LN2(x + FF(x)); x = Dropout(x)."""

    def __init__(self, emb, heads, hidden_mult, dropout, attention="bmm", scale="head"):
        super().__init__()
        self.attention = NaiveSelfAttention(emb, heads, attention, scale)
        self.norm1 = nn.LayerNorm(emb)
        self.norm2 = nn.LayerNorm(emb)
        self.ff = nn.Sequential(nn.Linear(emb, hidden_mult * emb), nn.ReLU(),
                                nn.Linear(hidden_mult * emb, emb))
        self.do = nn.Dropout(dropout)

    def forward(self, x):
        x = self.norm1(self.attention(x) + x)
        x = self.do(x)
        x = self.norm2(self.ff(x) + x)
        return self.do(x)


class NaiveTransformer(nn.Module):
    def __init__(self, image_size=96, grid=7, crop=1, blocks=4, heads=16, hidden_mult=3,
                 dropout=0.15, patch_dropout=0.1, attention="bmm", scale="head"):
        super().__init__()
        self.grid, self.crop, self.patch_dropout = grid, crop, patch_dropout
        self.emb = 3 * (image_size // grid - crop) ** 2
        self.blocks = nn.Sequential(*[
            NaiveBlock(self.emb, heads, hidden_mult, dropout, attention, scale)
            for _ in range(blocks)])

    def forward(self, x):
        """Images (B, 3, N, N), or tokens (B, T, D) as OriginalDataset cuts them ->
        (features (B, T, D), keep mask (B, T))."""
        if x.dim() == 4:
            x = naive_patches(x, self.grid, self.crop)
        b, t, _ = x.shape
        if self.training and self.patch_dropout > 0:
            keep = torch.bernoulli(torch.full((b, t), 1 - self.patch_dropout)).bool().to(x.device)
            x = x * keep.unsqueeze(-1).float()
        else:
            keep = torch.ones(b, t, dtype=torch.bool, device=x.device)
        return self.blocks(x), keep


class NaivePretrainModel(nn.Module):
    def __init__(self, **kwargs):
        super().__init__()
        self.transformer = NaiveTransformer(**kwargs)
        t = self.transformer.grid ** 2
        self.position_head = nn.Linear(self.transformer.emb, t)

    def forward(self, images):
        features, keep = self.transformer(images)
        return self.position_head(features), keep


class NaiveClassifier(nn.Module):
    def __init__(self, num_classes=10, **kwargs):
        super().__init__()
        self.transformer = NaiveTransformer(**kwargs)
        self.class_head = nn.Linear(self.transformer.emb, num_classes)

    def forward(self, images):
        features, _ = self.transformer(images)
        return self.class_head(features.mean(dim=1))


def naive_kwargs(config) -> dict:
    """Constructor arguments from a PretrainConfig (flatten encoder, linear head only)."""
    if config.encoder != "flatten" or config.mlp_head:
        raise ValueError("the naive model is the flatten encoder with a linear head")
    return dict(image_size=config.image_size, grid=config.grid, crop=config.crop,
                blocks=config.blocks, heads=config.heads, hidden_mult=config.hidden_mult,
                dropout=config.dropout, patch_dropout=config.patch_dropout)


def from_fast(naive: nn.Module, fast: nn.Module) -> nn.Module:
    """Copy the weights of an `apl_core.model` model (APLPretrainModel or APLClassifier) into
    its naive twin; the fused qkv weight (3D, D) is rows [q; k; v]."""
    state = {}
    for key, value in fast.state_dict().items():
        if ".attn.qkv." in key:
            prefix = key.replace(".attn.qkv.weight", ".attention.")
            for name, part in zip(("toqueries", "tokeys", "tovalues"), value.chunk(3)):
                state[prefix + name + ".weight"] = part
        else:
            state[key.replace(".attn.proj.", ".attention.unifyheads.")] = value
    naive.load_state_dict(state)
    return naive


def original_scaler(device: torch.device) -> torch.amp.GradScaler:
    """The original's precision: fp16 autocast with a GradScaler on CUDA; a disabled scaler
    (fp32) on a CPU."""
    return torch.amp.GradScaler(device.type, enabled=device.type == "cuda")


def original_pretrain_step(model, optimizer, scaler, batch) -> tuple[float, float]:
    """The original's pretraining step on images or tokens: loss over the kept tokens picked
    by boolean indexing, zero_grad, scaled backward, Adam step, and the logged loss and
    accuracy read with .item() every step."""
    with torch.autocast(batch.device.type, dtype=torch.float16, enabled=scaler.is_enabled()):
        logits, keep = model(batch)
        targets = torch.arange(logits.shape[1], device=logits.device).expand(logits.shape[0], -1)
        kept_logits, kept_targets = logits[keep], targets[keep]
        loss = F.cross_entropy(kept_logits, kept_targets)
    optimizer.zero_grad()
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    accuracy = (kept_logits.argmax(-1) == kept_targets).float().mean()
    return loss.item(), accuracy.item()


def original_finetune_step(model, optimizer, scaler, images, labels) -> tuple[float, float]:
    with torch.autocast(images.device.type, dtype=torch.float16, enabled=scaler.is_enabled()):
        logits = model(images)
        loss = F.cross_entropy(logits, labels)
    optimizer.zero_grad()
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.item(), (logits.argmax(-1) == labels).float().mean().item()


def original_pipeline(size: int, scale: tuple[float, float] = (0.6, 1.0)) -> transforms.Compose:
    """The original's per-image augmentation (docs/method.md; fine-tuning: scale (0.8, 1))."""
    return transforms.Compose([
        transforms.RandomHorizontalFlip(),
        transforms.RandomResizedCrop(size, scale=scale),
        transforms.RandomGrayscale(p=0.2),
        transforms.RandomApply([transforms.GaussianBlur(9, (0.1, 0.5))], p=0.5),
        transforms.ToTensor(),
        transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    ])


class OriginalDataset(torch.utils.data.Dataset):
    """The original's data path, one sample at a time in a DataLoader worker: the uint8
    image (as STL-10's arrays hold it) -> a PIL image -> the per-image augmentation ->
    the cropped patches flattened into tokens (T, D)."""

    def __init__(self, images: torch.Tensor, grid: int, crop: int,
                 scale: tuple[float, float] = (0.6, 1.0)):
        self.images, self.grid, self.crop = images, grid, crop
        self.transform = original_pipeline(images.shape[-1], scale)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        image = Image.fromarray(self.images[index].permute(1, 2, 0).numpy())
        return naive_patches(self.transform(image)[None], self.grid, self.crop)[0]
