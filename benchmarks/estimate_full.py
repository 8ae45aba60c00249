"""Program count and estimated accelerator time of study 1's presets, from XLA's cost analysis of one step.

For every compiled program of the preset (``jaxicl.studies.multihead.run.programs``) it lowers one training
step of ONE run at the program's padded shape and reads XLA's FLOP count (``cost_analysis()["flops"]``);
a program costs flops × runs × steps. It times that one-run step on this machine (best of 3, compile
excluded) to give the measured FLOP/s here, and converts the total to hours at an assumed sustained
accelerator throughput (``--tflops``, default 20 TFLOP/s: about 30 % of an H100's 67 TFLOP/s float32
peak, what small-matrix attention kernels sustain).

  python benchmarks/estimate_full.py --preset full
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxicl import configs, train  # noqa: E402
from jaxicl.studies.multihead import presets, run  # noqa: E402


def one_run_step(cfg: configs.Config) -> tuple[float, float]:
  """(XLA FLOPs, measured seconds) of one training step of one run of ``cfg`` at its padded shape."""
  one = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seeds=(0,), lrs=(),
                                                           task_variants=cfg.train.task_variants[-1:]))
  engine = train.Engine(one)
  state = engine.init()
  compiled = engine._chunk.lower(state, engine.task_params, 1).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  best = np.inf
  for _ in range(3):
    t0 = time.perf_counter()
    state, losses = compiled(state, engine.task_params)
    jax.block_until_ready(losses)
    best = min(best, time.perf_counter() - t0)
  return float(cost["flops"]), best


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--preset", default="full")
  ap.add_argument("--tflops", type=float, default=20.0, help="assumed sustained accelerator TFLOP/s")
  args = ap.parse_args()
  spec = presets.get_preset(args.preset)
  planned = run.plan(spec)
  grouped = run.programs(planned)
  rows, total, cpu_s = [], 0.0, 0.0
  for groups in grouped.values():
    cfg = run.program_config(spec, groups, planned)
    flops, seconds = one_run_step(cfg)
    n = len(cfg.runs) * cfg.train.steps
    total += flops * n
    cpu_s += seconds * n
    rows.append({"program": os.path.basename(run.program_dir("", cfg)), "runs": len(cfg.runs),
                 "n_points": cfg.task.n_points, "gflop_per_run_step": flops / 1e9, "cpu_s_per_run_step": seconds})
  print(json.dumps({"preset": args.preset, "groups": len(planned), "programs": len(grouped), "total_pflop": total / 1e15,
                    "cpu_estimate_h": cpu_s / 3600, "cpu_gflops_measured": total / cpu_s / 1e9,
                    "accelerator_estimate_min": total / (args.tflops * 1e12) / 60, "assumed_tflops": args.tflops,
                    "programs_detail": rows}, indent=1))


if __name__ == "__main__":
  main()
