"""The padded-head layout of the attention that `throughput.py --head-multiple N` times: every
head stored padded with zero features up to a multiple of N (the paper model: D/H = 27 -> 32
with N = 8).

GPU attention kernels want such head dimensions and otherwise pad q, k and v on every call,
so padding the weights once might pay on a GPU. That is unmeasured, and on a CPU the padded
model is slower (README's table: 4-6 % in fp32, 0.4-2 % in bf16), so `apl_core.model` keeps
the real layout and this one lives here, next to the benchmark that measures it, until a GPU
measurement shows it pays.

The same function and the same training: the padded q/k/v features are zero, so they add
nothing to q.k and give zero outputs, which zero output-projection columns ignore; every
gradient of the padding is therefore exactly zero and Adam/AdamW (with or without weight
decay) keep it zero. state_dict() and load_state_dict() use the unpadded layout, so
checkpoints load into either layout (an optimizer's state, shaped like the padded weights,
does not). tests/test_benchmarks.py checks all of it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from apl_core.model import SelfAttention


def resize_heads(weight: torch.Tensor, axis: int, old: int, new: int) -> torch.Tensor:
    """Change every head's run of features along `axis` from `old` to `new`: pad zeros at the
    end of each head, or cut them off. The axis holds whole heads (qkv: [q | k | v], each
    head-major), so it splits into (axis size / old) heads of `old` features."""
    heads = weight.movedim(axis, -1).unflatten(-1, (-1, old))
    heads = F.pad(heads, (0, new - old)) if new > old else heads[..., :new]
    return heads.flatten(-2).movedim(-1, axis).contiguous()


class PaddedSelfAttention(nn.Module):
    """`SelfAttention` with its heads padded to a multiple of `multiple`, made from an unpadded
    layer: it takes over the layer's q/k/v and output projections, padding their weights, and
    its scaling."""

    def __init__(self, attention: SelfAttention, multiple: int):
        super().__init__()
        self.heads, self.head_dim = attention.heads, attention.head_dim
        self.padded_head_dim = -(-self.head_dim // multiple) * multiple
        # computed from the real head dimension: the padding adds nothing to q.k
        self.logit_scale, self.value_scale = attention.logit_scale, attention.value_scale
        self.qkv, self.proj = attention.qkv, attention.proj
        for layer, axis in ((self.qkv, 0), (self.proj, 1)):
            # a frozen layer (a linear probe's) stays frozen
            layer.weight = nn.Parameter(self.padded(layer.weight.detach(), axis),
                                        requires_grad=layer.weight.requires_grad)
        self.qkv.out_features = 3 * self.heads * self.padded_head_dim
        self.proj.in_features = self.heads * self.padded_head_dim
        self.register_state_dict_post_hook(PaddedSelfAttention._unpad_state)
        self.register_load_state_dict_pre_hook(PaddedSelfAttention._pad_state)

    def padded(self, weight: torch.Tensor, axis: int) -> torch.Tensor:
        """The padded layout of an unpadded qkv (axis 0) or proj (axis 1) weight."""
        return resize_heads(weight, axis, self.head_dim, self.padded_head_dim)

    def unpadded(self, weight: torch.Tensor, axis: int) -> torch.Tensor:
        """The unpadded layout of a padded qkv (axis 0) or proj (axis 1) weight or gradient."""
        return resize_heads(weight, axis, self.padded_head_dim, self.head_dim)

    def _unpad_state(self, state_dict, prefix, local_metadata) -> None:
        for name, axis in (("qkv.weight", 0), ("proj.weight", 1)):
            state_dict[prefix + name] = self.unpadded(state_dict[prefix + name], axis)

    def _pad_state(self, state_dict, prefix, *args) -> None:
        for name, axis in (("qkv.weight", 0), ("proj.weight", 1)):
            if prefix + name in state_dict:  # a missing key is load_state_dict's to report
                state_dict[prefix + name] = self.padded(state_dict[prefix + name], axis)

    # the model's forward reads the head size off the projections, so it runs padded as is
    forward = SelfAttention.forward


def pad_heads(model: nn.Module, multiple: int) -> nn.Module:
    """`model` (an APLPretrainModel or APLClassifier) with every attention layer's heads padded
    to a multiple of `multiple`, in place: the same function and the same state_dict()."""
    for block in model.transformer.blocks:
        block.attn = PaddedSelfAttention(block.attn, multiple)
    return model
