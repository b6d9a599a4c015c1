"""The search's input convolutions: the same function and input gradient as torch's, computed as a fold."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from peer.core.counterfactual import _fast_layout
from peer.core.input_grad import InputGradConv2d, fold_pays, with_fold_grads
from peer.process import configure_process, keep_freed_memory


def _input_grad(module: nn.Module, x: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    xa = x.clone().requires_grad_(True)
    out = module(xa)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    (grad,) = torch.autograd.grad((out * weights).sum(), xa)
    return out.detach(), grad


@pytest.mark.parametrize(
    "cin, cout, kernel, stride, padding, size",
    [(1, 32, 5, 2, 2, 28), (3, 32, 3, 1, 1, 16), (1, 8, (3, 2), (2, 1), (1, 0), 11), (2, 16, 2, 2, 0, 9)],
)
def test_fold_gives_torchs_output_and_input_gradient(cin, cout, kernel, stride, padding, size):
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding)
    conv.requires_grad_(False)
    assert fold_pays(conv)
    x = torch.rand(5, cin, size, size)
    out, grad = _input_grad(conv, x)
    out_f, grad_f = _input_grad(InputGradConv2d(conv), x)
    assert torch.equal(out, out_f)
    assert torch.allclose(grad, grad_f, rtol=1e-5, atol=1e-5)
    assert not torch.equal(grad, torch.zeros_like(grad))


def test_only_plain_convolutions_on_few_input_channels_are_wrapped():
    assert not fold_pays(nn.Conv2d(32, 64, 3))  # 32 * 9 > 64: oneDNN's own pass is the faster
    assert not fold_pays(nn.Conv2d(2, 32, 3, groups=2))
    assert not fold_pays(nn.Conv2d(1, 32, 3, dilation=2))
    assert not fold_pays(nn.Conv2d(1, 32, 3, padding="same"))
    assert not fold_pays(nn.Conv2d(1, 32, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(ValueError, match="few input channels"):
        InputGradConv2d(nn.Conv2d(32, 64, 3))
    net = nn.Sequential(nn.Conv2d(1, 32, 5), nn.ReLU(), nn.Sequential(nn.Conv2d(32, 64, 3), nn.Conv2d(1, 16, 3)))
    wrapped = with_fold_grads(net)
    assert isinstance(wrapped[0], InputGradConv2d) and isinstance(wrapped[2][0], nn.Conv2d)
    assert isinstance(wrapped[2][1], InputGradConv2d)


def test_weights_that_need_a_gradient_take_the_plain_convolution():
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 16, 3)
    wrapped = InputGradConv2d(conv)
    wrapped(torch.rand(4, 1, 10, 10)).sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0


def test_the_search_module_of_a_cnn_teacher_has_torchs_gradient(fmnist):
    from peer.learners import make_learner

    learner = make_learner("cnn", (28, 28), fmnist[0].classes)
    module = learner.module.eval()
    module.requires_grad_(False)
    search = _fast_layout(module, torch.device("cpu"))
    assert any(isinstance(m, InputGradConv2d) for m in search.modules())
    assert not any(isinstance(m, InputGradConv2d) for m in module.modules())  # the teacher's own is untouched
    x = torch.from_numpy(np.ascontiguousarray(fmnist[0].x[:64], dtype=np.float32))
    out, grad = _input_grad(copy.deepcopy(module), x)
    out_s, grad_s = _input_grad(search, x)
    assert torch.allclose(out, out_s, rtol=1e-4, atol=1e-4)
    assert torch.allclose(grad, grad_s, rtol=1e-4, atol=1e-5)


def test_a_process_keeps_freed_memory_where_the_c_library_is_glibc():
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    assert keep_freed_memory()
    before = torch.get_num_threads()
    try:
        configure_process(1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
