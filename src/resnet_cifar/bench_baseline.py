"""The bench's baseline: the classic tutorial pipeline (kuangliu/pytorch-cifar style), as `bench`
times it beside ours. See `resnet_cifar.bench` for what is measured and how."""

from __future__ import annotations

import time
from typing import Iterator

import numpy as np
import torch

from . import runtime


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work, so that a window's time counts it (nothing to wait for on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TutorialDataset(torch.utils.data.Dataset):
    """As torchvision.datasets.CIFAR10 serves images: HWC uint8 arrays -> PIL -> transform."""

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray, transform):
        self.data, self.targets, self.transform = images_hwc, labels, transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.data[i])), int(self.targets[i])


def tutorial_transforms(mean, std):
    import torchvision.transforms as T  # the [vision] extra

    train = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])
    test = T.Compose([T.ToTensor(), T.Normalize(mean, std)])
    return train, test


class Baseline:
    """The tutorial's loop over a torchvision DataLoader: zero_grad, forward, cross-entropy, backward, SGD."""

    def __init__(self, x_uint8: torch.Tensor, y: torch.Tensor, *, model_name: str, num_classes: int, width: float,
                 batch_size: int, mean, std, device: torch.device, workers: int, seed: int = 0):
        from .models import build_model

        train_tf, self.test_tf = tutorial_transforms(mean, std)
        self.hwc = x_uint8.permute(0, 2, 3, 1).contiguous().cpu().numpy()
        self.labels = y.cpu().numpy()
        self.batch_size, self.device, self.workers = batch_size, device, workers
        self.dataset = TutorialDataset(self.hwc, self.labels, train_tf)
        torch.manual_seed(seed)
        self.net = build_model(model_name, num_classes, width).to(device)
        self.criterion = torch.nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        self.batches = self._batches()
        self.images = 0

    def _batches(self) -> Iterator:
        while True:  # a new DataLoader iterator per epoch, as the tutorial's epoch loop does
            loader = torch.utils.data.DataLoader(self.dataset, batch_size=self.batch_size, shuffle=True,
                                                 num_workers=self.workers)
            for x, y in loader:
                if len(y) == self.batch_size:
                    yield x, y

    def steps(self, n: int) -> float:
        net, opt, crit, dev = self.net, self.optimizer, self.criterion, self.device
        runtime.keep_host_memory(False, dev)
        net.train()
        sync(dev)
        t0 = time.perf_counter()
        for _ in range(n):
            inputs, targets = next(self.batches)
            inputs, targets = inputs.to(dev), targets.to(dev)
            opt.zero_grad()
            loss = crit(net(inputs), targets)
            loss.backward()
            opt.step()
        sync(dev)
        self.images += n * self.batch_size
        return time.perf_counter() - t0

    @torch.no_grad()
    def evaluate(self, n_images: int) -> float:
        """The tutorial's test loop: batch 100, workers, eval mode, loss and argmax per batch."""
        ds = TutorialDataset(self.hwc[:n_images], self.labels[:n_images], self.test_tf)
        loader = torch.utils.data.DataLoader(ds, batch_size=100, shuffle=False, num_workers=self.workers)
        self.net.eval()
        runtime.keep_host_memory(False, self.device)
        sync(self.device)
        t0 = time.perf_counter()
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        for inputs, targets in loader:
            inputs, targets = inputs.to(self.device), targets.to(self.device)
            outputs = self.net(inputs)
            self.criterion(outputs, targets)
            correct += outputs.argmax(1).eq(targets).sum()
        sync(self.device)
        return time.perf_counter() - t0
