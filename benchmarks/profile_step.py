"""Where a training step's time goes: the step of bench_train.py's ``small`` model cut into nested pieces, each
timed as its own jitted ``lax.scan`` (as the engine runs steps), on one run and JAX's first device.

  sample   prompts drawn on device from fold_in(key, step)
  forward  sample + the loss
  grad     sample + loss + gradients (value_and_grad)
  step     the engine's whole step: + AdamW update (train.make_step)

Differences between rows are the cost of the piece added. Run with ``taskset -c 0`` to see what the second core
buys inside one program.

  python benchmarks/profile_step.py                          # ~1 min on a 2-core CPU
  python benchmarks/profile_step.py --set model.attention_impl=einsum --set train.batch_size=32
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

import bench_train


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--steps", type=int, default=500, help="steps per timed scan")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides")
  args = parser.parse_args()
  from jaxicl import configs, tasks, train
  spec = bench_train.MODELS["small"]
  cfg = configs.get_config("tiny", [
      f"task.d={spec['d']}", f"task.n_points={spec['n_points']}", "task.w_var=1.0", f"model.width={spec['width']}",
      f"model.n_layers={spec['layers']}", f"model.heads={spec['heads']}", f"model.max_points={spec['n_points']}",
      "model.mlp=true", f"optim.lr={spec['lr']}", "train.batch_size=64"] + args.set)
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


if __name__ == "__main__":
  main()
