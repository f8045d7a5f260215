#!/usr/bin/env python3
"""Evaluates diffusiond's text-to-image model (models/fashion-mnist-text).

1. Renders with diffusiond itself (`diffusiond render`, the model's own sampler,
   --steps steps, CFG at each --scales value): for every class, --per-template
   images for every caption template, one synonym of the class's name each in
   turn; once with the templates the model was trained on, once with templates
   it never saw (both lists are in its model_index.json).
2. Reports the project's clean classifier's agreement between the class the
   prompt names and the image (the 28x28 centre of the 32x32 render, quantized as
   its PNG is), per template set, per scale and per class.
3. Reports the autoencoder's reconstruction error on the test split (mean squared
   error and PSNR in [-1, 1], and the clean classifier's accuracy on the
   reconstructions beside its accuracy on the originals).

Needs torch and diffusers (PyPI) and a release build; from the repository root:
    python tools/eval/evaluate_text.py --output models/fashion-mnist-text/eval.json
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
from diffusers import AutoencoderKL

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from evaluate import clean_classifier, predict  # noqa: E402
from fashion_mnist import CLASSES, load  # noqa: E402


def render(binary, model, prompts, scale, steps, seed, workdir):
    job = {"model": str(pathlib.Path(model).resolve()), "steps": steps, "count": len(prompts), "seed": seed,
           "prompt": prompts, "guidance": {"kind": "cfg", "scale": scale}, "formats": ["npy"]}
    path = pathlib.Path(workdir) / f"job-{seed}.json"
    path.write_text(json.dumps(job))
    out = pathlib.Path(workdir) / f"out-{seed}"
    subprocess.run([binary, "render", str(path), "--output", str(out), "--quiet"], check=True, stdout=subprocess.DEVNULL)
    images = torch.from_numpy(np.clip(np.load(out / "samples.npy"), -1, 1))[:, :, 2:30, 2:30]
    return torch.round((images + 1) * 127.5) / 127.5 - 1


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="models/fashion-mnist-text")
    parser.add_argument("--binary", default=".build/release/diffusiond")
    parser.add_argument("--scales", default="1,2,4,6")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--per-template", type=int, default=10)
    parser.add_argument("--output", default="-")
    args = parser.parse_args()
    torch.set_num_threads(2)
    start = time.time()
    index = json.loads((pathlib.Path(args.model) / "model_index.json").read_text())
    training = index["training"]
    clean, accuracy = clean_classifier()
    results = {"clean_classifier_test_accuracy": accuracy, "steps": args.steps, "sampler": "the model's (ddim)"}
    print(f"clean classifier test accuracy {accuracy:.4f}", flush=True)

    with tempfile.TemporaryDirectory() as workdir:
        seed = 0
        for scale in map(float, args.scales.split(",")):
            for name in ["train_templates", "held_out_templates"]:
                prompts, labels = [], []
                for label, synonyms in enumerate(training["synonyms"]):
                    for t, template in enumerate(training[name]):
                        for k in range(args.per_template):
                            prompts.append(template.format(synonyms[(t + k) % len(synonyms)]))
                            labels.append(label)
                images = torch.cat([render(args.binary, args.model, prompts[i:i + 100], scale, args.steps, seed + i, workdir)
                                    for i in range(0, len(prompts), 100)])
                seed += 1_000_000
                predicted = predict(clean, images)
                labels = torch.tensor(labels)
                per_class = [(predicted[labels == c] == c).float().mean().item() for c in range(10)]
                overall = (predicted == labels).float().mean().item()
                results[f"cfg {scale:g} {name}"] = {"agreement": overall, "images": len(prompts),
                                                    "per_class": dict(zip(CLASSES, per_class))}
                print(f"cfg {scale:g} {name}: agreement {overall:.3f} of {len(prompts)}  per class "
                      + " ".join(f"{v:.2f}" for v in per_class), flush=True)

    vae = AutoencoderKL.from_pretrained(pathlib.Path(args.model) / "vae", torch_dtype=torch.float32).eval()
    test_images, test_labels = load("t10k")
    padded = F.pad(test_images, (2, 2, 2, 2), value=-1.0)
    with torch.no_grad():
        reconstructed = torch.cat([vae.decode(vae.encode(padded[i:i + 500]).latent_dist.mean).sample
                                   for i in range(0, len(padded), 500)]).clamp(-1, 1)
    mse = F.mse_loss(reconstructed, padded).item()
    recon_accuracy = (predict(clean, reconstructed[:, :, 2:30, 2:30]) == test_labels).float().mean().item()
    results["autoencoder_test"] = {"mse": mse, "psnr_db": 10 * np.log10(4 / mse),
                                   "clean_classifier_accuracy_on_reconstructions": recon_accuracy}
    print(f"autoencoder on the test split: MSE {mse:.5f} (PSNR {10 * np.log10(4 / mse):.1f} dB in [-1, 1]), "
          f"classifier accuracy on reconstructions {recon_accuracy:.4f}", flush=True)
    results["minutes"] = round((time.time() - start) / 60, 1)
    if args.output != "-":
        pathlib.Path(args.output).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
