"""`data preview`: the grid shows exactly the tensors the network sees, de-normalised correctly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from resnet_cifar.data import Dataset
from resnet_cifar.data.loader import DeviceLoader, denormalize, normalize
from resnet_cifar.preview import preview_batch, preview_dataset, render_grid

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def _dataset(synthetic_images, n_per_class=3):
    x, y = synthetic_images(n_per_class, len(CLASSES))
    return Dataset(name="cifar10", train_x=torch.from_numpy(x), train_y=torch.from_numpy(y),
                   test_x=None, test_y=None, classes=CLASSES, mean=MEAN, std=STD)


def test_denormalize_round_trips_to_the_original_pixels():
    x = torch.arange(256, dtype=torch.uint8).repeat(3, 1).view(1, 3, 16, 16).repeat(2, 1, 1, 1)
    x[1] = x[1].flip(-1)
    for mean, std in ((MEAN, STD), ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))):
        assert torch.equal(denormalize(normalize(x, mean, std, channels_last=False), mean, std), x)
    # The tutorial's img/2 + 0.5 is the inverse of Normalize(0.5, 0.5) only: with the real
    # CIFAR-10 statistics it gets the colours wrong.
    tutorial = ((normalize(x, MEAN, STD, channels_last=False) / 2 + 0.5) * 255).round().clamp(0, 255).to(torch.uint8)
    assert not torch.equal(tutorial, x)


def test_preview_without_augment_is_the_original_images(synthetic_images, tmp_path):
    ds = _dataset(synthetic_images)
    out = tmp_path / "grid.png"
    layout = preview_dataset(ds, n=7, augment=False, out=out, seed=3)
    assert layout["n"] == 7 and len(layout["cells"]) == 7
    for cell in layout["cells"]:
        idx = cell["dataset_index"]
        assert cell["label"] == int(ds.train_y[idx])
        assert cell["class"] == CLASSES[cell["label"]]
        assert torch.equal(layout["pixels"][cell["position"]], ds.train_x[idx])
    assert len({c["dataset_index"] for c in layout["cells"]}) == 7


def test_png_has_one_labelled_cell_per_image(synthetic_images, tmp_path):
    ds = _dataset(synthetic_images)
    out = tmp_path / "sub" / "grid.png"
    layout = preview_dataset(ds, n=10, augment=True, out=out, seed=1, scale=3)
    png = Image.open(out)
    assert png.format == "PNG" and png.size == (layout["width"], layout["height"])
    assert layout["cols"] * layout["rows"] >= 10 > layout["cols"] * (layout["rows"] - 1)
    arr = np.asarray(png.convert("RGB"))
    boxes = set()
    for cell in layout["cells"]:
        x0, y0, x1, y1 = cell["box"]
        assert (x1 - x0, y1 - y0) == (32 * 3, 32 * 3)
        # The cell's pixels are the drawn image, upscaled 3x by nearest neighbour.
        drawn = arr[y0:y1:3, x0:x1:3]
        expected = layout["pixels"][cell["position"]].permute(1, 2, 0).numpy()
        assert np.array_equal(drawn, expected)
        # Its caption sits right under it, inside the PNG, and has some dark (text) pixels.
        tx0, ty0, tx1, ty1 = cell["text_box"]
        assert ty0 == y1 and ty1 <= layout["height"]
        assert (arr[ty0:ty1, tx0:tx1] < 128).any()
        assert cell["caption"] == cell["class"]          # short names fit without truncation
        boxes.add((x0, y0))
    assert len(boxes) == 10


def test_augmented_preview_is_the_start_of_the_first_training_batch(synthetic_images):
    from resnet_cifar.config import resolve
    from resnet_cifar.engine import augment_from, make_splits

    ds = _dataset(synthetic_images, n_per_class=4)
    cfg = resolve(flag_values={"val_size": 10, "seed": 5, "dataset": "folder"}, preset="tutorial")
    x, y, idx = preview_batch(ds.train_x, ds.train_y, ds.mean, ds.std, n=12, augment=True, seed=5,
                              val_size=10)
    # What the trainer builds: its train split and its loader, epoch 1, batch 0.
    splits = make_splits(cfg, ds, torch.device("cpu"))
    loader = DeviceLoader(splits.train_x, splits.train_y, batch_size=16, mean=ds.mean, std=ds.std,
                          seed=cfg.seed, augment=augment_from(cfg), channels_last=False)
    _, lx, ly = next(iter(loader.batches(1)))
    assert torch.equal(x, lx[:12]) and torch.equal(y, ly[:12])
    assert torch.equal(ds.train_y[idx], y)
    assert not set(idx.tolist()) & set(splits.val_idx.tolist())     # no validation image shown
    pixels = denormalize(x, ds.mean, ds.std)
    plain = ds.train_x[idx]
    # Crops and flips changed most images.
    assert not torch.equal(pixels, plain)
    changed = [(pixels[i] != plain[i]).any().item() for i in range(12)]
    assert sum(changed) >= 6


def test_n_larger_than_dataset_is_clamped_and_bad_n_refused(synthetic_images):
    from resnet_cifar.errors import UsageError

    ds = _dataset(synthetic_images, n_per_class=1)
    layout = preview_dataset(ds, n=64, out=None)
    assert layout["n"] == 10 and layout["out"] is None
    with pytest.raises(UsageError):
        preview_dataset(ds, n=0, out=None)


def test_long_class_names_are_shortened_to_fit():
    pixels = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    layout = render_grid(pixels, [0, 1], ["a" * 80, "ok"], None, scale=2)
    assert layout["cells"][0]["caption"].endswith("…")
    assert layout["cells"][1]["caption"] == "ok"


def test_data_preview_command_on_a_folder_dataset(synthetic_images, tmp_path):
    pytest.importorskip("resnet_cifar.cli.data_cmd")
    from resnet_cifar.cli import main

    x, y = synthetic_images(2, 3)
    for i, (img, label) in enumerate(zip(x, y, strict=True)):
        d = tmp_path / "ds" / "train" / f"class{label}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.transpose(1, 2, 0)).save(d / f"{i}.png")
    out = tmp_path / "grid.png"
    rc = main(["data", "preview", "--dataset", "folder", "--data-dir", str(tmp_path / "ds"),
               "--n", "5", "--augment", "--out", str(out)])
    assert rc == 0 and out.is_file()
    assert Image.open(out).size[0] > 3 * 32


def test_preview_shows_the_configured_policy_as_train_applies_it(synthetic_images, png_folder, capsys):
    from resnet_cifar.cli import main
    from resnet_cifar.data.augment import StrongAugment
    from resnet_cifar.data.loader import Augment
    from resnet_cifar.data.policies import Policy

    x, y = synthetic_images(6, 3)
    ds = Dataset("folder", torch.from_numpy(x), torch.from_numpy(y), None, None, ["a", "b", "c"],
                 (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    strong = StrongAugment(Policy("trivialaugment"), random_erase=0.5)
    layout = preview_dataset(ds, n=8, augment=True, out=None, seed=2, val_size=0, strong=strong)
    assert "TrivialAugmentWide" in layout["title"] and "random erasing with p=0.5" in layout["title"]
    # the first images of train's first batch (batch 16 here), with the same policy and erasing
    loader = DeviceLoader(ds.train_x, ds.train_y, batch_size=16, mean=ds.mean, std=ds.std, seed=2, augment=Augment(),
                          channels_last=False, strong=strong)
    _, xb, _ = next(iter(loader.batches(1)))
    assert torch.equal(layout["pixels"], denormalize(xb[:8], ds.mean, ds.std))
    plain = preview_dataset(ds, n=8, augment=True, out=None, seed=2, val_size=0)
    assert not torch.equal(plain["pixels"], layout["pixels"])
    base = ["data", "preview", "--dataset", "folder", "--data-dir", str(png_folder), "--n", "4", "--out",
            str(png_folder / "p.png")]
    assert main(base + ["--auto-augment", "autoaugment"]) == 2
    assert "with --augment" in capsys.readouterr().err
    assert main(base + ["--augment", "--auto-augment", "randaugment", "--ra-magnitude", "12", "--mixup-alpha",
                        "0.2"]) == 0
    assert "RandAugment, N=2 ops per image at magnitude 12/30" in capsys.readouterr().out
