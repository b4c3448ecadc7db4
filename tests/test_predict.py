"""`predict`: every file is answered or gets its own error, in order; same conversion as training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from resnet_cifar import checkpoint
from resnet_cifar.cli import main
from resnet_cifar.data.loader import normalize
from resnet_cifar.models import build_model
from resnet_cifar.predict import predict_files

CLASSES = ["cat", "dog", "frog"]
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def write_checkpoint(path, name="resnet20", num_classes=3, width=0.25, seed=0):
    torch.manual_seed(seed)
    model = build_model(name, num_classes=num_classes, width=width)
    # Random BN statistics, so the eval-mode output is not trivially uniform.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    checkpoint.save({"model": model.state_dict(),
                     "model_args": {"name": name, "num_classes": num_classes, "width": width},
                     "classes": CLASSES[:num_classes] if num_classes <= 3 else [f"c{i}" for i in range(num_classes)],
                     "mean": list(MEAN), "std": list(STD), "config": {}}, path)
    return model.eval()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    model = write_checkpoint(path)
    return path, model


@pytest.fixture(scope="module")
def odd_images(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    files = {}
    rgb = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    files["rgb"] = d / "rgb.png"
    Image.fromarray(rgb).save(files["rgb"])
    files["gray"] = d / "gray.png"
    Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8), "L").save(files["gray"])
    files["rgba"] = d / "rgba.png"
    Image.fromarray(rng.integers(0, 256, (40, 30, 4), dtype=np.uint8), "RGBA").save(files["rgba"])
    files["gray16"] = d / "gray16.png"
    Image.fromarray(rng.integers(0, 65536, (32, 32), dtype=np.uint16)).save(files["gray16"])
    # A photo-sized image: smooth gradients plus noise, saved as a JPEG.
    h, w = 3000, 4000
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    photo = np.stack([xx / w * 255, yy / h * 255, (xx + yy) / (w + h) * 255], axis=-1)
    photo += rng.normal(0, 8, (h, w, 1)).astype(np.float32)
    files["photo"] = d / "photo.jpg"
    Image.fromarray(np.clip(photo, 0, 255).astype(np.uint8)).save(files["photo"], quality=80)
    raw = files["rgb"].read_bytes()
    files["truncated"] = d / "truncated.png"
    files["truncated"].write_bytes(raw[: len(raw) // 2])
    files["text"] = d / "notes.jpg"
    files["text"].write_text("this is not an image\n")
    files["missing"] = d / "missing.png"
    return files, rgb


def test_each_file_answered_or_errored_in_order(ckpt, odd_images):
    path, _ = ckpt
    files, _ = odd_images
    order = ["rgb", "text", "gray", "missing", "rgba", "truncated", "gray16", "photo"]
    result = predict_files(path, [files[k] for k in order], topk=2, device="cpu")
    preds = result["predictions"]
    assert [p["file"] for p in preds] == [str(files[k]) for k in order]
    bad = {"text", "missing", "truncated"}
    for key, p in zip(order, preds, strict=True):
        if key in bad:
            assert p["error"] and p["top"] == [], key
            assert str(files[key]) in p["error"] and "\n" not in p["error"]
        else:
            assert p["error"] is None, (key, p["error"])
            assert len(p["top"]) == 2
            assert all(t["class"] in CLASSES for t in p["top"])
            probs = [t["prob"] for t in p["top"]]
            assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    by_key = dict(zip(order, preds, strict=True))
    assert by_key["photo"]["resized"] and by_key["rgba"]["resized"] and not by_key["rgb"]["resized"]


def test_prediction_uses_the_training_conversion_and_normalisation(ckpt, odd_images):
    path, model = ckpt
    files, rgb = odd_images
    result = predict_files(path, [files["rgb"]], topk=3, device="cpu")
    x = torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0)
    with torch.no_grad():
        expected = torch.softmax(model(normalize(x, MEAN, STD, channels_last=False)), 1)[0]
    got = {t["class"]: t["prob"] for t in result["predictions"][0]["top"]}
    for i, c in enumerate(CLASSES):
        assert got[c] == pytest.approx(float(expected[i]), abs=1e-5)


def test_topk_is_capped_at_the_number_of_classes(ckpt, odd_images):
    path, _ = ckpt
    files, _ = odd_images
    result = predict_files(path, [files["gray"]], topk=10, device="cpu")
    assert len(result["predictions"][0]["top"]) == 3


def test_cli_json_and_exit_codes(ckpt, odd_images, capsys):
    path, _ = ckpt
    files, _ = odd_images
    rc = main(["predict", str(path), str(files["rgb"]), str(files["missing"]), str(files["gray"]),
               "--json", "--device", "cpu", "--topk", "1"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 1
    preds = out["predictions"]
    assert [p["file"] for p in preds] == [str(files[k]) for k in ("rgb", "missing", "gray")]
    assert preds[1]["error"] and preds[0]["error"] is None and preds[2]["error"] is None
    assert set(preds[0]["top"][0]) >= {"class", "prob"}

    rc = main(["predict", str(path), str(files["rgb"]), str(files["gray"]), "--device", "cpu"])
    captured = capsys.readouterr()
    assert rc == 0
    lines = captured.out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(str(files["rgb"]) + ": ")
    assert "%" in lines[0]

    rc = main(["predict", str(path), str(files["text"]), str(files["rgb"]), "--device", "cpu"])
    captured = capsys.readouterr()
    assert rc == 1
    lines = captured.out.strip().splitlines()
    assert "error" in lines[0] and str(files["rgb"]) in lines[1]
    assert captured.err.count("resnet-cifar: error:") == 1


def test_bad_checkpoint_and_bad_flags(tmp_path, odd_images, capsys):
    files, _ = odd_images
    assert main(["predict", str(tmp_path / "nope.pt"), str(files["rgb"])]) == 2
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    assert main(["predict", str(junk), str(files["rgb"])]) == 1
    err = capsys.readouterr().err
    assert err.count("resnet-cifar: error:") == 2
    path = tmp_path / "m.pt"
    write_checkpoint(path)
    assert main(["predict", str(path), str(files["rgb"]), "--topk", "0"]) == 2
