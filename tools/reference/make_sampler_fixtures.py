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
from diffusers import DDIMScheduler, DDPMScheduler
import diffusers.schedulers.scheduling_ddpm as ddpm_module
import diffusers.schedulers.scheduling_ddim as ddim_module

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
        streams = [Philox(seed) for seed in seeds]

        def host_noise(shape, generator=None, device=None, dtype=None):
            # one image's normals from its own stream, as the host draws them
            per_image = int(np.prod(shape[1:]))
            values = [[s.normal() for _ in range(per_image)] for s in streams]
            return torch.tensor(values, dtype=torch.float64).reshape(shape)

        ddpm_module.randn_tensor = host_noise
        ddim_module.randn_tensor = host_noise
        kind = DDIMScheduler if sampler == "ddim" else DDPMScheduler
        scheduler = kind(**config)
        scheduler.set_timesteps(steps)
        x = torch.randn(SHAPE, generator=generator, dtype=torch.float64)
        start = x.clone()
        outputs = [torch.randn(SHAPE, generator=generator, dtype=torch.float64) for _ in scheduler.timesteps]
        trajectory = []
        for output, t in zip(outputs, scheduler.timesteps):
            x = scheduler.step(output, t, x, **options).prev_sample
            trajectory.append(x.flatten().tolist())
        cases.append({"sampler": sampler, "config": config, "options": options, "steps": steps, "seeds": seeds,
                      "shape": list(SHAPE), "timesteps": scheduler.timesteps.tolist(),
                      "sample": start.flatten().tolist(), "model_outputs": [o.flatten().tolist() for o in outputs],
                      "trajectory": trajectory})

    (OUT / "samplers.json").write_text(json.dumps({
        "made_with": f"diffusers {diffusers.__version__}, torch {torch.__version__}",
        "schedules": schedules, "spacings": spacings, "cases": cases}) + "\n")
    print(f"{len(schedules)} schedules, {len(spacings)} spacings, {len(cases)} sampler cases")


if __name__ == "__main__":
    main()
