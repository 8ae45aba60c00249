"""The one training engine: on-device sampling, ``lax.scan`` chunks under one ``jit``, vmapped runs, sharding.

Shape legend: R runs (seeds × learning rates, trained together), B prompts per step, N points,
P predictions per prompt, K steps per chunk.

Every run r holds a ``TrainState`` slice; the step of run r samples its batch from
``fold_in(data_key_r, step)`` on device, so any step's data can be regenerated and a resumed run is
bit-identical to an uninterrupted one. The host sees the losses once per chunk (``train.log_every``
steps). With several devices, either each batch is split over them (``shard=batch``) or the runs
are (``shard=runs``); both are plain ``jax.jit`` with ``NamedSharding``.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from jaxicl import configs, layouts, tasks
from jaxicl.checkpoint import Checkpointer
from jaxicl.models import ICLModel, build_model

warnings.filterwarnings("ignore", message="Some donated buffers were not usable")


class TrainState(NamedTuple):
  """Per-run training state (leading R axis when batched)."""

  params: Any
  opt_state: Any
  step: jax.Array  # int32
  data_key: jax.Array  # uint32[2]; batch of step t is sampled from fold_in(data_key, t)
  lr: jax.Array  # float32 peak learning rate of this run


class TrainResult(NamedTuple):
  state: TrainState  # leading R axis
  history: list[dict[str, Any]]  # one record per logged chunk
  model: ICLModel
  config: configs.Config


# ----------------------------------------------------------------------------- optimizer

def lr_multiplier(optim: configs.OptimConfig, total_steps: int) -> optax.Schedule:
  """The schedule with peak 1 (the run's own lr multiplies it): linear warmup, then constant/cosine/linear decay."""
  decay_steps = max(total_steps - optim.warmup_steps, 1)
  if optim.schedule == "constant":
    after = optax.constant_schedule(1.0)
  elif optim.schedule == "cosine":
    after = optax.cosine_decay_schedule(1.0, decay_steps)
  else:
    after = optax.linear_schedule(1.0, 0.0, decay_steps)
  if optim.warmup_steps == 0:
    return after
  warmup = optax.linear_schedule(0.0, 1.0, optim.warmup_steps)
  return optax.join_schedules([warmup, after], [optim.warmup_steps])


def param_paths(params: Any) -> list[str]:
  """'/'-joined key paths of every leaf, e.g. ``block_0/attn/query/kernel``."""
  return [_path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def _path_str(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def frozen_labels(params: Any, freeze: tuple[str, ...]) -> Any:
  """Pytree of 'frozen' / 'train' labels: a leaf is frozen if its path starts with a prefix in ``freeze``."""
  paths = param_paths(params)
  for prefix in freeze:
    if not any(p == prefix or p.startswith(prefix.rstrip("/") + "/") for p in paths):
      raise ValueError(f"optim.freeze={freeze!r}: {prefix!r} matches no parameter; parameters: {paths}")

  def label(path, _):
    s = _path_str(path)
    return "frozen" if any(s == f or s.startswith(f.rstrip("/") + "/") for f in freeze) else "train"

  return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(cfg: configs.Config, params: Any) -> optax.GradientTransformation:
  """AdamW direction × schedule (peak 1); the per-run lr is applied by the step. Frozen leaves get zero updates."""
  o = cfg.optim
  parts = []
  if o.grad_clip is not None:
    parts.append(optax.clip_by_global_norm(o.grad_clip))
  parts.append(optax.scale_by_adam(b1=o.b1, b2=o.b2, eps=o.eps))
  if o.weight_decay > 0:
    parts.append(optax.add_decayed_weights(o.weight_decay))
  parts.append(optax.scale_by_schedule(lr_multiplier(o, cfg.train.steps)))
  tx = optax.chain(*parts)
  if o.freeze:
    tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, frozen_labels(params, o.freeze))
  return tx


# ----------------------------------------------------------------------------- curriculum, loss, step

def active_dims(cfg: configs.Config, step: jax.Array) -> jax.Array:
  """Number of active input dimensions at ``step`` (d without a dims curriculum)."""
  c = cfg.curriculum
  if c.dims_start is None:
    return jnp.asarray(cfg.task.d)
  return jnp.minimum(cfg.task.d, c.dims_start + c.dims_inc * (step // c.every))


def active_points(cfg: configs.Config, step: jax.Array) -> jax.Array:
  """Number of points whose predictions enter the loss at ``step`` (N without a points curriculum)."""
  c = cfg.curriculum
  if c.points_start is None:
    return jnp.asarray(cfg.task.n_points)
  return jnp.minimum(cfg.task.n_points, c.points_start + c.points_inc * (step // c.every))


def prediction_loss(model: ICLModel, params: Any, prompts: tasks.Prompt, n_active: jax.Array | int,
                    target: str = "ys", n_context: jax.Array | None = None) -> jax.Array:
  """Mean squared error of the predictions [B, P] against ``prompts.ys`` (or ``targets``) at the
  layout's prediction points, counting only points < ``n_active`` (the causal model never looks ahead,
  so the inactive tail changes nothing else). ``n_context``: padded one-layer prompts (``ICLModel.apply``)."""
  n = prompts.xs.shape[-2]
  index = layouts.get_layout(model.layout).target_index(n)
  kwargs = {} if n_context is None else {"n_context": n_context}
  preds = model.apply(params, prompts.xs, prompts.ys, **kwargs)
  labels = getattr(prompts, target)[..., index]
  weights = (jnp.asarray(index) < n_active).astype(jnp.float32)
  per_point = jnp.mean(jnp.square(preds.astype(jnp.float32) - labels), axis=0)
  return jnp.sum(weights * per_point) / jnp.sum(weights)


def make_step(cfg: configs.Config, model: ICLModel, tx: optax.GradientTransformation,
              constrain_batch: Callable[[Any], Any] = lambda x: x
              ) -> Callable[[TrainState, tasks.TaskParams | None], tuple[TrainState, jax.Array]]:
  """One optimisation step of ONE run (vmap it over runs): sample on device, loss, AdamW update.

  ``step_fn(state, task_params)``: with ``train.task_variants`` the run's prompts come from
  ``tasks.sample_batch_traced`` with its own ``task_params`` (padded to ``task.n_points``, masked);
  without, ``task_params`` is None and the prompts come from ``tasks.sample_batch(cfg.task)``.
  """
  variants = bool(cfg.train.task_variants)

  def step_fn(state: TrainState, task_params: tasks.TaskParams | None = None) -> tuple[TrainState, jax.Array]:
    key = tasks.batch_key(state.data_key, state.step)
    if variants:
      prompts = tasks.sample_batch_traced(key, cfg.task, task_params, cfg.train.batch_size)
    else:
      prompts = tasks.sample_batch(key, cfg.task, cfg.train.batch_size)
    prompts = constrain_batch(prompts)
    if cfg.curriculum.dims_start is not None:
      prompts = tasks.mask_dims(prompts, active_dims(cfg, state.step))
    n_active = active_points(cfg, state.step)
    n_context = task_params.n_context if variants and cfg.model.one_layer else None
    loss, grads = jax.value_and_grad(
        lambda p: prediction_loss(model, p, prompts, n_active, n_context=n_context))(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    updates = jax.tree.map(lambda u: -state.lr * u, updates)
    params = optax.apply_updates(state.params, updates)
    return TrainState(params, opt_state, state.step + 1, state.data_key, state.lr), loss

  return step_fn


# ----------------------------------------------------------------------------- sharding

def shard_mode(cfg: configs.Config, n_devices: int) -> str:
  """'runs' or 'batch' (see ``TrainConfig.shard``); errors if the chosen axis does not divide."""
  n_runs = len(cfg.runs)
  mode = cfg.train.shard
  if mode == "auto":
    mode = "runs" if n_runs % n_devices == 0 else "batch"
  if n_devices > 1 and mode == "runs" and n_runs % n_devices:
    raise ValueError(f"train.shard='runs': {n_runs} runs do not divide over {n_devices} devices")
  if n_devices > 1 and mode == "batch" and cfg.train.batch_size % n_devices:
    raise ValueError(f"train.batch_size={cfg.train.batch_size}: not divisible by the {n_devices} devices "
                     "(train.shard='batch')")
  return mode


class Engine:
  """Compiled pieces of one config: ``init()`` -> state, ``run_chunk(state, K)`` -> (state, losses [K, R])."""

  def __init__(self, cfg: configs.Config, devices: list | None = None):
    self.cfg = cfg
    self.model = build_model(cfg.model, cfg.task)
    devices = devices or jax.devices()
    self.mesh = jax.make_mesh((len(devices),), ("data",), devices=devices,
                             axis_types=(jax.sharding.AxisType.Auto,))
    self.mode = shard_mode(cfg, len(devices))
    replicated = NamedSharding(self.mesh, PartitionSpec())
    runs_sharded = NamedSharding(self.mesh, PartitionSpec("data"))
    self.state_sharding = runs_sharded if self.mode == "runs" else replicated
    example = jax.eval_shape(self.model.init, jax.random.PRNGKey(0))
    self.tx = make_optimizer(cfg, example)

    def constrain(prompts):
      if self.mode != "batch" or len(devices) == 1:
        return prompts
      return jax.lax.with_sharding_constraint(prompts, runs_sharded)

    step = jax.vmap(make_step(cfg, self.model, self.tx, constrain))

    def chunk(state: TrainState, task_params: tasks.TaskParams | None, length: int):
      return jax.lax.scan(lambda s, _: step(s, task_params), state, None, length=length)

    self._chunk = jax.jit(chunk, static_argnums=2, donate_argnums=0,
                          out_shardings=(self.state_sharding, replicated))
    self.task_params = None  # [R] per-run task values (with train.task_variants)
    if cfg.train.task_variants:
      per_variant = [tasks.task_params(t) for t in configs.variant_tasks(cfg)]
      stacked = tasks.stack_params([per_variant[v] for v in cfg.run_variants])
      self.task_params = jax.device_put(stacked, self.state_sharding)

    def init(seeds, lrs):
      def one(seed, lr):
        key = jax.random.PRNGKey(seed)
        params = self.model.init(jax.random.fold_in(key, 0))
        return TrainState(params, self.tx.init(params), jnp.zeros((), jnp.int32), jax.random.fold_in(key, 1),
                          jnp.asarray(lr, jnp.float32))
      return jax.vmap(one)(seeds, lrs)

    self._init = jax.jit(init, out_shardings=self.state_sharding)

  def init(self) -> TrainState:
    seeds, lrs = zip(*self.cfg.runs)
    return self._init(jnp.asarray(seeds, jnp.int32), jnp.asarray(lrs, jnp.float32))

  def abstract_state(self) -> TrainState:
    seeds, lrs = zip(*self.cfg.runs)
    shapes = jax.eval_shape(self._init, jnp.asarray(seeds, jnp.int32), jnp.asarray(lrs, jnp.float32))
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=self.state_sharding), shapes)

  def run_chunk(self, state: TrainState, length: int) -> tuple[TrainState, jax.Array]:
    return self._chunk(state, self.task_params, length)


# ----------------------------------------------------------------------------- the loop

def train(cfg: configs.Config, workdir: str | None = None, *, progress: bool = False, resume: bool = True,
          devices: list | None = None, stop_after: int | None = None) -> TrainResult:
  """Trains every run of ``cfg`` together; checkpoints to / resumes from ``workdir/checkpoints``.

  ``stop_after`` ends the loop early at that step (for tests and budgets), saving a checkpoint there.
  Raises ``FloatingPointError`` on a non-finite loss, keeping the last good checkpoint.
  """
  engine = Engine(cfg, devices)
  history: list[dict[str, Any]] = []
  ckpt = None
  state = None
  if workdir is not None:
    os.makedirs(workdir, exist_ok=True)
    _check_or_write_config(cfg, workdir)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=cfg.train.keep_ckpts)
    if resume:
      restored = ckpt.restore_latest(engine.abstract_state())
      if restored is not None:
        state = TrainState(*restored[1])
        history = _read_history(workdir, upto=restored[0])
  if state is None:
    state = engine.init()
  step = int(np.asarray(state.step)[0])
  total = cfg.train.steps if stop_after is None else min(stop_after, cfg.train.steps)
  bar = _progress_bar(total, step) if progress else None
  metrics_file = open(os.path.join(workdir, "metrics.jsonl"), "w" if step == 0 else "a") if workdir else None
  board = _tensorboard(workdir)
  try:
    while step < total:
      length = min(cfg.train.log_every, total - step)
      t0 = time.perf_counter()
      state, losses = engine.run_chunk(state, length)
      losses = np.asarray(losses)  # the one host sync per chunk
      elapsed = time.perf_counter() - t0
      step += length
      if not np.all(np.isfinite(losses)):
        bad_step, bad_run = np.argwhere(~np.isfinite(losses))[0]
        seed, lr = cfg.runs[bad_run]
        kept = f"; last good checkpoint at step {ckpt.steps()[-1]}" if ckpt and ckpt.steps() else ""
        raise FloatingPointError(f"non-finite loss at step {step - length + bad_step} in run {bad_run} "
                                 f"(seed={seed}, lr={lr}){kept}")
      record = {"step": step, "loss": losses.mean(axis=0).tolist(), "last_loss": losses[-1].tolist(),
                "steps_per_s": length / elapsed}
      history.append(record)
      if metrics_file:
        metrics_file.write(json.dumps(record) + "\n")
        metrics_file.flush()
      if board is not None:
        for r, loss in enumerate(record["loss"]):
          board.add_scalar(f"loss/run{r}", loss, step)
        board.add_scalar("steps_per_s", record["steps_per_s"], step)
      if bar is not None:
        bar.update(length)
        bar.set_postfix(loss=f"{float(np.mean(record['loss'])):.4g}", steps_s=f"{record['steps_per_s']:.0f}")
      if ckpt and ((cfg.train.ckpt_every and step % cfg.train.ckpt_every == 0) or step == total):
        ckpt.save(step, state, {"step": step})
  finally:
    if bar is not None:
      bar.close()
    if metrics_file:
      metrics_file.close()
    if board is not None:
      board.close()
    if ckpt:
      ckpt.close()
  return TrainResult(state=state, history=history, model=engine.model, config=cfg)


def run_params(state: TrainState, run: int = 0) -> Any:
  """The parameters of one run (drops the leading R axis)."""
  return jax.tree.map(lambda a: a[run], state.params)


def load_run(workdir: str) -> TrainResult:
  """Config and latest checkpointed state of a finished (or interrupted) run directory."""
  cfg = load_config(workdir)
  engine = Engine(cfg)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=cfg.train.keep_ckpts)
  try:
    restored = ckpt.restore_latest(engine.abstract_state())
  finally:
    ckpt.close()
  if restored is None:
    raise ValueError(f"workdir={workdir!r}: no readable checkpoint")
  return TrainResult(state=TrainState(*restored[1]), history=_read_history(workdir, upto=restored[0]),
                     model=engine.model, config=cfg)


def load_config(workdir: str) -> configs.Config:
  path = os.path.join(workdir, "config.json")
  try:
    with open(path) as f:
      return configs.from_dict(json.load(f))
  except OSError as e:
    raise ValueError(f"workdir={workdir!r}: no readable config.json ({e})") from None


def _check_or_write_config(cfg: configs.Config, workdir: str) -> None:
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path):
    existing = load_config(workdir)
    if existing != cfg:
      raise ValueError(f"workdir={workdir!r} holds a run with a different config; use a new workdir "
                       f"(differences: {_diff(configs.to_dict(existing), configs.to_dict(cfg))})")
    return
  with open(path, "w") as f:
    json.dump(configs.to_dict(cfg), f, indent=2)


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
  out = []
  for k in a:
    if isinstance(a[k], dict):
      out += _diff(a[k], b[k], f"{prefix}{k}.")
    elif a[k] != b[k]:
      out.append(f"{prefix}{k}: {a[k]!r} -> {b[k]!r}")
  return out


def _read_history(workdir: str, upto: int) -> list[dict[str, Any]]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    records = [json.loads(line) for line in f if line.strip()]
  records = [r for r in records if r["step"] <= upto]
  with open(path, "w") as f:  # drop records past the checkpoint: they will be recomputed
    f.writelines(json.dumps(r) + "\n" for r in records)
  return records


def _tensorboard(workdir: str | None):
  """A TensorBoard writer on ``workdir/tensorboard`` when tensorboardX is installed (else None)."""
  if workdir is None:
    return None
  try:
    from tensorboardX import SummaryWriter
  except ImportError:
    return None
  return SummaryWriter(os.path.join(workdir, "tensorboard"))


def _progress_bar(total: int, initial: int):
  from tqdm.auto import tqdm
  return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)
