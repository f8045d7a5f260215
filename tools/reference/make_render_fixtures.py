#!/usr/bin/env python3
"""Makes the end-to-end render fixtures: diffusers' own sampling loops on a small
random-weight class-conditional UNet2DModel, from a given x_T.

Each case is a job file the Swift test renders with `OneShotRender`, the x_T it
starts from, and diffusers' final samples in float64, with diffusers' own
float32-vs-float64 deviation on that case. DDIM cases run DDIMScheduler (the
sigmoid schedule, which DDIMScheduler lacks, is passed as trained_betas); the DDPM
case patches DDPMScheduler's noise source with the host's Philox normals (see
make_sampler_fixtures.py). CFG cases combine the conditional and null-label
outputs as diffusers pipelines do.

Needs torch and diffusers (PyPI); run from the repository root:
    python tools/reference/make_render_fixtures.py
"""
import copy
import json
import pathlib
import shutil

import numpy as np
import torch
import diffusers
from diffusers import (DDIMScheduler, DDPMPipeline, DDPMScheduler, DPMSolverMultistepScheduler,
                       EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler, PNDMScheduler,
                       ScoreSdeVePipeline, ScoreSdeVeScheduler, UNet2DModel, UniPCMultistepScheduler)
import diffusers.schedulers.scheduling_sde_ve as sde_ve_module
import diffusers.schedulers.scheduling_ddpm as ddpm_module
import diffusers.schedulers.scheduling_dpmsolver_multistep as dpm_module
import diffusers.schedulers.scheduling_euler_ancestral_discrete as euler_ancestral_module

from make_sampler_fixtures import use_host_noise

OUT = pathlib.Path("Tests/DiffusionRenderTests/Fixtures")
MODEL = "unet-tiny"
SIGMOID = torch.sigmoid(torch.linspace(-6, 6, 1000)) * (0.02 - 0.0001) + 0.0001

CASES = [
    # (sampler, scheduler config for diffusers, job keys, steps, labels, cfg scale)
    ("ddim", {"beta_schedule": "linear"}, {}, 12, [3, 7], None),
    ("ddim", {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "timestep_spacing": "trailing",
              "prediction_type": "v_prediction", "clip_sample": False},
     {"beta_schedule": "scaled_linear", "timestep_spacing": "trailing",
      "sampler_options": {"beta_start": 0.00085, "beta_end": 0.012, "prediction_type": "v_prediction", "clip_sample": False}},
     10, [0, 10], None),
    ("ddim", {"beta_schedule": "squaredcos_cap_v2", "timestep_spacing": "linspace", "prediction_type": "sample"},
     {"beta_schedule": "squaredcos_cap_v2", "timestep_spacing": "linspace", "sampler_options": {"prediction_type": "sample"}},
     15, [5, 5], None),
    ("ddim", {"trained_betas": SIGMOID.tolist(), "steps_offset": 1},
     {"beta_schedule": "sigmoid", "sampler_options": {"steps_offset": 1}}, 10, [1, 2], None),
    ("ddim", {"beta_schedule": "linear", "timestep_spacing": "trailing"}, {"timestep_spacing": "trailing"}, 10, [4, 9], 3.0),
    ("ddpm", {"beta_schedule": "linear", "variance_type": "fixed_small"}, {}, 10, [6, 8], None),
]

# The ABI 1.1 samplers: diffusers' class made from the model's saved DDIMScheduler
# config plus the job's sampler_options (as the host merges them), driven with
# init_noise_sigma and scale_model_input as its pipelines do.
PIPELINE_CASES = [
    # (sampler, diffusers class, sampler_options, steps, labels, cfg scale)
    ("euler", EulerDiscreteScheduler, {"use_karras_sigmas": True}, 10, [2, 3], None),
    ("euler_ancestral", EulerAncestralDiscreteScheduler, {}, 8, [4, 1], 2.0),
    ("heun", HeunDiscreteScheduler, {"prediction_type": "epsilon"}, 6, [7, 0], None),
    ("dpmsolver++", DPMSolverMultistepScheduler, {}, 12, [9, 6], 3.0),
    ("dpmsolver++", DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True}, 10,
     [5, 8], None),
    ("unipc", UniPCMultistepScheduler, {"use_karras_sigmas": True}, 8, [1, 1], 2.5),
    ("pndm", PNDMScheduler, {"skip_prk_steps": True}, 12, [3, 6], None),
]


def perturb(model, generator):
    with torch.no_grad():
        for p in model.parameters():
            scale = p.detach().abs().mean().item() or 0.05
            p.add_(torch.randn(p.shape, generator=generator) * 0.5 * scale)


def guided_output(unet, x, t, labels, scale):
    """The model output the scheduler steps with: with CFG the null-label pass
    (label 10) guides it; a model that predicts its variance (2× the sample's
    channels) has its ε halves guided and keeps the conditional pass's variance,
    as diffusers' pipelines of such models (IF, DiT) do."""
    labels = torch.tensor(labels)
    output = unet(x, t, class_labels=labels).sample
    if scale is None:
        return output
    unconditional = unet(x, t, class_labels=torch.full_like(labels, 10)).sample
    c = x.shape[1]
    guided = unconditional[:, :c] + scale * (output[:, :c] - unconditional[:, :c])
    return torch.cat([guided, output[:, c:]], dim=1)


def sample(unet, sampler, config, steps, x, labels, scale, seeds):
    kind = DDIMScheduler if sampler == "ddim" else DDPMScheduler
    scheduler = kind(**config)
    scheduler.set_timesteps(steps)
    if sampler == "ddpm":
        use_host_noise(seeds, ddpm_module)
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(guided_output(unet, x, t, labels, scale), t, x).prev_sample
    return x


def sample_pipeline(unet, kind, base, options, steps, unit, labels, scale, seeds):
    """diffusers' pipeline loop: x_T = init_noise_sigma · unit noise, the model on scale_model_input(x, t)."""
    scheduler = kind.from_config(base, **options)
    scheduler.set_timesteps(steps)
    use_host_noise(seeds, dpm_module, euler_ancestral_module)
    x = unit * float(scheduler.init_noise_sigma)
    with torch.no_grad():
        for t in scheduler.timesteps:
            output = guided_output(unet, scheduler.scale_model_input(x, t), t, labels, scale)
            x = scheduler.step(output, t, x).prev_sample.to(unit.dtype)
    return x


def tiny_unet(generator, directory, scheduler, out_channels=1, pipeline=DDPMPipeline, dtype=torch.float32, **options):
    """A random-weight U-Net (class-conditional unless `options` say otherwise)
    saved in `pipeline` with `scheduler` (weights in `dtype`), reloaded as saved."""
    unet = UNet2DModel(**{
        "sample_size": 8, "in_channels": 1, "out_channels": out_channels, "block_out_channels": [16, 32],
        "layers_per_block": 1, "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "attention_head_dim": 8, "norm_num_groups": 8,
        "num_class_embeds": 11, **options}).eval()
    perturb(unet, generator)
    if directory.exists():
        shutil.rmtree(directory)
    pipeline(unet=unet.to(dtype), scheduler=scheduler).save_pretrained(directory)
    return UNet2DModel.from_pretrained(directory, subfolder="unet", torch_dtype=torch.float32).eval()


def write_case(summary, generator, unet, run, job, title, shape=(1, 8, 8)):
    """Case render-N: x_T of two images of `shape`, diffusers' float64 result of
    `run(unet, x, seeds)` and its float32 deviation, and the job file that renders
    it (`job` plus the common keys)."""
    index = len(summary)
    name = f"render-{index}"
    seeds = [100 + 10 * index, 101 + 10 * index]
    x = torch.randn(2, *shape, generator=generator)
    np.save(OUT / f"{name}-noise.npy", x.numpy())
    out32 = run(unet, x.clone(), seeds)
    out64 = run(copy.deepcopy(unet).double(), x.double(), seeds)
    np.save(OUT / f"{name}-expected.npy", out64.numpy().astype(np.float32))
    deviation = (out32.double() - out64).abs().max().item()
    job = {**job, "count": 2, "seed": seeds, "init_noise": f"{name}-noise.npy", "formats": ["npy"]}
    (OUT / f"{name}.json").write_text(json.dumps(job, indent=1) + "\n")
    summary.append({"job": f"{name}.json", "expected": f"{name}-expected.npy",
                    "diffusers_f32_max_abs_deviation": deviation, "tolerance": max(2e-3, 2 * deviation)})
    print(f"{name}: {title} diffusers f32 deviation {deviation:.3e}")


def sample_score_sde_ve(unet, config, steps, x, seeds):
    """ScoreSdeVePipeline's loop, one image at a time (its corrector averages norms
    over the batch; the host keeps images independent); the predictor's mean at the end."""
    results = []
    for image, seed in enumerate(seeds):
        scheduler = ScoreSdeVeScheduler(**config)
        scheduler.set_timesteps(steps)
        scheduler.set_sigmas(steps)
        use_host_noise([seed], sde_ve_module)
        sample = x[image:image + 1] * scheduler.init_noise_sigma
        with torch.no_grad():
            for i, t in enumerate(scheduler.timesteps):
                sigma = scheduler.sigmas[i] * torch.ones(1, dtype=x.dtype)
                # (the host noise comes as float64; the float32 run stays float32)
                for _ in range(scheduler.config.correct_steps):
                    sample = scheduler.step_correct(unet(sample, sigma).sample, sample).prev_sample.to(x.dtype)
                output = scheduler.step_pred(unet(sample, sigma).sample, t, sample)
                sample, mean = output.prev_sample.to(x.dtype), output.prev_sample_mean.to(x.dtype)
        results.append(mean)
    return torch.cat(results)


def guided(job, scale):
    return {**job, "guidance": {"kind": "cfg", "scale": scale}} if scale is not None else job


def main():
    torch.manual_seed(0)  # the U-Nets' initial weights, so the fixtures regenerate the same
    generator = torch.Generator().manual_seed(42)
    directory = OUT / MODEL
    unet = tiny_unet(generator, directory, DDIMScheduler())
    summary = []
    for sampler, config, keys, steps, labels, scale in CASES:
        job = guided({"model": MODEL, "sampler": sampler, "steps": steps, "class": labels, **keys}, scale)
        write_case(summary, generator, unet,
                   lambda model, x, seeds: sample(model, sampler, config, steps, x, labels, scale, seeds), job,
                   f"{sampler} {keys}")
    base = DDIMScheduler.load_config(directory / "scheduler")
    for sampler, kind, options, steps, labels, scale in PIPELINE_CASES:
        job = guided({"model": MODEL, "sampler": sampler, "steps": steps, "class": labels}, scale)
        if options:
            job["sampler_options"] = options
        write_case(summary, generator, unet,
                   lambda model, x, seeds: sample_pipeline(model, kind, base, options, steps, x, labels, scale, seeds),
                   job, f"{sampler} {options}")
    # Improved DDPM: a U-Net of out_channels 2 × in_channels, its variance after its output
    learned_config = {"beta_schedule": "squaredcos_cap_v2", "variance_type": "learned_range", "clip_sample": True}
    learned = tiny_unet(generator, OUT / "unet-tiny-learned", DDPMScheduler(**learned_config), out_channels=2)
    for scale in [None, 2.0]:
        job = guided({"model": "unet-tiny-learned", "sampler": "ddpm", "steps": 10, "class": [2, 7]}, scale)
        write_case(summary, generator, learned,
                   lambda model, x, seeds: sample(model, "ddpm", learned_config, 10, x, [2, 7], scale, seeds), job,
                   f"ddpm learned_range cfg {scale}")
    # Score SDE VE: a small NCSN++ (skip blocks, FIR resampling, Fourier time features) saved as a
    # ScoreSdeVePipeline, whose scheduler class picks the sampler
    score_config = {"sigma_max": 50.0, "sigma_min": 0.01, "snr": 0.16, "correct_steps": 1}
    score = tiny_unet(
        generator, OUT / "unet-tiny-score", ScoreSdeVeScheduler(**score_config), pipeline=ScoreSdeVePipeline,
        dtype=torch.float16, out_channels=3, in_channels=3, sample_size=16, block_out_channels=[32, 32, 32],
        down_block_types=["SkipDownBlock2D", "AttnSkipDownBlock2D", "SkipDownBlock2D"],
        up_block_types=["SkipUpBlock2D", "AttnSkipUpBlock2D", "SkipUpBlock2D"], norm_num_groups=None, norm_eps=1e-6,
        num_class_embeds=None, time_embedding_type="fourier", mid_block_scale_factor=2 ** 0.5)
    write_case(summary, generator, score,
               lambda model, x, seeds: sample_score_sde_ve(model, score_config, 8, x, seeds),
               {"model": "unet-tiny-score", "steps": 8}, "score_sde_ve on NCSN++ (from the scheduler class)",
               shape=(3, 16, 16))
    (OUT / "render-cases.json").write_text(json.dumps(
        {"made_with": f"diffusers {diffusers.__version__}, torch {torch.__version__}", "cases": summary}, indent=1) + "\n")


if __name__ == "__main__":
    main()
