"""The architectures of common vision models, built from plain torch.nn with random weights, for
tests and benchmarks (torchvision's and timm's builders are what users have; their wheels need not
load here). Layer for layer as torchvision's ResNet-18/50, MobileNetV2, MobileNetV3-Small and
EfficientNet-B0, and timm's EfficientNet-Lite0; BatchNorm statistics are randomized so that folding
them is exercised.

    model = edgecompress.engine.zoo.build("resnet18")
"""

from __future__ import annotations

from typing import Any

__all__ = ["MODELS", "build"]


def _divisible(v: float, d: int = 8) -> int:
    """Channels rounded to a multiple of d, never below 90% of v (torchvision's _make_divisible)."""
    n = max(d, int(v + d / 2) // d * d)
    return n + d if n < 0.9 * v else n


def _nn() -> Any:
    import torch
    from torch import nn

    class ConvBN(nn.Sequential):
        def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: Any = nn.ReLU) -> None:
            layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
            if act is not None:
                layers.append(act())
            super().__init__(*layers)

    class Basic(nn.Module):
        expansion = 1

        def __init__(self, cin: int, width: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.relu = nn.ReLU()
            self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(width)
            self.downsample = None
            if stride != 1 or cin != width:
                self.downsample = nn.Sequential(nn.Conv2d(cin, width, 1, stride, bias=False), nn.BatchNorm2d(width))

        def forward(self, x: Any) -> Any:
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            identity = x if self.downsample is None else self.downsample(x)
            return self.relu(out + identity)

    class Bottleneck(nn.Module):
        expansion = 4

        def __init__(self, cin: int, width: int, stride: int) -> None:
            super().__init__()
            out = width * 4
            self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(width)
            self.conv3 = nn.Conv2d(width, out, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(out)
            self.relu = nn.ReLU()
            self.downsample = None
            if stride != 1 or cin != out:
                self.downsample = nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False), nn.BatchNorm2d(out))

        def forward(self, x: Any) -> Any:
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
            identity = x if self.downsample is None else self.downsample(x)
            return self.relu(out + identity)

    class ResNet(nn.Module):
        def __init__(self, block: Any, layers: list[int], classes: int = 1000) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU()
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            cin, stages = 64, []
            for i, n in enumerate(layers):
                width = 64 * 2 ** i
                blocks = []
                for j in range(n):
                    blocks.append(block(cin, width, 2 if j == 0 and i > 0 else 1))
                    cin = width * block.expansion
                stages.append(nn.Sequential(*blocks))
            self.layer1, self.layer2, self.layer3, self.layer4 = stages
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(cin, classes)

        def forward(self, x: Any) -> Any:
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    class SqueezeExcite(nn.Module):
        def __init__(self, c: int, squeeze: int, act: Any, gate: Any) -> None:
            super().__init__()
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc1 = nn.Conv2d(c, squeeze, 1)
            self.fc2 = nn.Conv2d(squeeze, c, 1)
            self.act, self.gate = act(), gate()

        def forward(self, x: Any) -> Any:
            return x * self.gate(self.fc2(self.act(self.fc1(self.avgpool(x)))))

    class InvertedResidual(nn.Module):
        """expand 1x1 -> depthwise k x k -> (squeeze-excitation) -> project 1x1, + x when shapes allow."""

        def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int, se: int, act: Any,
                     gate: Any = nn.Hardsigmoid, se_act: Any = nn.ReLU) -> None:
            super().__init__()
            layers: list[Any] = []
            if expand != cin:
                layers.append(ConvBN(cin, expand, 1, act=act))
            layers.append(ConvBN(expand, expand, k, stride, groups=expand, act=act))
            if se:
                layers.append(SqueezeExcite(expand, se, se_act, gate))
            layers.append(ConvBN(expand, cout, 1, act=None))
            self.block = nn.Sequential(*layers)
            self.residual = stride == 1 and cin == cout

        def forward(self, x: Any) -> Any:
            y = self.block(x)
            return x + y if self.residual else y

    class Net(nn.Module):
        def __init__(self, stem: int, blocks: list[Any], head: list[Any], stem_act: Any) -> None:
            super().__init__()
            self.features = nn.Sequential(ConvBN(3, stem, 3, 2, act=stem_act), *blocks)
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Sequential(*head)

        def forward(self, x: Any) -> Any:
            return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))

    def mobilenet_v2() -> Any:
        cfg = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
        cin, blocks = 32, []
        for t, c, n, s in cfg:
            for i in range(n):
                blocks.append(InvertedResidual(cin, c, 3, s if i == 0 else 1, cin * t, 0, nn.ReLU6))
                cin = c
        blocks.append(ConvBN(cin, 1280, 1, act=nn.ReLU6))
        return Net(32, blocks, [nn.Dropout(0.2), nn.Linear(1280, 1000)], nn.ReLU6)

    def mobilenet_v3_small() -> Any:
        hs, re = nn.Hardswish, nn.ReLU
        # (kernel, expanded, out, squeeze-excitation, activation, stride)
        cfg = [(3, 16, 16, True, re, 2), (3, 72, 24, False, re, 2), (3, 88, 24, False, re, 1),
               (5, 96, 40, True, hs, 2), (5, 240, 40, True, hs, 1), (5, 240, 40, True, hs, 1),
               (5, 120, 48, True, hs, 1), (5, 144, 48, True, hs, 1), (5, 288, 96, True, hs, 2),
               (5, 576, 96, True, hs, 1), (5, 576, 96, True, hs, 1)]
        cin, blocks = 16, []
        for k, e, c, se, act, s in cfg:
            blocks.append(InvertedResidual(cin, c, k, s, e, _divisible(e // 4) if se else 0, act))
            cin = c
        blocks.append(ConvBN(cin, 576, 1, act=hs))
        head = [nn.Linear(576, 1024), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(1024, 1000)]
        return Net(16, blocks, head, hs)

    def efficientnet(lite: bool) -> Any:
        # (expand ratio, kernel, stride, out, repeats): B0's stages
        cfg = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
               (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]
        act = nn.ReLU6 if lite else nn.SiLU
        cin, blocks = 32, []
        for t, k, s, c, n in cfg:
            for i in range(n):
                se = 0 if lite else max(1, cin // 4)
                blocks.append(InvertedResidual(cin, c, k, s if i == 0 else 1, cin * t, se, act, gate=nn.Sigmoid,
                                               se_act=nn.SiLU))
                cin = c
        blocks.append(ConvBN(cin, 1280, 1, act=act))
        return Net(32, blocks, [nn.Dropout(0.2), nn.Linear(1280, 1000)], act)

    return {
        "resnet18": lambda: ResNet(Basic, [2, 2, 2, 2]),
        "resnet50": lambda: ResNet(Bottleneck, [3, 4, 6, 3]),
        "mobilenet_v2": mobilenet_v2,
        "mobilenet_v3_small": mobilenet_v3_small,
        "efficientnet_b0": lambda: efficientnet(False),
        "efficientnet_lite0": lambda: efficientnet(True),
    }


MODELS = ("resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "efficientnet_lite0")


def build(name: str, seed: int = 0) -> Any:
    """A model of architecture ``name`` (MODELS) in eval mode, random weights from ``seed``, BatchNorm
    statistics random around the identity."""
    import torch
    from torch import nn

    if name not in MODELS:
        raise ValueError(f"name: expected one of {MODELS}, got {name!r}")
    torch.manual_seed(seed)
    model = _nn()[name]()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return model.eval()
