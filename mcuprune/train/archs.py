"""MLPerf Tiny reference networks as plain PyTorch modules, sized for a dataset's input.

Two networks of the MLPerf Tiny benchmark (github.com/mlcommons/tiny, benchmark/training):

* ``ResNet8``: the image-classification model (CIFAR-10, 32x32x3). A 3x3 conv stem, three residual
  stages of 16/32/64 channels (the second and third halve the map with a stride-2 conv and a 1x1
  stride-2 conv on the shortcut), global average pooling and one linear layer.
* ``DSCNN``: the keyword-spotting model (49x10 MFCC, 12 words). A first conv, four
  depthwise-separable blocks (depthwise 3x3 + BN + ReLU, pointwise 1x1 + BN + ReLU), average
  pooling over the whole map and one linear layer.

Both end in global average pooling, so they take any input size; only the input channels and
the classes change with the dataset, and DS-CNN's first conv is adapted (below). The choices that
differ from the Keras references are made for the importer (``mcuprune.frontend.torch_export``)
and the int8 kernels:

* convolutions use symmetric ``padding=k // 2`` where Keras uses ``padding='same'`` (for a stride-2
  conv on an even map Keras pads only the bottom/right; the output size is the same);
* global average pooling is ``AdaptiveAvgPool2d(1)``, which exports as a mean over H and W (no
  padding, so none of avg_pool2d's count_include_pad questions arise);
* the networks return logits: the reference's final softmax belongs in the loss
  (``nn.CrossEntropyLoss``) when training in PyTorch, and does not change the argmax.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from mcuprune.errors import UserError


class ResidualBlock(nn.Module):
    """Two 3x3 conv + BN, added to the shortcut, then ReLU (the MLPerf Tiny ResNet stack).

    When the block changes the map size or the channels, the shortcut is a 1x1 conv with the
    block's stride (no batch norm, as in the reference); otherwise it is the identity."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = nn.Conv2d(in_channels, out_channels, 1, stride=stride)
        else:
            self.shortcut = nn.Identity()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu1(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu2(y + self.shortcut(x))


class ResNet8(nn.Module):
    """MLPerf Tiny ResNet-8 (image classification) for NCHW input of `in_channels` channels.

    `width` is the first stage's channels (16 in the reference); the stages have width, 2*width
    and 4*width. On Fashion-MNIST (28x28) the maps are 28, 14 and 7 pixels; on 8x8 digits 8, 4, 2."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu1 = nn.ReLU()
        self.stage1 = ResidualBlock(width, width, stride=1)
        self.stage2 = ResidualBlock(width, 2 * width, stride=2)
        self.stage3 = ResidualBlock(2 * width, 4 * width, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.stage3(self.stage2(self.stage1(x)))
        return self.fc(self.flatten(self.pool(x)))


class DepthwiseSeparable(nn.Module):
    """Depthwise 3x3 + BN + ReLU, then pointwise 1x1 + BN + ReLU (one DS-CNN block)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU()
        self.pointwise = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.depthwise(x)))
        return self.relu2(self.bn2(self.pointwise(x)))


class DSCNN(nn.Module):
    """MLPerf Tiny DS-CNN (keyword spotting) for NCHW input of `in_channels` channels.

    The reference's first conv is 10x4 with stride 2, shaped for a 49x10 spectrogram; for images
    it is 3x3 (`first_kernel`), and it halves the map only when the input is at least 16 pixels on
    its shorter side (`first_stride`, chosen by `build_arch`), so 8x8 digits keep an 8x8 map.
    Dropout (0.2 after the first conv, 0.4 before pooling) is as in the reference."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 64, first_kernel: tuple[int, int] = (3, 3),
                 first_stride: int = 2, blocks: int = 4) -> None:
        super().__init__()
        pad = (first_kernel[0] // 2, first_kernel[1] // 2)  # odd kernels: symmetric padding keeps the size
        self.conv1 = nn.Conv2d(in_channels, width, first_kernel, stride=first_stride, padding=pad, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu1 = nn.ReLU()
        self.dropout1 = nn.Dropout(0.2)
        self.blocks = nn.Sequential(*[DepthwiseSeparable(width) for _ in range(blocks)])
        self.dropout = nn.Dropout(0.4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout1(self.relu1(self.bn1(self.conv1(x))))
        x = self.dropout(self.blocks(x))
        return self.fc(self.flatten(self.pool(x)))


ARCHS: dict[str, type[nn.Module]] = {"resnet8": ResNet8, "dscnn": DSCNN}


def build_arch(name: str, input_shape_hwc: tuple[int, int, int], num_classes: int) -> nn.Module:
    """The named network for inputs of shape (H, W, C) (the IR's layout; torch reads them as NCHW)."""
    if name not in ARCHS:
        raise UserError(f"unknown architecture {name!r}: choose one of {', '.join(ARCHS)}")
    if len(input_shape_hwc) != 3:
        raise UserError(f"{name} takes (H, W, C) images, got input shape {tuple(input_shape_hwc)}")
    h, w, c = input_shape_hwc
    if name == "dscnn":
        return DSCNN(c, num_classes, first_stride=2 if min(h, w) >= 16 else 1)
    return ARCHS[name](c, num_classes)
