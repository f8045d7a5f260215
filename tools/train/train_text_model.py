#!/usr/bin/env python3
"""Trains diffusiond's text-to-image model: a small latent diffusion model on
Fashion-MNIST, saved as a standard StableDiffusionPipeline directory
(models/fashion-mnist-text) that diffusers itself loads and runs.

1. An AutoencoderKL on the 28x28 images padded to 32x32 (background -1): three
   levels, 4 latent channels at 8x8; MSE plus a small KL term (1e-6, as SD's).
   Its scaling_factor is 1 / the standard deviation of the training latents.
2. A byte-level BPE vocabulary of CLIP's form, trained on the captions, and a
   CLIPTokenizer of model_max_length 16 (captions are short).
3. A CLIP-style CLIPTextModel and a UNet2DConditionModel trained together on
   the latents: epsilon, the cosine schedule, captions from TRAIN_TEMPLATES x
   every synonym of the image's class, 10% of them empty (the unconditional
   prompt of classifier-free guidance), AdamW, an EMA of both.

HELD_OUT_TEMPLATES are never trained on: tools/eval/evaluate_text.py measures
agreement on both. Each stage stops after its --*-minutes of wall time.

Needs torch, diffusers, transformers, tokenizers (PyPI); from the repository root:
    python tools/train/train_text_model.py --vae-minutes 10 --minutes 30 --output models/fashion-mnist-text
"""
import argparse
import copy
import json
import pathlib
import random
import shutil
import sys
import time

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

sys.path.insert(0, str(pathlib.Path(__file__).parent))
sys.path.insert(0, str(pathlib.Path(__file__).parent.parent / "reference"))
from fashion_mnist import load  # noqa: E402
from make_latent_fixtures import save_tokenizer, train_vocabulary  # noqa: E402

SYNONYMS = [
    ["t-shirt", "tee", "top", "tee shirt"], ["trouser", "trousers", "pants", "jeans"],
    ["pullover", "sweater", "jumper"], ["dress", "gown", "frock"], ["coat", "jacket", "overcoat"],
    ["sandal", "sandals", "flip-flop"], ["shirt", "button-up shirt", "blouse"],
    ["sneaker", "sneakers", "trainers", "running shoe"], ["bag", "handbag", "purse"], ["ankle boot", "boots", "boot"],
]
TRAIN_TEMPLATES = ["a photo of a {}", "{}", "a black and white picture of a {}", "a {}", "an image of a {}",
                   "a product photo of a {}", "a small {}", "a grayscale photo of the {}"]
HELD_OUT_TEMPLATES = ["a picture showing a {}", "my favourite {}", "a low resolution photo of a {}", "here is a {}"]

VAE = dict(in_channels=1, out_channels=1, latent_channels=4, block_out_channels=[32, 64, 64],
           down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3, layers_per_block=1,
           norm_num_groups=16, sample_size=32)
TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=16,
            hidden_act="quick_gelu", projection_dim=64)
UNET = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=[48, 96], layers_per_block=1,
            down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"], cross_attention_dim=64, attention_head_dim=4,
            norm_num_groups=16)
SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="epsilon", clip_sample=False,
                steps_offset=1)


def pad(images):
    return F.pad(images, (2, 2, 2, 2), value=-1.0)


def captions():
    return [template.format(name) for template in TRAIN_TEMPLATES + HELD_OUT_TEMPLATES for names in SYNONYMS for name in names]


def train_vae(images, minutes, batch):
    vae = AutoencoderKL(**VAE)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    start, step = time.time(), 0
    while time.time() - start < minutes * 60:
        x = images[torch.randint(0, images.shape[0], (batch,))]
        posterior = vae.encode(x).latent_dist
        loss = F.mse_loss(vae.decode(posterior.sample()).sample, x) + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        if step % 100 == 0:
            print(f"vae step {step}  loss {loss.item():.5f}  {(time.time() - start) / 60:.1f} min", flush=True)
    return vae.eval(), step


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--vae-minutes", type=float, default=10)
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--guidance-scale", type=float, default=4.0,
                        help="recorded as recommended_guidance_scale (chosen with tools/eval/evaluate_text.py)")
    parser.add_argument("--output", default="models/fashion-mnist-text")
    args = parser.parse_args()
    print("command:", " ".join(["python"] + sys.argv), flush=True)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    images, labels = load("train")
    images = pad(images)

    vae, vae_steps = train_vae(images, args.vae_minutes, 64)
    with torch.no_grad():
        latents = torch.cat([vae.encode(images[i:i + 500]).latent_dist.mean for i in range(0, images.shape[0], 500)])
    scaling = 1 / latents.std().item()
    vae.register_to_config(scaling_factor=scaling)
    latents = latents * scaling
    print(f"latents {tuple(latents.shape[1:])}, scaling_factor {scaling:.4f}", flush=True)

    output = pathlib.Path(args.output)
    work = pathlib.Path("tools/train/checkpoints/tokenizer")
    vocab, merges = train_vocabulary(captions() * 5, 200)
    tokenizer = save_tokenizer(work, vocab, merges, "<|endoftext|>")
    tokenizer.model_max_length = TEXT["max_position_embeddings"]
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), bos_token_id=len(vocab) - 2, eos_token_id=len(vocab) - 1,
                                        pad_token_id=len(vocab) - 1, **TEXT))
    unet = UNet2DConditionModel(**UNET)
    ema_text, ema_unet = copy.deepcopy(text).eval(), copy.deepcopy(unet).eval()
    parameters = list(text.parameters()) + list(unet.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=args.lr)
    scheduler = DDPMScheduler(**SCHEDULE)
    alphas = scheduler.alphas_cumprod
    print(f"parameters: text {sum(p.numel() for p in text.parameters()) / 1e6:.2f}M, "
          f"unet {sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M", flush=True)
    names = [[template.format(n) for template in TRAIN_TEMPLATES for n in names] for names in SYNONYMS]
    start, step, running = time.time(), 0, 0.0
    while time.time() - start < args.minutes * 60:
        index = torch.randint(0, latents.shape[0], (args.batch,))
        prompts = ["" if random.random() < 0.1 else random.choice(names[int(y)]) for y in labels[index]]
        ids = tokenizer(prompts, padding="max_length", max_length=TEXT["max_position_embeddings"], truncation=True,
                        return_tensors="pt").input_ids
        x0 = latents[index]
        t = torch.randint(0, 1000, (args.batch,))
        noise = torch.randn_like(x0)
        a = alphas[t].view(-1, 1, 1, 1)
        states = text(ids).last_hidden_state
        loss = F.mse_loss(unet(a.sqrt() * x0 + (1 - a).sqrt() * noise, t, encoder_hidden_states=states).sample, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        for group in optimizer.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / 200)
        optimizer.step()
        with torch.no_grad():
            decay = min(args.ema, (1 + step) / (10 + step))
            for ema, model in [(ema_text, text), (ema_unet, unet)]:
                for e, p in zip(ema.parameters(), model.parameters()):
                    e.mul_(decay).add_(p.detach(), alpha=1 - decay)
        step += 1
        running = 0.98 * running + 0.02 * loss.item() if step > 1 else loss.item()
        if step % 100 == 0:
            print(f"step {step}  loss {running:.4f}  {(time.time() - start) / 60:.1f} min", flush=True)

    if output.exists():
        shutil.rmtree(output)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=ema_text, tokenizer=tokenizer, unet=ema_unet,
                                   scheduler=DDIMScheduler(**SCHEDULE), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.to(torch.float16).save_pretrained(output, safe_serialization=True)
    shutil.rmtree(output / "tokenizer")
    save_tokenizer(output / "tokenizer", vocab, merges, "<|endoftext|>")
    config = json.loads((output / "tokenizer" / "tokenizer_config.json").read_text())
    config["model_max_length"] = TEXT["max_position_embeddings"]
    (output / "tokenizer" / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    index_file = output / "model_index.json"
    index = json.loads(index_file.read_text())
    index.update({"recommended_guidance_scale": args.guidance_scale,
                  "training": {"command": " ".join(["python"] + sys.argv), "seed": args.seed, "vae_steps": vae_steps,
                               "steps": step, "minutes": round((time.time() - start) / 60, 1),
                               "train_templates": TRAIN_TEMPLATES, "held_out_templates": HELD_OUT_TEMPLATES,
                               "synonyms": SYNONYMS}})
    index_file.write_text(json.dumps(index, indent=2) + "\n")
    print(f"exported to {output}", flush=True)


if __name__ == "__main__":
    main()
