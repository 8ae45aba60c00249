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

import contextlib
import functools
import json
import os
import signal
import socket
import sys
import threading
import time
import warnings
from typing import Any, Callable, Iterator, NamedTuple

import filelock

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from jaxicl import configs, files, layouts, programs, tasks
from jaxicl import progress as progress_lib
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


def frozen_labels(params: Any, freeze: tuple[str, ...], field: str = "optim.freeze") -> Any:
  """Pytree of 'frozen' / 'train' labels: a leaf is frozen if its path starts with a prefix in ``freeze``."""
  paths = param_paths(params)
  for prefix in freeze:
    if not any(p == prefix or p.startswith(prefix.rstrip("/") + "/") for p in paths):
      raise ValueError(f"{field}={freeze!r}: {prefix!r} matches no parameter; parameters: {paths}")

  def label(path, _):
    s = _path_str(path)
    return "frozen" if any(s == f or s.startswith(f.rstrip("/") + "/") for f in freeze) else "train"

  return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(cfg: configs.Config, params: Any) -> optax.GradientTransformation:
  """AdamW direction × schedule (peak 1); the per-run lr is applied by the step. Frozen leaves get zero updates
  (``params``, a parameter tree or its shapes, labels them; unused without ``optim.freeze``)."""
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

  ``step_fn(state, task_params, train_mask)``: with ``train.task_variants`` the run's prompts come from
  ``tasks.sample_batch_traced`` with its own ``task_params`` (padded to ``task.n_points``, masked);
  without, ``task_params`` is None and the prompts come from ``tasks.sample_batch(cfg.task)``; either way the
  sparse family draws its support among the curriculum's active dimensions. ``train_mask`` (a params-shaped
  tree of 0/1 scalars, or None): the run's own frozen leaves (variant ``freeze``) get zero gradient before the
  optimizer (so clipping and Adam see only trained leaves) and zero update after it, exactly as
  ``optim.freeze`` would.
  """
  variants = bool(cfg.train.task_variants)

  def step_fn(state: TrainState, task_params: tasks.TaskParams | None = None,
              train_mask: Any = None) -> tuple[TrainState, jax.Array]:
    key = tasks.batch_key(state.data_key, state.step)
    n_dims = active_dims(cfg, state.step) if cfg.curriculum.dims_start is not None else None
    if variants:
      prompts = tasks.sample_batch_traced(key, cfg.task, task_params, cfg.train.batch_size, n_dims)
    else:
      prompts = tasks.sample_batch(key, cfg.task, cfg.train.batch_size, n_dims)
    prompts = constrain_batch(prompts)
    if n_dims is not None:
      prompts = tasks.mask_dims(prompts, n_dims)
    n_active = active_points(cfg, state.step)
    n_context = task_params.n_context if variants and cfg.model.one_layer else None
    loss, grads = jax.value_and_grad(
        lambda p: prediction_loss(model, p, prompts, n_active, n_context=n_context))(state.params)
    if train_mask is not None:
      grads = jax.tree.map(jnp.multiply, grads, train_mask)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    if train_mask is not None:
      updates = jax.tree.map(jnp.multiply, updates, train_mask)
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


def fit_devices(cfg: configs.Config, devices: list) -> list:
  """The devices an Engine shards over when none are named: all of ``devices`` when the sharded axis divides
  over them, else (``train.shard='auto'`` only) the most that runs or batch divide, runs first at each count
  (3 runs, batch 32 on 4 devices: the batch over 4; 3 runs, batch 5: the runs over 3). An explicit mode keeps
  all devices and ``shard_mode``'s error when its axis does not divide."""
  if cfg.train.shard != "auto":
    return list(devices)
  n_runs, batch = len(cfg.runs), cfg.train.batch_size
  k = next(k for k in range(len(devices), 0, -1) if n_runs % k == 0 or batch % k == 0)
  return list(devices)[:k]


class Engine:
  """Compiled pieces of one config: ``init()`` -> state, ``run_chunk(state, K)`` -> (state, losses [K, R]).

  ``devices``: the devices to shard over (``train.shard``); default ``fit_devices(cfg, jax.devices())``."""

  def __init__(self, cfg: configs.Config, devices: list | None = None):
    self.cfg = cfg
    self.model = build_model(cfg.model, cfg.task)
    devices = list(devices) if devices else fit_devices(cfg, jax.devices())
    self.devices = devices
    self.mesh = jax.make_mesh((len(devices),), ("data",), devices=devices,
                             axis_types=(jax.sharding.AxisType.Auto,))
    self.mode = shard_mode(cfg, len(devices))
    replicated = NamedSharding(self.mesh, PartitionSpec())
    runs_sharded = NamedSharding(self.mesh, PartitionSpec("data"))
    self.state_sharding = runs_sharded if self.mode == "runs" else replicated
    # the parameter tree (a trace of the model's init) only labels frozen leaves: a process that reads its
    # programs back (jaxicl.programs) does not trace it otherwise
    example = functools.cache(lambda: jax.eval_shape(self.model.init, jax.random.PRNGKey(0)))
    self.tx = make_optimizer(cfg, example() if cfg.optim.freeze else None)

    def constrain(prompts):
      if self.mode != "batch" or len(devices) == 1:
        return prompts
      return jax.lax.with_sharding_constraint(prompts, runs_sharded)

    step = jax.vmap(make_step(cfg, self.model, self.tx, constrain))

    def chunk(state: TrainState, task_params: tasks.TaskParams | None, train_mask: Any, length: int):
      return jax.lax.scan(lambda s, _: step(s, task_params, train_mask), state, None, length=length)

    self._chunk = chunk  # jitted per chunk length in _program
    self.task_params = None  # [R] per-run task values (with train.task_variants)
    self.train_mask = None  # [R] per-run 0/1 per parameter leaf (with a variant that freezes)
    if cfg.train.task_variants:
      per_variant = [tasks.task_params(t) for t in configs.variant_tasks(cfg)]
      stacked = tasks.stack_params([per_variant[v] for v in cfg.run_variants])
      self.task_params = jax.device_put(stacked, self.state_sharding)
      freezes = configs.variant_freeze(cfg)
      if any(freezes):
        masks = [jax.tree.map(lambda label: np.float32(label == "train"),
                              frozen_labels(example(), f, f"train.task_variants[{v}].freeze"))
                 for v, f in enumerate(freezes)]
        stacked = jax.tree.map(lambda *m: np.stack(m), *[masks[v] for v in cfg.run_variants])
        self.train_mask = jax.device_put(stacked, self.state_sharding)

    def init(seeds, lrs):
      def one(seed, lr):
        key = jax.random.PRNGKey(seed)
        params = self.model.init(jax.random.fold_in(key, 0))
        return TrainState(params, self.tx.init(params), jnp.zeros((), jnp.int32), jax.random.fold_in(key, 1),
                          jnp.asarray(lr, jnp.float32))
      return jax.vmap(one)(seeds, lrs)

    self._init = jax.jit(init, out_shardings=self.state_sharding)
    self._programs: dict[int | None, Callable] = {}  # chunk length (None: init) -> program

  def _runs(self) -> tuple[jax.Array, jax.Array]:
    seeds, lrs = zip(*self.cfg.runs)
    return jnp.asarray(seeds, jnp.int32), jnp.asarray(lrs, jnp.float32)

  def _program(self, length: int | None, args: tuple) -> Callable:
    """The init program (``length`` None) or the chunk of ``length`` steps, as a ``programs.program``: traced once
    per key and kept beside the compilation cache, so a later process skips tracing and lowering."""
    if length not in self._programs:
      if length is None:
        fn, out, donate = self._init, self.state_sharding, ()
      else:
        out, donate = (self.state_sharding, NamedSharding(self.mesh, PartitionSpec())), (0,)
        fn = jax.jit(functools.partial(self._chunk, length=length), donate_argnums=donate, out_shardings=out)
      key = repr((self.cfg, length, self.mode, [d.id for d in self.devices]))
      self._programs[length] = programs.program("init" if length is None else "chunk", fn, args, key=key,
                                                out_shardings=out, donate_argnums=donate)
    return self._programs[length]

  def init(self) -> TrainState:
    args = self._runs()
    return self._program(None, args)(*args)

  def abstract_state(self) -> TrainState:
    init = self._program(None, self._runs())
    if isinstance(init, programs.Program):
      return init.out_avals
    shapes = jax.eval_shape(self._init, *self._runs())
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=self.state_sharding), shapes)

  def run_chunk(self, state: TrainState, length: int) -> tuple[TrainState, jax.Array]:
    args = (state, self.task_params, self.train_mask)
    return self._program(length, args)(*args)

  def lower(self, state: TrainState, length: int) -> jax.stages.Lowered:
    """The chunk program of ``length`` steps (the one ``run_chunk`` runs) lowered for ``state`` (arrays or
    ``jax.ShapeDtypeStruct``s), for XLA's cost and memory analyses and compile timing."""
    args = (state, self.task_params, self.train_mask)
    return self._program(length, args).lower(*args)

  def bind(self, compiled: jax.stages.Compiled) -> Callable[[TrainState], tuple[TrainState, jax.Array]]:
    """``state -> (state, losses)`` running ``compiled`` (from ``lower(...).compile()``) with this engine's per-run
    task values and masks."""
    return lambda state: compiled(state, self.task_params, self.train_mask)


# ----------------------------------------------------------------------------- the loop

EXIT_DIVERGED = 3  # the CLI's exit status for a non-finite loss (2: bad input)


class DivergenceError(FloatingPointError):
  """A non-finite training loss: the run stopped before saving the bad state; earlier checkpoints are intact."""


class Interrupted(KeyboardInterrupt):
  """SIGINT (Ctrl-C) or SIGTERM (a scheduler's preemption) stopped training at the end of its chunk, after a
  checkpoint of that step was saved: the same call (or command) resumes bit-exactly from there. A
  ``KeyboardInterrupt``, so ``except Exception`` does not swallow it; ``signum``, ``step``, ``workdir``."""

  def __init__(self, signum: int, step: int, workdir: str):
    self.signum, self.step, self.workdir = signum, step, workdir
    super().__init__(f"interrupted by {signal.Signals(signum).name} at step {step}; checkpoint saved in "
                     f"{os.path.join(workdir, 'checkpoints')}; run the same command to resume")


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[list[int]]:
  """While training with a workdir in the main thread: the first SIGINT or SIGTERM is recorded (in the yielded
  list) instead of ending the process, so the loop can save a checkpoint at the end of its chunk; a second one
  acts as it would have (the previous handler: KeyboardInterrupt, or termination). Handlers restored on exit."""
  if threading.current_thread() is not threading.main_thread():
    yield []
    return
  received: list[int] = []
  previous = {sig: signal.getsignal(sig) or signal.SIG_DFL for sig in (signal.SIGINT, signal.SIGTERM)}

  def handler(signum, frame):
    if received:  # a second signal: act as before
      signal.signal(signum, previous[signum])
      signal.raise_signal(signum)
      return
    received.append(signum)

  for sig, before in previous.items():
    if before is not signal.SIG_IGN:  # a signal the process ignores (nohup, background jobs) stays ignored
      signal.signal(sig, handler)
  try:
    yield received
  finally:
    for sig, before in previous.items():
      signal.signal(sig, before)


def check_stop_after(stop_after: Any, cfg: configs.Config) -> None:
  """``ValueError`` unless ``stop_after`` is None or an integer in [1, ``train.steps``]."""
  if stop_after is not None and (isinstance(stop_after, bool) or not isinstance(stop_after, (int, np.integer))
                                 or stop_after < 1):
    raise ValueError(f"stop_after={stop_after!r}: must be an integer >= 1")
  if stop_after is not None and stop_after > cfg.train.steps:
    raise ValueError(f"stop_after={stop_after}: beyond train.steps={cfg.train.steps}, where the run ends anyway")


def train(cfg: configs.Config, workdir: str | None = None, *, progress: bool | progress_lib.Bar | None = False,
          resume: bool = True, devices: list | None = None, stop_after: int | None = None) -> TrainResult:
  """Trains every run of ``cfg`` together; checkpoints to / resumes from ``workdir/checkpoints``.

  ``progress``: False / None (silent), True (a tqdm bar of this training's steps, closed at the end), or an
  existing bar of a larger job (anything with tqdm's ``update(n)`` and ``set_postfix(**kw)``, e.g.
  ``jaxicl.progress.JobProgress(...).bar``): it is advanced by every step of this training, those restored
  from a checkpoint included, shows the mean loss in its postfix, and is left open.

  ``stop_after`` ends the loop early at that step (for tests and budgets), saving a checkpoint there (``ValueError``
  beyond ``train.steps`` or below the step the workdir's run is at); chunks
  and checkpoints stay on the ``log_every`` / ``ckpt_every`` grids after a resume from any step. One process
  at a time may train in a workdir (``workdir/.lock``). Raises ``ValueError`` on bad input (config, workdir)
  and ``DivergenceError`` on a non-finite loss, keeping the last good checkpoint. With a ``workdir``, SIGINT
  (Ctrl-C) or SIGTERM (preemption) ends the current chunk (``log_every`` steps at most), saves a checkpoint of
  that step and raises ``Interrupted``; a second signal acts at once.
  """
  check_stop_after(stop_after, cfg)
  engine = _engine(cfg, None if devices is None else tuple(devices))
  with contextlib.ExitStack() as stack:
    ckpt = None
    state = None
    history: list[dict[str, Any]] = []
    if workdir is not None:
      _make_workdir(workdir)
      stack.enter_context(workdir_lock(workdir))
      signals = stack.enter_context(_stop_on_signals())
      files.check_files(workdir, ("config.json", "metrics.jsonl"))  # before anything is written
      files.claim_folder(workdir, "training run", "workdir")
      _check_or_write_config(cfg, workdir)
      ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=cfg.train.keep_ckpts)
      stack.callback(ckpt.close)
      if resume and ckpt.candidates():  # the abstract state costs a trace of init: only when there is something to read
        restored = ckpt.restore_latest(engine.abstract_state())
        if restored is not None:
          state = TrainState(*restored[1])
          history = _read_history(workdir, upto=restored[0])
        elif os.path.exists(os.path.join(workdir, "metrics.jsonl")):  # kept beside the checkpoints it belongs to
          ckpt.set_aside(os.path.join(workdir, "metrics.jsonl"), "records a run none of whose checkpoints restore")
      files.write_text(os.path.join(workdir, "metrics.jsonl"), "".join(json.dumps(r) + "\n" for r in history))
    else:
      signals = []
    if state is None:
      state = engine.init()
    step = int(np.asarray(state.step)[0])
    if stop_after is not None and step > stop_after:
      raise ValueError(f"stop_after={stop_after}: the run in {workdir} is already at step {step}")
    total = stop_after or cfg.train.steps  # check_stop_after: stop_after <= train.steps
    if progress is True:
      stack.enter_context(contextlib.closing(bar := progress_lib.make_bar(total, step)))
    elif progress is not None and progress is not False:  # a job's bar
      bar = progress
      bar.update(min(step, total))
    else:
      bar = None
    metrics_file = stack.enter_context(open(os.path.join(workdir, "metrics.jsonl"), "a")) if workdir else None
    board = _tensorboard(workdir) if step < total else None  # a finished run read back writes no empty event file
    if board is not None:
      stack.callback(board.close)
    log_every = cfg.train.log_every
    while step < total:
      length = min(log_every - step % log_every, total - step)  # back on the log grid after an off-grid stop
      t0 = time.perf_counter()
      state, losses = engine.run_chunk(state, length)
      losses = np.asarray(losses)  # the one host sync per chunk
      elapsed = time.perf_counter() - t0
      if not np.all(np.isfinite(losses)):
        bad_step, bad_run = np.argwhere(~np.isfinite(losses))[0]
        _diverged(cfg, ckpt, step + int(bad_step), int(bad_run))
      step += length
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
        bar.set_postfix(loss=f"{float(np.mean(record['loss'])):.4g}", steps_s=f"{record['steps_per_s']:.0f}",
                        refresh=False)
        bar.update(length)
      if ckpt and ((cfg.train.ckpt_every and step % cfg.train.ckpt_every == 0) or step == total or signals):
        ckpt.save(step, state, {"step": step})
      if signals and step < total:
        ckpt.wait()
        raise Interrupted(signals[0], step, workdir)
  return TrainResult(state=state, history=history, model=engine.model, config=cfg)


@functools.lru_cache(maxsize=4)
def _engine(cfg: configs.Config, devices: tuple | None) -> Engine:
  """One Engine (and its compiled programs) per config: repeated or resumed runs in a process do not recompile."""
  return Engine(cfg, None if devices is None else list(devices))


def _diverged(cfg: configs.Config, ckpt: Checkpointer | None, step: int, run: int) -> None:
  seed, lr = cfg.runs[run]
  kept = ""
  if ckpt is not None:
    ckpt.wait()
    kept = (f"; last good checkpoint: step {ckpt.steps()[-1]} in {ckpt.directory}" if ckpt.steps()
            else "; no checkpoint was written")
  raise DivergenceError(f"non-finite loss at step {step} in run {run} (seed={seed}, lr={lr:g}){kept}; try a lower "
                        "learning rate (optim.lr / train.lrs) or gradient clipping (e.g. optim.grad_clip=1.0)")


def run_params(state: TrainState, run: int = 0) -> Any:
  """The parameters of one run (drops the leading R axis)."""
  return jax.tree.map(lambda a: a[run], state.params)


def load_run(workdir: str) -> TrainResult:
  """Config and latest valid checkpointed state of a finished (or interrupted) run directory (read only)."""
  cfg = configs.load(os.path.join(workdir, "config.json"))
  engine = Engine(cfg)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=cfg.train.keep_ckpts, repair=False)
  try:
    restored = ckpt.restore_latest(engine.abstract_state())
  finally:
    ckpt.close()
  if restored is None:
    raise ValueError(f"workdir={workdir!r}: no readable checkpoint")
  return TrainResult(state=TrainState(*restored[1]), history=_read_history(workdir, upto=restored[0]),
                     model=engine.model, config=cfg)


# ----------------------------------------------------------------------------- workdir files


def _make_workdir(workdir: str) -> None:
  """Creates ``workdir``; filesystem failures become a ``ValueError`` naming the path."""
  try:
    os.makedirs(workdir, exist_ok=True)
  except FileExistsError:
    raise ValueError(f"workdir={workdir!r}: exists and is not a directory") from None
  except OSError as e:
    raise ValueError(f"workdir={workdir!r}: cannot create it ({e.strerror}: {e.filename})") from None
  if not os.path.isdir(workdir):
    raise ValueError(f"workdir={workdir!r}: exists and is not a directory")
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise ValueError(f"workdir={workdir!r}: not writable")


@contextlib.contextmanager
def workdir_lock(workdir: str, activity: str = "training", field: str = "workdir") -> Iterator[None]:
  """Holds ``workdir/.lock`` (an OS file lock, released when the process ends, even by SIGKILL) for one writer.

  A second process gets ``ValueError`` naming ``field``, the folder, what the holder is doing and the holder
  (from ``workdir/.lock.owner``: its ``activity``, pid and host). Used for a run's workdir, for the output folder of
  a sweep or study (whose runs' workdirs inside it hold their own locks) and for ``jaxicl eval``'s output folder.
  """
  path = os.path.join(workdir, ".lock")
  lock = filelock.FileLock(path, timeout=0)
  try:
    lock.acquire()
  except filelock.Timeout:
    try:
      with open(path + ".owner") as f:
        holder = f.read().strip()
    except OSError:
      holder = ""
    doing, sep, who = holder.partition(": ")
    if not sep:  # no owner file yet (the holder is starting) or one without the activity
      doing, who = "using it", holder or "unknown"
    else:
      doing += " in it"
    raise ValueError(f"{field}={workdir!r}: another process is {doing} ({who}); wait for it to finish "
                     f"or use another {field}") from None
  try:
    files.write_text(path + ".owner", f"{activity}: pid {os.getpid()} on host {socket.gethostname()}\n")
    yield
  finally:
    lock.release()


def _has_checkpoints(workdir: str) -> bool:
  ckpt_dir = os.path.join(workdir, "checkpoints")
  return os.path.isdir(ckpt_dir) and any(n.isdigit() for n in os.listdir(ckpt_dir))


def _check_or_write_config(cfg: configs.Config, workdir: str) -> None:
  """Writes ``config.json`` (atomically) or checks that the workdir's run has the same config.

  An unreadable ``config.json`` in a workdir without checkpoints (a run killed in its first seconds) is
  rewritten; with checkpoints it is an error, as is a missing one.
  """
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path):
    try:
      existing = configs.load(path)
    except ValueError as e:
      if _has_checkpoints(workdir):
        raise ValueError(f"{e}; the workdir holds checkpoints, so it is not rewritten: fix the file or use a "
                         "new workdir") from None
      print(f"jaxicl: {e}; no checkpoint yet, so it is rewritten", file=sys.stderr)
    else:
      if existing != cfg:
        raise ValueError(f"workdir={workdir!r} holds a run with a different config; use a new workdir "
                         f"(differences: {_diff(configs.to_dict(existing), configs.to_dict(cfg))})")
      return
  elif _has_checkpoints(workdir):
    raise ValueError(f"{path}: missing, but the workdir holds checkpoints; restore the file or use a new workdir")
  files.write_text(path, json.dumps(configs.to_dict(cfg), indent=2) + "\n")


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
  out = []
  for k in a:
    if isinstance(a[k], dict):
      out += _diff(a[k], b[k], f"{prefix}{k}.")
    elif a[k] != b[k]:
      out.append(f"{prefix}{k}: {a[k]!r} -> {b[k]!r}")
  return out


def _read_history(workdir: str, upto: int | None = None) -> list[dict[str, Any]]:
  """The records of ``workdir/metrics.jsonl`` with step <= ``upto``, one per step, in order.

  Unparseable lines (a torn last line from a killed run) are dropped with a warning, as are repeated steps.
  """
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path, errors="replace") as f:
    lines = f.read().split("\n")
  records, last = [], -1
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
      step = record["step"]
      ok = isinstance(step, int) and step > last
    except (json.JSONDecodeError, KeyError, TypeError):
      ok = False
    if not ok:
      where = "torn last line" if i >= len(lines) - 2 else f"line {i + 1}"
      print(f"jaxicl: {path}: dropping an unreadable record ({where}: {line[:80]!r})", file=sys.stderr)
      continue
    if upto is None or step <= upto:
      records.append(record)
      last = step
  return records


def _tensorboard(workdir: str | None):
  """A TensorBoard writer on ``workdir/tensorboard`` when tensorboardX is installed (else None)."""
  if workdir is None:
    return None
  # tensorboardX imports torch, when installed, only to recognise torch tensors (never passed here): 2-3 s of every
  # process's start. A None entry in sys.modules makes that optional import fail fast; removed right after.
  block_torch = "torch" not in sys.modules
  if block_torch:
    sys.modules["torch"] = None
  try:
    from tensorboardX import SummaryWriter
  except ImportError:
    return None
  finally:
    if block_torch:
      sys.modules.pop("torch", None)
  return SummaryWriter(os.path.join(workdir, "tensorboard"))

