"""The original's from-scratch baselines (docs/method.md, 'Fine-tuning recipe'), trained with the same
loop, data, labels and schedule as the APL classifier."""
from __future__ import annotations

from torch import nn
from torchvision.models import resnet18


class SCNN(nn.Module):
    """S-CNN: conv 3->6 k5, maxpool 2, conv 6->16 k5, maxpool 2, Linear(16*s*s -> 1024), ReLU,
    Linear(1024 -> classes). s follows from the image size (96 px: s = 21, as the original),
    so the same network runs at 32 or 48 px. The convolutions are followed by ReLU as in the
    PyTorch tutorial network that S-CNN is built from."""

    def __init__(self, image_size: int = 96, num_classes: int = 10):
        super().__init__()
        side = ((image_size - 4) // 2 - 4) // 2
        if side < 1:
            raise ValueError(f"image_size={image_size} is too small for S-CNN: need >= 16")
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * side * side, 1024), nn.ReLU(), nn.Linear(1024, num_classes)
        )

    def forward(self, images):
        return self.classifier(self.features(images))


def s_resnet18(num_classes: int = 10) -> nn.Module:
    """S-ResNet: torchvision's ResNet-18 from random initialisation."""
    return resnet18(weights=None, num_classes=num_classes)
