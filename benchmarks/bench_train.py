"""Training speed of jaxicl beside the PyTorch/Hugging Face reference of the same model, in one process.

For each model (``small``: d=5, N=11, GPT-2 2 layers × 4 heads × 64, the learning-speed setting;
``standard``: Garg et al.'s d=20, N=41, 12 × 8 × 256) at one batch size, on whatever device runs it:

  * jaxicl as its CLI trains (one CPU device per core, ``jaxicl.cli``; the batch sharded over them) and, on a
    CPU, also on JAX's single CPU device;
  * compile time of one jaxicl training program (lower + compile of a ``--chunk``-step scan), and of
    ``torch.compile`` (its first steps);
  * steps/s and prompts/s: the median of ``--repeats`` interleaved timings (jaxicl chunk, torch eager,
    torch.compile, in turn) so that load changes hit all three alike; torch uses the best thread count of
    1..nproc (searched first, stated in the table);
  * achieved FLOP/s ÷ the machine's matmul peak measured here in the same dtype (a jitted square matmul),
    with the FLOPs of one step from XLA's cost analysis of the lowered step (the same count is used for the
    reference: the work the predictions need, which jaxicl's decoder does and the reference exceeds by its last
    block's y tokens); float32 matmuls as JAX computes them on this device (TF32 on an NVIDIA GPU: torch is set to match);
  * time to result (``small`` only): median steps to a windowed training loss < 3.0 over ≥ 3 seeds
    (benchmarks/learning_speed.py, run here or read from ``--learning-speed-json``) × the median time per
    step, + compile time; with a learning-speed JSON of ``--qk-inits gpt2,fan_in`` also one row per
    implementation with ``qk_init="fan_in"`` (its steps, the same timings: the init does not change a step's cost).

  python benchmarks/bench_train.py --models small --batch 64                    # CPU: ~10-20 min
  python benchmarks/bench_train.py --models small,standard --batch 64 --md out.md --json out.json
  python benchmarks/bench_train.py --models standard --batch 1024 --dtype bfloat16   # accelerator MFU

Needs the [bench] extra (torch, transformers) for the reference columns; without it, jaxicl alone.
On a GPU, JAX and torch share its memory in this process: JAX takes at most ``XLA_PYTHON_CLIENT_MEM_FRACTION``
(0.45 unless set; its default of 0.75 left torch too little at batch 1024 on an H100).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.45")  # before JAX's backend starts: torch shares the GPU

import jax
import jax.numpy as jnp
import numpy as np

MODELS = {
    "small": dict(d=5, n_points=11, width=64, layers=2, heads=4, lr=1e-3),
    "standard": dict(d=20, n_points=41, width=256, layers=12, heads=8, lr=1e-4),
}


def matmul_peak(dtype: str, repeats: int = 5) -> float:
  """Measured FLOP/s of a jitted n×n matmul in ``dtype`` on the default device (best of ``repeats`` timings of
  ``calls`` back-to-back products; n = 2048 on a CPU, 8192 on an accelerator, where a smaller product is too short
  to time past its dispatch). f32 products run at JAX's default precision, as the models do (TF32 on NVIDIA GPUs)."""
  cpu = jax.default_backend() == "cpu"
  n, calls = (2048, 1) if cpu else (8192, 10)
  a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), dtype)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = math.inf
  for _ in range(repeats):
    t0 = time.perf_counter()
    outs = [f(a) for _ in range(calls)]
    jax.block_until_ready(outs)
    best = min(best, (time.perf_counter() - t0) / calls)
  return 2 * n**3 / best


def jax_f32_matmul() -> str:
  """How JAX computes float32 matmuls here: 'tf32' on an NVIDIA GPU at JAX's default precision, else 'f32'."""
  precision = jax.config.jax_default_matmul_precision
  if jax.default_backend() == "gpu" and precision in (None, "default", "tensorfloat32", "TF32_TF32_F32"):
    return "tf32"
  return "f32"


def jaxicl_bench(spec: dict, batch: int, dtype: str, chunk: int, devices: list | None = None):
  """(step closure, compile seconds, FLOPs per step) of jaxicl's compiled training chunk for ``spec`` on
  ``devices`` (default: as the CLI trains, ``train.fit_devices``)."""
  from jaxicl import configs, train
  cfg = configs.get_config("tiny", [
      f"task.d={spec['d']}", f"task.n_points={spec['n_points']}", "task.w_var=1.0", f"model.width={spec['width']}",
      f"model.n_layers={spec['layers']}", f"model.heads={spec['heads']}", f"model.max_points={spec['n_points']}",
      "model.mlp=true", f"model.dtype={dtype}", f"optim.lr={spec['lr']}", f"train.batch_size={batch}",
      f"train.log_every={chunk}"])
  engine = train.Engine(cfg, devices)
  holder = {"state": engine.init()}
  t0 = time.perf_counter()
  compiled = engine.bind(engine.lower(holder["state"], chunk).compile())
  compile_s = time.perf_counter() - t0
  one = engine if len(engine.devices) == 1 else train.Engine(cfg, engine.devices[:1])  # sharded: per-device flops
  # The HLO before XLA's passes: on a GPU the compiled program's count leaves out the cuBLAS matmuls (an H100 run
  # counted 127 of the standard model's 316 GFLOP per step).
  cost = one.lower(one.abstract_state(), 1).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", math.nan)) if cost else math.nan

  def run() -> None:
    holder["state"], losses = compiled(holder["state"])
    jax.block_until_ready(losses)

  run()
  return run, compile_s, flops


def torch_bench(spec: dict, batch: int, dtype: str, compile_model: bool):
  """(step closure running one training step, compile seconds) of the reference, or None without torch."""
  try:
    import torch
    import reference
  except ImportError:
    return None
  device = "cuda" if torch.cuda.is_available() else "cpu"
  if device == "cuda":  # the reference's f32 matmuls as JAX's (torch's own default is full f32, JAX's TF32)
    torch.set_float32_matmul_precision("high" if jax_f32_matmul() == "tf32" else "highest")
  torch.manual_seed(0)
  model = reference.Reference(spec["d"], spec["n_points"], spec["width"], spec["layers"], spec["heads"]).to(device)
  opt = torch.optim.Adam(model.parameters(), lr=spec["lr"])
  fwd = torch.compile(model) if compile_model else model
  autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=dtype == "bfloat16")
  gen = torch.Generator(device=device).manual_seed(0)

  def step() -> None:
    xs = torch.randn(batch, spec["n_points"], spec["d"], generator=gen, device=device)
    w = torch.randn(batch, spec["d"], 1, generator=gen, device=device)
    ys = (xs @ w)[..., 0]
    with autocast:
      loss = ((fwd(xs, ys).float() - ys) ** 2).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if device == "cuda":
      torch.cuda.synchronize()

  t0 = time.perf_counter()
  step()
  step()
  return step, (time.perf_counter() - t0) if compile_model else 0.0


def best_torch_threads(spec: dict, batch: int, dtype: str, steps: int) -> int | None:
  """The torch thread count in 1..nproc with the most eager steps/s (None on a GPU: not what it runs on)."""
  import torch
  if torch.cuda.is_available():
    return None
  best, best_rate = 1, 0.0
  for threads in range(1, (os.cpu_count() or 1) + 1):
    torch.set_num_threads(threads)
    step, _ = torch_bench(spec, batch, dtype, False)
    t0 = time.perf_counter()
    for _ in range(steps):
      step()
    rate = steps / (time.perf_counter() - t0)
    if rate > best_rate:
      best, best_rate = threads, rate
  torch.set_num_threads(best)
  return best


def bench_model(name: str, batch: int, dtype: str, chunk: int, repeats: int, compile_torch: bool) -> list[dict]:
  """Interleaved timings of jaxicl, torch eager and torch.compile for model ``name``: one row each."""
  spec = MODELS[name]
  ours, compile_s, flops = jaxicl_bench(spec, batch, dtype, chunk)
  impls = {"jaxicl": (lambda: ours(), chunk, compile_s)}
  if jax.default_backend() == "cpu" and len(jax.devices()) > 1:  # the same on JAX's single CPU device
    one, one_compile_s, _ = jaxicl_bench(spec, batch, dtype, chunk, jax.devices()[:1])
    impls["jaxicl, 1 CPU device"] = (lambda: one(), chunk, one_compile_s)
  threads = None
  have_torch = importlib.util.find_spec("torch") is not None
  if have_torch:
    threads = best_torch_threads(spec, batch, dtype, max(3, chunk // 10))
    eager, _ = torch_bench(spec, batch, dtype, False)
    impls["torch eager"] = (eager, 1, 0.0)
    if compile_torch:
      try:
        compiled, torch_compile_s = torch_bench(spec, batch, dtype, True)
        impls["torch.compile"] = (compiled, 1, torch_compile_s)
      except Exception as e:  # noqa: BLE001 -- inductor needs a working C++ toolchain; report, don't fail
        print(f"torch.compile unavailable: {type(e).__name__}: {str(e)[:200]}", file=sys.stderr)
  per_step = {k: [] for k in impls}
  for _ in range(repeats):
    for impl, (fn, steps_per_call, _) in impls.items():
      calls = 1 if impl.startswith("jaxicl") else chunk
      t0 = time.perf_counter()
      for _ in range(calls):
        fn()
      per_step[impl].append((time.perf_counter() - t0) / (calls * steps_per_call))
  rows = []
  for impl, (_, _, comp) in impls.items():
    sec = statistics.median(per_step[impl])
    rows.append({"model": name, "impl": impl, "batch": batch, "dtype": dtype, "compile_s": comp,
                 "steps_per_s": 1 / sec, "prompts_per_s": batch / sec, "sec_per_step": sec, "flops_per_step": flops,
                 "torch_threads": threads if not impl.startswith("jaxicl") else None})
  return rows


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--models", default="small")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--chunk", type=int, default=50, help="steps per timed jaxicl chunk (and torch block)")
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--no-torch-compile", action="store_true")
  parser.add_argument("--learning-speed-json", default=None,
                      help="steps to result from benchmarks/learning_speed.py --json (else measured here)")
  parser.add_argument("--no-time-to-result", action="store_true", help="skip the steps-to-result measurement")
  parser.add_argument("--md", default=None)
  parser.add_argument("--json", default=None)
  args = parser.parse_args()
  for name in args.models.split(","):
    if name not in MODELS:
      parser.error(f"--models: unknown model {name!r}; known: {sorted(MODELS)}")
  for flag in ("batch", "chunk", "repeats"):
    if getattr(args, flag) < 1:
      parser.error(f"--{flag}={getattr(args, flag)}: must be >= 1")
  prepare_report(parser, args.md, args.json)
  read_steps = None
  if args.learning_speed_json:  # read before the timings: a bad file must not cost them
    from jaxicl import files
    try:
      saved = files.read_json(args.learning_speed_json)
    except FileNotFoundError as e:
      parser.error(f"{e.filename}: no such file")
    except ValueError as e:
      parser.error(str(e))
    read_steps = saved.get("median_steps_to_threshold") if isinstance(saved, dict) else None
    if not isinstance(read_steps, dict):
      parser.error(f"--learning-speed-json={args.learning_speed_json}: no median_steps_to_threshold in it "
                   "(the --json of benchmarks/learning_speed.py)")

  from jaxicl import cli
  count = cli.cpu_device_count()  # as the jaxicl program does: one CPU device per core (no effect on accelerators)
  if count is not None:
    jax.config.update("jax_num_cpu_devices", count)
  peak = matmul_peak(args.dtype)
  rows = []
  for name in args.models.split(","):
    rows += bench_model(name, args.batch, args.dtype, args.chunk, args.repeats, not args.no_torch_compile)
  for r in rows:
    r["flop_per_s"] = r["flops_per_step"] * r["steps_per_s"]
    r["fraction_of_matmul_peak"] = r["flop_per_s"] / peak

  result_steps = None
  if "small" in args.models.split(",") and not args.no_time_to_result:
    if args.learning_speed_json:
      result_steps = read_steps
    else:
      import learning_speed
      print("measuring steps to result (benchmarks/learning_speed.py, 3 seeds) ...", file=sys.stderr)
      out = {}
      setting = learning_speed.SETTINGS["dense-d5"]()
      curves, _ = learning_speed.train_jaxicl(setting, "fan_in", [0, 1, 2], 2500, 50)
      out["jaxicl io_init=fan_in"] = float(np.median([learning_speed.steps_to(list(c), 50, 3.0) or math.inf
                                                      for c in curves]))
      try:
        ref = [learning_speed.train_reference(setting, s, 2500, 50)[0] for s in range(3)]
        out["reference"] = float(np.median([learning_speed.steps_to(list(c), 50, 3.0) or math.inf for c in ref]))
      except ImportError:
        pass
      result_steps = out
  if result_steps:
    # steps to result per (implementation side, query / key init): jaxicl's default read-in / read-out init and the
    # reference; a learning-speed run with --qk-inits gpt2,fan_in gives each side both
    import learning_speed
    steps_of: dict[tuple[bool, str], float | None] = {}
    for key, value in result_steps.items():
      if key.startswith("jaxicl io_init=fan_in") or not key.startswith("jaxicl"):
        steps_of.setdefault((key.startswith("jaxicl"), learning_speed.qk_init_of(key)), value)
    with_results = []
    for r in rows:  # each small-model row, then a copy of it (the same timings) per other query / key init
      with_results.append(r)
      for (ours, qk), steps in steps_of.items():
        if r["model"] != "small" or ours != r["impl"].startswith("jaxicl") or steps is None or not math.isfinite(steps):
          continue
        row = r if qk == "gpt2" else dict(r, impl=f"{r['impl']}, qk_init={qk}")
        row["steps_to_result"] = steps
        row["time_to_result_s"] = r["compile_s"] + steps * r["sec_per_step"]
        if row is not r:
          with_results.append(row)
    rows = with_results

  device = jax.devices()[0]
  header = (f"device: {device.device_kind} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores) × "
            f"{len(jax.devices())}, jax {jax.__version__}; float32 matmuls: {jax_f32_matmul()} in both; "
            f"measured {args.dtype} matmul peak "
            f"{peak / 1e9:.1f} GFLOP/s; batch {args.batch}; median of {args.repeats} interleaved timings")
  lines = [header, "",
           "| model | implementation | compile (s) | steps/s | prompts/s | × torch eager | × torch.compile | "
           "FLOP/s ÷ peak | steps to loss < 3 | time to result (s) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    base = {x["impl"]: x for x in rows if x["model"] == r["model"]}
    ratio = lambda other: (f"{r['steps_per_s'] / base[other]['steps_per_s']:.2f}" if other in base else "-")
    impl = r["impl"] + (f" ({r['torch_threads']} thr)" if r["torch_threads"] else "")
    result = (f"{r['steps_to_result']:.0f} | {r['time_to_result_s']:.0f}" if "time_to_result_s" in r else "- | -")
    lines.append(f"| {r['model']} | {impl} | {r['compile_s']:.1f} | {r['steps_per_s']:.1f} | {r['prompts_per_s']:.0f} | "
                 f"{ratio('torch eager')} | {ratio('torch.compile')} | {100 * r['fraction_of_matmul_peak']:.1f}% | "
                 f"{result} |")
  report(lines, args.md, args.json, {"device": device.device_kind, "jax": jax.__version__,
                                      "torch": sys.modules["torch"].__version__ if "torch" in sys.modules else None,
                                      "float32_matmul": jax_f32_matmul(), "matmul_peak_flop_per_s": peak,
                                      "rows": rows})


def prepare_report(parser: argparse.ArgumentParser, md: str | None, json_path: str | None) -> None:
  """Makes the folders of ``report``'s files and checks they can be written there, before the run measures
  anything (a bad path must not cost the run); a path that cannot be used is the parser's error (exit 2)."""
  from jaxicl import files
  for path in (md, json_path):
    if path:
      try:
        files.prepare_output(path)
      except ValueError as e:
        parser.error(str(e))


def report(lines: list[str], md: str | None, json_path: str | None, payload: dict) -> None:
  """Prints the Markdown table ``lines`` and writes it to ``md`` and ``payload`` to ``json_path`` (when given)."""
  from jaxicl import files
  text = "\n".join(lines)
  print(text)
  if md:
    files.write_text(md, text + "\n")
  if json_path:
    files.write_json(json_path, payload, indent=1)


if __name__ == "__main__":
  main()
