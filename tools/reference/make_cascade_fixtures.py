#!/usr/bin/env python3
"""Makes the super-resolution fixtures: small random-weight directories of the
three super-resolution pipelines, each with whole renders from a given x_T and
a given low-resolution image (low.png), in float32 and float64.

- pixel-sr: diffusiond's PixelSuperResolutionPipeline (a cascade's pixel stage,
  as CDM and DeepFloyd IF build it). A UNet2DModel of 6 input channels (the noisy
  RGB sample and the image upsampled bicubically, torch's F.interpolate) with
  `class_embed_type: "timestep"` reading the augmentation level; the image is
  noised to that level with DDPMScheduler.add_noise. No diffusers pipeline runs
  this, so the loop is written here as diffusers' pipelines write theirs.
- ldm-sr: LDMSuperResolutionPipeline (CompVis/ldm-super-resolution-4x-openimages'
  layout: VQModel + UNet2DModel of 6 input channels), by the pipeline itself;
  a DDIM render and an Euler one (Euler scales [latents, image] together, as the
  pipeline's scale_model_input of the concatenation does).
- sd-upscale: StableDiffusionUpscalePipeline (stabilityai/stable-diffusion-x4-
  upscaler's layout: a UNet2DConditionModel of 7 input channels with 1000 class
  embeddings for the noise level, the low_res_scheduler, a v-prediction DDIM, a
  CLIP text encoder), by the pipeline itself with CFG.

The augmentation noise is the image's own Philox stream (its first normals, as
the job gives x_T), which diffusers' randn_tensor is made to return.

Every reference is float64 beside diffusers' float32 run; each tolerance is
max(2e-3, twice that deviation), as the other render fixtures.

Needs torch, diffusers, transformers, tokenizers (PyPI); from the repository root:
    python tools/reference/make_cascade_fixtures.py
"""
import json
import pathlib
import shutil

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (AutoencoderKL, DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler, LDMSuperResolutionPipeline,
                       StableDiffusionUpscalePipeline, UNet2DConditionModel, UNet2DModel, VQModel)
import diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_upscale as upscale_module
import diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion_superresolution as ldm_sr_module
from PIL import Image

from make_latent_fixtures import MADE_WITH, perturb, prompts, render_case, save_tokenizer, text_encoder, train_vocabulary
from make_sampler_fixtures import Philox

OUT = pathlib.Path("Tests/CascadeFixtures")


def low_image(directory, generator, size):
    """A size x size RGB picture: a gradient, a bright square, noise."""
    y, x = np.mgrid[0:size, 0:size] * (16 // size)
    image = np.stack([x * 16, y * 16, 255 - x * 8], axis=-1).astype(np.float64)
    image[size // 4:size // 2 + 1, size // 3:3 * size // 4] = [250, 240, 30]
    image += torch.randn(size, size, 3, generator=generator).numpy() * 12
    pixels = np.clip(image, 0, 255).astype(np.uint8)
    Image.fromarray(pixels, "RGB").save(directory / "low.png")
    # diffusers' preprocessing: x / 255 * 2 - 1, channels first
    return torch.from_numpy(pixels.astype(np.float64) / 127.5 - 1).permute(2, 0, 1)[None]


def stream_noise(seeds, shape):
    """Each image's first normals of its Philox stream, [len(seeds), *shape]."""
    size = int(np.prod(shape))
    streams = [Philox(seed) for seed in seeds]
    return torch.tensor([[stream.normal() for _ in range(size)] for stream in streams],
                        dtype=torch.float64).reshape(len(seeds), *shape)


def pixel_sr_render(directory, low, seeds, steps, level, scheduler_class):
    def run(dtype, x):
        unet = UNet2DModel.from_pretrained(directory / "unet").to(dtype).eval()
        # UNet2DModel feeds the level's float32 sinusoid to the class MLP uncast (its
        # time path casts): cast it as the time path does, or float64 cannot run
        mlp = unet.class_embedding.forward
        unet.class_embedding.forward = lambda features, *a: mlp(features.to(dtype), *a)
        scheduler = scheduler_class.from_pretrained(directory / "scheduler")
        size = unet.config.sample_size
        image = F.interpolate(low.to(dtype), size=(size, size), mode="bicubic", align_corners=False)
        image = image.repeat(len(seeds), 1, 1, 1)
        noise = stream_noise(seeds, image.shape[1:]).to(dtype)
        levels = torch.tensor([level] * len(seeds))
        image = DDPMScheduler.from_pretrained(directory / "scheduler").add_noise(image, noise, levels)
        scheduler.set_timesteps(steps)
        sample = x * scheduler.init_noise_sigma
        with torch.no_grad():
            for t in scheduler.timesteps:
                model_input = torch.cat([scheduler.scale_model_input(sample, t), image], dim=1)
                output = unet(model_input, t, class_labels=levels).sample
                sample = scheduler.step(output, t, sample).prev_sample
        return sample
    return run


def ldm_sr_render(directory, low, steps, scheduler_class):
    def run(dtype, x):
        pipe = LDMSuperResolutionPipeline.from_pretrained(directory).to(dtype)
        if scheduler_class is not None:
            pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        ldm_sr_module.randn_tensor = lambda shape, generator=None, device=None, dtype=None: x.to(dtype)
        decoded = []
        real_decode = pipe.vqvae.decode

        def keep(latents, *args, **kwargs):  # the decoder's output before the pipeline clamps it
            out = real_decode(latents, *args, **kwargs)
            decoded.append(out.sample)
            return out
        pipe.vqvae.decode = keep
        with torch.no_grad():
            pipe(image=low.repeat(x.shape[0], 1, 1, 1).to(dtype), num_inference_steps=steps, eta=0.0, output_type="pt")
        return decoded[0]
    return run


def sd_upscale_render(directory, low, seeds, prompts_, negatives, steps, scale, level):
    def run(dtype, x):
        pipe = StableDiffusionUpscalePipeline.from_pretrained(directory, torch_dtype=torch.float32).to(dtype)
        pipe.set_progress_bar_config(disable=True)
        generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        # the image's augmentation noise: each image's stream (the latents are x)
        upscale_module.randn_tensor = lambda shape, generator=None, device=None, dtype=None: \
            stream_noise(seeds, shape[1:]).to(dtype)
        with torch.no_grad():
            latents = pipe(prompt=prompts_, negative_prompt=negatives, image=low.repeat(len(seeds), 1, 1, 1).to(dtype),
                           num_inference_steps=steps, guidance_scale=scale, noise_level=level, generator=generators,
                           latents=x, output_type="latent").images
            return pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    return run


def resize_cases(generator):
    """F.interpolate (align_corners=False) in float64 of one input, each mode, up and down."""
    x = torch.randn(1, 2, 5, 7, generator=generator, dtype=torch.float64)
    cases = [{"mode": mode, "size": size,
              "expected": F.interpolate(x, size=size, mode=mode, **({} if mode == "nearest" else {"align_corners": False}))
              .flatten().tolist()}
             for mode in ["nearest", "bilinear", "bicubic"] for size in [[11, 9], [3, 4], [10, 14]]]
    (OUT / "resize-cases.json").write_text(json.dumps({"made_with": MADE_WITH, "input_shape": list(x.shape),
                                                       "input": x.flatten().tolist(), "cases": cases}) + "\n")


def write_cases(directory, summary):
    (directory / "cases.json").write_text(json.dumps({"made_with": MADE_WITH, "cases": summary}, indent=1) + "\n")


def main():
    torch.manual_seed(0)
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    generator = torch.Generator().manual_seed(4321)
    resize_cases(torch.Generator().manual_seed(99))

    # pixel space: 8x8 -> 16x16 RGB
    pixel = OUT / "pixel-sr"
    unet = UNet2DModel(sample_size=16, in_channels=6, out_channels=3, block_out_channels=[16, 32], layers_per_block=1,
                       down_block_types=["DownBlock2D", "AttnDownBlock2D"], up_block_types=["AttnUpBlock2D", "UpBlock2D"],
                       attention_head_dim=8, norm_num_groups=8, class_embed_type="timestep").eval()
    perturb(unet, generator)
    unet.save_pretrained(pixel / "unet")
    DDIMScheduler(beta_schedule="squaredcos_cap_v2", clip_sample=False).save_pretrained(pixel / "scheduler")
    (pixel / "model_index.json").write_text(json.dumps({
        "_class_name": "PixelSuperResolutionPipeline", "unet": ["diffusers", "UNet2DModel"],
        "scheduler": ["diffusers", "DDIMScheduler"], "upsample": "bicubic", "noise_level": 150}, indent=1) + "\n")
    low = low_image(pixel, generator, 8)
    summary = {}
    for name, kind, sampler, level in [("render-ddim", DDIMScheduler, "ddim", 150),
                                       ("render-euler", EulerDiscreteScheduler, "euler", 40)]:
        seeds = [11, 12]
        render_case(pixel, summary, name, torch.randn(2, 3, 16, 16, generator=generator),
                    pixel_sr_render(pixel, low, seeds, 6, level, kind),
                    {"model": "pixel-sr", "steps": 6, "count": 2, "seed": seeds, "sampler": sampler,
                     "image": "low.png", "noise_level": level})
    write_cases(pixel, summary)

    # LDM super-resolution: an 8x8 image is the latents' size, the VQ decoder doubles it
    ldm = OUT / "ldm-sr"
    vqvae = VQModel(in_channels=3, out_channels=3, latent_channels=3, block_out_channels=[16, 32],
                    down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                    layers_per_block=1, norm_num_groups=8, num_vq_embeddings=32, vq_embed_dim=3, sample_size=16).eval()
    ldm_unet = UNet2DModel(sample_size=8, in_channels=6, out_channels=3, block_out_channels=[16, 32], layers_per_block=1,
                           down_block_types=["DownBlock2D", "AttnDownBlock2D"], up_block_types=["AttnUpBlock2D", "UpBlock2D"],
                           attention_head_dim=8, norm_num_groups=8).eval()
    for model in (vqvae, ldm_unet):
        perturb(model, generator)
    LDMSuperResolutionPipeline(vqvae=vqvae, unet=ldm_unet, scheduler=DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.0015, beta_end=0.0155, clip_sample=False)).save_pretrained(ldm)
    low = low_image(ldm, generator, 8)
    summary = {}
    for name, kind, sampler in [("render-ddim", None, "ddim"), ("render-euler", EulerDiscreteScheduler, "euler")]:
        render_case(ldm, summary, name, torch.randn(2, 3, 8, 8, generator=generator), ldm_sr_render(ldm, low, 6, kind),
                    {"model": "ldm-sr", "steps": 6, "count": 2, "seed": [13, 14], "sampler": sampler, "image": "low.png"})
    write_cases(ldm, summary)

    # Stable Diffusion's x4 upscaler's form, at a factor of 2: 8x8 -> 16x16
    upscale = OUT / "sd-upscale"
    vocab, merges = train_vocabulary(prompts() * 3, 300)
    tokenizer = save_tokenizer(upscale / "tokenizer", vocab, merges, "<|endoftext|>")
    text = text_encoder(32, 2, 4, "gelu", len(vocab), generator)
    sd_unet = UNet2DConditionModel(
        sample_size=8, in_channels=7, out_channels=4, layers_per_block=1, norm_num_groups=8, cross_attention_dim=32,
        block_out_channels=[16, 32], down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
        up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"], attention_head_dim=8, num_class_embeds=1000).eval()
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[16, 32],
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        layers_per_block=1, norm_num_groups=8, sample_size=16, scaling_factor=0.08333).eval()
    for model in (sd_unet, vae):
        perturb(model, generator)
    pipe = StableDiffusionUpscalePipeline(
        vae=vae, text_encoder=text, tokenizer=tokenizer, unet=sd_unet,
        low_res_scheduler=DDPMScheduler(beta_schedule="linear", beta_start=0.0001, beta_end=0.02),
        scheduler=DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.0001, beta_end=0.02, clip_sample=False,
                                prediction_type="v_prediction", set_alpha_to_one=False, steps_offset=1),
        max_noise_level=350)
    pipe.save_pretrained(upscale, safe_serialization=True)
    shutil.rmtree(upscale / "tokenizer")
    save_tokenizer(upscale / "tokenizer", vocab, merges, "<|endoftext|>")
    low = low_image(upscale, generator, 8)
    summary = {}
    seeds = [15, 16]
    render_case(upscale, summary, "render-cfg", torch.randn(2, 4, 8, 8, generator=generator),
                sd_upscale_render(upscale, low, seeds, ["a sharp photo of a boot", "a bag"], ["blurry", ""], 6, 5.0, 30),
                {"model": "sd-upscale", "steps": 6, "count": 2, "seed": seeds, "image": "low.png", "noise_level": 30,
                 "prompt": ["a sharp photo of a boot", "a bag"], "negative_prompt": ["blurry", ""],
                 "guidance": {"kind": "cfg", "scale": 5.0}})
    write_cases(upscale, summary)


if __name__ == "__main__":
    main()
