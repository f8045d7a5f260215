#!/usr/bin/env python3
"""Writes models/fashion-mnist-text/reference.json: the shipped text model run
by diffusers' own StableDiffusionPipeline (DDIM, 4 steps, CFG at the model's
recommended scale) from a given x_T, for two prompts, in float32 and float64 —
what DefaultModelTests renders with diffusiond and compares, within twice
diffusers' own float32 deviation (at least 2e-3, as the render fixtures); and
transformers' token ids for the prompts, which must be equal.

Needs torch, diffusers, transformers (PyPI); from the repository root:
    python tools/train/make_text_reference.py
"""
import copy
import json
import pathlib

import numpy as np
import torch
import diffusers
import transformers
from diffusers import StableDiffusionPipeline

MODEL = pathlib.Path("models/fashion-mnist-text")
PROMPTS = ["a photo of an ankle boot", "a pair of trousers"]


def main():
    pipe = StableDiffusionPipeline.from_pretrained(MODEL, torch_dtype=torch.float32, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    scale = json.loads((MODEL / "model_index.json").read_text())["recommended_guidance_scale"]
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))

    def run(dtype):
        model = copy.deepcopy(pipe).to(dtype)
        with torch.no_grad():
            latents = model(prompt=PROMPTS, num_inference_steps=4, guidance_scale=scale, latents=x.to(dtype),
                            output_type="latent", height=32, width=32).images
            return model.vae.decode(latents / model.vae.config.scaling_factor).sample

    out32, out64 = run(torch.float32), run(torch.float64)
    deviation = (out32.double() - out64).abs().max().item()
    ids = pipe.tokenizer(PROMPTS, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True).input_ids
    (MODEL / "reference.json").write_text(json.dumps({
        "made_with": f"diffusers {diffusers.__version__}, transformers {transformers.__version__}, torch {torch.__version__}",
        "prompts": PROMPTS, "ids": ids, "steps": 4, "guidance_scale": scale, "init_noise": x.flatten().tolist(),
        "expected": out64.float().flatten().tolist(), "diffusers_f32_max_abs_deviation": deviation,
        "tolerance": max(2e-3, 2 * deviation)}) + "\n")
    print(f"reference written: f32 deviation {deviation:.3e}")


if __name__ == "__main__":
    main()
