"""Every batched augmentation op equals torchvision.transforms.v2's op on each image (within rounding)."""

from __future__ import annotations

import pytest
import torch

from resnet_cifar.data.ops import OP_INDEX, OPS, apply_ops

v2 = pytest.importorskip("torchvision.transforms.v2")

# Magnitudes per op: the ends and the middle of torchvision's bins, both signs where signed.
MAGNITUDES = {
    "Identity": [0.0], "ShearX": [-0.99, -0.3, 0.1, 0.3, 0.99], "ShearY": [-0.99, -0.3, 0.1, 0.3, 0.99],
    "TranslateX": [-32.0, -14.5, -3.0, 0.0, 7.9, 14.5], "TranslateY": [-32.0, -14.5, -3.0, 7.9, 14.5],
    "Rotate": [-135.0, -90.0, -30.0, -4.5, 0.0, 3.3, 30.0, 90.0, 135.0],
    "Brightness": [-0.99, -0.9, -0.3, 0.0, 0.3, 0.9], "Color": [-0.99, -0.5, 0.2, 0.9],
    "Contrast": [-0.9, -0.2, 0.0, 0.5, 0.99], "Sharpness": [-0.99, -0.3, 0.3, 0.99],
    "Posterize": [0.0, 2.0, 4.0, 6.0, 7.0, 8.0], # float32 bins as the policies use them (threshold 17.0000009 compares as 17.0 in float32)
    "Solarize": [0.0, 0.1, 0.5, 0.7667, 1.0] + torch.linspace(1.0, 0.0, 31)[25:].tolist(),
    "AutoContrast": [0.0], "Equalize": [0.0], "Invert": [0.0],
}


def _images(n: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    # Smooth, low-contrast structure too (gradients, a flat image, a narrow range), where
    # rounding and the equalise/autocontrast edge cases show.
    ramp = torch.linspace(40, 90, 32).view(1, 1, 1, 32).expand(1, 3, 32, 32)
    smooth = (ramp + torch.arange(3).view(1, 3, 1, 1) * 20 + torch.arange(32).view(1, 1, 32, 1)).round()
    flat = torch.full((1, 3, 32, 32), 77.0)
    return torch.cat([noise, smooth.clamp(0, 255).to(torch.uint8), flat.to(torch.uint8)])


def _reference(img: torch.Tensor, name: str, mag: float) -> torch.Tensor:
    t = v2.TrivialAugmentWide()
    return t._apply_image_or_video_transform(img, name, mag, interpolation=v2.InterpolationMode.NEAREST,
                                             fill=t._fill)


@pytest.mark.parametrize("name", OPS)
def test_op_matches_torchvision(name):
    x = _images()
    for mag in MAGNITUDES[name]:
        ours = apply_ops(x, torch.full((len(x),), OP_INDEX[name]), torch.full((len(x),), mag, dtype=torch.float64),
                         {name})
        ref = torch.stack([_reference(img, name, mag) for img in x])
        diff = (ours.int() - ref.int()).abs()
        assert diff.max() <= 1, (name, mag, diff.max().item())
        assert (diff > 0).float().mean() < 0.01, (name, mag, (diff > 0).float().mean().item())


def test_mixed_batch_applies_each_images_own_op():
    x = _images()[:5]
    names = ["Rotate", "Equalize", "Identity", "Posterize", "ShearX"]
    mags = [30.0, 0.0, 0.0, 3.0, -0.2]
    out = apply_ops(x, torch.tensor([OP_INDEX[n] for n in names]), torch.tensor(mags, dtype=torch.float64), set(names))
    for i, (n, m) in enumerate(zip(names, mags, strict=True)):
        assert (out[i].int() - _reference(x[i], n, m).int()).abs().max() <= 1, n
    assert torch.equal(out[2], x[2])


def test_ops_absent_from_the_batch_are_not_applied():
    x = _images()[:2]
    op = torch.tensor([OP_INDEX["Invert"]] * 2)
    assert torch.equal(apply_ops(x, op, torch.zeros(2, dtype=torch.float64), set()), x)
