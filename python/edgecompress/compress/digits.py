"""A real, small task for examples and tests: scikit-learn's bundled 8x8 digits (1797 images, 10 classes).

Nothing is downloaded: the images ship inside scikit-learn. ``load()`` gives fixed train/test tensors,
``DigitsMLP`` / ``DigitsCNN`` are small models that train to ~97% in seconds with ``fit()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

try:
    import torch
    from torch import nn
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError('edgecompress.compress needs torch: pip install "edgecompress[torch]"') from e


@dataclass
class Digits:
    """Train/test split of the digits, images as float32 (n, 1, 8, 8) scaled to [0, 1], labels int64."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load(test_fraction: float = 0.25, seed: int = 0) -> Digits:
    """Load the digits bundled with scikit-learn and split them with a fixed permutation."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError("the digits dataset needs scikit-learn: pip install scikit-learn") from e
    data = load_digits()
    x = (data.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = data.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(len(y) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    t = torch.from_numpy
    return Digits(t(x[train]), t(y[train]), t(x[test]), t(y[test]))


class DigitsMLP(nn.Module):
    """64 -> hidden -> hidden -> 10 with ReLU."""

    def __init__(self, hidden: int = 128):
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(64, hidden)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.relu2 = nn.ReLU()
        self.fc3 = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.fc1(self.flatten(x)))
        x = self.relu2(self.fc2(x))
        return self.fc3(x)


class DigitsCNN(nn.Module):
    """Two 3x3 conv blocks (conv, BatchNorm, ReLU), a 2x2 max-pool, and a two-layer classifier."""

    def __init__(self, width: int = 32, hidden: int = 128):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(2 * width * 16, hidden)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.pool(self.relu2(self.bn2(self.conv2(x))))
        x = self.relu3(self.fc1(self.flatten(x)))
        return self.fc2(x)


def fit(
    model: nn.Module,
    data: Digits,
    epochs: int = 30,
    lr: float = 3e-3,
    batch_size: int = 64,
    seed: int = 0,
    after_step: Callable[[], Any] | None = None,
) -> nn.Module:
    """Train ``model`` on the training split with Adam and cross-entropy; returns it in eval mode.
    ``after_step`` is called after every optimizer step (e.g. a pruning schedule's ``step``)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    n = len(data.y_train)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            opt.zero_grad()
            loss_fn(model(data.x_train[idx]), data.y_train[idx]).backward()
            opt.step()
            if after_step is not None:
                after_step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy in percent, model in eval mode."""
    model.eval()
    return float((model(x).argmax(dim=1) == y).float().mean()) * 100.0
