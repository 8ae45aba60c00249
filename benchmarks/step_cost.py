"""Measured training cost of a study preset on this device: every compiled training program, timed.

For each training program the study would compile (study 1: ``jaxicl.studies.multihead.run.programs``; study 2:
one per (L, H) model, all σ × seeds vmapped), with all its runs as the study trains them (``train.Engine`` on the
devices ``jaxicl.train`` picks): compile time of one ``--chunk``-step scan, then the best of ``--repeats`` timed
chunks → seconds per step, and steps × that = the program's training time. The totals are what the preset's
training costs here (compile + steps); the studies' evaluation, analysis and baselines are not in them.
A line of JSON per program is printed as soon as it is measured (a run cut short still reports what it has).

  python benchmarks/step_cost.py --study head-utilization --preset full --json out.json
  python benchmarks/step_cost.py --study multihead --preset full --max-programs 6
  python benchmarks/step_cost.py --study head-utilization --preset tiny --chunk 5   # the test's size
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from jaxicl import configs, files, train  # noqa: E402


def study_programs(study: str, preset: str) -> list[tuple[str, configs.Config]]:
  """(name, training config) of every program the study ``study`` trains for ``preset``, in its order."""
  if study == "head-utilization":
    from jaxicl.studies.head_utilization import run as hu
    p = hu.configure(preset)
    return [(f"L{n_layers}_H{heads}", hu.model_config(p, n_layers, heads))
            for n_layers in p.study.layers for heads in p.study.model_heads]
  if study == "multihead":
    from jaxicl.studies.multihead import presets, run as mh
    spec = presets.configure(preset)
    planned = mh.plan(spec)
    out = []
    for groups in mh.programs(planned).values():
      cfg = mh.program_config(spec, groups, planned)
      out.append((os.path.basename(mh.program_dir("", cfg)), cfg))
    return out
  raise ValueError(f"--study={study!r}: one of 'head-utilization', 'multihead'")


def measure(cfg: configs.Config, chunk: int, repeats: int) -> dict:
  """Compile seconds and best seconds per step of ``cfg``'s training program (all its runs), on this device."""
  engine = train.Engine(cfg)
  state = engine.init()
  t0 = time.perf_counter()
  compiled = engine.bind(engine.lower(state, chunk).compile())
  compile_s = time.perf_counter() - t0
  state, losses = compiled(state)  # warm-up
  jax.block_until_ready(losses)
  best = math.inf
  for _ in range(repeats):
    t0 = time.perf_counter()
    state, losses = compiled(state)
    jax.block_until_ready(losses)
    best = min(best, time.perf_counter() - t0)
  sec = best / chunk
  return {"runs": len(cfg.runs), "steps": cfg.train.steps, "devices": len(engine.devices), "compile_s": compile_s,
          "sec_per_step": sec, "train_s": sec * cfg.train.steps}


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--study", default="head-utilization", choices=["head-utilization", "multihead"])
  ap.add_argument("--preset", default="full")
  ap.add_argument("--chunk", type=int, default=100, help="steps per timed chunk")
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--max-programs", type=int, default=None, help="measure only the first K programs")
  ap.add_argument("--json", default=None)
  args = ap.parse_args()
  for flag in ("chunk", "repeats", "max_programs"):
    if getattr(args, flag) is not None and getattr(args, flag) < 1:
      ap.error(f"--{flag.replace('_', '-')}={getattr(args, flag)}: must be >= 1")
  try:
    programs = study_programs(args.study, args.preset)
    if args.json:
      files.prepare_output(args.json)  # before the timings: a bad path must not cost them
  except ValueError as e:
    ap.error(str(e))
  from jaxicl import cli
  count = cli.cpu_device_count()  # as the jaxicl program does: one CPU device per core (no effect on accelerators)
  if count is not None:
    jax.config.update("jax_num_cpu_devices", count)
  rows = []
  for name, cfg in programs[:args.max_programs]:
    row = {"program": name, **measure(cfg, args.chunk, args.repeats)}
    rows.append(row)
    print(json.dumps(row), flush=True)
  device = jax.devices()[0]
  summary = {"study": args.study, "preset": args.preset, "device": device.device_kind, "jax": jax.__version__,
             "programs": len(programs), "measured": len(rows), "chunk": args.chunk,
             "compile_s": sum(r["compile_s"] for r in rows), "train_s": sum(r["train_s"] for r in rows),
             "rows": rows}
  print(f"{args.study} {args.preset} on {device.device_kind} ×{len(jax.devices())}: {len(rows)} of {len(programs)} "
        f"programs measured, compile {summary['compile_s']:.0f} s + training {summary['train_s']:.0f} s")
  if args.json:
    files.write_json(args.json, summary, indent=1)


if __name__ == "__main__":
  main()
