"""Neural learners in torch: a small CNN for images and an MLP for any fixed-size input."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from peer.core.blob import InvalidPayload, ModelBlob
from peer.faults import fault
from peer.learners.base import Learner, TrainConfig, expect_arrays, register
from peer.learners.optim import OneCycleAdam


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# torch's default generator is one per process: initial weights are drawn from it, seeded, under
# this lock, so learners built at once in several threads (the in-process runtime's workers) each
# get the weights their seed gives
_GLOBAL_RNG = threading.Lock()


class TorchLearner(Learner):
    """Shared training, prediction and (de)serialisation for torch modules."""

    differentiable = True
    soft_targets = True

    def __init__(self, input_shape, classes, train: TrainConfig, arch: dict | None = None):
        super().__init__(input_shape, classes, train)
        self.arch = {**self.default_arch(), **(arch or {})}
        self.device = pick_device(train.device)
        with _GLOBAL_RNG, torch.random.fork_rng(devices=[]):  # peers may be built in threads of one process
            torch.manual_seed(train.seed)
            self.module = self.build(self.arch).to(self.device)
        self._generator = torch.Generator().manual_seed(train.seed + 1)

    @classmethod
    def default_arch(cls) -> dict:
        return {}

    def build(self, arch: dict) -> nn.Module:
        raise NotImplementedError

    def fit_scaling(self, x: np.ndarray) -> None:
        first = self.module[0] if isinstance(self.module, nn.Sequential) else None
        if isinstance(first, Standardize):
            first.fit(x)
            # A column that never varies in the private data (a category this peer never met)
            # carries no evidence yet: its weights start at zero, so an unseen value does not sway
            # predictions at random. Examples that vary it (counterfactuals) still train them.
            layer = next(m for m in self.module.children() if isinstance(m, nn.Linear))
            constant = torch.from_numpy(np.asarray(x).std(axis=0) <= 1e-6).to(layer.weight.device)
            with torch.no_grad():
                layer.weight[:, constant] = 0.0

    def fit(
        self,
        x,
        y,
        *,
        epochs=None,
        progress: Callable[[int], None] | None = None,
        seed: int | None = None,
        targets: np.ndarray | None = None,
    ):
        cfg = self.train_config
        generator = self._generator if seed is None else torch.Generator().manual_seed(seed)
        epochs = cfg.epochs if epochs is None else epochs
        xs = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
        ys = torch.from_numpy(np.asarray(y, dtype=np.int64)).to(self.device)
        if targets is not None:  # each row's class probabilities: the loss is cross-entropy against them
            if np.shape(targets) != (len(ys), len(self.classes)):
                raise ValueError(f"targets must be of shape ({len(ys)}, {len(self.classes)}), got {np.shape(targets)}")
            ys = torch.from_numpy(np.ascontiguousarray(targets, dtype=np.float32)).to(self.device)
        total = epochs * -(-len(xs) // cfg.batch_size)
        if total == 0:
            self.module.eval()
            return self
        # one cycle per fit: warm up to 2x lr, then cosine decay (about +1 point over a constant lr)
        opt = OneCycleAdam(self.module.parameters(), max_lr=2 * cfg.lr, total_steps=total, pct_start=0.15)
        self.module.train()
        for _ in range(epochs):
            order = torch.randperm(len(xs), generator=generator).to(self.device)
            for start in range(0, len(xs), cfg.batch_size):
                idx = order[start : start + cfg.batch_size]
                opt.zero_grad()
                loss = nn.functional.cross_entropy(self.module(xs[idx]), ys[idx])
                loss.backward()
                opt.step()
                if progress:
                    progress(len(idx))
                fault("train")
        self.module.eval()
        return self

    @torch.no_grad()
    def predict_proba(self, x: np.ndarray, batch_size: int = 128) -> np.ndarray:
        # 128 at a time: as fast on a CPU as larger batches (the activations stay in cache), and a
        # process's memory peaks 20 MB lower than at 512 (freed activations stay in its heap)
        self.module.eval()
        out = []
        for start in range(0, len(x), batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size], dtype=np.float32))
            out.append(torch.softmax(self.module(xb.to(self.device)), dim=1).float().cpu())
        if not out:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        return torch.cat(out).numpy()

    def to_blob(self) -> ModelBlob:
        arrays = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in self.module.state_dict().items()}
        return ModelBlob({**self.base_spec(), "arch": self.arch}, {**arrays, **self.column_arrays()})

    @classmethod
    def from_blob(cls, blob: ModelBlob, device: str = "auto") -> TorchLearner:
        arch = blob.spec.get("arch", {})
        if not isinstance(arch, dict):
            raise InvalidPayload(f"{blob.kind} blob arch is not an object")
        input_shape, classes = tuple(blob.spec["input_shape"]), tuple(blob.spec["classes"])
        # The spec's shapes are checked against the arrays on torch's meta device first (no
        # memory), so a forged spec cannot make this peer allocate a model larger than the blob.
        probe = cls.__new__(cls)
        Learner.__init__(probe, input_shape, classes, TrainConfig())
        try:
            with torch.device("meta"):
                shapes = probe.build({**cls.default_arch(), **arch}).state_dict()
        except (TypeError, ValueError, RuntimeError, KeyError) as exc:
            raise InvalidPayload(f"{blob.kind} blob spec cannot build a model: {type(exc).__name__}: {exc}") from None
        expect_arrays(blob, {k: (tuple(v.shape), "float32") for k, v in shapes.items()})
        learner = cls(input_shape, classes, TrainConfig(device=device), arch)
        learner.module.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in blob.arrays.items()})
        learner.module.eval()
        return learner


class Standardize(nn.Module):
    """(x - mean) / std per feature, fitted on the peer's private data; travels as two arrays."""

    mean: torch.Tensor  # buffers
    std: torch.Tensor

    def __init__(self, width: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("std", torch.ones(width))

    def fit(self, x: np.ndarray) -> None:
        std = x.std(axis=0)
        self.mean.copy_(torch.from_numpy(x.mean(axis=0).astype(np.float32)))
        self.std.copy_(torch.from_numpy(np.where(std > 1e-6, std, 1.0).astype(np.float32)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _input_layer(input_shape: tuple[int, ...]) -> nn.Module:
    """Feature vectors are standardised; anything else is flattened."""
    return Standardize(input_shape[0]) if len(input_shape) == 1 else nn.Flatten()


def _positive_ints(values, what: str) -> list[int]:
    values = list(values) if isinstance(values, (list, tuple)) else [values]
    if not values or not all(isinstance(v, int) and 0 < v <= 4096 for v in values):
        raise ValueError(f"{what} must be positive integers up to 4096, got {values!r}")
    return values


@register
class CNNLearner(TorchLearner):
    """Two strided convolutions and one hidden layer: fast on a CPU, about 90% on Fashion-MNIST."""

    kind = "cnn"

    @classmethod
    def default_arch(cls) -> dict:
        return {"width": 32, "hidden": 128}

    def build(self, arch: dict) -> nn.Module:
        (width,) = _positive_ints(arch["width"], "cnn width")
        (hidden,) = _positive_ints(arch["hidden"], "cnn hidden")
        if len(self.input_shape) == 2:
            channels, height, wide = 1, *self.input_shape
        elif len(self.input_shape) == 3:
            channels, height, wide = self.input_shape
        else:
            raise ValueError(f"cnn needs image input (H, W) or (C, H, W), got {self.input_shape}")
        flat = 2 * width * math.ceil(math.ceil(height / 2) / 2) * math.ceil(math.ceil(wide / 2) / 2)
        return nn.Sequential(
            nn.Unflatten(1, (1, height)) if len(self.input_shape) == 2 else nn.Identity(),
            nn.Conv2d(channels, width, 5, stride=2, padding=2),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(flat, hidden),
            nn.ReLU(),
            nn.Linear(hidden, len(self.classes)),
        )


@register
class MLPLearner(TorchLearner):
    """A multilayer perceptron over the flattened input."""

    kind = "mlp"

    @classmethod
    def default_arch(cls) -> dict:
        return {"hidden": [256, 128]}

    def build(self, arch: dict) -> nn.Module:
        hidden = _positive_ints(arch["hidden"], "mlp hidden")
        layers: list[nn.Module] = [_input_layer(self.input_shape)]
        width = int(np.prod(self.input_shape))
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, len(self.classes)))
        return nn.Sequential(*layers)


@register
class LinearLearner(TorchLearner):
    """Multinomial logistic regression: one linear layer over the (standardised) input."""

    kind = "linear"

    def build(self, arch: dict) -> nn.Module:
        return nn.Sequential(
            _input_layer(self.input_shape), nn.Linear(int(np.prod(self.input_shape)), len(self.classes))
        )
