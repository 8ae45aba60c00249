"""Seed sweeps: runs/s of ``jaxicl sweep`` for 1, 8 and 64 seeds, beside sequential PyTorch runs, in one process.

The model is bench_train.py's ``small`` (d=5, N=11, GPT-2 2 layers × 4 heads × 64, batch 64), trained ``--steps``
steps per run. For each seed count the sweep runs cold (a fresh output folder and compilation cache, so compile
time is counted; ``python -m jaxicl.cli sweep`` in a subprocess, as a user runs it) with its runs split into programs by ``--runs-per-program auto`` (measured, jaxicl.sweep) and
with all runs in one program, on the devices the jaxicl program uses (one per CPU core on a CPU, jaxicl.cli) and,
on a CPU, also on JAX's single CPU device.
The reference column is one PyTorch eager run after another (the best thread count of 1..nproc): its runs/s is
its measured steps/s ÷ ``--steps``.

  python benchmarks/bench_sweep.py --md results/bench/sweep_cpu.md --json results/bench/sweep_cpu.json  # CPU: ~15 min
  python benchmarks/bench_sweep.py --seeds 1,8,64 --steps 1000                                           # accelerator

Needs the [bench] extra (torch) for the reference column; without it, jaxicl alone.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

# The measured sweeps run in subprocesses on the same accelerator: this process must not hold JAX's preallocated
# share of its memory (75 % by default) while they run; theirs is as the user's environment says.
_MEMORY_VARS = ("XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION")
_USER_MEMORY = {k: os.environ[k] for k in _MEMORY_VARS if k in os.environ}
os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"

import jax  # noqa: E402

import bench_train  # noqa: E402


def sweep_runs_per_s(n_seeds: int, steps: int, batch: int, runs_per_program: str, cpu_devices: str | None = None
                     ) -> dict:
  """Wall time of one cold ``jaxicl sweep`` program (a fresh output folder and compilation cache) of ``n_seeds``
  seeds; runs/s and the programs it split into."""
  spec = bench_train.MODELS["small"]
  sets = [f"task.d={spec['d']}", f"task.n_points={spec['n_points']}", "task.w_var=1.0", f"model.width={spec['width']}",
          f"model.n_layers={spec['layers']}", f"model.heads={spec['heads']}", f"model.max_points={spec['n_points']}",
          "model.mlp=true", f"optim.lr={spec['lr']}", f"train.batch_size={batch}", f"train.steps={steps}",
          f"train.log_every={steps}", "train.eval_prompts=256"]
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "out")
    cmd = [sys.executable, "-m", "jaxicl.cli", "sweep", "--config", "tiny", "--seeds", str(n_seeds), "--out", out,
           "--runs-per-program", runs_per_program, "--quiet"] + sum((["--set", x] for x in sets), [])
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_COMPILATION_CACHE_DIR",) + _MEMORY_VARS}
    env.update(_USER_MEMORY)
    env["JAXICL_COMPILATION_CACHE"] = os.path.join(tmp, "xla")
    if cpu_devices is not None:
      env["JAXICL_CPU_DEVICES"] = cpu_devices
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    with open(os.path.join(out, "results.json")) as f:
      assert len(json.load(f)) == n_seeds
    n_programs = len(os.listdir(os.path.join(out, "groups")))
    plans = os.path.join(out, "plans")
    measured = {}
    for name in os.listdir(plans) if os.path.isdir(plans) else []:
      with open(os.path.join(plans, name)) as f:
        measured = json.load(f)["measured"]
  return {"seeds": n_seeds, "split": runs_per_program + ("" if cpu_devices is None else f", {cpu_devices} CPU device"),
          "programs": n_programs, "wall_s": wall,
          "runs_per_s": n_seeds / wall, "run_steps_per_s": n_seeds * steps / wall, "measured": measured}


def torch_runs_per_s(steps: int, batch: int, timed_steps: int = 100) -> dict | None:
  """Sequential PyTorch eager runs: measured steps/s of one run (best thread count) ÷ ``steps``."""
  if importlib.util.find_spec("torch") is None:
    return None
  spec = bench_train.MODELS["small"]
  threads = bench_train.best_torch_threads(spec, batch, "float32", 20)
  step, _ = bench_train.torch_bench(spec, batch, "float32", False)
  t0 = time.perf_counter()
  for _ in range(timed_steps):
    step()
  rate = timed_steps / (time.perf_counter() - t0)
  return {"steps_per_s": rate, "runs_per_s": rate / steps, "threads": threads}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--seeds", default="1,8,64")
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--md", default=None)
  parser.add_argument("--json", default=None)
  args = parser.parse_args()
  try:
    seed_counts = [int(s) for s in args.seeds.split(",")]
  except ValueError:
    parser.error(f"--seeds={args.seeds!r}: expected integers like 1,8,64")
  if min(seed_counts) < 1 or args.steps < 1 or args.batch < 1:
    parser.error("--seeds, --steps and --batch must be >= 1")
  bench_train.prepare_report(parser, args.md, args.json)  # before the sweeps: a bad path must not cost them
  from jaxicl import cli
  count = cli.cpu_device_count()  # for the table's header: the devices the jaxicl program sees
  if count is not None:
    jax.config.update("jax_num_cpu_devices", count)

  rows = []
  for n in seed_counts:
    variants = [("auto", None), ("all", None)]
    if jax.default_backend() == "cpu" and len(jax.devices()) > 1:
      variants.append(("all", "1"))  # JAX's single CPU device: what one device per core buys
    for split, cpu_devices in variants:
      rows.append(sweep_runs_per_s(n, args.steps, args.batch, split, cpu_devices))
      print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
  ref = torch_runs_per_s(args.steps, args.batch)

  device = jax.devices()[0]
  lines = [f"device: {device.device_kind} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores) × "
           f"{len(jax.devices())}, jax {jax.__version__}; model `small`, batch {args.batch}, {args.steps} steps per "
           "run; cold (compile included)", "",
           "| seeds | runs per program | programs | wall (s) | runs/s | run-steps/s | × sequential torch eager |",
           "|---|---|---|---|---|---|---|"]
  for r in rows:
    vs = f"{r['runs_per_s'] / ref['runs_per_s']:.2f}" if ref else "-"
    lines.append(f"| {r['seeds']} | {r['split']} | {r['programs']} | {r['wall_s']:.1f} | {r['runs_per_s']:.3f} | "
                 f"{r['run_steps_per_s']:.0f} | {vs} |")
  if ref:
    threads = f" ({ref['threads']} thr)" if ref["threads"] else ""
    lines.append(f"| any | torch eager, one run after another{threads} | - | - | {ref['runs_per_s']:.3f} | "
                 f"{ref['steps_per_s']:.0f} | 1.00 |")
  bench_train.report(lines, args.md, args.json, {"device": device.device_kind, "devices": len(jax.devices()),
                                                 "jax": jax.__version__, "steps": args.steps, "batch": args.batch,
                                                 "rows": rows, "torch": ref})


if __name__ == "__main__":
  main()
