#!/usr/bin/env python3
"""Evaluates diffusiond's default model the way anyone can rerun it.

1. Trains (or reuses) a clean Fashion-MNIST classifier on the training split and
   reports its test accuracy.
2. Renders samples with diffusiond itself (`diffusiond render`, DDIM, 50 steps):
   1,000 per setting, 100 of every class, for classifier-free guidance at scales
   1 (the plain conditional model), 2, 3 and 5 and for classifier guidance at a
   few scales.
3. Reports the clean classifier's agreement with the requested class, per class
   and overall, and the Fréchet distance in the clean classifier's feature space
   between 2,000 CFG-3 samples and the test split.
With --samplers it reports instead, at CFG 3, each sampler's agreement and
seconds per image at the step counts of SAMPLER_TABLE (500 images each).

Needs torch (PyPI) and a release build (`swift build -c release`); run from the
repository root:
    python tools/eval/evaluate.py --model models/fashion-mnist
"""
import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "train"))
from fashion_mnist import CLASSES, load  # noqa: E402

CHECKPOINT = pathlib.Path("tools/eval/checkpoints/clean_classifier.pt")


class CleanClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 128, 3, padding=1)
        self.fc1 = nn.Linear(128 * 7 * 7, 256)
        self.fc2 = nn.Linear(256, 10)

    def features(self, x):
        h = F.relu(self.conv1(x))
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        h = F.max_pool2d(F.relu(self.conv3(h)), 2)
        return F.relu(self.fc1(h.flatten(1)))

    def forward(self, x):
        return self.fc2(F.dropout(self.features(x), 0.3, self.training))


def clean_classifier():
    test_images, test_labels = load("t10k")
    model = CleanClassifier()
    if CHECKPOINT.exists():
        model.load_state_dict(torch.load(CHECKPOINT))
    else:
        torch.manual_seed(0)
        images, labels = load("train")
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        model.train()
        for epoch in range(3):
            order = torch.randperm(images.shape[0])
            for start in range(0, images.shape[0], 128):
                index = order[start:start + 128]
                x = images[index]
                x = torch.roll(x, shifts=tuple(torch.randint(-1, 2, (2,)).tolist()), dims=(2, 3))  # small shifts
                loss = F.cross_entropy(model(x), labels[index])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        CHECKPOINT.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), CHECKPOINT)
    model.eval()
    with torch.no_grad():
        accuracy = (predict(model, test_images) == test_labels).float().mean().item()
    return model, accuracy


def predict(model, images):
    with torch.no_grad():
        return torch.cat([model(images[i:i + 1000]).argmax(1) for i in range(0, len(images), 1000)])


def features(model, images):
    with torch.no_grad():
        return torch.cat([model.features(images[i:i + 1000]) for i in range(0, len(images), 1000)]).double().numpy()


def frechet(a, b):
    """‖μ_a − μ_b‖² + tr(Σ_a + Σ_b − 2(Σ_a Σ_b)^½), the trace of the root from the
    eigenvalues of Σ_a^½ Σ_b Σ_a^½ (symmetric, so numpy alone suffices)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    values, vectors = np.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    cross = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.sqrt(np.clip(cross, 0, None)).sum())


def render(binary, model, guidance, per_class, seed, workdir, sampler="ddim", steps=50, options=None):
    """per_class images of every class through `diffusiond render`; returns (images, labels, seconds per image)."""
    labels = [c for c in range(10) for _ in range(per_class)]
    samples = []
    started = time.time()
    for start in range(0, len(labels), 100):
        job = {"model": str(pathlib.Path(model).resolve()), "sampler": sampler, "steps": steps,
               "count": len(labels[start:start + 100]), "seed": seed + start, "class": labels[start:start + 100],
               "formats": ["npy"]}
        if options:
            job["sampler_options"] = options
        if guidance:
            job["guidance"] = guidance
        path = pathlib.Path(workdir) / f"job-{seed}-{start}.json"
        path.write_text(json.dumps(job))
        out = pathlib.Path(workdir) / f"out-{seed}-{start}"
        subprocess.run([binary, "render", str(path), "--output", str(out), "--quiet"], check=True,
                       stdout=subprocess.DEVNULL)
        samples.append(np.load(out / "samples.npy"))
    seconds = (time.time() - started) / len(labels)
    images = torch.from_numpy(np.clip(np.concatenate(samples), -1, 1))
    # the PNGs quantize to 8 bits; classify what a user sees
    images = torch.round((images + 1) * 127.5) / 127.5 - 1
    return images, torch.tensor(labels), seconds


# The fast samplers against DDIM at 50 steps, at the recommended CFG 3 (--samplers).
# The Karras rows show what Karras σ do on this model's squaredcos_cap_v2 schedule:
# σ_max there is about 20,000, and 6 of 10 steps land above σ = 600 (diffusers
# plans the same σ), so the samples are noise.
SAMPLER_TABLE = [("ddim", 50, None), ("dpmsolver++", 10, None), ("dpmsolver++", 20, None), ("unipc", 10, None),
                 ("unipc", 20, None), ("dpmsolver++", 10, {"use_karras_sigmas": True}),
                 ("unipc", 10, {"use_karras_sigmas": True}), ("euler", 20, None), ("heun", 10, None)]


def sampler_table(args, clean, results, workdir):
    """Class agreement and seconds per image for each sampler and step count."""
    print("sampler (cfg 3)              steps  agreement  s/image", flush=True)
    for index, (sampler, steps, options) in enumerate(SAMPLER_TABLE):
        images, labels, seconds = render(args.binary, args.model, {"kind": "cfg", "scale": 3}, 50,
                                         50_000_000 + 1_000_000 * index, workdir, sampler, steps, options)
        agreement = (predict(clean, images) == labels).float().mean().item()
        name = sampler + (" karras" if options else "")
        results[f"{name} {steps}"] = {"agreement": agreement, "seconds_per_image": seconds}
        print(f"{name:28s} {steps:5d}  {agreement:9.3f}  {seconds:7.4f}", flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="models/fashion-mnist")
    parser.add_argument("--binary", default=".build/release/diffusiond")
    parser.add_argument("--classifier-scales", default="3,10,20")
    parser.add_argument("--output", default="-", help="a JSON file for the figures (default: print only)")
    parser.add_argument("--samplers", action="store_true", help="only the sampler table: agreement and speed per sampler")
    args = parser.parse_args()
    torch.set_num_threads(2)
    results = {}
    start = time.time()
    clean, accuracy = clean_classifier()
    results["clean_classifier_test_accuracy"] = accuracy
    print(f"clean classifier test accuracy {accuracy:.4f}", flush=True)

    if args.samplers:
        with tempfile.TemporaryDirectory() as workdir:
            sampler_table(args, clean, results, workdir)
        if args.output != "-":
            pathlib.Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
        return

    settings = [(f"cfg {s}", {"kind": "cfg", "scale": s} if s != 1 else None) for s in [1, 2, 3, 5]]
    settings += [(f"classifier {s}", {"kind": "classifier", "scale": float(s)})
                 for s in map(float, args.classifier_scales.split(","))]
    with tempfile.TemporaryDirectory() as workdir:
        cfg3 = None
        for index, (name, guidance) in enumerate(settings):
            images, labels, _ = render(args.binary, args.model, guidance, 100, 1_000_000 * (index + 1), workdir)
            predicted = predict(clean, images)
            per_class = [(predicted[labels == c] == c).float().mean().item() for c in range(10)]
            overall = (predicted == labels).float().mean().item()
            results[name] = {"accuracy": overall, "per_class": dict(zip(CLASSES, per_class))}
            print(f"{name}: accuracy {overall:.3f}  per class " + " ".join(f"{v:.2f}" for v in per_class), flush=True)
            if name == "cfg 3":
                cfg3 = images
        extra, _, _ = render(args.binary, args.model, {"kind": "cfg", "scale": 3}, 100, 99_000_000, workdir)
        test_images, _ = load("t10k")
        results["frechet_distance_cfg3_2000_vs_test"] = frechet(features(clean, torch.cat([cfg3, extra])),
                                                                features(clean, test_images))
        print(f"Frechet distance (clean-classifier features), 2000 CFG-3 samples vs test split: "
              f"{results['frechet_distance_cfg3_2000_vs_test']:.2f}", flush=True)
        # the same distance between the training and test splits, for scale
        train_images, _ = load("train")
        results["frechet_distance_train2000_vs_test"] = frechet(features(clean, train_images[:2000]),
                                                                features(clean, test_images))
        print(f"  (2000 training images vs test split: {results['frechet_distance_train2000_vs_test']:.2f})")
    results["minutes"] = round((time.time() - start) / 60, 1)
    if args.output != "-":
        pathlib.Path(args.output).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
