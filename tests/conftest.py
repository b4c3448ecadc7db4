"""Shared fixtures. Tests run on the CPU with one thread each, tiny models and a few dozen images.

The helpers behind them live in tests/helpers.py (and report_/docs_/ddp_/reliability_helpers.py):
tests import them from there, never from conftest or another test module.
"""

from __future__ import annotations

import os

import pytest
import torch

from helpers import make_images, write_png_folder

torch.set_num_threads(1)
os.environ.setdefault("RESNET_CIFAR_NO_PROGRESS", "1")


@pytest.fixture
def synthetic_images():
    return make_images


@pytest.fixture
def png_folder(tmp_path):
    return write_png_folder(tmp_path / "data", n_per_class=12, num_classes=3, test_per_class=4)
