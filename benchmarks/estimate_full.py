"""Program count and estimated accelerator time of study 1's presets, from XLA's cost analysis of one step.

For every compiled program of the preset (``jaxicl.studies.multihead.run.programs``) it lowers one training
step of ONE run at the program's padded shape and reads XLA's FLOP count (``Lowered.cost_analysis()``);
a program costs flops × runs × steps. It compiles and times the one-run step of the smallest program on this
machine (best of 3) for the CPU FLOP/s, and converts the total to time at that rate and at an assumed
sustained accelerator throughput (``--tflops``, default 20 TFLOP/s: about 30 % of an H100's 67 TFLOP/s
float32 peak, what these small-matrix attention programs can sustain; not measured). It also counts the
standard normals sampled for the padded prompts (``normal_draws``) and the program-steps (``program_steps``:
each costs at least a kernel-launch round on an accelerator), which bound the time once the model is cheap.

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


def one_run_step(cfg: configs.Config, time_it: bool) -> tuple[float, float | None]:
  """(XLA FLOPs, measured seconds or None) of one training step of one run of ``cfg`` at its padded shape.

  FLOPs come from the lowered program's cost analysis (no backend compile); ``time_it`` compiles and times it
  (best of 3)."""
  one = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seeds=(0,), lrs=(),
                                                           task_variants=cfg.train.task_variants[-1:]))
  engine = train.Engine(one)
  state = engine.init()
  lowered = engine.lower(state, 1)
  cost = lowered.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  if not time_it:
    return float(cost["flops"]), None
  compiled = engine.bind(lowered.compile())
  best = np.inf
  for _ in range(3):
    t0 = time.perf_counter()
    state, losses = compiled(state)
    jax.block_until_ready(losses)
    best = min(best, time.perf_counter() - t0)
  return float(cost["flops"]), best


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--preset", default="full")
  ap.add_argument("--tflops", type=float, default=20.0, help="assumed sustained accelerator TFLOP/s")
  args = ap.parse_args()
  spec = presets.configure(args.preset)
  planned = run.plan(spec)
  grouped = run.programs(planned)
  rows, total, timed = [], 0.0, None
  configs_ = [run.program_config(spec, groups, planned) for groups in grouped.values()]
  smallest = min(range(len(configs_)), key=lambda i: configs_[i].task.n_points * configs_[i].model.embed_dim)
  draws = 0  # standard normals sampled for the padded prompts: runs × batch × N × (d + 1) per step
  for i, cfg in enumerate(configs_):
    flops, seconds = one_run_step(cfg, time_it=i == smallest)
    total += flops * len(cfg.runs) * cfg.train.steps
    draws += len(cfg.runs) * cfg.train.batch_size * cfg.task.n_points * (cfg.task.d + 1) * cfg.train.steps
    if seconds is not None:
      timed = {"program": os.path.basename(run.program_dir("", cfg)), "gflop": flops / 1e9, "cpu_s": seconds,
               "cpu_gflops": flops / seconds / 1e9}
    rows.append({"program": os.path.basename(run.program_dir("", cfg)), "runs": len(cfg.runs),
                 "n_points": cfg.task.n_points, "gflop_per_run_step": flops / 1e9})
  print(json.dumps({"preset": args.preset, "groups": len(planned), "programs": len(grouped),
                    "total_pflop": total / 1e15, "timed_step": timed,
                    "cpu_estimate_h": total / (timed["cpu_gflops"] * 1e9) / 3600,
                    "accelerator_estimate_min": total / (args.tflops * 1e12) / 60, "assumed_tflops": args.tflops,
                    "normal_draws": draws, "program_steps": sum(c.train.steps for c in configs_),
                    "programs_detail": rows}, indent=1))


if __name__ == "__main__":
  main()
