"""The data fingerprint: the same images give the same one; any change is named."""

from __future__ import annotations

import copy
import io

import torch

from resnet_cifar.data import Dataset
from resnet_cifar.data.fingerprint import describe, differences, of_dataset


def _data(n_per_class: int = 4, with_test: bool = True) -> Dataset:
    g = torch.Generator().manual_seed(0)
    n = 3 * n_per_class
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.arange(3).repeat_interleave(n_per_class)
    return Dataset("folder", x, y, x[:3].clone() if with_test else None, y[:3].clone() if with_test else None,
                   ["cat", "dog", "eel"], (0.5,) * 3, (0.25,) * 3)


def test_the_same_images_give_the_same_fingerprint_and_it_is_plain_data():
    a, b = of_dataset(_data()), of_dataset(_data())
    assert a == b and differences(a, b) == [] and describe(a, b) == ""
    assert a["train"]["n"] == 12 and a["train"]["per_class"] == [4, 4, 4]
    buf = io.BytesIO()                                    # fits a weights_only checkpoint
    torch.save({"fp": a}, buf)
    buf.seek(0)
    assert torch.load(buf, weights_only=True)["fp"] == a


def test_added_changed_and_reordered_images_are_named():
    run = of_dataset(_data())
    more = _data()
    more.train_x = torch.cat([more.train_x, more.train_x[:2]])
    more.train_y = torch.cat([more.train_y, torch.tensor([1, 1])])
    assert differences(run, of_dataset(more)) == ["train: 14 images now, 12 in the run (dog +2)"]
    edited = _data()
    edited.train_x[5, 0, 0, 0] ^= 1                       # one pixel of one image
    assert differences(run, of_dataset(edited)) == ["train: the same 12 images by count, but other pixels or order"]
    reordered = _data()
    reordered.train_x = reordered.train_x.flip(0)
    assert differences(run, of_dataset(reordered))[0].startswith("train: the same 12")
    no_test = _data(with_test=False)
    assert differences(run, of_dataset(no_test)) == ["test: no test images now, 3 in the run"]
    renamed = _data()
    renamed.classes = ["cat", "dog", "fox"]
    assert differences(run, of_dataset(renamed)) == ["the classes differ (3 now, 3 in the run)"]


def test_a_missing_or_malformed_record_is_no_verdict_or_named():
    now = of_dataset(_data())
    assert differences(None, now) == [] and differences({"version": 99}, now) == []
    bad = copy.deepcopy(now)
    bad["train"] = {"n": 12, "per_class": [1, 2], "key": "x"}
    assert differences(bad, now) == ["train: the run's record of it is malformed"]
