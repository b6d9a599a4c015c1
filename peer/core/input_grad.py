"""An input convolution whose gradient with respect to its input is a matrix product and a fold.

The counterfactual search needs the gradient of a teacher's output with respect to its input,
never with respect to its weights. For a convolution on few input channels (a greyscale or RGB
image: Cin * kh * kw no more than its output channels), oneDNN's backward-data pass on a CPU is
slow: on Fashion-MNIST's CNN (1 -> 32 channels, 5x5, stride 2), timed by hand on 2 cores, it took
about 65 ms for 1,024 images, against about 9 ms for the forward pass. The same gradient as `fold(g W)` (g the output
gradient, one row per output position; W the weights as a Cout x (Cin kh kw) matrix) takes about
25-30 ms: a product with a small inner dimension, then overlapping patches summed back into place.
The forward pass is F.conv2d's, unchanged; only the search uses this module (a copy of the teacher's
first convolution, its weights frozen), and training never does.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class _Conv2dFoldGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
        ctx.conv = conv
        ctx.size = tuple(x.shape[-2:])
        return F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        conv: nn.Conv2d = ctx.conv
        n, cout, h, w = grad.shape
        weight = conv.weight.reshape(cout, -1)  # Cout x (Cin kh kw)
        rows = grad.permute(0, 2, 3, 1).reshape(n, h * w, cout)  # a view of a channels-last gradient
        cols = torch.matmul(rows, weight).transpose(1, 2).contiguous()  # n x (Cin kh kw) x positions
        padding = conv.padding
        assert not isinstance(padding, str), "fold_pays admits numeric padding only"
        gx = F.fold(cols, ctx.size, conv.kernel_size, padding=padding, stride=conv.stride)
        return gx, None


class InputGradConv2d(nn.Module):
    """`conv` (weights shared, not copied) whose input gradient is computed as a fold; where its
    weights need a gradient (training), the plain convolution."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if not fold_pays(conv):
            raise ValueError(f"{conv} is not a plain convolution on few input channels")
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.requires_grad or self.conv.weight.requires_grad:
            return self.conv(x)
        return _Conv2dFoldGrad.apply(x, self.conv)


def fold_pays(conv: nn.Module) -> bool:
    """Whether `conv` is a plain 2-d convolution (zero padding given as numbers, no dilation or
    groups) on so few input channels that the fold is the cheaper input gradient."""
    return (
        type(conv) is nn.Conv2d
        and conv.groups == 1
        and conv.dilation == (1, 1)
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1] <= conv.out_channels
    )


def with_fold_grads(module: nn.Module) -> nn.Module:
    """`module` with every convolution the fold pays for wrapped in InputGradConv2d, in place."""
    for name, child in module.named_children():
        if fold_pays(child):
            setattr(module, name, InputGradConv2d(child))  # type: ignore[arg-type]
        else:
            with_fold_grads(child)
    return module
