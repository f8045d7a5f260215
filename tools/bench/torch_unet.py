#!/usr/bin/env python3
"""Times diffusers' UNet2DModel forward in PyTorch, the baseline `make bench` compares against.

Prints one JSON line: ms per forward (min and median), ms per image, GFLOP/s from
torch's own FLOP counter, and peak RSS. Random weights: speed does not depend on them.
"""
import argparse
import json
import resource
import statistics
import time

import torch
from diffusers import UNet2DModel
from torch.utils.flop_counter import FlopCounterMode


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--iterations", type=int, default=5)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with open(args.config) as f:
        config = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
    model = UNet2DModel(**config).eval()
    size = config["sample_size"]
    sample = torch.randn(args.batch, config["in_channels"], size, size)
    timesteps = torch.full((args.batch,), 500, dtype=torch.long)

    with torch.inference_mode():
        with FlopCounterMode(display=False) as counter:
            model(sample, timesteps)
        flops = counter.get_total_flops()
        times = []
        for _ in range(args.iterations):
            start = time.perf_counter()
            model(sample, timesteps)
            times.append((time.perf_counter() - start) * 1000)
    best = min(times)
    print(json.dumps({
        "runtime": "pytorch",
        "batch": args.batch,
        "threads": args.threads,
        "ms_per_forward_min": best,
        "ms_per_forward_median": statistics.median(times),
        "ms_per_image": best / args.batch,
        "gflops": flops / best / 1e6,
        "flops_per_image": flops / args.batch,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "versions": f"torch {torch.__version__}",
    }))


if __name__ == "__main__":
    main()
