"""Multi-view test-time augmentation: `tta_logits(model, images, mode)`.

The views and weights of airbench94 (PyPI airbench 0.1.8, `utils.infer`, tta_level 0/1/2):

    none            model(x)
    flip            (model(x) + model(flip x)) / 2
    flip_translate  flip(x) / 2 + (flip(x shifted by (-1,-1)) + flip(x shifted by (+1,+1))) / 4

where the shifts crop the 1-pixel reflect-padded image at its top-left and bottom-right corners.
So the original and its mirror weigh 1/4 each and the four shifted views 1/8 each. Logits (not
probabilities) are averaged, as airbench does. `images` are normalised float batches; call it
with the model in eval mode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

TTA_MODES = ("none", "flip", "flip_translate")
TTA_VIEWS = {"none": 1, "flip": 2, "flip_translate": 6}   # forward passes per image (for eval FLOPs)


def _keep_format(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if like.dim() == 4 and like.is_contiguous(memory_format=torch.channels_last):
        return x.contiguous(memory_format=torch.channels_last)
    return x


def _mirror(model, x: torch.Tensor) -> torch.Tensor:
    return 0.5 * model(x) + 0.5 * model(_keep_format(x.flip(-1), x))


@torch.no_grad()
def tta_logits(model, images: torch.Tensor, mode: str = "flip_translate") -> torch.Tensor:
    if mode not in TTA_MODES:
        raise ValueError(f"unknown TTA mode {mode!r}; choose one of: {', '.join(TTA_MODES)}")
    if mode == "none":
        return model(images)
    logits = _mirror(model, images)
    if mode == "flip":
        return logits
    h, w = images.shape[-2:]
    padded = F.pad(images, (1, 1, 1, 1), mode="reflect")
    shifted = [_keep_format(padded[..., 0:h, 0:w], images), _keep_format(padded[..., 2:h + 2, 2:w + 2], images)]
    translated = torch.stack([_mirror(model, s) for s in shifted]).mean(0)
    return 0.5 * logits + 0.5 * translated
