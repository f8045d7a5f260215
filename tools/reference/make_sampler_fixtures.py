#!/usr/bin/env python3
"""Makes the noise-schedule and sampler fixtures the Swift tests compare against.

For each beta schedule: diffusers' betas and alphas_cumprod (float32, as diffusers
keeps them). For each timestep spacing: the timesteps diffusers' set_timesteps picks.
For each sampler case: diffusers' DDIMScheduler / DDPMScheduler loop over a fixed
sequence of synthetic model outputs from a given x_T, in float64. Where a step
adds noise, diffusers' noise source is patched to draw the very normals the
diffusiond host draws (Philox4x32-10 and Box-Muller, ported below), so both
sides add the same noise.

Needs torch and diffusers (PyPI); run from the repository root:
    python tools/reference/make_sampler_fixtures.py
"""
import json
import math
import pathlib

import numpy as np
import torch
import diffusers
from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler, HeunDiscreteScheduler, LCMScheduler, LMSDiscreteScheduler, PNDMScheduler,
                       UniPCMultistepScheduler)
import diffusers.schedulers.scheduling_lcm as lcm_module
import diffusers.schedulers.scheduling_ddpm as ddpm_module
import diffusers.schedulers.scheduling_ddim as ddim_module
import diffusers.schedulers.scheduling_dpmsolver_multistep as dpm_module
import diffusers.schedulers.scheduling_euler_ancestral_discrete as euler_ancestral_module
import diffusers.schedulers.scheduling_euler_discrete as euler_module
import diffusers.schedulers.scheduling_sde_ve as sde_ve_module
from diffusers import ScoreSdeVeScheduler

OUT = pathlib.Path("Tests/DiffusionRenderTests/Fixtures")
M32 = 0xFFFFFFFF


class Philox:
    """DiffusionKernels.Philox: key from the seed, counter from 0, four words a block."""

    def __init__(self, seed):
        self.key = (seed & M32, (seed >> 32) & M32)
        self.counter = [0, 0, 0, 0]
        self.buffer = []

    def block(self):
        x0, x1, x2, x3 = self.counter
        k0, k1 = self.key
        for _ in range(10):
            p0 = 0xD2511F53 * x0
            p1 = 0xCD9E8D57 * x2
            x0, x1, x2, x3 = ((p1 >> 32) ^ x1 ^ k0) & M32, p1 & M32, ((p0 >> 32) ^ x3 ^ k1) & M32, p0 & M32
            k0, k1 = (k0 + 0x9E3779B9) & M32, (k1 + 0xBB67AE85) & M32
        return [x0, x1, x2, x3]

    def next(self):
        if not self.buffer:
            self.buffer = self.block()
            self.counter[0] = (self.counter[0] + 1) & M32
            if self.counter[0] == 0:
                self.counter[1] = (self.counter[1] + 1) & M32
        return self.buffer.pop(0)

    def uniform(self):
        return float(np.float32((self.next() >> 8) + 1) * np.float32(2.0 ** -24))

    def normal(self):
        u, v = self.uniform(), self.uniform()
        return float(np.float32(math.sqrt(-2 * math.log(u)) * math.cos(2 * math.pi * v)))


def use_host_noise(seeds, *modules):
    """Makes the schedulers of `modules` draw, for image i, the normals of the
    host's stream for seeds[i], as diffusiond's generators do."""
    streams = [Philox(seed) for seed in seeds]

    def host_noise(shape, generator=None, device=None, dtype=None, layout=None):
        per_image = int(np.prod(shape[1:]))
        values = [[s.normal() for _ in range(per_image)] for s in streams[:shape[0]]]
        return torch.tensor(values, dtype=dtype or torch.float64).reshape(shape)

    for module in modules:
        module.randn_tensor = host_noise


SCHEDULES = {
    "linear": {},
    "scaled_linear": {"beta_start": 0.00085, "beta_end": 0.012},
    "squaredcos_cap_v2": {},
    "sigmoid": {"beta_start": 0.0002, "beta_end": 0.03},
}

SPACINGS = [
    {"timestep_spacing": "leading", "steps_offset": 0},
    {"timestep_spacing": "leading", "steps_offset": 1},
    {"timestep_spacing": "trailing"},
    {"timestep_spacing": "linspace"},
]

SAMPLERS = [
    ("ddim", {"beta_schedule": "linear", "clip_sample": False}, {"eta": 0.0}, 10),
    ("ddim", {"beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction", "timestep_spacing": "trailing",
              "clip_sample": False}, {"eta": 0.0}, 8),
    ("ddim", {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "prediction_type": "sample",
              "timestep_spacing": "linspace", "set_alpha_to_one": False}, {"eta": 0.0}, 12),
    ("ddim", {"beta_schedule": "linear", "thresholding": True, "dynamic_thresholding_ratio": 0.9,
              "sample_max_value": 1.5, "clip_sample": False}, {"eta": 0.0}, 10),
    ("ddim", {"beta_schedule": "linear", "steps_offset": 1, "clip_sample": True, "clip_sample_range": 0.8},
     {"eta": 0.7}, 10),
    ("ddpm", {"beta_schedule": "linear", "variance_type": "fixed_small", "clip_sample": True}, {}, 10),
    ("ddpm", {"beta_schedule": "squaredcos_cap_v2", "variance_type": "fixed_large", "prediction_type": "v_prediction",
              "timestep_spacing": "trailing", "clip_sample": False}, {}, 7),
    ("ddpm", {"beta_schedule": "sigmoid", "prediction_type": "sample", "timestep_spacing": "linspace",
              "clip_sample": False}, {}, 25),
    # Improved DDPM's learned variances: the model returns 2C channels, the variance after the output
    ("ddpm", {"beta_schedule": "squaredcos_cap_v2", "variance_type": "learned_range", "clip_sample": False}, {}, 12),
    ("ddpm", {"beta_schedule": "linear", "variance_type": "learned", "timestep_spacing": "trailing"}, {}, 8),
]

# The ABI 1.1 samplers, driven as diffusers pipelines drive them: for each of
# scheduler.timesteps, x_in = scale_model_input(x, t), then step. Options that
# diffusers takes as step() arguments (Euler's churn, LMS's order) are `options`.
PIPELINE_SAMPLERS = [
    ("euler", EulerDiscreteScheduler, {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}, {}, 10),
    ("euler", EulerDiscreteScheduler, {"use_karras_sigmas": True, "prediction_type": "v_prediction"}, {}, 12),
    ("euler", EulerDiscreteScheduler, {"timestep_spacing": "leading", "steps_offset": 1, "interpolation_type": "log_linear"},
     {"s_churn": 0.5, "s_tmin": 0.1, "s_tmax": 20.0}, 9),
    ("euler", EulerDiscreteScheduler, {"timestep_spacing": "trailing", "final_sigmas_type": "sigma_min",
                                       "prediction_type": "sample"}, {}, 8),
    ("euler_ancestral", EulerAncestralDiscreteScheduler, {"beta_schedule": "scaled_linear", "beta_start": 0.00085,
                                                          "beta_end": 0.012}, {}, 10),
    ("euler_ancestral", EulerAncestralDiscreteScheduler, {"prediction_type": "v_prediction", "timestep_spacing": "trailing"},
     {}, 7),
    ("heun", HeunDiscreteScheduler, {"beta_schedule": "scaled_linear"}, {}, 8),
    ("heun", HeunDiscreteScheduler, {"use_karras_sigmas": True, "beta_schedule": "linear", "beta_start": 0.0001,
                                     "beta_end": 0.02, "prediction_type": "v_prediction"}, {}, 6),
    ("heun", HeunDiscreteScheduler, {"timestep_spacing": "leading", "steps_offset": 1, "clip_sample": True,
                                     "prediction_type": "sample"}, {}, 5),
    ("lms", LMSDiscreteScheduler, {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}, {}, 12),
    ("lms", LMSDiscreteScheduler, {"use_karras_sigmas": True, "prediction_type": "v_prediction"}, {"order": 3}, 10),
    ("lms", LMSDiscreteScheduler, {"timestep_spacing": "trailing"}, {"order": 1}, 6),
    ("dpmsolver++", DPMSolverMultistepScheduler, {}, {}, 20),
    ("dpmsolver++", DPMSolverMultistepScheduler, {"solver_order": 3, "use_karras_sigmas": True}, {}, 12),
    ("dpmsolver++", DPMSolverMultistepScheduler, {"solver_type": "heun", "lower_order_final": False,
                                                  "final_sigmas_type": "sigma_min", "prediction_type": "v_prediction",
                                                  "beta_schedule": "squaredcos_cap_v2"}, {}, 10),
    ("dpmsolver++", DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++", "timestep_spacing": "leading",
                                                  "steps_offset": 1}, {}, 15),
    ("dpmsolver++", DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++", "solver_order": 3,
                                                  "solver_type": "heun", "timestep_spacing": "trailing",
                                                  "thresholding": True, "sample_max_value": 1.2}, {}, 9),
    ("dpmsolver++", DPMSolverMultistepScheduler, {"solver_order": 1, "euler_at_final": True,
                                                  "lambda_min_clipped": -5.1}, {}, 6),
    ("unipc", UniPCMultistepScheduler, {}, {}, 10),
    # bh1 and predict_x0 false end in NaN at a zero final σ in diffusers (0·∞), so these end at σ_min
    ("unipc", UniPCMultistepScheduler, {"solver_type": "bh1", "solver_order": 3, "use_karras_sigmas": True,
                                        "final_sigmas_type": "sigma_min"}, {}, 12),
    ("unipc", UniPCMultistepScheduler, {"predict_x0": False, "prediction_type": "v_prediction", "final_sigmas_type": "sigma_min",
                                        "timestep_spacing": "trailing", "disable_corrector": [0, 3]}, {}, 8),
    ("unipc", UniPCMultistepScheduler, {"lower_order_final": False, "final_sigmas_type": "sigma_min",
                                        "timestep_spacing": "leading", "steps_offset": 1, "thresholding": True}, {}, 16),
    ("pndm", PNDMScheduler, {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
                             "skip_prk_steps": True, "steps_offset": 1}, {}, 12),
    ("pndm", PNDMScheduler, {}, {}, 10),
    ("pndm", PNDMScheduler, {"prediction_type": "v_prediction", "set_alpha_to_one": True, "timestep_spacing": "trailing"},
     {}, 6),
    ("pndm", PNDMScheduler, {"skip_prk_steps": True, "timestep_spacing": "linspace"}, {}, 5),
    ("lcm", LCMScheduler, {}, {}, 4),
    ("lcm", LCMScheduler, {"original_inference_steps": 30, "timestep_scaling": 5.0, "prediction_type": "v_prediction",
                           "set_alpha_to_one": False}, {}, 7),
    ("lcm", LCMScheduler, {"clip_sample": True, "beta_schedule": "linear"}, {}, 2),
]

# ScoreSdeVePipeline's loop: correct_steps corrector evaluations, then the predictor, at each σ.
SCORE_SDE_VE = [
    ({"sigma_max": 50.0, "sigma_min": 0.01, "snr": 0.15, "correct_steps": 1}, 12),
    ({"sigma_max": 348.0, "sigma_min": 0.02, "snr": 0.3, "correct_steps": 2, "sampling_eps": 1e-3}, 6),
    ({"correct_steps": 0}, 5),
]

SHAPE = (2, 2, 4, 4)  # two images of 32 values


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    schedules = {}
    for name, options in SCHEDULES.items():
        scheduler = DDPMScheduler(beta_schedule=name, **options)
        schedules[name] = {"options": options, "betas": scheduler.betas.tolist(),
                           "alphas_cumprod": scheduler.alphas_cumprod.tolist()}

    spacings = []
    for options in SPACINGS:
        for steps in [1, 7, 50, 1000]:
            scheduler = DDIMScheduler(**options)
            scheduler.set_timesteps(steps)
            spacings.append({"options": options, "steps": steps, "timesteps": scheduler.timesteps.tolist()})

    cases = []
    generator = torch.Generator().manual_seed(0)
    for index, (sampler, config, options, steps) in enumerate(SAMPLERS):
        seeds = [1000 * index + i for i in range(SHAPE[0])]
        use_host_noise(seeds, ddpm_module, ddim_module)
        kind = DDIMScheduler if sampler == "ddim" else DDPMScheduler
        scheduler = kind(**config)
        scheduler.set_timesteps(steps)
        x = torch.randn(SHAPE, generator=generator, dtype=torch.float64)
        start = x.clone()
        outputs = [torch.randn(SHAPE, generator=generator, dtype=torch.float64) for _ in scheduler.timesteps]
        variance = config.get("variance_type", "")
        if variance.startswith("learned"):
            # v in [−1, 1] for learned_range (the interpolation weight), a small positive σ² for learned
            extra = [torch.rand(SHAPE, generator=generator, dtype=torch.float64) for _ in outputs]
            extra = [2 * e - 1 if variance == "learned_range" else 0.001 + 0.02 * e for e in extra]
            outputs = [torch.cat([o, e], dim=1) for o, e in zip(outputs, extra)]
        trajectory = []
        for output, t in zip(outputs, scheduler.timesteps):
            x = scheduler.step(output, t, x, **options).prev_sample
            trajectory.append(x.flatten().tolist())
        cases.append({"sampler": sampler, "config": config, "options": options, "steps": steps, "seeds": seeds,
                      "shape": list(SHAPE), "output_shape": list(outputs[0].shape), "timesteps": scheduler.timesteps.tolist(),
                      "sample": start.flatten().tolist(), "model_outputs": [o.flatten().tolist() for o in outputs],
                      "trajectory": trajectory})

    pipeline_cases = [pipeline_case(index, *case) for index, case in enumerate(PIPELINE_SAMPLERS)]
    pipeline_cases += [score_sde_ve_case(len(pipeline_cases) + index, *case) for index, case in enumerate(SCORE_SDE_VE)]

    (OUT / "samplers.json").write_text(json.dumps({
        "made_with": f"diffusers {diffusers.__version__}, torch {torch.__version__}",
        "schedules": schedules, "spacings": spacings, "cases": cases, "pipeline_cases": pipeline_cases}) + "\n")
    print(f"{len(schedules)} schedules, {len(spacings)} spacings, {len(cases)} sampler cases, "
          f"{len(pipeline_cases)} pipeline sampler cases")


def pipeline_case(index, sampler, kind, config, options, steps):
    """One sampler's whole loop from x_T = init_noise_sigma · unit noise, with
    synthetic model outputs, each evaluation's time input and input scale."""
    seeds = [5000 + 100 * index + i for i in range(SHAPE[0])]
    use_host_noise(seeds, euler_module, euler_ancestral_module, dpm_module, lcm_module)
    scheduler = kind(**config)
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(100 + index)
    unit = torch.randn(SHAPE, generator=generator, dtype=torch.float64)
    x = unit * float(scheduler.init_noise_sigma)
    outputs, trajectory, times, scales = [], [], [], []
    for t in scheduler.timesteps:
        scaled = scheduler.scale_model_input(torch.ones(1, dtype=torch.float64), t)
        times.append(float(t))
        scales.append(float(scaled.flatten()[0]))
        output = torch.randn(SHAPE, generator=generator, dtype=torch.float64)
        outputs.append(output)
        x = scheduler.step(output, t, x, **options).prev_sample.to(torch.float64)
        trajectory.append(x.flatten().tolist())
    # the whole config, as save_pretrained writes scheduler_config.json (diffusers' class defaults included)
    # (less an infinite lambda_min_clipped, which JSON cannot hold and is the default)
    saved = {key: value for key, value in json.loads(scheduler.to_json_string()).items()
             if not (isinstance(value, float) and not math.isfinite(value))}
    return {"sampler": sampler, "config": saved, "options": options, "steps": steps, "seeds": seeds,
            "shape": list(SHAPE), "times": times, "input_scales": scales,
            "init_noise_sigma": float(scheduler.init_noise_sigma), "noise": unit.flatten().tolist(),
            "model_outputs": [o.flatten().tolist() for o in outputs], "trajectory": trajectory}


def score_sde_ve_case(index, config, steps):
    """The pipeline's loop, one image at a time (diffusers' corrector averages
    norms over the batch; the host keeps images independent), with synthetic scores."""
    seeds = [5000 + 100 * index + i for i in range(SHAPE[0])]
    generator = torch.Generator().manual_seed(100 + index)
    scheduler = ScoreSdeVeScheduler(**config)
    scheduler.set_timesteps(steps)
    scheduler.set_sigmas(steps)
    unit = torch.randn(SHAPE, generator=generator, dtype=torch.float64)
    per_step = scheduler.config.correct_steps + 1
    outputs = [torch.randn(SHAPE, generator=generator, dtype=torch.float64) for _ in range(steps * per_step)]
    trajectory = [[] for _ in outputs]
    for image, seed in enumerate(seeds):
        use_host_noise([seed], sde_ve_module)
        x = unit[image:image + 1] * scheduler.init_noise_sigma
        k = 0
        for i, t in enumerate(scheduler.timesteps):
            for _ in range(scheduler.config.correct_steps):
                x = scheduler.step_correct(outputs[k][image:image + 1], x).prev_sample
                trajectory[k] += x.flatten().tolist()
                k += 1
            result = scheduler.step_pred(outputs[k][image:image + 1], t, x)
            x = result.prev_sample
            last = i == len(scheduler.timesteps) - 1
            trajectory[k] += (result.prev_sample_mean if last else x).flatten().tolist()
            k += 1
    times = [float(sigma) for sigma in scheduler.sigmas for _ in range(per_step)]
    saved = json.loads(scheduler.to_json_string())
    return {"sampler": "score_sde_ve", "config": saved, "options": {}, "steps": steps, "seeds": seeds,
            "shape": list(SHAPE), "times": times, "input_scales": [1.0] * len(times),
            "init_noise_sigma": float(scheduler.init_noise_sigma), "noise": unit.flatten().tolist(),
            "model_outputs": [o.flatten().tolist() for o in outputs], "trajectory": trajectory}


if __name__ == "__main__":
    main()
