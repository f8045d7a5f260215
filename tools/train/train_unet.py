#!/usr/bin/env python3
"""Trains diffusiond's default model: a class-conditional DDPM on Fashion-MNIST.

A diffusers UNet2DModel at the native 28x28 (28 -> 14 -> 7), epsilon prediction,
the cosine noise schedule, 11 class embeddings (ten classes and the null label 10,
which replaces the label of a random 15% of each batch so that classifier-free
guidance works), AdamW and an EMA of the weights. Training stops after
--minutes of wall time or --steps steps, saving a checkpoint every few minutes;
rerun the same command to continue from it. The EMA weights are exported in
diffusers' pipeline layout (fp16) to --output.

Needs torch and diffusers (PyPI); run from the repository root, e.g.
    python tools/train/train_unet.py --minutes 45 --seed 0 --output models/fashion-mnist
"""
import argparse
import copy
import json
import pathlib
import sys
import time

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from fashion_mnist import load  # noqa: E402

NULL_CLASS = 10

UNET = dict(
    sample_size=28, in_channels=1, out_channels=1, block_out_channels=[16, 32, 64], layers_per_block=1,
    down_block_types=["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
    up_block_types=["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
    attention_head_dim=32, norm_num_groups=8, num_class_embeds=11)
SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="epsilon",
                clip_sample=False)  # clipping x0 at the cosine schedule's first steps saturates samples


def add_training_arguments(parser, checkpoint, minutes=45, lr=1e-3):
    """The options every trainer here shares."""
    parser.add_argument("--minutes", type=float, default=minutes)
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--checkpoint", default=checkpoint)


def train(model, loss, args):
    """AdamW on loss(model) with a short warm-up, gradient clipping and an EMA of
    the weights, until --minutes or --steps; resumes from --checkpoint and saves
    it every five minutes. Returns (the EMA model, steps, seconds)."""
    ema = copy.deepcopy(model).eval()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    step, seconds = 0, 0.0
    checkpoint = pathlib.Path(args.checkpoint)
    if checkpoint.exists():
        state = torch.load(checkpoint)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        step, seconds = state["step"], state["seconds"]
        torch.set_rng_state(state["rng"])
        print(f"resumed at step {step} after {seconds / 60:.1f} minutes", flush=True)
    print(f"parameters: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M", flush=True)

    def save():
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
                    "step": step, "seconds": seconds, "rng": torch.get_rng_state()}, checkpoint)

    start, last_save, running = time.time() - seconds, time.time(), 0.0
    model.train()
    while step < args.steps and (time.time() - start) < args.minutes * 60:
        value = loss(model)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        # a short warm-up, then a constant learning rate
        for group in optimizer.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / 200)
        optimizer.step()
        with torch.no_grad():
            decay = min(args.ema, (1 + step) / (10 + step))
            for e, p in zip(ema.parameters(), model.parameters()):
                e.mul_(decay).add_(p.detach(), alpha=1 - decay)
        step += 1
        running = 0.98 * running + 0.02 * value.item() if step > 1 else value.item()
        seconds = time.time() - start
        if step % 100 == 0:
            print(f"step {step}  loss {running:.4f}  {seconds / 60:.1f} min", flush=True)
        if time.time() - last_save > 300:
            save()
            last_save = time.time()
    save()
    print(f"trained {step} steps in {seconds / 60:.1f} minutes", flush=True)
    return ema, step, seconds


def main():
    parser = argparse.ArgumentParser()
    add_training_arguments(parser, "tools/train/checkpoints/unet.pt")
    parser.add_argument("--output", default="models/fashion-mnist")
    parser.add_argument("--guidance-scale", type=float, default=3.0,
                        help="recorded as recommended_guidance_scale (chosen with tools/eval/evaluate.py)")
    args = parser.parse_args()
    print("command:", " ".join(["python"] + sys.argv), flush=True)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    images, labels = load("train")
    alphas = DDPMScheduler(**SCHEDULE).alphas_cumprod

    def loss(model):
        index = torch.randint(0, images.shape[0], (args.batch,))
        x0, y = images[index], labels[index].clone()
        y[torch.rand(args.batch) < 0.15] = NULL_CLASS
        t = torch.randint(0, 1000, (args.batch,))
        noise = torch.randn_like(x0)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        return F.mse_loss(model(xt, t, class_labels=y).sample, noise)

    ema, step, seconds = train(UNet2DModel(**UNET), loss, args)

    output = pathlib.Path(args.output)
    DDPMPipeline(unet=ema.half(), scheduler=DDIMScheduler(**SCHEDULE)).save_pretrained(output)
    index_file = output / "model_index.json"
    index = json.loads(index_file.read_text())
    index.update({"null_class": NULL_CLASS, "recommended_guidance_scale": args.guidance_scale, "training": {"command": " ".join(["python"] + sys.argv), "seed": args.seed,
                                                         "steps": step, "minutes": round(seconds / 60, 1)}})
    index_file.write_text(json.dumps(index, indent=2) + "\n")
    print(f"exported the EMA weights to {output}", flush=True)


if __name__ == "__main__":
    main()
