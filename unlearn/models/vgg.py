"""VGG-16 with batch norm, CIFAR-style (one 512-wide linear head on a 1x1 feature map)."""
from torch import nn
from unlearn.knobs import COUNT, Range, declare

VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(nn.Module):
    def __init__(self, layout=VGG16_LAYOUT, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        layers, channels = [], in_channels
        for item in layout:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(channels, item, 3, padding=1, bias=False), nn.BatchNorm2d(item), nn.ReLU(inplace=True)]
                channels = item
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x))


@declare(num_classes=Range(2, integer=True), in_channels=COUNT)
def vgg16_bn(num_classes: int = 10, in_channels: int = 3) -> VGG:
    return VGG(VGG16_LAYOUT, num_classes=num_classes, in_channels=in_channels)
