"""Run under torchrun: one training step's gradients, averaged by DDP over the ranks, each rank
holding its share of the same global batch (the way BatchLoader shards it). Rank 0 saves them
to the path given as the first argument."""
import sys

import torch
from torch.nn.parallel import DistributedDataParallel

from apl_core.config import PretrainConfig
from apl_core.data import BatchLoader, load_split
from apl_core.distributed import init_distributed, shutdown
from apl_core.model import build_pretrain_model
from apl_core.objective import position_loss

CONFIG = PretrainConfig(image_size=32, grid=4, crop=1, heads=3, blocks=2, hidden_mult=2,
                        dropout=0.0, patch_dropout=0.0, dataset="synthetic")
GLOBAL_BATCH = 32


def first_global_batch_gradients(rank: int = 0, world_size: int = 1, wrap=lambda m: m):
    torch.manual_seed(0)
    model = build_pretrain_model(CONFIG)
    images = load_split("synthetic", "unlabeled", image_size=32, limit=128)
    loader = BatchLoader(images, GLOBAL_BATCH, shuffle=True, drop_last=True, seed=3,
                         rank=rank, world_size=world_size)
    loader.set_epoch(0)
    batch, _ = next(iter(loader))
    trained = wrap(model)
    loss, _, _ = position_loss(trained, batch)
    loss.backward()
    return {name: p.grad for name, p in model.named_parameters()}


if __name__ == "__main__":
    context = init_distributed(torch.device("cpu"))
    gradients = first_global_batch_gradients(context.rank, context.world_size,
                                             DistributedDataParallel)
    if context.is_main:
        torch.save(gradients, sys.argv[1])
    shutdown()
