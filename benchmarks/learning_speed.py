"""Learning speed in steps: jaxicl's gpt2 against the PyTorch/Hugging Face reference of the same model.

The setting where GPT-2 ICL models sit on a loss plateau: dense noiseless regression, x ~ N(0, I_d),
w ~ N(0, I_d) (E y² = d), d = 5, N = 11 points, 2 layers × 4 heads × width 64 with MLP, batch 64, Adam 1e-3,
fresh prompts every step. Each implementation trains from its own initialisation over the same seeds
(jaxicl: all seeds vmapped in one program, once per ``--io-inits`` choice of the read-in/read-out init;
reference: one seed after another, ``torch.manual_seed(seed)``). Reported per seed: the first step at which
the training loss averaged over a window of ``--window`` steps falls below ``--threshold``, and the window
loss at fixed steps; then the median over seeds.

  python benchmarks/learning_speed.py                        # 3 seeds × 2500 steps; needs the [bench] extra
  python benchmarks/learning_speed.py --seeds 5 --json out.json

Steps, not seconds, are compared here (benchmarks/bench_train.py times steps); the wall times printed are
for orientation only.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np

D, N_POINTS, WIDTH, LAYERS, HEADS, BATCH, LR = 5, 11, 64, 2, 4, 64, 1e-3


def steps_to(window_losses: list[float], window: int, threshold: float) -> int | None:
  """The end step of the first window whose mean loss is below ``threshold`` (None if none is)."""
  for i, loss in enumerate(window_losses):
    if loss < threshold:
      return (i + 1) * window
  return None


def train_jaxicl(io_init: str, seeds: list[int], steps: int, window: int) -> tuple[np.ndarray, float]:
  """Window-mean training losses [seeds, steps // window] of jaxicl (seeds vmapped) and the wall time."""
  from jaxicl import configs, train
  cfg = configs.get_config("tiny", [
      f"task.d={D}", f"task.n_points={N_POINTS}", "task.w_var=1.0", f"model.width={WIDTH}",
      f"model.n_layers={LAYERS}", f"model.heads={HEADS}", f"model.max_points={N_POINTS}", "model.mlp=true",
      f"model.io_init={io_init}", f"optim.lr={LR}", f"train.batch_size={BATCH}", f"train.steps={steps}",
      "train.seeds=" + ",".join(map(str, seeds)), f"train.log_every={window}"])
  t0 = time.perf_counter()
  result = train.train(cfg)
  wall = time.perf_counter() - t0
  return np.asarray([r["loss"] for r in result.history]).T, wall


def train_reference(seed: int, steps: int, window: int) -> tuple[np.ndarray, float]:
  """Window-mean training losses [steps // window] of the PyTorch reference for one seed, and the wall time."""
  import torch
  import reference
  torch.manual_seed(seed)
  model = reference.Reference(D, N_POINTS, WIDTH, LAYERS, HEADS)
  opt = torch.optim.Adam(model.parameters(), lr=LR)
  gen = torch.Generator().manual_seed(10_000 + seed)
  losses = []
  t0 = time.perf_counter()
  for _ in range(steps):
    xs, ys = reference.sample_dense(gen, BATCH, N_POINTS, D)
    loss = ((model(xs, ys) - ys) ** 2).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    losses.append(loss.item())
  wall = time.perf_counter() - t0
  return np.asarray(losses).reshape(-1, window).mean(axis=1), wall


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--steps", type=int, default=2500)
  parser.add_argument("--window", type=int, default=50)
  parser.add_argument("--threshold", type=float, default=3.0)
  parser.add_argument("--io-inits", default="fan_in,gpt2", help="jaxicl read-in/read-out inits to train")
  parser.add_argument("--torch-threads", type=int, default=1)
  parser.add_argument("--no-reference", action="store_true")
  parser.add_argument("--json", default=None)
  args = parser.parse_args()
  if args.steps % args.window:
    parser.error(f"--steps={args.steps} must be a multiple of --window={args.window}")
  seeds = list(range(args.seeds))
  runs: dict[str, dict] = {}
  for io_init in args.io_inits.split(","):
    curves, wall = train_jaxicl(io_init, seeds, args.steps, args.window)
    runs[f"jaxicl io_init={io_init}"] = {"curves": curves, "wall_s": wall}
  if not args.no_reference:
    import torch
    torch.set_num_threads(args.torch_threads)
    curves, wall = zip(*(train_reference(s, args.steps, args.window) for s in seeds))
    runs[f"PyTorch/HF reference ({args.torch_threads} thread)"] = {"curves": np.stack(curves), "wall_s": sum(wall)}

  marks = [s for s in (500, 1000, 1500, 2000, 2500, 5000, 10000) if s <= args.steps]
  print(f"d={D}, N={N_POINTS}, {LAYERS} layers × {HEADS} heads × width {WIDTH}, batch {BATCH}, Adam {LR}; "
        f"loss = mean over {args.window}-step windows; initial loss ≈ E y² = {D}")
  print(f"| implementation | seed | steps to loss < {args.threshold:g} | "
        + " | ".join(f"loss @{m}" for m in marks) + " | wall (s) |")
  print("|---|---|---|" + "---|" * len(marks) + "---|")
  table = []
  for name, run in runs.items():
    hits = []
    for i, seed in enumerate(seeds):
      curve = run["curves"][i]
      hit = steps_to(list(curve), args.window, args.threshold)
      hits.append(hit)
      at = [float(curve[m // args.window - 1]) for m in marks]
      table.append({"impl": name, "seed": seed, "steps_to_threshold": hit, "loss_at": dict(zip(marks, at))})
      print(f"| {name} | {seed} | {hit if hit else f'> {args.steps}'} | " + " | ".join(f"{v:.2f}" for v in at)
            + " | |")
    finite = [h if h is not None else math.inf for h in hits]
    median = float(np.median(finite))
    med_at = [float(np.median(run["curves"][:, m // args.window - 1])) for m in marks]
    run["median_steps"] = median
    print(f"| **{name}** | median | {int(median) if math.isfinite(median) else f'> {args.steps}'} | "
          + " | ".join(f"{v:.2f}" for v in med_at) + f" | {run['wall_s']:.0f} |")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"setting": {"d": D, "n_points": N_POINTS, "width": WIDTH, "layers": LAYERS, "heads": HEADS,
                             "batch": BATCH, "lr": LR, "window": args.window, "threshold": args.threshold,
                             "steps": args.steps, "seeds": seeds},
                 "rows": table,
                 "median_steps_to_threshold": {k: (v["median_steps"] if math.isfinite(v["median_steps"]) else None)
                                               for k, v in runs.items()},
                 "wall_s": {k: v["wall_s"] for k, v in runs.items()}}, f, indent=1)


if __name__ == "__main__":
  main()
