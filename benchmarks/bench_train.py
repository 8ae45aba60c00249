"""Training throughput of the standard ICL setup (GPT-2 12 layers × 8 heads × 256, d=20, 41 points).

Prints, from one run on one device: steps/s and prompts/s for batch sizes × {float32, bfloat16},
model FLOPs utilisation (XLA's FLOP count of one step / step time / the device's peak), and the
throughput of N seeds trained concurrently (vmapped) against one seed at a time. With PyTorch and
transformers installed, a Hugging Face GPT-2 reference of the same model and batch is timed in the
same process (eager and ``torch.compile``) and printed as ratios.

  python benchmarks/bench_train.py                     # GPU: batch 64 and 1024, fp32 and bf16
  python benchmarks/bench_train.py --cpu-quick         # CPU reference run: small batch, few steps
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

from jaxicl import configs, train

# Dense peak TFLOP/s per device kind (bf16 tensor core; fp32 runs on TF32 tensor cores by default on GPU).
PEAK_TFLOPS = {"H100": {"bfloat16": 989.0, "float32": 494.0}, "H200": {"bfloat16": 989.0, "float32": 494.0},
               "A100": {"bfloat16": 312.0, "float32": 156.0}, "TPU v4": {"bfloat16": 275.0, "float32": 275.0},
               "TPU v5 lite": {"bfloat16": 197.0, "float32": 197.0}}


def peak_tflops(dtype: str) -> float | None:
  kind = jax.devices()[0].device_kind
  for name, peaks in PEAK_TFLOPS.items():
    if name.lower() in kind.lower():
      return peaks[dtype]
  return None


def time_jaxicl(batch: int, dtype: str, steps: int, seeds: int = 1, repeats: int = 3) -> dict:
  """steps/s of the compiled chunk (compile excluded; best of ``repeats``) and FLOPs of one step."""
  cfg = configs.get_config("standard", [f"train.batch_size={batch}", f"model.dtype={dtype}",
                                        "train.seeds=" + ",".join(map(str, range(seeds))),
                                        "curriculum.dims_start=None", "curriculum.points_start=None"])
  engine = train.Engine(cfg)
  state = engine.init()
  state, losses = engine.run_chunk(state, steps)  # compile + warm up
  jax.block_until_ready(losses)
  best = np.inf
  for _ in range(repeats):
    t0 = time.perf_counter()
    state, losses = engine.run_chunk(state, steps)
    jax.block_until_ready(losses)
    best = min(best, time.perf_counter() - t0)
  cost = engine._chunk.lower(state, 1).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
  steps_per_s = steps / best
  peak = peak_tflops(dtype)
  return {"impl": "jaxicl", "batch": batch, "dtype": dtype, "seeds": seeds, "steps_per_s": steps_per_s,
          "prompts_per_s": steps_per_s * batch * seeds, "step_tflop": flops / 1e12,
          "mfu": (flops * steps_per_s / (peak * 1e12)) if peak else None}


def time_torch(batch: int, dtype: str, steps: int, compile_model: bool) -> dict | None:
  """The PyTorch + Hugging Face GPT-2 reference (Garg et al.'s model) on the same device; None without torch."""
  try:
    import torch
    from transformers import GPT2Config, GPT2Model
  except ImportError:
    return None
  device = "cuda" if torch.cuda.is_available() else "cpu"
  d, n_points = 20, 41

  class Reference(torch.nn.Module):
    def __init__(self):
      super().__init__()
      conf = GPT2Config(n_positions=2 * n_points, n_embd=256, n_layer=12, n_head=8, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False)
      self.read_in = torch.nn.Linear(d, 256)
      self.backbone = GPT2Model(conf)
      self.read_out = torch.nn.Linear(256, 1)

    def forward(self, xs, ys):
      tokens = torch.stack([xs, torch.nn.functional.pad(ys[..., None], (0, d - 1))], dim=2).flatten(1, 2)
      h = self.backbone(inputs_embeds=self.read_in(tokens)).last_hidden_state
      return self.read_out(h)[:, ::2, 0]

  model = Reference().to(device)
  opt = torch.optim.Adam(model.parameters(), lr=1e-4)
  autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=dtype == "bfloat16")

  def step():
    xs = torch.randn(batch, n_points, d, device=device)
    w = torch.randn(batch, d, 1, device=device)
    ys = (xs @ w)[..., 0]
    with autocast:
      loss = ((fwd(xs, ys).float() - ys) ** 2).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()

  fwd = torch.compile(model) if compile_model else model
  for _ in range(3):
    step()
  if device == "cuda":
    torch.cuda.synchronize()
  t0 = time.perf_counter()
  for _ in range(steps):
    step()
  if device == "cuda":
    torch.cuda.synchronize()
  steps_per_s = steps / (time.perf_counter() - t0)
  return {"impl": "torch.compile" if compile_model else "torch eager", "batch": batch, "dtype": dtype, "seeds": 1,
          "steps_per_s": steps_per_s, "prompts_per_s": steps_per_s * batch}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--cpu-quick", action="store_true", help="small CPU reference run")
  parser.add_argument("--steps", type=int, default=None)
  parser.add_argument("--sweep-seeds", type=int, default=None)
  parser.add_argument("--json", default=None, help="also write the rows here")
  args = parser.parse_args()
  batches = [8] if args.cpu_quick else [64, 1024]
  steps = args.steps or (3 if args.cpu_quick else 50)
  n_seeds = args.sweep_seeds or (4 if args.cpu_quick else 64)
  rows = []
  for batch in batches:
    for dtype in ("float32", "bfloat16"):
      ours = time_jaxicl(batch, dtype, steps)
      rows.append(ours)
      for compiled in (False, True):
        ref = time_torch(batch, dtype, steps, compiled)
        if ref:
          ref["jaxicl_speedup"] = ours["steps_per_s"] / ref["steps_per_s"]
          rows.append(ref)
  one = next(r for r in rows if r["impl"] == "jaxicl" and r["batch"] == batches[0] and r["dtype"] == "float32")
  sweep = time_jaxicl(batches[0], "float32", steps, seeds=n_seeds)
  sweep["vs_one_seed_at_a_time"] = sweep["prompts_per_s"] / one["prompts_per_s"]
  eager = next((r for r in rows if r["impl"] == "torch eager" and r["batch"] == batches[0]
                and r["dtype"] == "float32"), None)
  if eager:
    sweep["vs_torch_eager_seed_after_seed"] = sweep["prompts_per_s"] / eager["prompts_per_s"]
  rows.append(sweep)
  print(f"device: {jax.devices()[0].device_kind} × {len(jax.devices())}, jax {jax.__version__}")
  print(f"{'impl':14s} {'batch':>6s} {'dtype':>9s} {'seeds':>5s} {'steps/s':>9s} {'prompts/s':>10s} "
        f"{'MFU':>6s}  ratio")
  for r in rows:
    mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-"
    ratio = "  ".join(f"{k}={v:.2f}" for k, v in r.items() if k.startswith(("jaxicl_", "vs_")))
    print(f"{r['impl']:14s} {r['batch']:6d} {r['dtype']:>9s} {r['seeds']:5d} {r['steps_per_s']:9.2f} "
          f"{r['prompts_per_s']:10.0f} {mfu:>6s}  {ratio}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"device": jax.devices()[0].device_kind, "rows": rows}, f, indent=1)


if __name__ == "__main__":
  main()
