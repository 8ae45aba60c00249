"""Where a training step's time goes: the step of bench_train.py's ``small`` model cut into nested pieces, each
timed as its own jitted ``lax.scan`` (as the engine runs steps), on one run and JAX's first device.

  sample   prompts drawn on device from fold_in(key, step)
  forward  sample + the loss
  grad     sample + loss + gradients (value_and_grad)
  step     the engine's whole step: + AdamW update (train.make_step)

Differences between rows are the cost of the piece added. Run with ``taskset -c 0`` to see what the second core
buys inside one program.

With ``--by-module`` it instead traces one chunk of the engine's own training program (``jax.profiler``) and sums
the time of every executed XLA operation by the model part its HLO metadata names (attention, MLP, LayerNorms,
read-in/out, other model and loss ops (all of a one-layer model's), prompt sampling, optimizer), forward and
backward apart; ``--study S --preset P`` takes the study's first training program instead of the small model (its
runs vmapped, as the study trains them; one device). The profiler's own overhead inflates every operation alike,
so read the shares, not the sums.

  python benchmarks/profile_step.py                          # ~1 min on a 2-core CPU
  python benchmarks/profile_step.py --set model.attention_impl=einsum --set train.batch_size=32
  python benchmarks/profile_step.py --by-module --study head-utilization --preset quick
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import tempfile
import time

import jax
import jax.numpy as jnp

import bench_train


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--steps", type=int, default=500, help="steps per timed scan")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides")
  parser.add_argument("--by-module", action="store_true", help="time per model part from a profiler trace")
  parser.add_argument("--study", default=None, help="with --by-module: a study's first program (head-utilization "
                      "or multihead)")
  parser.add_argument("--preset", default="quick", help="the study's preset (with --study)")
  args = parser.parse_args()
  from jaxicl import configs, tasks, train
  if args.study:
    import step_cost
    name, cfg = step_cost.study_programs(args.study, args.preset)[0]
    cfg = configs.override(cfg, args.set)
    print(f"{args.study} --preset {args.preset}, program {name}")
  else:
    spec = bench_train.MODELS["small"]
    cfg = configs.get_config("tiny", [
        f"task.d={spec['d']}", f"task.n_points={spec['n_points']}", "task.w_var=1.0", f"model.width={spec['width']}",
        f"model.n_layers={spec['layers']}", f"model.heads={spec['heads']}", f"model.max_points={spec['n_points']}",
        "model.mlp=true", f"optim.lr={spec['lr']}", "train.batch_size=64"] + args.set)
  if args.by_module:
    by_module(cfg, min(args.steps, 100))
    return
  engine = train.Engine(cfg, jax.devices()[:1])
  model, batch = engine.model, cfg.train.batch_size
  state = jax.tree.map(lambda x: x[0], engine.init())
  n = cfg.task.n_points

  def sample(step):
    return tasks.sample_batch(tasks.batch_key(state.data_key, step), cfg.task, batch, None)

  def loss(params, step):
    return train.prediction_loss(model, params, sample(step), n)

  def grad_sum(step):
    value, grads = jax.value_and_grad(loss)(state.params, step)
    return value + 0 * sum(jnp.sum(g) for g in jax.tree.leaves(grads))  # keeps every gradient live

  step_fn = train.make_step(cfg, model, engine.tx)
  pieces = {
      "sample": (lambda c, i: (c + sample(i).ys.sum(), None), jnp.float32(0)),
      "forward": (lambda c, i: (c + loss(state.params, i), None), jnp.float32(0)),
      "grad": (lambda c, i: (c + grad_sum(i), None), jnp.float32(0)),
      "step": (lambda s, i: (step_fn(s)[0], None), state),
  }
  print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}; {cfg.model.attention_impl} attention, "
        f"batch {batch}, {args.steps} steps per scan, best of {args.repeats}")
  print("| piece | ms / step |\n|---|---|")
  for name, (body, init) in pieces.items():
    run = jax.jit(lambda c, body=body: jax.lax.scan(body, c, jnp.arange(args.steps))[0])
    jax.block_until_ready(run(init))
    best = float("inf")
    for _ in range(args.repeats):
      t0 = time.perf_counter()
      jax.block_until_ready(run(init))
      best = min(best, time.perf_counter() - t0)
    print(f"| {name} | {1e3 * best / args.steps:.2f} |")


def _part(op_name: str) -> str:
  """The model part an HLO op_name belongs to: 'attention (fwd)', 'MLP (bwd)', ... ."""
  if re.search(r"sample|_normal|_uniform|threefry|random|argsort", op_name):
    return "prompt sampling"
  backward = "transpose(" in op_name
  for key, label in (("/attn/", "attention"), ("/mlp/", "MLP"), ("/ln_", "LayerNorm"), ("/read_in/", "read-in"),
                     ("/read_out/", "read-out"), ("jvp(", "other model and loss ops")):
    if key in op_name:  # the differentiated function's ops sit under jvp(...), its backward under transpose(jvp(...))
      return f"{label} ({'bwd' if backward else 'fwd'})"
  return "optimizer and the rest"


def by_module(cfg, steps: int) -> None:
  """Prints ms per step by model part of one traced ``steps``-step chunk of ``cfg``'s training program."""
  from jaxicl import train
  engine = train.Engine(cfg, jax.devices()[:1])
  state = engine.init()
  state, losses = engine.run_chunk(state, steps)
  jax.block_until_ready(losses)
  hlo = engine.lower(state, steps).compile().as_text()
  op_names = dict(re.findall(r'\n\s*(?:ROOT )?%?([\w.\-]+) = [^\n]*?metadata=\{op_name="([^"]*)"', hlo))
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      t0 = time.perf_counter()
      state, losses = engine.run_chunk(state, steps)
      jax.block_until_ready(losses)
      wall = time.perf_counter() - t0
    with gzip.open(glob.glob(f"{trace_dir}/**/*.json.gz", recursive=True)[0]) as f:
      trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  parts = collections.Counter()
  for e in events:
    if e.get("ph") == "X" and e["name"] in op_names:  # an executed HLO operation (thunk) of the program
      parts[_part(op_names[e["name"]])] += e["dur"] / 1e3 / steps
  total = sum(parts.values())
  print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}; {len(cfg.runs)} run(s), batch "
        f"{cfg.train.batch_size}, {steps} traced steps: {1e3 * wall / steps:.1f} ms/step wall under the profiler, "
        f"{total:.1f} ms/step summed over operations (threads overlap)")
  print("| part | ms / step | share |\n|---|---|---|")
  for part, ms in parts.most_common():
    print(f"| {part} | {ms:.2f} | {100 * ms / total:.0f} % |")


if __name__ == "__main__":
  main()
