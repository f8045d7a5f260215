#!/usr/bin/env python3
"""Evaluates the shipped Fashion-MNIST cascade (models/fashion-mnist-14 ->
models/fashion-mnist-sr) the way anyone can rerun it, rendering with diffusiond
itself (`diffusiond render`):

1. Class agreement (the clean classifier of tools/eval/evaluate.py) of the
   cascade's 28x28 samples at the recommended guidance (CFG on the base stage,
   the SR stage at its model_index.json noise_level) against the direct 28x28
   model (models/fashion-mnist) at its own, and each one's seconds per image.
2. The SR stage alone on test images downsampled to 14x14 (2x2 averages, as it
   was trained, written as 8-bit PNGs): PSNR and SSIM against the originals,
   beside bicubic upsampling of the same PNGs.
3. Agreement as a function of the sampling-time augmentation level (--levels),
   the measurement that picks the shipped noise_level.

Needs torch (PyPI) and a release build (`swift build -c release`); from the
repository root:
    python tools/eval/evaluate_cascade.py --output models/fashion-mnist-sr/eval.json
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
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).parent))
sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "train"))
from evaluate import clean_classifier, predict  # noqa: E402
from fashion_mnist import load  # noqa: E402
from train_cascade import downsample, upsample  # noqa: E402


def run_job(binary, job, workdir, name):
    """Renders one job with diffusiond; returns (samples clamped and 8-bit rounded as the PNGs, seconds)."""
    path = pathlib.Path(workdir) / f"{name}.json"
    path.write_text(json.dumps(job))
    out = pathlib.Path(workdir) / f"out-{name}"
    started = time.time()
    subprocess.run([binary, "render", str(path), "--output", str(out), "--quiet"], check=True, stdout=subprocess.DEVNULL)
    seconds = time.time() - started
    images = torch.from_numpy(np.clip(np.load(out / "samples.npy"), -1, 1))
    return torch.round((images + 1) * 127.5) / 127.5 - 1, seconds


def class_jobs(args, per_class, seed, model, guidance_scale, steps, stages=None):
    """Jobs of 100 images, per_class of every class."""
    labels = [c for c in range(10) for _ in range(per_class)]
    for start in range(0, len(labels), 100):
        job = {"model": str(pathlib.Path(model).resolve()), "sampler": "ddim", "steps": steps,
               "count": len(labels[start:start + 100]), "seed": seed + start, "class": labels[start:start + 100],
               "guidance": {"kind": "cfg", "scale": guidance_scale}, "formats": ["npy"]}
        if stages:
            job["stages"] = stages
        yield job, labels[start:start + 100]


def agreement(args, clean, workdir, name, model, scale, steps, stages=None, seed=7_000_000):
    images, labels, seconds = [], [], 0.0
    for index, (job, batch) in enumerate(class_jobs(args, args.per_class, seed, model, scale, steps, stages)):
        rendered, took = run_job(args.binary, job, workdir, f"{name}-{index}")
        images.append(rendered)
        labels += batch
        seconds += took
    images = torch.cat(images)
    return (predict(clean, images) == torch.tensor(labels)).float().mean().item(), seconds / len(labels)


def gaussian_window(size=11, sigma=1.5):
    x = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g /= g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim(a, b, data_range=2.0):
    """Wang et al. 2004: an 11x11 Gaussian window (sigma 1.5), K1 0.01, K2 0.03, the mean over valid positions."""
    w = gaussian_window()
    a, b = a.double(), b.double()
    mu_a, mu_b = F.conv2d(a, w), F.conv2d(b, w)
    var_a = F.conv2d(a * a, w) - mu_a ** 2
    var_b = F.conv2d(b * b, w) - mu_b ** 2
    cov = F.conv2d(a * b, w) - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return index.mean(dim=(1, 2, 3))


def psnr(a, b, data_range=2.0):
    mse = ((a.double() - b.double()) ** 2).mean(dim=(1, 2, 3))
    return 10 * torch.log10(data_range ** 2 / mse)


def super_resolution(args, workdir):
    """The SR stage alone on 14x14 PNGs of test images, against bicubic upsampling of the same PNGs."""
    test_images, _ = load("t10k")
    originals = test_images[:args.sr_images]
    low = torch.round((downsample(originals) + 1) * 127.5).clamp(0, 255)
    ours = []
    seconds = 0.0
    for i in range(len(originals)):
        png = pathlib.Path(workdir) / f"low-{i}.png"
        Image.fromarray(low[i, 0].numpy().astype(np.uint8), "L").save(png)
        job = {"model": str(pathlib.Path(args.sr_model).resolve()), "sampler": "ddim", "steps": args.sr_steps,
               "seed": 3_000_000 + i, "image": str(png), "formats": ["npy"]}
        rendered, took = run_job(args.binary, job, workdir, f"sr-{i}")
        ours.append(rendered)
        seconds += took
    ours = torch.cat(ours)
    bicubic = upsample(low / 127.5 - 1).clamp(-1, 1)
    bicubic = torch.round((bicubic + 1) * 127.5) / 127.5 - 1
    return {"images": len(originals), "steps": args.sr_steps,
            "psnr_db": {"sr": psnr(ours, originals).mean().item(), "bicubic": psnr(bicubic, originals).mean().item()},
            "ssim": {"sr": ssim(ours, originals).mean().item(), "bicubic": ssim(bicubic, originals).mean().item()},
            "seconds_per_image_with_process_start": seconds / len(originals)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-model", default="models/fashion-mnist-14")
    parser.add_argument("--sr-model", default="models/fashion-mnist-sr")
    parser.add_argument("--direct-model", default="models/fashion-mnist")
    parser.add_argument("--binary", default=".build/release/diffusiond")
    parser.add_argument("--per-class", type=int, default=30)
    parser.add_argument("--base-steps", type=int, default=50)
    parser.add_argument("--sr-steps", type=int, default=25)
    parser.add_argument("--sr-images", type=int, default=200)
    parser.add_argument("--levels", default="0,50,100,200,400")
    parser.add_argument("--output", default="-")
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.time()
    clean, accuracy = clean_classifier()
    results = {"clean_classifier_test_accuracy": accuracy, "per_class": args.per_class}
    print(f"clean classifier test accuracy {accuracy:.4f}", flush=True)
    base_index = json.loads((pathlib.Path(args.base_model) / "model_index.json").read_text())
    sr_index = json.loads((pathlib.Path(args.sr_model) / "model_index.json").read_text())
    direct_index = json.loads((pathlib.Path(args.direct_model) / "model_index.json").read_text())
    scale, level = base_index["recommended_guidance_scale"], sr_index["noise_level"]
    stage = lambda lvl: [{"model": str(pathlib.Path(args.sr_model).resolve()), "sampler": "ddim", "steps": args.sr_steps,
                          "noise_level": lvl}]
    with tempfile.TemporaryDirectory() as workdir:
        cascade, cascade_seconds = agreement(args, clean, workdir, "cascade", args.base_model, scale, args.base_steps,
                                             stage(level))
        direct, direct_seconds = agreement(args, clean, workdir, "direct", args.direct_model,
                                           direct_index["recommended_guidance_scale"], 50)
        results["cascade"] = {"agreement": cascade, "seconds_per_image": cascade_seconds, "cfg": scale,
                              "noise_level": level, "steps": [args.base_steps, args.sr_steps]}
        results["direct_28x28"] = {"agreement": direct, "seconds_per_image": direct_seconds,
                                   "cfg": direct_index["recommended_guidance_scale"], "steps": 50}
        print(f"cascade (CFG {scale}, noise_level {level}): agreement {cascade:.3f}, {cascade_seconds:.3f} s/image; "
              f"direct 28x28: {direct:.3f}, {direct_seconds:.3f} s/image", flush=True)
        results["super_resolution"] = super_resolution(args, workdir)
        print("SR alone:", json.dumps(results["super_resolution"]), flush=True)
        results["agreement_by_noise_level"] = {}
        for lvl in map(int, args.levels.split(",")):
            # the shipped level's row is the cascade above (the same seeds)
            value = cascade if lvl == level else agreement(args, clean, workdir, f"level-{lvl}", args.base_model, scale,
                                                           args.base_steps, stage(lvl))[0]
            results["agreement_by_noise_level"][str(lvl)] = value
            print(f"noise_level {lvl}: agreement {value:.3f}", flush=True)
    results["minutes"] = round((time.time() - started) / 60, 1)
    if args.output != "-":
        pathlib.Path(args.output).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
