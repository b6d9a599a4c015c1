"""Augmentation: the rotation and shift ckd applies without torchvision are torchvision's."""

import subprocess
import sys

import numpy as np
import torch

from peer.core.augment import AugmentConfig, augment_images, rotate_shift


def test_rotate_shift_gives_torchvision_affine_pixel_for_pixel():
    from torchvision.transforms.v2 import functional as TF

    rng = np.random.default_rng(0)
    for shape in [(5, 1, 28, 28), (3, 3, 32, 32), (2, 1, 9, 13), (1, 1, 28, 28)]:
        images = torch.from_numpy(rng.random(shape, dtype=np.float32))
        for _ in range(25):
            angle = float(rng.uniform(-30, 30))
            shift = (int(rng.integers(-4, 5)), int(rng.integers(-4, 5)))
            want = TF.affine(images, angle=angle, translate=list(shift), scale=1.0, shear=[0.0])
            got = rotate_shift(images, angle, shift)
            assert torch.equal(got, want), (shape, angle, shift)
    # not the identity: a rotation moves pixels
    assert not torch.equal(rotate_shift(images, 10.0, (0, 0)), images)


def test_augmenting_images_loads_neither_torchvision_nor_the_torch_compiler():
    code = """
import sys
import numpy as np
from peer.core.augment import AugmentConfig, augment_images
x = np.random.default_rng(0).random((40, 28, 28), dtype=np.float32)
out, y = augment_images(x, np.arange(40) % 3, AugmentConfig(copies=2), np.random.default_rng(1))
assert out.shape == (80, 28, 28) and (out != np.tile(x, (2, 1, 1))).any()
print("torchvision" in sys.modules, "torch._dynamo" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False False", out.stdout + out.stderr


def test_augmented_copies_keep_labels_and_the_grid():
    x = np.random.default_rng(2).random((10, 28, 28), dtype=np.float32)
    out, y = augment_images(x, np.arange(10), AugmentConfig(copies=3), np.random.default_rng(3))
    assert out.shape == (30, 28, 28) and y.tolist() == list(range(10)) * 3
    assert np.allclose(out * 255, np.round(out * 255), atol=1e-4)
