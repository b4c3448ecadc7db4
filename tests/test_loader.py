"""The device-resident loader: crops, flips, cutout, normalisation, seeding, resume and sharding.

Pixels are compared exactly: the loader output is mapped back to uint8 with `denormalize`
(which rounds), so every check is an equality on integers, not a tolerance.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from resnet_cifar.constants import CIFAR10_MEAN, CIFAR10_STD
from resnet_cifar.data.loader import (
    NO_AUGMENT,
    Augment,
    DeviceLoader,
    cutout,
    denormalize,
    normalize,
    plan_epoch,
    random_crop,
    random_flip,
)

MEAN, STD = CIFAR10_MEAN, CIFAR10_STD


def _images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    x[:, :, 0, 0] = 0      # the extremes survive every path (no overflow in the int16 reflect pad)
    x[:, :, -1, -1] = 255
    return x


def _np_pad(img: np.ndarray, p: int, mode: str) -> np.ndarray:
    return np.pad(img, ((0, 0), (p, p), (p, p)), mode="reflect" if mode == "reflect" else "constant")


def _loader(x, y=None, **kw):
    y = torch.arange(len(x)) if y is None else y
    kw.setdefault("batch_size", 16)
    return DeviceLoader(x, y, mean=MEAN, std=STD, **kw)


def _pixels(batch: torch.Tensor) -> torch.Tensor:
    return denormalize(batch, MEAN, STD)


# ------------------------------------------------------------------------------------ crops
@pytest.mark.parametrize("mode", ["reflect", "zeros"])
@pytest.mark.parametrize("p", [1, 4])
def test_random_crop_is_the_padded_image_at_the_given_offset(mode, p):
    x = _images(12)
    g = torch.Generator().manual_seed(1)
    dx = torch.randint(0, 2 * p + 1, (12,), generator=g)
    dy = torch.randint(0, 2 * p + 1, (12,), generator=g)
    dx[0], dy[0], dx[1], dy[1] = 0, 0, 2 * p, 2 * p   # both corners of the offset range
    out = random_crop(x, dx, dy, p, mode)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    for i in range(12):
        padded = _np_pad(x[i].numpy(), p, mode)
        want = padded[:, dy[i]:dy[i] + 32, dx[i]:dx[i] + 32]
        np.testing.assert_array_equal(out[i].numpy(), want)


def test_zero_padding_gives_zero_borders_and_reflect_mirrors_without_repeating_the_edge():
    x = torch.full((1, 3, 32, 32), 200, dtype=torch.uint8)
    x[0, :, 1, :] = 7      # row 1 is what reflect puts just above row 0
    zero = random_crop(x, torch.tensor([0]), torch.tensor([0]), 4, "zeros")
    assert (zero[0, :, :4, :] == 0).all() and (zero[0, :, :, :4] == 0).all()
    assert (zero[0, :, 4:, 4:] == x[0, :, :28, :28]).all()
    refl = random_crop(x, torch.tensor([4]), torch.tensor([3]), 4, "reflect")  # one row of padding shows
    assert (refl[0, :, 0, :] == 7).all() and (refl[0, :, 1, :] == 200).all()
    assert (refl != 0).all()


def test_padding_zero_is_the_identity():
    x = _images(3)
    assert torch.equal(random_crop(x, torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long), 0,
                                   "reflect"), x)


@pytest.mark.parametrize("mode", ["reflect", "zeros"])
def test_loader_crops_stay_inside_the_padded_image(mode):
    """Every output image equals its source image, padded, at some offset in [0, 2p]^2."""
    p = 4
    x = _images(40)
    loader = _loader(x, augment=Augment(crop_padding=p, pad_mode=mode, flip=False), seed=3)
    seen = 0
    for _, xb, yb in loader.batches(epoch=1):
        for img, label in zip(_pixels(xb), yb, strict=True):
            padded = torch.from_numpy(_np_pad(x[label].numpy(), p, mode))
            hits = [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
                    if torch.equal(padded[:, dy:dy + 32, dx:dx + 32], img)]
            assert hits, f"image {int(label)} is not a crop of its padded source"
            seen += 1
    assert seen == 40


# ------------------------------------------------------------------------------------ flips
def test_flip_is_an_exact_mirror_where_asked_and_identity_elsewhere():
    x = _images(8)
    flags = torch.tensor([True, False] * 4)
    out = random_flip(x, flags)
    for i in range(8):
        want = x[i].flip(2) if flags[i] else x[i]
        assert torch.equal(out[i], want)
    assert torch.equal(out[0][:, :, 0], x[0][:, :, 31])


def test_loader_flips_are_exact_mirrors():
    x = _images(32)
    loader = _loader(x, augment=Augment(crop_padding=0, flip=True), seed=5, batch_size=32)
    _, xb, yb = next(loader.batches(epoch=1))
    flipped = 0
    for img, label in zip(_pixels(xb), yb, strict=True):
        src = x[label]
        if torch.equal(img, src.flip(2)):
            flipped += 1
        else:
            assert torch.equal(img, src)
    assert 0 < flipped < 32


# -------------------------------------------------------------------- per-sample randomness
def test_each_sample_gets_its_own_crop_and_flip():
    """A batch of 64 copies of one image must come out as many different views, not one."""
    x = _images(1).expand(64, -1, -1, -1).contiguous()
    loader = _loader(x, augment=Augment(crop_padding=4, flip=True), batch_size=64, seed=0)
    _, xb, _ = next(loader.batches(epoch=1))
    views = {bytes(v.numpy().tobytes()) for v in _pixels(xb)}
    assert len(views) > 20
    plan = plan_epoch(64, 0, 1, Augment(crop_padding=4, flip=True))
    assert len(set(plan.dx.tolist())) > 1 and len(set(plan.dy.tolist())) > 1
    assert 0 < int(plan.flip.sum()) < 64
    assert plan.dx.min() >= 0 and plan.dx.max() <= 8 and plan.dy.min() >= 0 and plan.dy.max() <= 8


def test_no_augment_and_no_shuffle_returns_the_images_in_order():
    x = _images(20)
    loader = _loader(x, augment=NO_AUGMENT, shuffle=False, batch_size=8)
    out = torch.cat([_pixels(xb) for _, xb, _ in loader.batches(0)])
    assert torch.equal(out, x)


# ---------------------------------------------------------------------- seeds and resume
def _all(loader, epoch):
    return [(b, xb.clone(), yb.clone()) for b, xb, yb in loader.batches(epoch)]


AUG = Augment(crop_padding=4, pad_mode="reflect", flip=True, cutout=8)


def test_same_seed_same_batches_other_seed_or_epoch_different():
    x = _images(50)
    a = _all(_loader(x, augment=AUG, seed=7), 2)
    b = _all(_loader(x, augment=AUG, seed=7), 2)
    assert len(a) == len(b) == 4
    for (i, xa, ya), (j, xb, yb) in zip(a, b, strict=True):
        assert i == j and torch.equal(xa, xb) and torch.equal(ya, yb)
    c = _all(_loader(x, augment=AUG, seed=8), 2)
    assert not torch.equal(a[0][2], c[0][2]) or not torch.equal(a[0][1], c[0][1])
    assert not torch.equal(torch.cat([t[2] for t in a]), torch.cat([t[2] for t in c]))
    d = _all(_loader(x, augment=AUG, seed=7), 3)
    assert not torch.equal(torch.cat([t[2] for t in a]), torch.cat([t[2] for t in d]))


@pytest.mark.parametrize("start", [0, 1, 3])
def test_resuming_at_batch_b_gives_the_same_batches(start):
    x = _images(50)
    full = _all(_loader(x, augment=AUG, seed=1), 4)
    resumed = [(b, xb, yb) for b, xb, yb in _loader(x, augment=AUG, seed=1).batches(4, start=start)]
    assert [b for b, _, _ in resumed] == list(range(start, len(full)))
    for (i, xa, ya), (j, xb, yb) in zip(full[start:], resumed, strict=True):
        assert i == j and torch.equal(xa, xb) and torch.equal(ya, yb)


def test_every_image_once_per_epoch_and_last_batch_kept():
    x = _images(50)
    loader = _loader(x, augment=AUG, seed=2, batch_size=16)
    assert len(loader) == 4
    batches = _all(loader, 1)
    assert [len(yb) for _, _, yb in batches] == [16, 16, 16, 2]
    assert sorted(torch.cat([yb for _, _, yb in batches]).tolist()) == list(range(50))


def test_drop_last_gives_full_batches_and_leaves_out_another_remainder_each_epoch():
    x = _images(50)
    loader = _loader(x, augment=AUG, seed=2, batch_size=16, drop_last=True)
    assert len(loader) == 3 and loader.images_per_epoch == 48 and loader.num_images == 50
    seen = []
    for epoch in range(6):
        batches = _all(loader, epoch)
        assert [len(yb) for _, _, yb in batches] == [16, 16, 16]
        labels = torch.cat([yb for _, _, yb in batches]).tolist()
        assert len(set(labels)) == 48
        seen.append(frozenset(range(50)) - set(labels))
    assert len(set(seen)) > 1                         # the two left out change with the epoch's order
    with pytest.raises(ValueError, match="leaves no batch"):
        _loader(_images(10), augment=AUG, batch_size=16, drop_last=True)


# ------------------------------------------------------------------------------------ cutout
@pytest.mark.parametrize("size", [1, 4, 7, 8])
def test_cutout_zeroes_a_square_of_the_right_size(size):
    x = torch.ones(3, 3, 32, 32)
    cy, cx = torch.tensor([16, 10, 20]), torch.tensor([16, 20, 8])
    out = cutout(x, cy, cx, size)
    lo = size // 2
    for i in range(3):
        zero = out[i] == 0
        assert (zero == zero[0]).all(), "the same square in every channel"
        ys, xs = torch.nonzero(zero[0], as_tuple=True)
        assert len(ys) == size * size
        assert ys.min() == cy[i] - lo and ys.max() == cy[i] - lo + size - 1
        assert xs.min() == cx[i] - lo and xs.max() == cx[i] - lo + size - 1
    assert (out[x.ne(1)] == 0).all()


def test_cutout_is_clipped_at_the_border_and_zero_size_is_off():
    x = torch.ones(1, 3, 32, 32)
    out = cutout(x, torch.tensor([0]), torch.tensor([31]), 8)
    zero = out[0, 0] == 0
    assert zero.sum() == 4 * 5            # rows 0..3 (of -4..3), cols 27..31 (of 27..34)
    assert zero[:4, 27:].all()
    assert torch.equal(cutout(x, torch.tensor([5]), torch.tensor([5]), 0), x)


def test_loader_cutout_sets_a_square_to_the_mean():
    x = torch.full((16, 3, 32, 32), 255, dtype=torch.uint8)
    loader = _loader(x, augment=Augment(crop_padding=0, flip=False, cutout=6), batch_size=16, seed=4)
    _, xb, _ = next(loader.batches(1))
    plan = plan_epoch(16, 4, 1, loader.augment)
    for i in range(16):
        zero = xb[i, 0] == 0
        cy, cx = int(plan.cy[i]), int(plan.cx[i])   # drawn per position in the epoch
        h = min(cy + 3, 32) - max(cy - 3, 0)
        w = min(cx + 3, 32) - max(cx - 3, 0)
        assert int(zero.sum()) == h * w


# ---------------------------------------------------------------------------- normalisation
def test_normalize_denormalize_round_trip_is_exact():
    x = _images(10)
    z = normalize(x, MEAN, STD, channels_last=True)
    assert z.dtype == torch.float32 and z.is_contiguous(memory_format=torch.channels_last)
    want = (x.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(z, want, atol=1e-5, rtol=1e-5)
    assert torch.equal(denormalize(z, MEAN, STD), x)
    assert normalize(x, MEAN, STD, channels_last=False).is_contiguous()


def test_loader_channels_last_and_labels():
    x = _images(10)
    y = torch.arange(10) % 3
    _, xb, yb = next(_loader(x, y, augment=AUG, batch_size=10).batches(0))
    assert xb.is_contiguous(memory_format=torch.channels_last) and xb.dtype == torch.float32
    assert yb.dtype == torch.int64


def test_loader_rejects_non_uint8():
    with pytest.raises(ValueError, match="uint8"):
        DeviceLoader(torch.zeros(2, 3, 32, 32), torch.zeros(2, dtype=torch.long), batch_size=2, mean=MEAN, std=STD)


# ----------------------------------------------------------------------------------- sharding
@pytest.mark.parametrize("n,batch", [(50, 16), (64, 16), (7, 4)])
def test_two_ranks_split_the_single_process_batch_in_two(n, batch):
    x = _images(n)
    one = _all(_loader(x, augment=AUG, seed=9, batch_size=batch), 3)
    r0 = _all(_loader(x, augment=AUG, seed=9, batch_size=batch, rank=0, world_size=2), 3)
    r1 = _all(_loader(x, augment=AUG, seed=9, batch_size=batch, rank=1, world_size=2), 3)
    assert len(one) == len(r0) == len(r1)
    for (b, x1, y1), (b0, x0, y0), (b1, xr1, yr1) in zip(one, r0, r1, strict=True):
        assert b == b0 == b1
        assert len(y0) == (len(y1) + 1) // 2
        assert torch.equal(torch.cat([x0, xr1]), x1)
        assert torch.equal(torch.cat([y0, yr1]), y1)
