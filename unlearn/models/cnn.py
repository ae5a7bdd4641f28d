"""A small CNN for tiny images (the embedded default: 8x8 digits).

Downsampling is a stride-2 convolution rather than max-pooling: on 2 CPU cores max-pool's backward
path cost more than all three convolutions together at this size.
"""
from torch import nn
from unlearn.knobs import COUNT, Range


def conv_bn(in_channels: int, out_channels: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


class SmallCNN(nn.Module):
    knobs = {"num_classes": Range(2, integer=True), "in_channels": COUNT, "width": COUNT}

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            *conv_bn(in_channels, w), *conv_bn(w, 2 * w, stride=2), *conv_bn(2 * w, 4 * w),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.classifier = nn.Linear(4 * w, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x))
