#!/usr/bin/env python3
"""Makes the U-Net reference fixtures the Swift tests compare against.

Each case is a small random-weight diffusers UNet2DModel saved in one of the
layouts published checkpoints use, plus an input batch and diffusers' output for
it computed in float64. The weights are perturbed after diffusers' init so that
no layer is zero (diffusers zero-inits nothing here, but a perturbation keeps
every bias and norm away from its trivial value, so every tensor is exercised).

Every case is reloaded from disk with diffusers' own `from_pretrained` before its
reference is computed, so the files are exactly what diffusers reads. The
tolerance written beside each case is twice diffusers' own float32 deviation from
float64 on that case, plus 1e-5.

Needs torch, diffusers and safetensors (PyPI); run from the repository root:
    python tools/reference/make_fixtures.py
"""
import json
import math
import pathlib
import shutil

import numpy as np
import torch
import diffusers
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from safetensors.torch import load_file, save_file

OUT = pathlib.Path("Tests/DiffusionModelsTests/Fixtures")

CASES = {
    # Pipeline layout, class-conditional, multi-head attention in both directions.
    "pipeline-class-multihead": dict(
        layout="pipeline", dtype="float32", batch=3, timesteps=[0, 417, 999], class_labels=[0, 5, 10],
        config=dict(
            sample_size=16, in_channels=1, out_channels=1, block_out_channels=[16, 32],
            down_block_types=["DownBlock2D", "AttnDownBlock2D"], up_block_types=["AttnUpBlock2D", "UpBlock2D"],
            layers_per_block=1, attention_head_dim=8, norm_num_groups=8, norm_eps=1e-5,
            num_class_embeds=11, flip_sin_to_cos=True, freq_shift=0, downsample_padding=1)),
    # Flat layout of google/ddpm-cifar10-32 with its legacy attention names, one head,
    # the asymmetric (0,1,0,1) downsample pad, and a mid-block scale factor.
    "flat-legacy-attention": dict(
        layout="flat", legacy_names=True, dtype="float32", batch=2, timesteps=[3, 731], class_labels=None,
        config=dict(
            sample_size=16, in_channels=3, out_channels=3, block_out_channels=[16, 32, 32],
            down_block_types=["DownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
            up_block_types=["UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
            layers_per_block=2, attention_head_dim=None, norm_num_groups=8, norm_eps=1e-6,
            flip_sin_to_cos=False, freq_shift=1, downsample_padding=0, mid_block_scale_factor=math.sqrt(2))),
    # float16 weights, non-square images, centered input, explicit time embedding width,
    # attention at the top level and its own group count in the mid block.
    "pipeline-f16-options": dict(
        layout="pipeline", dtype="float16", batch=2, timesteps=[250, 999], class_labels=None,
        config=dict(
            sample_size=[8, 16], in_channels=2, out_channels=2, block_out_channels=[8, 16],
            down_block_types=["AttnDownBlock2D", "DownBlock2D"], up_block_types=["UpBlock2D", "AttnUpBlock2D"],
            layers_per_block=1, attention_head_dim=4, norm_num_groups=4, attn_norm_num_groups=2,
            center_input_sample=True, time_embedding_dim=40, freq_shift=1, downsample_padding=0)),
    # bfloat16 weights, a mid block without attention, three levels.
    "flat-bf16-no-mid-attention": dict(
        layout="flat", dtype="bfloat16", batch=2, timesteps=[10, 500], class_labels=[1, 0],
        config=dict(
            sample_size=8, in_channels=1, out_channels=1, block_out_channels=[8, 8, 16],
            down_block_types=["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
            up_block_types=["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
            layers_per_block=1, attention_head_dim=None, norm_num_groups=4, add_attention=False,
            num_class_embeds=2)),
    # A score model (NCSN++'s time input): Gaussian Fourier features of log σ, the output over σ.
    "pipeline-fourier-score": dict(
        layout="pipeline", dtype="float32", batch=2, timesteps=[0.05, 17.5], class_labels=None,
        config=dict(
            sample_size=8, in_channels=1, out_channels=1, block_out_channels=[16, 32],
            down_block_types=["DownBlock2D", "AttnDownBlock2D"], up_block_types=["AttnUpBlock2D", "UpBlock2D"],
            layers_per_block=1, attention_head_dim=8, norm_num_groups=8, time_embedding_type="fourier",
            mid_block_scale_factor=math.sqrt(2))),
    # NCSN++ as google/ncsnpp-* build it: skip blocks with FIR resampling and the image path,
    # norms of min(c/4, 32) groups, Fourier time features of σ.
    "pipeline-ncsnpp-skip": dict(
        layout="pipeline", dtype="float16", batch=2, timesteps=[0.02, 9.0], class_labels=None,
        config=dict(
            sample_size=16, in_channels=3, out_channels=3, block_out_channels=[32, 32, 32],
            down_block_types=["SkipDownBlock2D", "AttnSkipDownBlock2D", "SkipDownBlock2D"],
            up_block_types=["SkipUpBlock2D", "AttnSkipUpBlock2D", "SkipUpBlock2D"],
            layers_per_block=1, attention_head_dim=8, norm_num_groups=None, norm_eps=1e-6,
            time_embedding_type="fourier", mid_block_scale_factor=math.sqrt(2))),
    # FiLM time conditioning: the time embedding scales and shifts each resnet's second norm.
    "flat-scale-shift": dict(
        layout="flat", dtype="float32", batch=2, timesteps=[30, 870], class_labels=None,
        config=dict(
            sample_size=8, in_channels=1, out_channels=1, block_out_channels=[16, 32],
            down_block_types=["DownBlock2D", "AttnDownBlock2D"], up_block_types=["AttnUpBlock2D", "UpBlock2D"],
            layers_per_block=1, attention_head_dim=8, norm_num_groups=8, resnet_time_scale_shift="scale_shift")),
}

LEGACY = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def perturb(model, generator):
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = p.detach().abs().mean().item() or 0.05
            p.add_(torch.randn(p.shape, generator=generator) * 0.5 * scale)


def save(case, model, directory):
    if directory.exists():
        shutil.rmtree(directory)
    stored = model.to(getattr(torch, case["dtype"]))
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    if case["layout"] == "pipeline":
        DDPMPipeline(unet=stored, scheduler=scheduler).save_pretrained(directory)
        return UNet2DModel.from_pretrained(directory, subfolder="unet", torch_dtype=torch.float32)
    stored.save_pretrained(directory)
    scheduler.save_config(directory)
    if case.get("legacy_names"):
        path = directory / "diffusion_pytorch_model.safetensors"
        tensors = load_file(path)
        renamed = {}
        for key, value in tensors.items():
            for new, old in LEGACY.items():
                key = key.replace(f".{new}.", f".{old}.")
            renamed[key] = value.contiguous()
        save_file(renamed, path, metadata={"format": "pt"})
    return UNet2DModel.from_pretrained(directory, torch_dtype=torch.float32)


def main():
    torch.manual_seed(0)
    for name, case in CASES.items():
        generator = torch.Generator().manual_seed(sum(map(ord, name)))
        model = UNet2DModel(**case["config"]).eval()
        perturb(model, generator)
        directory = OUT / name
        loaded = save(case, model, directory).eval()

        size = case["config"]["sample_size"]
        height, width = (size, size) if isinstance(size, int) else size
        sample = torch.randn(case["batch"], case["config"]["in_channels"], height, width, generator=generator)
        timesteps = torch.tensor(case["timesteps"])
        labels = None if case["class_labels"] is None else torch.tensor(case["class_labels"])
        with torch.no_grad():
            out32 = loaded(sample, timesteps, class_labels=labels).sample
            out64 = loaded.double()(sample.double(), timesteps, class_labels=labels).sample
        deviation = (out32.double() - out64).abs().max().item()
        tolerance = 2 * deviation + 1e-5

        np.save(directory / "input.npy", sample.numpy().astype(np.float32))
        np.save(directory / "expected.npy", out64.numpy().astype(np.float32))
        (directory / "case.json").write_text(json.dumps({
            "timesteps": case["timesteps"],
            "class_labels": case["class_labels"],
            "diffusers_f32_max_abs_deviation": deviation,
            "tolerance": tolerance,
            "expected_max_abs": out64.abs().max().item(),
            "made_with": f"diffusers {diffusers.__version__}, torch {torch.__version__}",
        }, indent=2) + "\n")
        print(f"{name}: diffusers f32 deviation {deviation:.3e}, tolerance {tolerance:.3e}")


if __name__ == "__main__":
    main()
