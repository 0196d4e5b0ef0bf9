"""Architectures that together cover every layer kind the tracer supports.

Each entry builds a fresh module (float64, eval mode, non-trivial running
statistics) and gives its example input shape. Shared by the spec, graph and
CLI tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class Sine(nn.Module):
    def __init__(self, w0: float = 30.0) -> None:
        super().__init__()
        self.w0 = w0

    def forward(self, x):
        return torch.sin(self.w0 * x)


class Siren(nn.Module):
    def __init__(self, dims=(2, 16, 16, 1)) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))
        self.act = Sine(30.0)

    def forward(self, x):
        for layer in self.layers[:-1]:
            x = self.act(layer(x))
        return self.layers[-1](x)


class FunctionalNet(nn.Module):
    """Functional calls everywhere: F.relu, torch.flatten, x + y, torch.sin, dropout, scalars."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.fc1 = nn.Linear(6 * 2 * 2, 10)
        self.fc2 = nn.Linear(10, 10)
        self.fc3 = nn.Linear(10, 3)

    def forward(self, x):
        h = F.relu(self.conv1(x))
        h = h + F.leaky_relu(self.conv2(h), 0.1)
        h = F.max_pool2d(h, 2)
        h = torch.flatten(h, 1)
        h = F.dropout(torch.sin(0.5 * self.fc1(h)), 0.1, training=self.training)
        h = torch.tanh(self.fc2(h)) * 2.0
        h = F.gelu(h) + torch.sigmoid(h) - F.silu(h)
        return self.fc3(h)


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride, norm):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = norm(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), norm(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class TinyResNet(nn.Module):
    def __init__(self, norm=nn.BatchNorm2d, widths=(4, 8)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn1 = norm(widths[0])
        self.layer1 = nn.Sequential(BasicBlock(widths[0], widths[0], 1, norm),
                                    BasicBlock(widths[0], widths[0], 1, norm))
        self.layer2 = nn.Sequential(BasicBlock(widths[0], widths[1], 2, norm))
        self.linear = nn.Linear(widths[1], 5)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer2(self.layer1(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


class ResidualMLP(nn.Module):
    """Pre-norm residual MLP blocks: a stream tied across blocks, LayerNorm."""

    def __init__(self, d=12, hidden=16, blocks=2):
        super().__init__()
        self.embed = nn.Linear(5, d)
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(blocks))
        self.ups = nn.ModuleList(nn.Linear(d, hidden) for _ in range(blocks))
        self.downs = nn.ModuleList(nn.Linear(hidden, d) for _ in range(blocks))
        self.head = nn.Linear(d, 4)

    def forward(self, x):
        h = self.embed(x)
        for norm, up, down in zip(self.norms, self.ups, self.downs, strict=True):
            h = h + down(F.gelu(up(norm(h))))
        return self.head(h)


class DepthwiseSeparable(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 5, padding=2, groups=8)
        self.bn1 = nn.BatchNorm2d(8)
        self.pw = nn.Conv2d(8, 6, 1)
        self.bn2 = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = F.relu(self.bn0(self.stem(x)))
        x = F.relu6(self.bn1(self.dw(x)))
        x = F.relu(self.bn2(self.pw(x)))
        return self.fc(x.mean((2, 3)))


def mlp_relu():
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3))


def mlp_bn_tanh():
    return nn.Sequential(nn.Linear(6, 10), nn.BatchNorm1d(10), nn.Tanh(), nn.Dropout(0.2),
                         nn.Linear(10, 10), nn.Tanh(), nn.BatchNorm1d(10), nn.Linear(10, 2))


def small_cnn():
    return nn.Sequential(nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


def vgg_bn():
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(8 * 2 * 2, 12), nn.ReLU(), nn.Dropout(),
                         nn.Linear(12, 10))


def conv1d_net():
    return nn.Sequential(nn.Conv1d(3, 6, 5, stride=2, padding=2, dilation=1), nn.ELU(),
                         nn.Conv1d(6, 6, 3, dilation=2, padding=2), nn.Softplus(),
                         nn.AvgPool1d(2), nn.Conv1d(6, 5, 1), nn.Hardtanh(),
                         nn.AdaptiveMaxPool1d(1), nn.Flatten(), nn.Linear(5, 2))


def conv3d_net():
    return nn.Sequential(nn.Conv3d(2, 4, (3, 3, 1), padding=(1, 1, 0)),
                         nn.InstanceNorm3d(4, affine=True), nn.SiLU(), nn.AvgPool3d(2),
                         nn.Conv3d(4, 5, 3, padding=1), nn.BatchNorm3d(5), nn.Mish(),
                         nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(5, 3))


def norms_net():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(4, 8), nn.ReLU(),
                         nn.Conv2d(8, 6, 3, padding=1),
                         nn.InstanceNorm2d(6, affine=True, track_running_stats=True), nn.Sigmoid(),
                         nn.Conv2d(6, 4, 3, stride=2, padding=1), nn.LayerNorm([4, 2, 2]), nn.GELU(),
                         nn.Flatten(), nn.Linear(16, 3))


@dataclass(frozen=True)
class Arch:
    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]


ARCHITECTURES = [
    Arch("mlp_relu", mlp_relu, (3, 6)),
    Arch("mlp_bn_tanh", mlp_bn_tanh, (3, 6)),
    Arch("siren", Siren, (5, 2)),
    Arch("small_cnn", small_cnn, (2, 1, 8, 8)),
    Arch("vgg_bn", vgg_bn, (2, 3, 8, 8)),
    Arch("resnet_bn", TinyResNet, (2, 3, 8, 8)),
    Arch("resnet_groupnorm", lambda: TinyResNet(lambda c: nn.GroupNorm(2, c)), (2, 3, 8, 8)),
    Arch("resnet_layernorm", lambda: TinyResNet(lambda c: nn.GroupNorm(1, c)), (2, 3, 8, 8)),
    Arch("residual_mlp_layernorm", ResidualMLP, (3, 5)),
    Arch("depthwise_separable", DepthwiseSeparable, (2, 3, 8, 8)),
    Arch("conv1d", conv1d_net, (2, 3, 16)),
    Arch("conv3d", conv3d_net, (2, 2, 4, 4, 4)),
    Arch("norms", norms_net, (2, 3, 4, 4)),
    Arch("functional", FunctionalNet, (2, 2, 4, 4)),
]


def randomise_buffers(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Give norm layers non-trivial affine parameters and running statistics so
    that permuting them wrongly would change the output."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)):
                if getattr(m, "weight", None) is not None:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=generator) + 0.5)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=generator) * 0.3)
                if getattr(m, "running_mean", None) is not None:
                    m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=generator) * 0.3)
                    m.running_var.copy_(torch.rand(m.running_var.shape, generator=generator) + 0.5)
                    m.num_batches_tracked.fill_(7)
    return model


def build(arch: Arch, seed: int = 0, dtype=torch.float64) -> nn.Module:
    torch.manual_seed(seed)
    model = arch.build().to(dtype)
    randomise_buffers(model, torch.Generator().manual_seed(seed + 1))
    return model.eval()


def example_input(arch: Arch, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 2)
    return torch.randn(arch.input_shape, generator=g, dtype=dtype)
