"""The image ops of AutoAugment / RandAugment / TrivialAugment, batched with a magnitude per sample.

Each op takes uint8 images (N,3,H,W) on any device and a float64 magnitude per image (N,), and
computes what torchvision.transforms.v2 computes for one image at that magnitude (its
`_AutoAugmentBase._apply_image_or_video_transform`, nearest interpolation, fill None = 0), within
rounding (tests/test_augment_ops.py checks every op against torchvision). The arithmetic is
torchvision's, vectorised: factors are formed in float64 and cast to float32 as its Python floats
are, blends clamp and truncate to uint8 as `_blend` does, the geometric ops are one grid_sample
with a per-image inverse affine matrix built like `_get_inverse_affine_matrix` and `_affine_grid`.

`apply_ops` applies, per image, the op named by an index into OPS; ops that no image of the batch
uses are skipped (decided from the plan on the CPU, so nothing here waits for the device).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
       "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize", "Invert")
OP_INDEX = {name: i for i, name in enumerate(OPS)}
GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")  # OPS[1:6]
# No tensor is built from Python values on the device here: on CUDA that copy would wait for the GPU.


def _col(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


def inverse_affine(op: torch.Tensor, mag: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(N,2,3) float64 inverse matrices (torchvision's `_get_inverse_affine_matrix`, scale 1) for the
    geometric op of each image; the identity for every other op."""
    zero = torch.zeros_like(mag)
    is_ = {name: op == OP_INDEX[name] for name in GEOMETRIC}
    shear_deg = torch.rad2deg(torch.atan(mag))
    # ShearX/Y are about the top-left corner (center=[0, 0] in pixels: -w/2, -h/2 from the middle).
    sheared = is_["ShearX"] | is_["ShearY"]
    cx = torch.where(sheared, zero - w * 0.5, zero)
    cy = torch.where(sheared, zero - h * 0.5, zero)
    sx = torch.deg2rad(torch.where(is_["ShearX"], shear_deg, zero))
    sy = torch.deg2rad(torch.where(is_["ShearY"], shear_deg, zero))
    tx = torch.where(is_["TranslateX"], mag.trunc(), zero)  # int(magnitude)
    ty = torch.where(is_["TranslateY"], mag.trunc(), zero)
    # F.rotate: angle % 360, then the affine matrix of -angle.
    rot = torch.deg2rad(torch.where(is_["Rotate"], -torch.remainder(mag, 360.0), zero))
    cos_sy, tan_sx = torch.cos(sy), torch.tan(sx)
    a = torch.cos(rot - sy) / cos_sy
    b = -(a * tan_sx + torch.sin(rot))
    c = torch.sin(rot - sy) / cos_sy
    d = torch.cos(rot) - c * tan_sx
    m0, m1, m3, m4 = d, -b, -c, a
    m2 = cx - m0 * (cx + tx) - m1 * (cy + ty)
    m5 = cy - m3 * (cx + tx) - m4 * (cy + ty)
    return torch.stack([m0, m1, m2, m3, m4, m5], dim=1).view(-1, 2, 3)


def affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour warp of uint8 images by per-image inverse matrices, zeros outside."""
    n, _, h, w = x.shape
    theta = theta.to(device=x.device, dtype=torch.float32)
    base = torch.empty(1, h, w, 3, dtype=torch.float32, device=x.device)
    base[..., 0].copy_(torch.linspace((1.0 - w) * 0.5, (w - 1.0) * 0.5, steps=w, device=x.device))
    base[..., 1].copy_(torch.linspace((1.0 - h) * 0.5, (h - 1.0) * 0.5, steps=h, device=x.device).unsqueeze(-1))
    base[..., 2].fill_(1)
    rescaled = theta.transpose(1, 2).clone()  # (n, 3, 2), divided by (w/2, h/2) as torchvision's _affine_grid
    rescaled[..., 0] /= 0.5 * w
    rescaled[..., 1] /= 0.5 * h
    grid = base.view(1, h * w, 3).expand(n, -1, -1).bmm(rescaled).view(n, h, w, 2)
    out = F.grid_sample(x.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return out.round_().to(torch.uint8)


def _factor(mag: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(1 + magnitude, -magnitude): the blend ratio and 1 - ratio, as torchvision's float32 scalars."""
    ratio = (1.0 + mag).to(device)
    return _col(ratio.float()), _col((1.0 - ratio).float())


def _blend(x: torch.Tensor, other: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
    ratio, rest = _factor(mag, x.device)
    return (x.float() * ratio + other * rest).clamp_(0, 255).to(torch.uint8)


def _gray_floor(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(dim=1)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(1).floor_()


def brightness(x, mag):
    ratio, _ = _factor(mag, x.device)
    return (x.float() * ratio).clamp_(0, 255).to(torch.uint8)


def color(x, mag):  # saturation
    return _blend(x, _gray_floor(x), mag)


def contrast(x, mag):
    return _blend(x, _gray_floor(x).mean(dim=(1, 2, 3), keepdim=True), mag)


def sharpness(x, mag):
    c = x.shape[1]
    k = torch.full((3, 3), 1.0 / 13.0, device=x.device)
    k[1, 1] = 5.0 / 13.0
    out = x.float()
    blurred = F.conv2d(out, k.expand(c, 1, 3, 3), groups=c).round_()
    view = out[..., 1:-1, 1:-1]
    _, rest = _factor(mag, x.device)
    view.add_((blurred - view) * rest)
    return out.clamp_(0, 255).to(torch.uint8)


def posterize(x, mag):
    bits = mag.to(x.device).trunc().long()
    mask = ((255 << (8 - bits)) & 255).to(torch.uint8)
    return x & _col(mask)


def solarize(x, mag):
    # magnitude: the threshold as a fraction of 255 (v2's convention), compared in float32 as
    # torchvision's `image >= threshold` does with a Python float.
    return torch.where(x >= _col((255.0 * mag.to(x.device)).float()), 255 - x, x)


def autocontrast(x, mag=None):
    f = x.float()
    lo = f.amin(dim=(-2, -1), keepdim=True)
    hi = f.amax(dim=(-2, -1), keepdim=True)
    flat = hi == lo
    inv_scale = (hi - lo) * (1.0 / 255)
    lo = lo.masked_fill(flat, 0.0)
    inv_scale = inv_scale.masked_fill(flat, 1.0)
    return f.sub(lo).div_(inv_scale).clamp_(0, 255).to(torch.uint8)


def equalize(x, mag=None):
    """Per-channel histogram equalisation with PIL's lookup table (torchvision's `equalize_image`)."""
    flat = x.flatten(start_dim=-2).long()
    hist = torch.zeros(x.shape[:-2] + (256,), dtype=torch.int32, device=x.device)
    hist.scatter_add_(-1, flat, hist.new_ones(1).expand_as(flat))
    cum = hist.cumsum(-1)
    last = cum.argmax(-1, keepdim=True)  # the largest value present
    step = (flat.shape[-1] - hist.gather(-1, last)).div(255, rounding_mode="floor")
    lut = (cum[..., :-1] + step // 2).div(step.clamp(min=1), rounding_mode="floor").clamp_(0, 255).to(torch.uint8)
    lut = torch.cat([lut.new_zeros(x.shape[:-2] + (1,)), lut], dim=-1)
    out = lut.gather(-1, flat).view_as(x)
    return torch.where(step.ne(0).unsqueeze(-1), out, x)


def invert(x, mag=None):
    return x.bitwise_not()


PIXEL_OPS = {"Brightness": brightness, "Color": color, "Contrast": contrast, "Sharpness": sharpness,
             "Posterize": posterize, "Solarize": solarize, "AutoContrast": autocontrast,
             "Equalize": equalize, "Invert": invert}


def apply_ops(x: torch.Tensor, op: torch.Tensor, mag: torch.Tensor, present: set[str]) -> torch.Tensor:
    """Image i gets OPS[op[i]] at magnitude mag[i]; `present` names the ops any image uses."""
    if x.shape[1] != 3:
        raise ValueError(f"augmentation ops expect 3-channel images, got {x.shape[1]}")
    op = op.to(x.device)
    out = x
    if present & set(GEOMETRIC):
        is_geo = _col((op >= OP_INDEX[GEOMETRIC[0]]) & (op <= OP_INDEX[GEOMETRIC[-1]]))  # contiguous in OPS
        out = torch.where(is_geo, affine(x, inverse_affine(op, mag.to(x.device), *x.shape[-2:])), out)
    for name, fn in PIXEL_OPS.items():
        if name in present:
            out = torch.where(_col(op == OP_INDEX[name]), fn(x, mag), out)
    return out
