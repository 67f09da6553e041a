"""ResNeXt-101 32x4d and SE-ResNeXt-101 32x4d as NVIDIA's DeepLearningExamples define them
(PyTorch/Classification/ConvNets, image_classification/resnet.py: `resnext101-32x4d` and
`se-resnext101-32x4d`), for `python3 -m fuseplan_torch export` (bench/published_scaling.py
reads the exported files, bench/models/*.json).

ResNeXt-101 32x4d there is a ResNet of bottlenecks [3, 4, 23, 3] with widths 128-1024,
expansion 2 and 32 groups in the 3x3 convolution (strided in the 3x3, as v1.5): the same
layers, shapes and parameter order as torchvision's ResNet with groups=32 and
width_per_group=4 (44.18 M parameters). The SE variant adds to every bottleneck a
squeeze-and-excitation of two linear layers (channels -> 16 -> channels: a squeeze to 16
units, not a ratio of 16), applied as residual + out * sigmoid(...). The export keeps the
spatial mean, the sigmoid and the multiply-add (torch.addcmul) as custom layers: one FLOP
per output element forward, and the multiply-add's backward as counted from the
operations torch runs (its three inputs' gradients, a broadcast one summed back: 5 per
element). All are passes over the block's output, priced by memory bandwidth.
"""
import torch
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

LAYERS = [3, 4, 23, 3]
SE_UNITS = 16


def resnext101_32x4d() -> nn.Module:
    return ResNet(Bottleneck, LAYERS, groups=32, width_per_group=4)


class SEBottleneck(Bottleneck):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        channels = self.bn3.num_features
        self.se_squeeze = nn.Linear(channels, SE_UNITS)
        self.se_relu = nn.ReLU(inplace=True)
        self.se_expand = nn.Linear(SE_UNITS, channels)
        self.se_sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        scale = self.se_sigmoid(self.se_expand(self.se_relu(self.se_squeeze(out.mean((2, 3))))))
        return self.relu(torch.addcmul(identity, out, scale[:, :, None, None]))


def se_resnext101_32x4d() -> nn.Module:
    return ResNet(SEBottleneck, LAYERS, groups=32, width_per_group=4)
