"""Learning speed in steps: jaxicl's gpt2 against the PyTorch/Hugging Face reference of the same model.

Two settings (``--setting``), each trained by both implementations with the same data distribution, optimiser
(Adam, the same lr schedule), curriculum and batch size, fresh prompts every step, from each implementation's own
initialisation over the same seeds (jaxicl: all seeds vmapped in one program, once per init: each ``--qk-inits``
choice of the query/key init with the first ``--io-inits`` choice of the read-in/read-out init, then the other
read-in/read-out inits with GPT-2's query/key init; reference: one seed after another, ``torch.manual_seed(seed)``):

* ``dense-d5`` (default): where GPT-2 ICL models sit on a loss plateau — dense noiseless regression,
  x ~ N(0, I_d), w ~ N(0, I_d) (E y² = d), d = 5, N = 11 points, 2 layers × 4 heads × width 64 with MLP,
  batch 64, Adam 1e-3 (constant), 2500 steps; threshold 3.0.
* ``sparse-d10``: the study-2 ``cpu`` preset's task and model at σ = 0.5 (the preset's query / key init is
  ``--qk-inits fan_in``), read from the preset — s = 3-sparse w
  with N(0, 1) entries, d = 10, N = 20, 3 layers × 4 heads × width 32 with MLP, batch 32, Adam 2e-3 with 500
  warmup steps and cosine decay over ``--steps``, the curriculum 3 → 10 dims and 7 → 20 points (+1 / +2 every
  1500 steps, the support drawn among the active dims; the full task from step 10500); 12000 steps; threshold
  2.8 (the zero predictor's loss is s + σ² = 3.25 on every curriculum stage).

Reported per seed: the first step at which the training loss averaged over a window of ``--window`` steps falls
below the threshold, and the window loss at fixed steps; then the median over seeds.

  python benchmarks/learning_speed.py                        # dense-d5, 3 seeds × 2500 steps; needs the [bench] extra
  python benchmarks/learning_speed.py --setting sparse-d10 --seeds 8 --io-inits fan_in --json out.json
  python benchmarks/learning_speed.py --io-inits fan_in --qk-inits gpt2,fan_in --no-reference

Steps, not seconds, are compared here (benchmarks/bench_train.py times steps); the wall times printed are
for orientation only.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import NamedTuple

import numpy as np


class Setting(NamedTuple):
  """One learning-speed setting: the task, model and optimiser both implementations train."""

  d: int
  n_points: int
  width: int
  layers: int
  heads: int
  batch: int
  lr: float
  steps: int  # default --steps
  window: int  # default --window
  threshold: float  # default --threshold
  sparsity: int | None = None  # None: dense w
  noise_std: float = 0.0
  warmup: int = 0
  schedule: str = "constant"  # or "cosine" (decay to 0 over the steps after the warmup)
  dims_start: int | None = None  # curriculum: + dims_inc dims and + points_inc points every `every` steps
  points_start: int | None = None
  dims_inc: int = 1
  points_inc: int = 2
  every: int = 1


def _study2_cpu(sigma: float = 0.5) -> Setting:
  """The head-utilization ``cpu`` preset's task, model, optimiser and curriculum at noise σ."""
  from jaxicl.studies.head_utilization import run
  p = run.configure("cpu")
  t, m, o, c = p.config.task, p.config.model, p.config.optim, p.config.curriculum
  assert t.family == "sparse" and o.grad_clip is None and o.weight_decay == 0 and p.study.layers == (3,)
  return Setting(d=t.d, n_points=t.n_points, width=m.width, layers=p.study.layers[0], heads=p.study.heads,
                 batch=p.config.train.batch_size, lr=o.lr, steps=12000, window=250, threshold=2.8,
                 sparsity=t.sparsity, noise_std=sigma, warmup=o.warmup_steps, schedule=o.schedule,
                 dims_start=c.dims_start, points_start=c.points_start, dims_inc=c.dims_inc,
                 points_inc=c.points_inc, every=c.every)


SETTINGS = {
    "dense-d5": lambda: Setting(d=5, n_points=11, width=64, layers=2, heads=4, batch=64, lr=1e-3, steps=2500,
                                window=50, threshold=3.0),
    "sparse-d10": _study2_cpu,
}


def describe(s: Setting) -> str:
  task = f"{s.sparsity}-sparse" if s.sparsity else "dense"
  text = (f"{task} regression, d={s.d}, N={s.n_points}, σ={s.noise_std:g}; {s.layers} layers × {s.heads} heads × "
          f"width {s.width}, batch {s.batch}, Adam {s.lr:g} ({s.schedule}")
  text += f", {s.warmup} warmup)" if s.warmup else ")"
  if s.dims_start is not None or s.points_start is not None:
    text += f"; curriculum dims from {s.dims_start}, points from {s.points_start}, every {s.every} steps"
  return text


def steps_to(window_losses: list[float], window: int, threshold: float) -> int | None:
  """The end step of the first window whose mean loss is below ``threshold`` (None if none is)."""
  for i, loss in enumerate(window_losses):
    if loss < threshold:
      return (i + 1) * window
  return None


def qk_suffix(qk_init: str) -> str:
  """What a run's name says of its query / key init: nothing for the default (GPT-2's), else `` qk_init=...``."""
  return f" qk_init={qk_init}" if qk_init != "gpt2" else ""


def qk_init_of(name: str) -> str:
  """The query / key init a run's name says (``qk_suffix`` read back; ``gpt2`` when it names none)."""
  return name.split(" qk_init=")[1] if " qk_init=" in name else "gpt2"


def jaxicl_key(io_init: str, qk_init: str = "gpt2") -> str:
  """The name of a jaxicl run in the tables and the JSON."""
  return f"jaxicl io_init={io_init}" + qk_suffix(qk_init)


def jaxicl_config(s: Setting, io_init: str, seeds: list[int], steps: int, window: int, qk_init: str = "gpt2"):
  """The jaxicl config of setting ``s`` with the read-in/read-out init ``io_init`` and the query/key init
  ``qk_init``."""
  from jaxicl import configs
  sets = [f"task.d={s.d}", f"task.n_points={s.n_points}", "task.w_var=1.0", f"task.noise_var={s.noise_std ** 2!r}",
          f"model.width={s.width}", f"model.n_layers={s.layers}", f"model.heads={s.heads}",
          f"model.max_points={s.n_points}", "model.mlp=true", f"model.io_init={io_init}", f"model.qk_init={qk_init}",
          f"optim.lr={s.lr!r}", f"optim.warmup_steps={s.warmup}", f"optim.schedule={s.schedule}",
          f"train.batch_size={s.batch}", f"train.steps={steps}", "train.seeds=" + ",".join(map(str, seeds)),
          f"train.log_every={window}"]
  if s.sparsity is not None:
    sets += ["task.family=sparse", f"task.sparsity={s.sparsity}"]
  if s.dims_start is not None:
    sets += [f"curriculum.dims_start={s.dims_start}", f"curriculum.dims_inc={s.dims_inc}"]
  if s.points_start is not None:
    sets += [f"curriculum.points_start={s.points_start}", f"curriculum.points_inc={s.points_inc}"]
  if s.dims_start is not None or s.points_start is not None:
    sets.append(f"curriculum.every={s.every}")
  return configs.get_config("tiny", sets)


def train_jaxicl(s: Setting, io_init: str, seeds: list[int], steps: int, window: int,
                 qk_init: str = "gpt2") -> tuple[np.ndarray, float]:
  """Window-mean training losses [seeds, steps // window] of jaxicl (seeds vmapped) and the wall time."""
  from jaxicl import train
  cfg = jaxicl_config(s, io_init, seeds, steps, window, qk_init)
  t0 = time.perf_counter()
  result = train.train(cfg)
  wall = time.perf_counter() - t0
  return np.asarray([r["loss"] for r in result.history]).T, wall


def engine_schedule(s: Setting, steps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Active dims, active points and the peak lr's multiplier at steps 0..steps-1, each [steps], computed by
  jaxicl's own ``train.active_dims / active_points / lr_multiplier`` on the setting's config, so the reference
  follows the engine's curriculum and schedule step by step."""
  import jax.numpy as jnp
  from jaxicl import train
  cfg = jaxicl_config(s, "fan_in", [0], steps, steps)
  t = jnp.arange(steps)
  schedule = train.lr_multiplier(cfg.optim, steps)  # evaluated step by step, as the engine's optimizer does
  return (np.asarray(train.active_dims(cfg, t) * jnp.ones_like(t)),
          np.asarray(train.active_points(cfg, t) * jnp.ones_like(t)),
          np.asarray([float(schedule(step)) for step in range(steps)]))


def train_reference(s: Setting, seed: int, steps: int, window: int, qk_init: str = "gpt2") -> tuple[np.ndarray, float]:
  """Window-mean training losses [steps // window] of the PyTorch reference for one seed, and the wall time;
  ``qk_init="fan_in"`` redraws its query / key kernels as jaxicl's option of that name (``reference.fan_in_qk_``).
  The points curriculum trains on the first ``points`` points of each prompt (the model is causal: the same loss
  as jaxicl's mask over the later points)."""
  import torch
  import reference
  torch.manual_seed(seed)
  model = reference.Reference(s.d, s.n_points, s.width, s.layers, s.heads)
  if qk_init == "fan_in":
    reference.fan_in_qk_(model, torch.Generator().manual_seed(20_000 + seed))
  opt = torch.optim.Adam(model.parameters(), lr=s.lr)
  dims, points, multipliers = engine_schedule(s, steps)
  gen = torch.Generator().manual_seed(10_000 + seed)
  losses = []
  t0 = time.perf_counter()
  for step in range(steps):
    for group in opt.param_groups:
      group["lr"] = s.lr * float(multipliers[step])
    xs, ys, _ = reference.sample_prompts(gen, s.batch, int(points[step]), s.d, n_dims=int(dims[step]),
                                         sparsity=s.sparsity, noise_std=s.noise_std)
    loss = ((model(xs, ys) - ys) ** 2).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    losses.append(loss.item())
  wall = time.perf_counter() - t0
  return np.asarray(losses).reshape(-1, window).mean(axis=1), wall


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--setting", default="dense-d5", choices=sorted(SETTINGS))
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--steps", type=int, default=None, help="default: the setting's")
  parser.add_argument("--window", type=int, default=None, help="default: the setting's")
  parser.add_argument("--threshold", type=float, default=None, help="default: the setting's")
  parser.add_argument("--io-inits", default="fan_in,gpt2", help="jaxicl read-in/read-out inits to train")
  parser.add_argument("--qk-inits", default="gpt2,fan_in",
                      help="query/key inits to train: jaxicl with the first of --io-inits (the others: gpt2 only), "
                           "and the reference")
  parser.add_argument("--torch-threads", type=int, default=1)
  parser.add_argument("--no-reference", action="store_true")
  parser.add_argument("--json", default=None)
  args = parser.parse_args()
  setting = SETTINGS[args.setting]()
  steps = setting.steps if args.steps is None else args.steps
  window = setting.window if args.window is None else args.window
  threshold = setting.threshold if args.threshold is None else args.threshold
  for flag, value in (("seeds", args.seeds), ("steps", steps), ("window", window), ("torch-threads",
                                                                                    args.torch_threads)):
    if value < 1:
      parser.error(f"--{flag}={value}: must be >= 1")
  if steps % window:
    parser.error(f"--steps={steps} must be a multiple of --window={window}")
  if not math.isfinite(threshold):
    parser.error(f"--threshold={threshold}: must be finite")
  seeds = list(range(args.seeds))
  from jaxicl import files
  io_inits, qk_inits = args.io_inits.split(","), args.qk_inits.split(",")
  inits = [(io_inits[0], qk) for qk in qk_inits] + [(io, "gpt2") for io in io_inits[1:]]
  for flag, value in (("io-inits", args.io_inits), ("qk-inits", args.qk_inits)):
    if len(set(value.split(","))) < len(value.split(",")):
      parser.error(f"--{flag}={value}: a value is listed twice")
  for io_init, qk_init in inits:  # every input is checked, and the output folder made, before the long trainings
    try:
      jaxicl_config(setting, io_init, seeds, steps, window, qk_init)
    except ValueError as e:
      parser.error(f"--io-inits={args.io_inits} --qk-inits={args.qk_inits}: {e}")
  if args.json:
    try:
      files.prepare_output(args.json)
    except ValueError as e:
      parser.error(str(e))
  if not args.no_reference:
    try:
      import torch
    except ImportError:
      parser.error("the reference needs torch and transformers (pip install -e '.[bench]'), or pass --no-reference")
  runs: dict[str, dict] = {}
  for io_init, qk_init in inits:
    curves, wall = train_jaxicl(setting, io_init, seeds, steps, window, qk_init)
    runs[jaxicl_key(io_init, qk_init)] = {"curves": curves, "wall_s": wall}
  if not args.no_reference:
    torch.set_num_threads(args.torch_threads)
    for qk_init in qk_inits:
      curves, wall = zip(*(train_reference(setting, seed, steps, window, qk_init) for seed in seeds))
      runs[f"PyTorch/HF reference ({args.torch_threads} thread)" + qk_suffix(qk_init)] = {
          "curves": np.stack(curves), "wall_s": sum(wall)}

  marks = sorted({m for m in (500, 1000, 1500, 2000, 2500, 3000, 5000, 10000, steps) if m <= steps and m % window == 0})
  print(f"{args.setting}: {describe(setting)}; loss = mean over {window}-step windows")
  print(f"| implementation | seed | steps to loss < {threshold:g} | "
        + " | ".join(f"loss @{m}" for m in marks) + " | wall (s) |")
  print("|---|---|---|" + "---|" * len(marks) + "---|")
  table = []
  for name, run in runs.items():
    hits = []
    for i, seed in enumerate(seeds):
      curve = run["curves"][i]
      hit = steps_to(list(curve), window, threshold)
      hits.append(hit)
      at = [float(curve[m // window - 1]) for m in marks]
      table.append({"impl": name, "seed": seed, "steps_to_threshold": hit, "loss_at": dict(zip(marks, at))})
      print(f"| {name} | {seed} | {hit if hit else f'> {steps}'} | " + " | ".join(f"{v:.2f}" for v in at)
            + " | |")
    finite = [h if h is not None else math.inf for h in hits]
    median = float(np.median(finite))
    med_at = [float(np.median(run["curves"][:, m // window - 1])) for m in marks]
    run["median_steps"] = median
    print(f"| **{name}** | median | {int(median) if math.isfinite(median) else f'> {steps}'} | "
          + " | ".join(f"{v:.2f}" for v in med_at) + f" | {run['wall_s']:.0f} |")
  if args.json:
    files.write_json(args.json, {
        "setting": {"name": args.setting, **setting._asdict(), "window": window, "threshold": threshold,
                    "steps": steps, "seeds": seeds},
        "rows": table,
        "curves": {k: v["curves"].tolist() for k, v in runs.items()},
        "median_steps_to_threshold": {k: (v["median_steps"] if math.isfinite(v["median_steps"]) else None)
                                      for k, v in runs.items()},
        "wall_s": {k: v["wall_s"] for k, v in runs.items()}}, indent=1)


if __name__ == "__main__":
  main()
