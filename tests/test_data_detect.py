"""A left-out --dataset is recognised from the data dir's layout (image folder, CIFAR folder/archive)."""

from __future__ import annotations

import json

from helpers import write_png_folder
from resnet_cifar.cli import main
from resnet_cifar.data import detect_dataset


def test_layouts(tmp_path):
    assert detect_dataset(tmp_path / "missing") is None
    assert detect_dataset(tmp_path) is None                      # empty: where a download would go
    (tmp_path / "train").mkdir()
    assert detect_dataset(tmp_path) is None                      # train/ without class folders
    write_png_folder(tmp_path / "imgs", n_per_class=1, num_classes=2)
    assert detect_dataset(tmp_path / "imgs") == "folder"
    (tmp_path / "c10" / "cifar-10-batches-py").mkdir(parents=True)
    assert detect_dataset(tmp_path / "c10") == "cifar10"
    (tmp_path / "c100").mkdir()
    (tmp_path / "c100" / "cifar-100-python.tar.gz").write_bytes(b"")
    assert detect_dataset(tmp_path / "c100") == "cifar100"
    (tmp_path / "inside").mkdir()
    (tmp_path / "inside" / "batches.meta").write_bytes(b"")     # --data-dir is the batch folder itself
    assert detect_dataset(tmp_path / "inside") == "cifar10"


def test_data_stats_without_dataset_reads_an_image_folder(tmp_path, capsys):
    data = write_png_folder(tmp_path / "imgs", n_per_class=3, num_classes=2)
    assert main(["data", "stats", "--data-dir", str(data)]) == 0
    cap = capsys.readouterr()
    assert cap.out.startswith(f"folder in {data}: 6 train / no test images") and "download" not in cap.err
    assert main(["data", "stats", "--data-dir", str(data), "--json"]) == 0
    cap = capsys.readouterr()
    assert json.loads(cap.out)["dataset"] == "folder" and cap.err == ""
