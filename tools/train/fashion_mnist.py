"""Fashion-MNIST from Debian's dataset-fashion-mnist package, as tensors in [-1, 1]."""
import gzip
import pathlib

import numpy as np
import torch

ROOT = pathlib.Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def load(split):
    """(images [N, 1, 28, 28] float32 in [-1, 1], labels [N] int64) of 'train' or 't10k'."""
    with gzip.open(ROOT / f"{split}-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    with gzip.open(ROOT / f"{split}-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    return torch.from_numpy(images.astype(np.float32) / 127.5 - 1), torch.from_numpy(labels.astype(np.int64))
