#!/usr/bin/env python3
"""Trains the noisy classifier p(y | x_t) that diffusiond's `classifier` guidance uses.

The network is diffusiond's TimeConditionedClassifier (docs/models.md), defined
here in PyTorch with the same tensor names, trained with cross-entropy on
Fashion-MNIST training images noised to a uniformly drawn timestep of the
default model's cosine schedule. Exported as classifier/config.json and
classifier/model.safetensors (fp16) into --output, beside the U-Net.

Needs torch and diffusers (PyPI); run from the repository root, e.g.
    python tools/train/train_classifier.py --steps 2500 --seed 0 --output models/fashion-mnist
"""
import argparse
import json
import pathlib
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.models.embeddings import get_timestep_embedding
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from fashion_mnist import load  # noqa: E402
from train_unet import SCHEDULE  # noqa: E402

CONFIG = {"_class_name": "TimeConditionedClassifier", "in_channels": 1, "sample_size": 28,
          "block_out_channels": [32, 64, 64], "num_classes": 10, "flip_sin_to_cos": True, "freq_shift": 0}


class TimeEmbedding(nn.Module):
    def __init__(self, width, dim):
        super().__init__()
        self.linear_1 = nn.Linear(width, dim)
        self.linear_2 = nn.Linear(dim, dim)


class Block(nn.Module):
    def __init__(self, cin, cout, tdim, down):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.time_proj = nn.Linear(tdim, cout)
        self.downsample = nn.Conv2d(cout, cout, 3, stride=2, padding=1) if down else None


class TimeConditionedClassifier(nn.Module):
    def __init__(self, config):
        super().__init__()
        channels = config["block_out_channels"]
        self.config = config
        self.time_embedding = TimeEmbedding(channels[0], 4 * channels[0])
        self.conv_in = nn.Conv2d(config["in_channels"], channels[0], 3, padding=1)
        self.blocks = nn.ModuleList(
            Block(channels[max(i - 1, 0)], c, 4 * channels[0], i < len(channels) - 1) for i, c in enumerate(channels))
        self.head = nn.Linear(channels[-1], config["num_classes"])

    def forward(self, x, t):
        c = self.config
        emb = get_timestep_embedding(t, c["block_out_channels"][0], flip_sin_to_cos=c["flip_sin_to_cos"],
                                     downscale_freq_shift=c["freq_shift"]).to(x.dtype)
        a = F.silu(self.time_embedding.linear_2(F.silu(self.time_embedding.linear_1(emb))))
        h = self.conv_in(x)
        for block in self.blocks:
            h = F.silu(block.conv(h) + block.time_proj(a)[:, :, None, None])
            if block.downsample is not None:
                h = F.silu(block.downsample(h))
        return self.head(h.mean((2, 3)))


def noised(images, alphas, generator=None):
    t = torch.randint(0, 1000, (images.shape[0],), generator=generator)
    a = alphas[t].view(-1, 1, 1, 1)
    return a.sqrt() * images + (1 - a).sqrt() * torch.randn(images.shape, generator=generator), t


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default="models/fashion-mnist")
    parser.add_argument("--reference-only", action="store_true", help="only rewrite classifier/reference.json")
    args = parser.parse_args()
    if args.reference_only:
        test_images, test_labels = load("t10k")
        write_reference(pathlib.Path(args.output) / "classifier", DDPMScheduler(**SCHEDULE).alphas_cumprod,
                        test_images, test_labels)
        return
    print("command:", " ".join(["python"] + sys.argv), flush=True)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    images, labels = load("train")
    alphas = DDPMScheduler(**SCHEDULE).alphas_cumprod
    model = TimeConditionedClassifier(CONFIG)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    start = time.time()
    for step in range(1, args.steps + 1):
        index = torch.randint(0, images.shape[0], (args.batch,))
        xt, t = noised(images[index], alphas)
        loss = F.cross_entropy(model(xt, t), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for group in optimizer.param_groups:
            group["lr"] = 1e-3 * min(1.0, step / 100) * (0.1 + 0.9 * (1 - step / args.steps))
        optimizer.step()
        if step % 250 == 0:
            print(f"step {step}  loss {loss.item():.3f}  {(time.time() - start) / 60:.1f} min", flush=True)

    # Accuracy on the test split at a few noise levels.
    test_images, test_labels = load("t10k")
    model.eval()
    report = {}
    with torch.no_grad():
        for t_value in [0, 250, 500, 750, 999]:
            t = torch.full((2000,), t_value)
            a = alphas[t].view(-1, 1, 1, 1)
            generator = torch.Generator().manual_seed(t_value)
            xt = a.sqrt() * test_images[:2000] + (1 - a).sqrt() * torch.randn(test_images[:2000].shape, generator=generator)
            report[t_value] = (model(xt, t).argmax(1) == test_labels[:2000]).float().mean().item()
    print("test accuracy by timestep:", {k: round(v, 3) for k, v in report.items()}, flush=True)

    directory = pathlib.Path(args.output) / "classifier"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(CONFIG, indent=2) + "\n")
    save_file({k: v.half().contiguous() for k, v in model.state_dict().items()}, directory / "model.safetensors")
    (directory / "training.json").write_text(json.dumps({
        "command": " ".join(["python"] + sys.argv), "seed": args.seed, "steps": args.steps,
        "minutes": round((time.time() - start) / 60, 1), "test_accuracy_by_timestep": report}, indent=2) + "\n")
    print(f"exported to {directory}", flush=True)

    write_reference(directory, alphas, test_images, test_labels)


def write_reference(directory, alphas, test_images, test_labels):
    """A parity check for the Swift runtime: log p(y | x_t) and its input gradient
    from the exported (fp16) weights, in float64, on three noised test images."""
    model = TimeConditionedClassifier(CONFIG).double()
    model.load_state_dict({k: v.double() for k, v in load_file(directory / "model.safetensors").items()})
    generator = torch.Generator().manual_seed(1)
    t = torch.tensor([10, 500, 900])
    a = alphas[t].view(-1, 1, 1, 1)
    x = (a.sqrt() * test_images[:3] + (1 - a).sqrt() * torch.randn(test_images[:3].shape, generator=generator))
    x = x.float().double().requires_grad_(True)
    log_probs = F.log_softmax(model(x, t), dim=1)[torch.arange(3), test_labels[:3]]
    log_probs.sum().backward()
    (directory / "reference.json").write_text(json.dumps({
        "timesteps": t.tolist(), "labels": test_labels[:3].tolist(), "inputs": x.detach().float().flatten().tolist(),
        "log_probs": log_probs.detach().tolist(), "gradients": x.grad.flatten().tolist()}) + "\n")


if __name__ == "__main__":
    main()
