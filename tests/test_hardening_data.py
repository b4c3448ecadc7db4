"""Hostile and careless image folders (issue 13 items 7/8, issue 14 item 2): each is refused or
handled before any training, with one line and exit 2, or skipped with one warning."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reliability_helpers import (
    assert_one_line_error,
    run_main,
    subprocess_env,
    write_folder,
)
from resnet_cifar.data import folder, load_dataset
from resnet_cifar.data.images import ImageTooLarge
from resnet_cifar.errors import DataError, UsageError

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _stats(data: Path, capsys) -> tuple[int, str, str]:
    return run_main(["data", "stats", "--dataset", "folder", "--data-dir", str(data)], capsys)


def _png_header_only(path: Path, w: int, h: int) -> None:
    """A valid 1-bit greyscale PNG of w x h, all black, written row by row (a few MB at most)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + tag + data + zlib.crc32(tag + data).to_bytes(4, "big")

    z = zlib.compressobj(9)
    row = b"\0" * (1 + (w + 7) // 8)
    idat = b"".join(z.compress(row) for _ in range(h)) + z.flush()
    ihdr = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([1, 0, 0, 0, 0])
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


_PEAK = """
import json, resource, sys
sys.path.insert(0, {src!r})
from resnet_cifar.data.images import load_image
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    arr, resized = load_image(sys.argv[1]); out = {{"shape": list(arr.shape), "mean": float(arr.mean())}}
except Exception as e:
    out = {{"error": type(e).__name__, "message": str(e)}}
out["peak_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps(out))
"""


def _decode_in_child(path: Path) -> dict:
    """load_image in a fresh process; returns its result and the growth of its peak RSS in MB."""
    r = subprocess.run([sys.executable, "-c", _PEAK.format(src=SRC), str(path)], capture_output=True,
                       text=True, env=subprocess_env(), timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_huge_png_is_refused_from_its_header_without_decoding(tmp_path):
    """12000x12000 (144 Mpx): decoding it as before cost ~0.5-4.5 GB; now the header is enough."""
    p = tmp_path / "huge.png"
    _png_header_only(p, 12000, 12000)
    assert p.stat().st_size < 2_000_000
    got = _decode_in_child(p)
    assert got.get("error") == "ImageTooLarge", got
    assert "12000x12000" in got["message"] and str(p) in got["message"]
    assert got["peak_mb"] < 100, got
    with pytest.raises(ImageTooLarge):
        folder.load_image(p)


def test_large_jpeg_is_decoded_downscaled(tmp_path):
    """A 6000x6000 JPEG decodes through the DCT's 1/8 scaling: far less than its 108 MB of RGB."""
    p = tmp_path / "big.jpg"
    im = np.zeros((6000, 6000), np.uint8)
    im[:, 3000:] = 255
    Image.fromarray(im).convert("RGB").save(p, quality=80)
    del im
    got = _decode_in_child(p)
    assert got.get("shape") == [32, 32, 3], got
    assert 110 < got["mean"] < 145             # half white, half black, still so after reduction
    assert got["peak_mb"] < 60, got           # a full decode alone is 108 MB


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_named_jpg_is_refused_without_hanging(tmp_path, capsys):
    data = write_folder(tmp_path / "d")
    fifo = data / "train" / "c0" / "pipe.jpg"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    code, _, err = _stats(data, capsys)
    assert time.monotonic() - t0 < 60
    assert code == 2
    assert_one_line_error(err, "c0/pipe.jpg", "not a regular file")
    with pytest.raises(DataError, match="not a regular file"):
        folder.load_image(fifo)     # predict's path too: no open(), so no block


def test_every_bad_image_is_named_in_one_pass_and_exit_is_2(tmp_path, capsys):
    data = write_folder(tmp_path / "d", n_per_class=4)
    for i in range(5):
        (data / "train" / f"c{i % 2}" / f"bad{i}.png").write_bytes(b"not a png at all")
    good_jpeg = data / "train" / "c0" / "0000.png"
    (data / "train" / "c1" / "cut.jpg").write_bytes(good_jpeg.read_bytes()[:60])
    code, _, err = _stats(data, capsys)
    assert code == 2
    line = assert_one_line_error(err, "6 of the files", "and 3 more", "fix or remove them all")
    assert sum(f"bad{i}.png" in line for i in range(5)) + ("cut.jpg" in line) == 3   # first three named
    with pytest.raises(DataError) as e:
        load_dataset("folder", data)
    assert e.value.exit_code == 2


def test_one_class_folder_is_refused(tmp_path, capsys):
    data = write_folder(tmp_path / "d", num_classes=1)
    code, _, err = _stats(data, capsys)
    assert code == 2
    assert_one_line_error(err, "one class folder (c0)", "at least 2 classes")


def test_constant_colour_channel_is_refused_naming_it(tmp_path, capsys):
    data = write_folder(tmp_path / "d")
    for p in (data / "train").rglob("*.png"):
        a = np.asarray(Image.open(p)).copy()
        a[..., 1] = 77                       # green is the same everywhere
        Image.fromarray(a).save(p)
    code, _, err = _stats(data, capsys)
    assert code == 2
    line = assert_one_line_error(err, "green channel", "constant (std 0)")
    assert "red" not in line and "blue" not in line
    argv = ["train", "--dataset", "folder", "--data-dir", str(data), "--out", str(tmp_path / "run"),
            "--model", "resnet20", "--width", "0.25", "--epochs", "1", "--batch-size", "4", "--val-size", "4",
            "--device", "cpu"]
    code, _, err = run_main(argv, capsys)
    assert code == 2, err
    assert_one_line_error(err, "green channel")
    assert not (tmp_path / "run" / "metrics.csv").exists() and not (tmp_path / "run" / "checkpoints").exists()


def test_killed_cache_write_temps_are_cleaned_at_next_load(tmp_path):
    data = write_folder(tmp_path / "d")
    load_dataset("folder", data)
    cache = data / folder.CACHE_DIRNAME
    old = time.time() - 2 * folder.STALE_TEMP_S
    stale = [cache / ".tmp-abc123.npz", cache / ".train-0123.npz.k9x2.tmp"]
    fresh = cache / ".train-4567.npz.live.tmp"        # a write in progress right now: left alone
    for p in stale + [fresh]:
        p.write_bytes(b"PK\x03\x04 half")
    for p in stale:
        os.utime(p, (old, old))
    lines = []
    load_dataset("folder", data, log=lines.append)
    assert not any(p.exists() for p in stale) and fresh.exists()
    assert any("interrupted cache write" in m for m in lines)
    assert any("from cache" in m for m in lines)


def test_a_killed_cache_write_leaves_only_a_temp_never_a_half_cache(tmp_path, monkeypatch):
    data = write_folder(tmp_path / "d")

    def dies(f, **arrays):
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(folder.np, "savez", dies)
    with pytest.raises(KeyboardInterrupt):
        load_dataset("folder", data)
    cache = data / folder.CACHE_DIRNAME
    assert not list(cache.glob("train-*.npz")) and not list(cache.glob(".*"))


def test_missing_image_path_for_load_image_is_usage_error(tmp_path):
    with pytest.raises(UsageError):
        folder.load_image(tmp_path / "nope.png")


def test_engine_fit_refuses_unlearnable_data_before_building(tmp_path):
    """Library callers who build a Dataset themselves get the same checks as the CLI's folders."""
    import torch

    from reliability_helpers import tiny_config, tiny_dataset
    from resnet_cifar import engine
    from resnet_cifar.data import Dataset

    ds = tiny_dataset()
    flat = Dataset(name="mine", train_x=ds.train_x, train_y=ds.train_y, test_x=None, test_y=None,
                   classes=ds.classes, mean=ds.mean, std=(0.25, 0.25, 0.0))
    with pytest.raises(UsageError, match="blue channel"):
        engine.fit(tiny_config(out=str(tmp_path / "a")), flat, tmp_path / "a")
    one = Dataset(name="mine", train_x=ds.train_x, train_y=torch.zeros_like(ds.train_y), test_x=None, test_y=None,
                  classes=ds.classes, mean=ds.mean, std=ds.std)
    with pytest.raises(UsageError, match="1 class"):
        engine.fit(tiny_config(out=str(tmp_path / "b")), one, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
