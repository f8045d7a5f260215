#!/usr/bin/env python3
"""Times Stable Diffusion 1.5's parts in PyTorch + diffusers, the baseline of
`make bench`'s latent section: the U-Net on a CFG pair of 64x64 latents with
77-token text states, the VAE decoder at 512x512, and a whole 20-step DDIM
text-to-image render (text encoder, U-Net with CFG, decoder) as
StableDiffusionPipeline runs it. Random weights from the published configs in
tools/bench/sd15 (speed does not depend on them).

Prints one JSON line: ms (min and median over --iterations), peak RSS.
"""
import argparse
import json
import resource
import statistics
import time

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

ROOT = "tools/bench/sd15"


def config(name):
    with open(f"{ROOT}/{name}/config.json") as f:
        return {k: v for k, v in json.load(f).items() if not k.startswith("_")}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--part", choices=["unet", "decoder", "render"], required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    with torch.inference_mode():
        if args.part in ("unet", "render"):
            unet = UNet2DConditionModel(**config("unet")).eval()
        if args.part in ("decoder", "render"):
            vae = AutoencoderKL(**config("vae")).eval()
        if args.part == "render":
            text = CLIPTextModel(CLIPTextConfig(**{k: v for k, v in config("text_encoder").items()
                                                   if k not in ("architectures", "model_type")})).eval()
            with open(f"{ROOT}/scheduler/scheduler_config.json") as f:
                scheduler = DDIMScheduler.from_config(json.load(f))
            ids = torch.randint(0, 1000, (2, 77))

        def run():
            if args.part == "unet":
                unet(torch.randn(2, 4, 64, 64), torch.tensor([500, 500]),
                     encoder_hidden_states=torch.randn(2, 77, 768)).sample
            elif args.part == "decoder":
                vae.decode(torch.randn(1, 4, 64, 64)).sample
            else:
                # StableDiffusionPipeline's loop: both prompts' states once, then CFG per step
                states = text(ids).last_hidden_state
                scheduler.set_timesteps(args.steps)
                latents = torch.randn(1, 4, 64, 64) * scheduler.init_noise_sigma
                for t in scheduler.timesteps:
                    output = unet(torch.cat([latents] * 2), t, encoder_hidden_states=states).sample
                    uncond, cond = output.chunk(2)
                    latents = scheduler.step(uncond + 7.5 * (cond - uncond), t, latents).prev_sample
                vae.decode(latents / 0.18215).sample

        if args.part != "render":  # a warm-up; a whole render warms itself
            run()
        times = []
        for _ in range(args.iterations):
            start = time.perf_counter()
            run()
            times.append((time.perf_counter() - start) * 1000)
    print(json.dumps({
        "runtime": "pytorch", "part": args.part, "threads": args.threads,
        "ms_min": min(times), "ms_median": statistics.median(times),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "versions": f"torch {torch.__version__}",
    }))


if __name__ == "__main__":
    main()
