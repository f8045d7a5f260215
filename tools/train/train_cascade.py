#!/usr/bin/env python3
"""Trains diffusiond's two-stage Fashion-MNIST cascade (Ho et al., Cascaded
Diffusion Models, 2021):

- `--stage base`: a class-conditional DDPM at 14x14 on the training set
  downsampled by 2x2 averaging (models/fashion-mnist-14): epsilon, the cosine
  schedule, 11 class embeddings (the null label 10 replaces 15% of the labels,
  for classifier-free guidance).
- `--stage sr`: a 14 -> 28 super-resolution DDPM (models/fashion-mnist-sr). Its
  UNet2DModel reads the noisy 28x28 sample beside the 14x14 image upsampled
  bicubically (in_channels 2), and is conditioned on the augmentation level
  through `class_embed_type: "timestep"`. Gaussian conditioning augmentation,
  CDM's recipe: each training image's low-resolution conditioning is noised to
  a random level s of the model's own schedule, sqrt(abar_s) z + sqrt(1 - abar_s) e,
  s uniform in [0, --max-noise-level); the level is the model's class input.
  The level used at sampling (model_index.json noise_level) is picked by
  measurement: tools/eval/evaluate_cascade.py --noise-levels.

Both are saved in diffusers' layout; the SR model as diffusiond's
PixelSuperResolutionPipeline (docs/models.md).

Needs torch and diffusers (PyPI); from the repository root:
    python tools/train/train_cascade.py --stage base --minutes 20
    python tools/train/train_cascade.py --stage sr --minutes 30
"""
import argparse
import json
import pathlib
import sys

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from fashion_mnist import load  # noqa: E402
from train_unet import NULL_CLASS, SCHEDULE, add_training_arguments, train  # noqa: E402

BASE = dict(
    sample_size=14, in_channels=1, out_channels=1, block_out_channels=[32, 64], layers_per_block=2,
    down_block_types=["DownBlock2D", "AttnDownBlock2D"], up_block_types=["AttnUpBlock2D", "UpBlock2D"],
    attention_head_dim=32, norm_num_groups=8, num_class_embeds=11)
SR = dict(
    sample_size=28, in_channels=2, out_channels=1, block_out_channels=[16, 32, 64], layers_per_block=1,
    down_block_types=["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
    up_block_types=["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
    attention_head_dim=32, norm_num_groups=8, class_embed_type="timestep")


def downsample(images):
    """28x28 -> 14x14 by averaging each 2x2 block: the base stage's training set."""
    return F.avg_pool2d(images, 2)


def upsample(low):
    """The SR stage's conditioning: bicubic, as torch (align_corners False) and diffusiond do it."""
    return F.interpolate(low, scale_factor=2, mode="bicubic", align_corners=False)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--stage", choices=["base", "sr"], required=True)
    add_training_arguments(parser, checkpoint=None, minutes=20)
    parser.add_argument("--output")
    parser.add_argument("--max-noise-level", type=int, default=600)
    parser.add_argument("--noise-level", type=int, default=100,
                        help="the SR stage's model_index.json noise_level (chosen with tools/eval/evaluate_cascade.py)")
    parser.add_argument("--guidance-scale", type=float, default=3.0,
                        help="the base stage's recommended_guidance_scale (chosen with tools/eval/evaluate_cascade.py)")
    args = parser.parse_args()
    args.checkpoint = args.checkpoint or f"tools/train/checkpoints/cascade-{args.stage}.pt"
    output = pathlib.Path(args.output or ("models/fashion-mnist-14" if args.stage == "base" else "models/fashion-mnist-sr"))
    command = " ".join(["python"] + sys.argv)
    print("command:", command, flush=True)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    images, labels = load("train")
    alphas = DDPMScheduler(**SCHEDULE).alphas_cumprod

    def noised(x0, t):
        noise = torch.randn_like(x0)
        a = alphas[t].view(-1, 1, 1, 1)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise, noise

    if args.stage == "base":
        small = downsample(images)

        def loss(model):
            index = torch.randint(0, small.shape[0], (args.batch,))
            y = labels[index].clone()
            y[torch.rand(args.batch) < 0.15] = NULL_CLASS
            t = torch.randint(0, 1000, (args.batch,))
            xt, noise = noised(small[index], t)
            return F.mse_loss(model(xt, t, class_labels=y).sample, noise)

        model = UNet2DModel(**BASE)
    else:
        conditioning = upsample(downsample(images))

        def loss(model):
            index = torch.randint(0, images.shape[0], (args.batch,))
            t = torch.randint(0, 1000, (args.batch,))
            level = torch.randint(0, args.max_noise_level, (args.batch,))
            xt, noise = noised(images[index], t)
            augmented, _ = noised(conditioning[index], level)
            return F.mse_loss(model(torch.cat([xt, augmented], 1), t, class_labels=level).sample, noise)

        model = UNet2DModel(**SR)

    ema, step, seconds = train(model, loss, args)
    training = {"command": command, "seed": args.seed, "steps": step, "minutes": round(seconds / 60, 1)}
    if args.stage == "base":
        DDPMPipeline(unet=ema.half(), scheduler=DDIMScheduler(**SCHEDULE)).save_pretrained(output)
        index_file = output / "model_index.json"
        index = json.loads(index_file.read_text())
        index.update({"null_class": NULL_CLASS, "recommended_guidance_scale": args.guidance_scale, "training": training})
    else:
        ema.half().save_pretrained(output / "unet")
        DDIMScheduler(**SCHEDULE).save_pretrained(output / "scheduler")
        index_file = output / "model_index.json"
        index = {"_class_name": "PixelSuperResolutionPipeline", "_diffusers_version": "0.42.1",
                 "unet": ["diffusers", "UNet2DModel"], "scheduler": ["diffusers", "DDIMScheduler"],
                 "upsample": "bicubic", "noise_level": args.noise_level,
                 "training": dict(training, max_noise_level=args.max_noise_level)}
    index_file.write_text(json.dumps(index, indent=2) + "\n")
    print(f"exported the EMA weights to {output}", flush=True)


if __name__ == "__main__":
    main()
