"""Image folders: layout rules, odd image modes, the decode cache, and dataset_stats."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnet_cifar.data import folder, load_dataset
from resnet_cifar.data.stats import channel_mean_std, dataset_stats
from resnet_cifar.errors import DataError, UsageError


def _png(path: Path, hwc: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(hwc).save(path)


def _make_folder(root: Path, make_images, classes=("cat", "dog", "bird"), n=4, test=True, seed=0):
    """PNG images (lossless, so pixels round-trip exactly); returns expected x/y per split."""
    expected = {}
    for split, s in (("train", seed), ("test", seed + 1)) if test else (("train", seed),):
        x, y = make_images(n, len(classes), seed=s)
        order = sorted(classes)
        per_class = {c: [] for c in order}
        for i, (img, lab) in enumerate(zip(x, y, strict=True)):
            name = classes[lab]
            _png(root / split / name / f"{i:03d}.png", img.transpose(1, 2, 0))
            per_class[name].append((f"{i:03d}.png", img))
        xs, ys = [], []
        for k, name in enumerate(order):      # expected order: sorted class, then file name
            for _, img in sorted(per_class[name], key=lambda t: t[0]):
                xs.append(img)
                ys.append(k)
        expected[split] = (np.stack(xs), np.asarray(ys))
    return expected


@pytest.fixture
def dataset_dir(tmp_path, synthetic_images):
    root = tmp_path / "imgs"
    return root, _make_folder(root, synthetic_images, classes=("zebra", "apple", "Mango"))


def test_reads_pixels_labels_sorted_classes(dataset_dir):
    root, expected = dataset_dir
    lines = []
    ds = load_dataset("folder", root, log=lines.append)
    assert ds.classes == ["Mango", "apple", "zebra"]       # sorted, like ImageFolder
    for split, x, y in (("train", ds.train_x, ds.train_y), ("test", ds.test_x, ds.test_y)):
        assert x.dtype == torch.uint8 and y.dtype == torch.int64
        np.testing.assert_array_equal(x.numpy(), expected[split][0])
        np.testing.assert_array_equal(y.numpy(), expected[split][1])
    mean, std = channel_mean_std(ds.train_x)
    assert ds.mean == mean and ds.std == std
    ref = expected["train"][0].astype(np.float64) / 255
    np.testing.assert_allclose(ds.mean, ref.mean(axis=(0, 2, 3)), atol=1e-12)
    np.testing.assert_allclose(ds.std, ref.std(axis=(0, 2, 3)), atol=1e-12)
    assert any("cached at" in line for line in lines)


def test_test_split_is_optional_and_must_match(tmp_path, synthetic_images):
    root = tmp_path / "d"
    _make_folder(root, synthetic_images, test=False)
    ds = load_dataset("folder", root)
    assert ds.test_x is None and ds.test_y is None and ds.num_classes == 3
    for c in ("bird", "cat", "dog"):
        (root / "test" / c).mkdir(parents=True)
    assert load_dataset("folder", root).test_x is None      # class folders, no images
    (root / "test" / "bird").rmdir()
    (root / "test" / "horse").mkdir()
    with pytest.raises(DataError) as e:
        load_dataset("folder", root)
    msg = str(e.value)
    assert "horse" in msg and "bird" in msg and "\n" not in msg


def test_missing_train_folder_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="train/"):
        load_dataset("folder", tmp_path / "nothing")
    (tmp_path / "x").mkdir()
    with pytest.raises(UsageError, match="no train/ folder"):
        load_dataset("folder", tmp_path / "x")


def test_stray_files_are_skipped_with_one_warning_hidden_files_ignored(tmp_path, synthetic_images):
    """Issue 14: a stray README.txt or Thumbs.db no longer aborts the load; it is skipped, and one
    warning per split names what was skipped (hidden files are not even mentioned)."""
    root = tmp_path / "d"
    _make_folder(root, synthetic_images, test=False)
    (root / "train" / "cat" / ".DS_Store").write_bytes(b"\0\1junk")
    (root / "train" / ".hidden_dir").mkdir()
    lines = []
    ref = load_dataset("folder", root, log=lines.append)
    assert ref.num_classes == 3 and not [m for m in lines if m.startswith("warning: skipped")]
    (root / "train" / "dog" / "notes.txt").write_text("hello")
    (root / "train" / "cat" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (root / "train" / "README.md").write_text("x")
    lines = []
    ds = load_dataset("folder", root, log=lines.append)
    warned = [m for m in lines if m.startswith("warning: skipped")]
    assert len(warned) == 1, lines
    assert "3 file(s)" in warned[0] and "dog/notes.txt" in warned[0] and "cat/Thumbs.db" in warned[0]
    assert "README.md" in warned[0] and "\n" not in warned[0]
    assert ds.classes == ref.classes and torch.equal(ds.train_x, ref.train_x)


def test_empty_class_folder_is_named(tmp_path, synthetic_images):
    root = tmp_path / "d"
    _make_folder(root, synthetic_images, test=False)
    (root / "train" / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        load_dataset("folder", root)


# --- load_image ------------------------------------------------------------------------------

def _save(tmp_path, name, im, **kw):
    p = tmp_path / name
    im.save(p, **kw)
    return p


def test_load_image_modes(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)

    arr, resized = folder.load_image(_save(tmp_path, "rgb.PNG", Image.fromarray(rgb)))
    np.testing.assert_array_equal(arr, rgb)
    assert not resized and arr.dtype == np.uint8 and arr.shape == (32, 32, 3)

    grey = rgb[..., 0]
    arr, _ = folder.load_image(_save(tmp_path, "l.png", Image.fromarray(grey)))
    np.testing.assert_array_equal(arr, np.repeat(grey[..., None], 3, axis=2))

    # RGBA: composited on black (rgb * alpha / 255).
    alpha = np.zeros((32, 32), np.uint8)
    alpha[:, 16:] = 255
    alpha[0, 0] = 128
    rgba = np.dstack([np.full((32, 32, 3), 200, np.uint8), alpha])
    arr, _ = folder.load_image(_save(tmp_path, "rgba.png", Image.fromarray(rgba)))
    assert (arr[:, 16:] == 200).all() and (arr[1:, :16] == 0).all()
    assert tuple(arr[0, 0]) == (100, 100, 100)

    # LA likewise.
    la = Image.fromarray(rgba[..., [0, 3]], mode="LA")
    arr, _ = folder.load_image(_save(tmp_path, "la.png", la))
    assert (arr[:, 16:] == 200).all() and (arr[1:, :16] == 0).all()

    # Palette.
    pal = Image.fromarray(rgb).quantize(16)
    arr, _ = folder.load_image(_save(tmp_path, "p.png", pal))
    np.testing.assert_array_equal(arr, np.asarray(pal.convert("RGB")))

    # Palette with a transparent index: transparent pixels become black.
    tp = Image.new("P", (32, 32), 0)
    tp.putpalette([255, 255, 255] + [0, 200, 0] * 255)
    tp.putpixel((5, 5), 1)
    arr, _ = folder.load_image(_save(tmp_path, "pt.png", tp, transparency=0))
    assert tuple(arr[5, 5]) == (0, 200, 0) and tuple(arr[0, 0]) == (0, 0, 0)

    # EXIF orientation 6 (camera held sideways): the top half ends up on the right.
    top = np.zeros((32, 32, 3), np.uint8)
    top[:16] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    arr, _ = folder.load_image(_save(tmp_path, "exif.png", Image.fromarray(top), exif=exif))
    assert (arr[:, 16:] == 255).all() and (arr[:, :16] == 0).all()

    # CMYK JPEG.
    cmyk = Image.fromarray(rgb).convert("CMYK")
    arr, _ = folder.load_image(_save(tmp_path, "cmyk.JPG", cmyk, quality=95))
    assert arr.shape == (32, 32, 3)
    assert np.abs(arr.astype(int) - rgb.astype(int)).mean() < 30


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    v = np.array([0, 257, 32896, 65535], np.uint16)
    a16 = np.tile(v, (32, 8))
    im = Image.fromarray(a16)
    assert im.mode == "I;16"
    p = _save(tmp_path, "g16.png", im)
    with Image.open(p) as check:
        assert check.mode in ("I;16", "I")      # really a 16-bit file on disk
    arr, _ = folder.load_image(p)
    assert arr[0, :4, 0].tolist() == [0, 1, 128, 255]
    assert (arr[..., 0] == arr[..., 2]).all()


def test_wrong_size_is_resized_and_logged(tmp_path, synthetic_images):
    big = np.zeros((40, 50, 3), np.uint8)
    big[:, :25] = 255                                  # left half white
    arr, resized = folder.load_image(_save(tmp_path, "wide.png", Image.fromarray(big)))
    assert resized and arr.shape == (32, 32, 3)
    assert arr[:, :14].min() == 255 and arr[:, 18:].max() == 0

    root = tmp_path / "d"
    _make_folder(root, synthetic_images, test=False)
    _png(root / "train" / "cat" / "zz_big.png", big)
    lines = []
    ds = load_dataset("folder", root, log=lines.append)
    assert ds.train_x.shape[1:] == (3, 32, 32)
    assert any("resized 1 of" in line and "cat/zz_big.png" in line for line in lines)


def test_truncated_jpeg_and_non_image_are_named(tmp_path, synthetic_images):
    buf = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(buf, "JPEG")
    trunc = tmp_path / "trunc.jpg"
    trunc.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(DataError) as e:
        folder.load_image(trunc)
    assert str(trunc) in str(e.value) and "\n" not in str(e.value)
    fake = tmp_path / "fake.png"
    fake.write_text("not a png")
    with pytest.raises(DataError, match="fake.png"):
        folder.load_image(fake)
    with pytest.raises(UsageError, match="does not exist"):
        folder.load_image(tmp_path / "missing.png")

    root = tmp_path / "d"
    _make_folder(root, synthetic_images, test=False)
    bad = root / "train" / "dog" / "broken.jpeg"
    bad.write_bytes(trunc.read_bytes())
    with pytest.raises(DataError) as e:
        load_dataset("folder", root)
    assert str(bad) in str(e.value)


# --- cache -----------------------------------------------------------------------------------

def _forbid_decoding(monkeypatch):
    def boom(path):
        raise AssertionError(f"decoded {path} although a valid cache exists")
    monkeypatch.setattr(folder, "load_image", boom)


def test_second_load_uses_cache(dataset_dir, monkeypatch):
    root, expected = dataset_dir
    first = load_dataset("folder", root)
    cache_files = sorted(p.name for p in (root / folder.CACHE_DIRNAME).iterdir())
    assert [n.split("-")[0] for n in cache_files] == ["test", "train"]
    _forbid_decoding(monkeypatch)
    lines = []
    second = load_dataset("folder", root, log=lines.append)
    assert sum("from cache" in line for line in lines) == 2
    assert torch.equal(first.train_x, second.train_x) and torch.equal(first.test_y, second.test_y)
    assert first.mean == second.mean


def test_changed_added_removed_file_invalidates_cache(dataset_dir, monkeypatch):
    root, expected = dataset_dir
    load_dataset("folder", root)
    target = sorted((root / "train" / "apple").iterdir())[0]
    new = np.full((32, 32, 3), 7, np.uint8)
    Image.fromarray(new).save(target)
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # even if same second
    lines = []
    ds = load_dataset("folder", root, log=lines.append)
    assert any(line.startswith("decoding") and "train" in line for line in lines)
    np.testing.assert_array_equal(ds.train_x[ds.train_y == 1][0].numpy(),
                                  new.transpose(2, 0, 1))
    # The stale train cache was replaced, not kept beside the new one.
    assert len(list((root / folder.CACHE_DIRNAME).glob("train-*.npz"))) == 1

    _png(root / "train" / "apple" / "new.png", new)
    n = len(load_dataset("folder", root).train_y)
    assert n == len(ds.train_y) + 1
    (root / "train" / "apple" / "new.png").unlink()
    assert len(load_dataset("folder", root).train_y) == n - 1


def test_corrupt_cache_is_ignored(dataset_dir):
    root, _ = dataset_dir
    ref = load_dataset("folder", root)
    for p in (root / folder.CACHE_DIRNAME).glob("train-*.npz"):
        p.write_bytes(p.read_bytes()[:1000])
    lines = []
    ds = load_dataset("folder", root, log=lines.append)
    assert any("ignoring unreadable cache" in line for line in lines)
    assert torch.equal(ds.train_x, ref.train_x)


def test_unwritable_data_dir_falls_back_to_user_cache(tmp_path, synthetic_images, monkeypatch):
    root = tmp_path / "ro"
    _make_folder(root, synthetic_images, test=False)
    (root / folder.CACHE_DIRNAME).write_text("a file where the cache dir would go")
    user_cache = tmp_path / "user-cache"
    monkeypatch.setenv("RESNET_CIFAR_CACHE", str(user_cache))
    lines = []
    ds = load_dataset("folder", root, log=lines.append)
    assert any(f"cached at {user_cache}" in line for line in lines)
    _forbid_decoding(monkeypatch)
    assert torch.equal(load_dataset("folder", root).train_x, ds.train_x)


def test_no_writable_cache_location_still_loads(tmp_path, synthetic_images, monkeypatch):
    root = tmp_path / "ro"
    _make_folder(root, synthetic_images, test=False)
    (root / folder.CACHE_DIRNAME).write_text("a file where the cache dir would go")
    monkeypatch.setenv("RESNET_CIFAR_CACHE", str(root / folder.CACHE_DIRNAME / "sub"))
    lines = []
    assert load_dataset("folder", root, log=lines.append).num_classes == 3
    assert any("not cached" in line for line in lines)


# --- stats -----------------------------------------------------------------------------------

def test_dataset_stats(dataset_dir):
    root, expected = dataset_dir
    ds = load_dataset("folder", root)
    st = dataset_stats(ds)
    json.dumps(st)                                     # plain types only
    assert st["train_images"] == len(expected["train"][1])
    assert st["test_images"] == len(expected["test"][1])
    counts = np.bincount(expected["train"][1], minlength=3)
    assert st["train_per_class"] == dict(zip(ds.classes, counts.tolist(), strict=True))
    ref = expected["train"][0].astype(np.float64) / 255
    np.testing.assert_allclose(st["train_mean"], ref.mean(axis=(0, 2, 3)), atol=1e-6)
    np.testing.assert_allclose(st["train_std"], ref.std(axis=(0, 2, 3)), atol=1e-6)
    assert st["mean_in_use"] == list(ds.mean)


def test_channel_mean_std_chunks_exactly(monkeypatch):
    x = torch.randint(0, 256, (37, 3, 32, 32), dtype=torch.uint8)
    import resnet_cifar.data.stats as stats_mod
    monkeypatch.setattr(stats_mod, "_CHUNK", 5)
    mean, std = channel_mean_std(x)
    ref = x.numpy().astype(np.float64) / 255
    np.testing.assert_allclose(mean, ref.mean(axis=(0, 2, 3)), rtol=0, atol=1e-12)
    np.testing.assert_allclose(std, ref.std(axis=(0, 2, 3)), rtol=0, atol=1e-12)
