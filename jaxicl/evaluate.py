"""Evaluation: excess risk vs number of in-context examples, for a trained model and classical baselines
on the same held-out prompts, in distribution and under distribution shifts (``jaxicl.shifts``), with
bootstrap confidence intervals over prompts and mean ± SE over seeds.

Shape legend: B prompts, N points, P model predictions per prompt, R runs (seeds), K prompt sets
(in distribution, one per global shift, one per query shift and prediction point), M bootstrap resamples.
Excess risk at n = E(ŷ_n − wᵀx_n)², the prediction for point n from the n points before it.

Uncertainty. The risk at a point is a mean over B i.i.d. prompts of per-prompt squared errors e_b; its
percentile-bootstrap interval at level 1−α is [q_{α/2}, q_{1−α/2}] of the M resampled means
(1/B) Σ_b c_mb e_b, c_m ~ Multinomial(B, 1/B) (``bootstrap_ci``). Every curve and shift uses the same
resamples, so the intervals are paired like the prompts. Over the R seeds of a workdir the report adds
mean ± SE, SE = std_R(risk)/√R (ddof 1).
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import os
import zlib
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxicl import configs, estimators, files, layouts, shifts as shifts_lib, tasks
from jaxicl.models import ICLModel, build_model

EVAL_SEED = 1_000_003  # held-out prompts: a key no training step uses (training keys are fold_in(seed, step))
N_BOOT = 1000  # bootstrap resamples
CI_LEVEL = 0.95
TUNE_PROMPTS = 256  # in-distribution prompts the suite's baselines are tuned on (seed EVAL_SEED + 2)
TUNE_GRIDS = {"ridge": {"lam": [1e-3, 1e-2, 1e-1, 1.0, 10.0]},
              "lasso": {"alpha": [1e-3, 1e-2, 1e-1, 1.0]},
              "gd": {"lr": [0.03, 0.1, 0.3, 1.0], "steps": [1, 3, 10, 30, 100]}}


def default_baselines(task: tasks.TaskConfig) -> dict[str, tuple[str, dict[str, Any]]]:
  """label -> (estimator name, hyper-parameters) suited to the task family."""
  base = {"OLS": ("ols", {}), "averaging": ("averaging", {}), "3-NN": ("knn", {"k": 3})}
  if task.pool_size is not None:
    base["Bayes (pool)"] = ("pool_bayes", {})
  elif task.family == "linear":
    base["Bayes"] = ("bayes", {})
  if task.family == "sparse":
    base["Lasso α=0.01"] = ("lasso", {"alpha": 0.01})
    base["ridge λ=1"] = ("ridge", {"lam": 1.0})
  return base


def eval_prompts(task: tasks.TaskConfig, n_prompts: int, seed: int = EVAL_SEED) -> tasks.Prompt:
  """The held-out prompt set [B, N, …]."""
  return jax.jit(tasks.sample_batch, static_argnums=(1, 2))(jax.random.PRNGKey(seed), task, n_prompts)


def pointwise_risk(model: ICLModel, params: Any, prompts: tasks.Prompt,
                   head_mask: jax.Array | None = None) -> jax.Array:
  """Excess risk at each prediction point [P] (pure; jit/vmap-safe): R_t = mean_b (ŷ_bt − wᵀx_{b, idx(t)})²."""
  index = layouts.get_layout(model.layout).target_index(prompts.xs.shape[1])
  preds = model.apply(params, prompts.xs, prompts.ys, head_mask=head_mask)
  return jnp.mean(jnp.square(preds - prompts.targets[:, index]), axis=0)


def chunk_sq_err(model: ICLModel, params: Any, head_mask: jax.Array | None, xs: jax.Array, ys: jax.Array,
                 targets: jax.Array, valid: jax.Array | int) -> jax.Array:
  """Σ_b (ŷ_bt − wᵀx_{b, idx(t)})² over the first ``valid`` prompts of a padded chunk, at each prediction
  point [P] (pure; jit/vmap-safe)."""
  index = layouts.get_layout(model.layout).target_index(xs.shape[1])
  keep = (jnp.arange(xs.shape[0]) < valid).astype(jnp.float32)[:, None]
  return jnp.sum(keep * jnp.square(model.apply(params, xs, ys, head_mask=head_mask) - targets[:, index]), axis=0)


@functools.lru_cache(maxsize=32)
def _runs_sq_err(model: ICLModel):
  """Compiled once per model: summed squared errors [R, P] of every run (its own head mask) on a prompt chunk
  (``chunk_sq_err``)."""

  @jax.jit
  def sq_err(run_params, masks, xs, ys, targets, valid):
    return jax.vmap(lambda p, m: chunk_sq_err(model, p, m, xs, ys, targets, valid))(run_params, masks)

  return sq_err


def run_risks(model: ICLModel, run_params: Any, prompts: tasks.Prompt, head_masks: np.ndarray | None = None,
              chunk: int = 1024) -> np.ndarray:
  """Excess risk at each prediction point of every run [R, P]; params (and optional masks [R, L, H]) carry a
  leading run axis R. One compiled program for all runs, over fixed-size prompt chunks (the last is padded)."""
  n_runs = jax.tree.leaves(run_params)[0].shape[0]
  if head_masks is None:
    head_masks = np.ones((n_runs, len(model.n_heads), max(model.n_heads)), np.float32)
  masks = jnp.asarray(head_masks, jnp.float32)
  sq_err = _runs_sq_err(model)
  return chunked_prompt_mean(lambda *chunk_args: sq_err(run_params, masks, *chunk_args), prompts, chunk)


def chunked_prompt_mean(sq_err_sum: Any, prompts: tasks.Prompt, chunk: int) -> Any:
  """Σ over prompt chunks of ``sq_err_sum(xs, ys, targets, valid)`` ÷ B, in float64 (a pytree of arrays).

  The prompts go in fixed-size chunks of ``min(chunk, B)`` (``estimators.prompt_chunks``: the last padded with
  copies; ``valid`` counts its real prompts, which ``sq_err_sum`` must alone sum over), so one compiled program
  serves every chunk and memory is bounded by the chunk, not by B."""
  total = None
  for parts, valid in estimators.prompt_chunks((prompts.xs, prompts.ys, prompts.targets), chunk):
    out = jax.tree.map(lambda a: np.asarray(a, np.float64), sq_err_sum(*parts, valid))
    total = out if total is None else jax.tree.map(np.add, total, out)
  return jax.tree.map(lambda a: a / prompts.xs.shape[0], total)


def variant_prompts(cfg: configs.Config, n_prompts: int, seed: int = EVAL_SEED) -> tuple[tasks.Prompt, np.ndarray]:
  """Held-out prompts of every task variant of ``cfg`` (``train.task_variants``), padded to ``task.n_points``:
  (Prompt with a leading variant axis [V, B, N, ...], n_context [V]). One compiled sampler for all variants
  (``tasks.sample_batch_traced``, scenario values traced) from ``PRNGKey(seed)`` for every variant, as
  ``eval_prompts`` uses one key for every task; variant v's first D_v context points and its query do not
  depend on the padded length."""
  stacked = tasks.stack_params([tasks.task_params(t) for t in configs.variant_tasks(cfg)])
  key = jax.random.PRNGKey(seed)
  sample = jax.jit(jax.vmap(lambda tp: tasks.sample_batch_traced(key, cfg.task, tp, n_prompts)))
  return sample(stacked), np.asarray(stacked.n_context)


@functools.lru_cache(maxsize=32)
def _variant_sq_err(model: ICLModel, padded: bool):
  """Compiled once per model: summed squared errors [R, P] of every run on its own prompt chunk ([R, B, ...],
  contexts beyond n_context masked when ``padded``), counting the first ``valid`` prompts."""

  @jax.jit
  def sq_err(run_params, xs, ys, targets, n_context, valid):
    index = layouts.get_layout(model.layout).target_index(xs.shape[2])
    keep = (jnp.arange(xs.shape[1]) < valid).astype(jnp.float32)[:, None]

    def one(p, x, y, t, n):
      preds = model.apply(p, x, y, n_context=n if padded else None)
      err2 = jnp.square(preds - t[:, index])
      return jnp.sum(keep * err2, axis=0), jnp.sum(keep * jnp.square(err2), axis=0)

    return jax.vmap(one)(run_params, xs, ys, targets, n_context)

  return sq_err


class Risks(NamedTuple):
  risk: np.ndarray  # [R, P] mean squared error against the noise-free target over the held-out prompts
  se: np.ndarray  # [R, P] its standard error over prompts, sqrt((E e⁴ − (E e²)²) / n_prompts)


def variant_risks(model: ICLModel, run_params: Any, cfg: configs.Config, n_prompts: int, seed: int = EVAL_SEED,
                  chunk: int | None = None) -> Risks:
  """Excess risk at each prediction point of every run of ``cfg`` [R, P] with its standard error over the prompts,
  each run on the held-out prompts of its own task variant (``variant_prompts``; padded contexts masked): one
  compiled program for all runs and variants. ``model`` is built for the padded ``cfg.task``; params carry the
  leading run axis R of ``cfg.runs``. ``chunk``: prompts per step (default: ~16M input floats over all runs, so it
  fits an accelerator at any R)."""
  prompts, n_context = variant_prompts(cfg, n_prompts, seed)
  variants = jnp.asarray(cfg.run_variants)
  padded = cfg.model.one_layer
  sq_err = _variant_sq_err(model, padded)
  if chunk is None:
    chunk = int(np.clip(2**24 // (len(cfg.runs) * cfg.task.n_points * (cfg.task.d + 2)), 16, 1024))
  chunk = min(chunk, n_prompts)
  s2 = s4 = 0.0
  for start in range(0, n_prompts, chunk):
    parts = [a[:, start:start + chunk] for a in (prompts.xs, prompts.ys, prompts.targets)]
    valid = parts[0].shape[1]
    parts = [jnp.pad(a, [(0, 0), (0, chunk - valid)] + [(0, 0)] * (a.ndim - 2))[variants] for a in parts]
    e2, e4 = sq_err(run_params, *parts, jnp.asarray(n_context)[variants], valid)
    s2, s4 = s2 + np.asarray(e2, np.float64), s4 + np.asarray(e4, np.float64)
  risk = s2 / n_prompts
  return Risks(risk, np.sqrt(np.maximum(s4 / n_prompts - risk**2, 0.0) / n_prompts))


def model_risk(model: ICLModel, params: Any, prompts: tasks.Prompt, head_mask: jax.Array | None = None,
               chunk: int = 1024) -> np.ndarray:
  """Excess risk of one parameter set at each of its prediction points [P] (P = N for gpt2, 1 for one-layer models)."""
  stacked = jax.tree.map(lambda a: jnp.asarray(a)[None], params)
  masks = None if head_mask is None else np.asarray(head_mask, np.float32)[None]
  return run_risks(model, stacked, prompts, masks, chunk)[0]


def suite_baselines(task: tasks.TaskConfig, query_indices: Sequence[int], n_prompts: int = TUNE_PROMPTS,
                    seed: int = EVAL_SEED + 2) -> dict[str, tuple[str, dict[str, Any]]]:
  """The evaluation suite's baselines: OLS, averaging, 3-NN, Bayes (pool Bayes for a task pool), and ridge (unless
  Bayes is there), Lasso and GD with hyper-parameters tuned in distribution, then fixed under every shift.

  Tuning (``estimators.tune`` over ``TUNE_GRIDS`` on ``n_prompts`` prompts of seed ``seed``) scores a grid point by
  Σ_n R_n(g) / min_g' R_n(g') over two prediction points, the smallest n >= 1 and the median of ``query_indices``,
  so a step size that diverges with few examples is not chosen for its risk at many.
  """
  base = {k: v for k, v in default_baselines(task).items() if v[0] not in ("ridge", "lasso")}
  prompts = eval_prompts(task, n_prompts, seed)
  indices = [int(t) for t in query_indices]
  points = sorted({min([t for t in indices if t >= 1] or indices), indices[len(indices) // 2]})
  names = (["ridge"] if not any(v[0] in ("bayes", "pool_bayes") for v in base.values()) else []) + ["lasso", "gd"]
  for name in names:
    grid = TUNE_GRIDS[name]
    score = 0.0
    for n in points:
      _, risks = estimators.tune(name, grid, prompts.xs, prompts.ys, prompts.targets, n)
      risks = np.where(np.isfinite(risks), risks, np.inf)
      score = score + risks / max(float(risks.min()), 1e-30)
    best = {k: grid[k][i] for k, i in zip(grid, np.unravel_index(np.argmin(score), score.shape))}
    label = {"ridge": f"ridge λ={best.get('lam', 0):g}", "lasso": f"Lasso α={best.get('alpha', 0):g}",
             "gd": f"GD η={best.get('lr', 0):g}, {best.get('steps', 0)} steps"}[name]
    base[label] = (name, best)
  return base


def check_ci(n_boot: int, level: float) -> None:
  """Raises ``ValueError`` naming an invalid number of resamples or confidence level."""
  if not isinstance(n_boot, (int, np.integer)) or isinstance(n_boot, bool) or n_boot < 1:
    raise ValueError(f"n_boot={n_boot!r}: must be an integer >= 1")
  if not (isinstance(level, (int, float, np.floating)) and 0 < level < 1):
    raise ValueError(f"ci_level={level!r}: must be in (0, 1)")


def bootstrap_ci(errors: np.ndarray, n_boot: int = N_BOOT, level: float = CI_LEVEL, seed: int = 0) -> np.ndarray:
  """Percentile-bootstrap interval of the mean over axis 0: errors [B, ...] -> [2, ...] (lower, upper).

  Every column uses the same M = ``n_boot`` resamples, as counts C [M, B] (C_mb = times prompt b is drawn in
  resample m), so the resampled means are one product C·E/B (no loop over resamples; blocks of resamples bound
  the memory). A column with a non-finite entry (an undefined point) gets NaN.
  """
  check_ci(n_boot, level)
  e = np.asarray(errors, np.float64)
  n = e.shape[0]
  if n < 1:
    raise ValueError("bootstrap_ci: no samples (errors has an empty first axis)")
  flat = e.reshape(n, -1)
  finite = np.all(np.isfinite(flat), axis=0)
  flat = np.where(finite, flat, 0.0)
  rng = np.random.default_rng(seed)
  block = max(1, min(n_boot, 2**22 // n))
  means = []
  for start in range(0, n_boot, block):
    m = min(block, n_boot - start)
    draws = rng.integers(0, n, size=(m, n)) + n * np.arange(m)[:, None]
    counts = np.bincount(draws.ravel(), minlength=m * n).reshape(m, n)
    means.append(counts @ flat / n)
  q = np.quantile(np.concatenate(means), [(1 - level) / 2, (1 + level) / 2], axis=0)
  q[:, ~finite] = np.nan
  return q.reshape((2,) + e.shape[1:])


class PromptSets(NamedTuple):
  """K prompt sets of the same shape, all shifted from the same B in-distribution prompts (set 0 is those)."""

  prompts: tasks.Prompt  # [K, B, N, …] (numpy)
  shift: np.ndarray  # [K] index into the shift specs; -1 for in distribution
  query: np.ndarray  # [K] query index t of a query shift's set; -1 for the other sets


def _shift_key(seed: int, spec: shifts_lib.ShiftSpec) -> jax.Array:
  """A shift's draws depend on the seed and the shift itself, not on which other shifts are evaluated."""
  return jax.random.fold_in(jax.random.PRNGKey(seed), zlib.crc32(str(spec).encode()) & 0x7FFFFFFF)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _shift_all(specs: tuple[shifts_lib.ShiftSpec, ...], queries: tuple[tuple[int, ...], ...], keys: list[jax.Array],
               prompts: tasks.Prompt) -> list[tasks.Prompt]:
  """Every shift's sets in one program: shift i applied at each query index of ``queries[i]`` -> [len(q_i), B, …]."""
  return [jax.vmap(lambda t: shifts_lib.transform(spec, key, prompts, t))(jnp.asarray(ts, jnp.int32))
          for spec, ts, key in zip(specs, queries, keys)]


def shifted_prompt_sets(task: tasks.TaskConfig, specs: Sequence[shifts_lib.ShiftSpec], query_indices: Sequence[int],
                        n_prompts: int, seed: int = EVAL_SEED) -> PromptSets:
  """The in-distribution prompts ``eval_prompts(task, n_prompts, seed)`` and their shifted copies: one set per
  global shift, and one per query shift and prediction point t in ``query_indices`` where it is defined."""
  base = eval_prompts(task, n_prompts, seed)
  specs = tuple(specs)
  queries, shift_ids, set_queries = [], [-1], [-1]
  for i, spec in enumerate(specs):
    shift = shifts_lib.get_shift(spec.name)
    ts = tuple(int(t) for t in query_indices if shift.defined(int(t), task.d)) if shift.per_query else (-1,)
    queries.append(ts)
    shift_ids += [i] * len(ts)
    set_queries += list(ts)
  shifted = _shift_all(specs, tuple(queries), [_shift_key(seed, spec) for spec in specs], base)
  parts = [jax.tree.map(lambda a: a[None], base)] + shifted
  prompts = jax.tree.map(lambda *a: np.concatenate([np.asarray(x) for x in a]), *parts)
  return PromptSets(prompts, np.asarray(shift_ids), np.asarray(set_queries))


@functools.lru_cache(maxsize=32)
def _sets_sq_err(model: ICLModel):
  """Compiled once per model: squared errors [K, R, C, P] of every run on a chunk of C prompts of every set."""

  @jax.jit
  def sq_err(run_params, xs, ys, targets):
    index = layouts.get_layout(model.layout).target_index(xs.shape[2])

    def one_set(args):
      x, y, t = args
      return jax.vmap(lambda p: jnp.square(model.apply(p, x, y) - t[:, index]))(run_params)

    return jax.lax.map(one_set, (xs, ys, targets))

  return sq_err


def model_sq_errors(model: ICLModel, run_params: Any, prompts: tasks.Prompt, chunk: int = 1024) -> np.ndarray:
  """Per-prompt squared errors [K, R, B, P] of every run (params with a leading R axis) on prompt sets [K, B, …].

  One compiled program for all sets and runs (``lax.map`` over sets, ``vmap`` over runs) applied to fixed-size
  prompt chunks (the last one zero-padded).
  """
  n_prompts = prompts.xs.shape[1]
  chunk = min(chunk, n_prompts)
  sq_err = _sets_sq_err(model)
  out = []
  for start in range(0, n_prompts, chunk):
    parts = [np.asarray(a[:, start:start + chunk]) for a in (prompts.xs, prompts.ys, prompts.targets)]
    valid = parts[0].shape[1]
    parts = [np.pad(a, [(0, 0), (0, chunk - valid)] + [(0, 0)] * (a.ndim - 2)) for a in parts]
    out.append(np.asarray(sq_err(run_params, *parts), np.float64)[:, :, :valid])
  return np.concatenate(out, axis=2)


_WEIGHT_FNS = {name: getattr(estimators, f"{name}_weights")
               for name in ("ols", "ridge", "bayes", "gd", "lasso", "averaging", "pool_bayes", "pto")}
_STATIC = ("k", "tol", "max_sweeps")


@functools.lru_cache(maxsize=64)
def _query_fn(name: str, static: tuple[tuple[str, Any], ...]):
  def one(x, y, t, numeric):
    mask = (jnp.arange(x.shape[0]) < t).astype(x.dtype)
    if name == "knn":
      return estimators.knn_predict(x, y, x[t], mask=mask, **dict(static), **numeric)
    return _WEIGHT_FNS[name](x, y, mask=mask, **dict(static), **numeric) @ x[t]

  def run(xs, ys, query, numeric):
    return jax.vmap(lambda xk, yk, t: jax.vmap(lambda x, y: one(x, y, t, numeric))(xk, yk))(xs, ys, query)

  return jax.jit(run)


def query_predictions(name: str, xs: np.ndarray, ys: np.ndarray, query: np.ndarray,
                      task_cfg: tasks.TaskConfig | None = None, **hparams) -> np.ndarray:
  """Estimator ``name``'s prediction for point t_k of every prompt of set k from its points j < t_k only (one fit
  per prompt, not N): xs [K, B, N, d], ys [K, B, N], query [K] -> [K, B]. Equals ``estimators.predict(...)[:, t_k]``;
  lasso runs in float64 as there. An estimator without a fit primitive runs prefix-wise.
  """
  bound = estimators.get_estimator(name, task_cfg, **hparams).keywords  # checked, with the task's prior
  query = np.asarray(query, np.int32)
  if estimators.ESTIMATORS[name] is not getattr(estimators, name, None) or (name not in _WEIGHT_FNS
                                                                             and name != "knn"):
    k, b, n, d = xs.shape
    preds = np.asarray(estimators.predict(name, xs.reshape(k * b, n, d), ys.reshape(k * b, n), task_cfg, **hparams))
    return np.take_along_axis(preds.reshape(k, b, n), query[:, None, None], axis=2)[..., 0]
  if name == "lasso":  # one path per prompt, coordinate descent only where needed (estimators.lasso_grid_predictions)
    rest = {k: v for k, v in bound.items() if k != "alpha"}
    preds = [estimators.lasso_grid_predictions(xs[k], ys[k], [bound["alpha"]], [int(t)], **rest)[:, 0, 0]
             for k, t in enumerate(query)]
    return np.stack(preds).astype(np.asarray(xs).dtype)
  static = tuple(sorted((k, v) for k, v in bound.items() if k in _STATIC))
  numeric = {k: jnp.asarray(v) for k, v in bound.items() if k not in _STATIC}
  run = _query_fn(name, static)
  return np.asarray(run(jnp.asarray(xs), jnp.asarray(ys), jnp.asarray(query), numeric))


def baseline_sq_errors(name: str, hparams: dict[str, Any], task: tasks.TaskConfig, sets: PromptSets,
                       index: np.ndarray) -> np.ndarray:
  """Per-prompt squared errors [K, B, P] of a baseline on every set: prefix-wise (``estimators.predict``) on
  in-distribution and global-shift sets, at its query point only on query-shift sets (NaN at the other points)."""
  xs, ys, targets = sets.prompts.xs, sets.prompts.ys, sets.prompts.targets
  n_sets, n_prompts, n_points, d = xs.shape
  out = np.full((n_sets, n_prompts, len(index)), np.nan)
  whole = sets.query < 0
  if whole.any():
    preds = estimators.predict(name, xs[whole].reshape(-1, n_points, d), ys[whole].reshape(-1, n_points),
                               task_cfg=task, **hparams)
    err = np.square(np.asarray(preds, np.float64).reshape(-1, n_prompts, n_points) - targets[whole])
    out[whole] = err[..., index]
  if (~whole).any():
    ks = np.nonzero(~whole)[0]
    preds = query_predictions(name, xs[ks], ys[ks], sets.query[ks], task_cfg=task, **hparams)
    position = {int(t): p for p, t in enumerate(index)}
    for j, k in enumerate(ks):
      t = int(sets.query[k])
      out[k, :, position[t]] = np.square(np.asarray(preds[j], np.float64) - targets[k, :, t])
  return out


def _per_shift(err: np.ndarray, sets: PromptSets, n_shifts: int, index: np.ndarray) -> np.ndarray:
  """Errors [K, B, P] of the sets -> [S+1, B, P] per shift (0: in distribution); a query shift's row p comes from its
  set for t = index[p], NaN where it is undefined."""
  out = np.full((n_shifts + 1,) + err.shape[1:], np.nan)
  out[0] = err[0]
  position = {int(t): p for p, t in enumerate(index)}
  for k in range(1, len(sets.shift)):
    s, t = int(sets.shift[k]) + 1, int(sets.query[k])
    if t < 0:
      out[s] = err[k]
    else:
      out[s, :, position[t]] = err[k, :, position[t]]
  return out


def _as_specs(shifts) -> tuple[shifts_lib.ShiftSpec, ...]:
  if isinstance(shifts, str):
    return shifts_lib.parse(shifts)
  specs = tuple(shifts)
  if all(isinstance(s, shifts_lib.ShiftSpec) for s in specs):
    return specs
  return shifts_lib.parse([str(s) for s in specs])


def _jsonable(value):
  """Arrays -> nested lists with NaN -> None (JSON has no NaN)."""
  if isinstance(value, dict):
    return {k: _jsonable(v) for k, v in value.items()}
  if isinstance(value, (np.ndarray, list, tuple)):
    arr = np.asarray(value)
    if arr.dtype.kind == "f":
      return [_jsonable(v) for v in arr] if arr.ndim else (None if not np.isfinite(arr) else float(arr))
    return arr.tolist()
  if isinstance(value, (float, np.floating)):
    return None if not np.isfinite(value) else float(value)
  if isinstance(value, np.integer):
    return int(value)
  return value


def evaluate_runs(model: ICLModel, run_params: Any, task: tasks.TaskConfig, n_prompts: int = 1024,
                  baselines: dict[str, tuple[str, dict[str, Any]]] | None = None, seed: int = EVAL_SEED,
                  shifts: str | Sequence[Any] = (), run: int = 0, n_boot: int = N_BOOT, ci_level: float = CI_LEVEL,
                  chunk: int = 1024) -> dict[str, Any]:
  """``evaluate`` for R runs (params with a leading R axis, e.g. the seeds of a workdir): the model curves are
  run ``run``'s, and with R > 1 every entry adds "model_seeds": {"risk": [R, P], "mean": [P], "se": [P]}."""
  specs = _as_specs(shifts)
  if not isinstance(n_prompts, (int, np.integer)) or n_prompts < 2:
    raise ValueError(f"n_prompts={n_prompts!r}: must be an integer >= 2")
  index = layouts.get_layout(model.layout).target_index(task.n_points)
  for spec in specs:
    shifts_lib.check_task(spec, task.d, index)
  check_ci(n_boot, ci_level)
  n_runs = jax.tree.leaves(run_params)[0].shape[0]
  if not 0 <= run < n_runs:
    raise ValueError(f"run={run}: the parameters hold runs 0..{n_runs - 1}")
  baselines = default_baselines(task) if baselines is None else baselines
  sets = shifted_prompt_sets(task, specs, index, n_prompts, seed)
  model_err = model_sq_errors(model, run_params, sets.prompts, chunk)  # [K, R, B, P]
  runs = np.stack([_per_shift(model_err[:, r], sets, len(specs), index) for r in range(n_runs)])  # [R, S+1, B, P]
  curves = np.stack([runs[run]] + [_per_shift(baseline_sq_errors(name, hp, task, sets, index), sets, len(specs),
                                              index) for name, hp in baselines.values()])  # [C, S+1, B, P]
  risk = curves.mean(axis=2)  # [C, S+1, P]
  ci = bootstrap_ci(np.moveaxis(curves, 2, 0), n_boot, ci_level)  # [2, C, S+1, P]
  run_risk = runs.mean(axis=2)  # [R, S+1, P]
  labels = list(baselines)

  def entry(s: int) -> dict[str, Any]:
    e = {"model": risk[0, s], "model_ci": ci[:, 0, s],
         "baselines": {label: risk[c + 1, s] for c, label in enumerate(labels)},
         "baselines_ci": {label: ci[:, c + 1, s] for c, label in enumerate(labels)}}
    if n_runs > 1:
      e["model_seeds"] = {"risk": run_risk[:, s], "mean": run_risk[:, s].mean(0),
                    "se": run_risk[:, s].std(0, ddof=1) / math.sqrt(n_runs)}
    return e

  report = {"n_context": index.tolist(), **entry(0), "n_prompts": int(n_prompts),
            "ci": {"level": ci_level, "resamples": n_boot,
                   "method": "percentile bootstrap over prompts, the same resamples for every curve and shift"},
            "baseline_hparams": {label: [name, hp] for label, (name, hp) in baselines.items()},
            "shifts": {}}
  for s, spec in enumerate(specs):
    shift = shifts_lib.get_shift(spec.name)
    report["shifts"][str(spec)] = {"name": spec.name, "param": spec.param, "per_query": shift.per_query,
                                   "formula": shift.formula, **entry(s + 1)}
  return _jsonable(report)


def evaluate(model: ICLModel, params: Any, task: tasks.TaskConfig, n_prompts: int = 1024,
             baselines: dict[str, tuple[str, dict[str, Any]]] | None = None, seed: int = EVAL_SEED,
             shifts: str | Sequence[Any] = (), n_boot: int = N_BOOT, ci_level: float = CI_LEVEL) -> dict[str, Any]:
  """Excess risk vs n for the model and each baseline on the same prompts, in distribution and under ``shifts``.

  Returns {"n_context": [P], "model": [P], "model_ci": [2, P], "baselines": {label: [P]}, "baselines_ci":
  {label: [2, P]}, "n_prompts": B, "ci": {...}, "baseline_hparams": {...}, "shifts": {str(spec): {"model", "model_ci",
  "baselines", "baselines_ci", "name", "param", "per_query", "formula"}}}; n_context[j] is the number of examples
  before prediction j, CIs are (lower, upper) percentile-bootstrap intervals (``bootstrap_ci``). A query shift's
  entries at points where it is undefined are None. ``shifts``: a string for ``shifts.parse`` or specs.
  """
  stacked = jax.tree.map(lambda a: jnp.asarray(a)[None], params)
  return evaluate_runs(model, stacked, task, n_prompts, baselines, seed, shifts, 0, n_boot, ci_level)


def _entries(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
  return [("in distribution", report)] + list(report.get("shifts", {}).items())


def report_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
  """One row per (shift, curve, n): risk, CI and, for the model with several seeds, mean ± SE over seeds."""
  rows = []
  for shift, e in _entries(report):
    curves = [("model", e["model"], e.get("model_ci"))]
    curves += [(label, e["baselines"][label], (e.get("baselines_ci") or {}).get(label)) for label in e["baselines"]]
    for curve, risk, ci in curves:
      for p, n in enumerate(report["n_context"]):
        row = {"shift": shift, "curve": curve, "n_context": n, "risk": risk[p],
               "ci_low": ci[0][p] if ci else None, "ci_high": ci[1][p] if ci else None,
               "seeds_mean": None, "seeds_se": None}
        if curve == "model" and "model_seeds" in e:
          row.update(seeds_mean=e["model_seeds"]["mean"][p], seeds_se=e["model_seeds"]["se"][p])
        rows.append(row)
  return rows


def write_csv(report: dict[str, Any], path: str) -> str:
  """``report_rows`` as CSV (empty cells for undefined values), written atomically."""
  buf = io.StringIO()
  rows = report_rows(report)
  writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
  writer.writeheader()
  writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)

  def write(tmp):
    with open(tmp, "w", newline="") as f:
      f.write(buf.getvalue())

  return files.atomic_write(path, write)


def _band(ax, n, lo, hi, color, alpha):
  lo, hi = (np.asarray([np.nan if v is None else v for v in a], float) for a in (lo, hi))
  ax.fill_between(n, lo, hi, color=color, alpha=alpha, lw=0)


def plot_report(report: dict[str, Any], path: str, title: str = "") -> str:
  """Excess risk vs number of in-context examples (log y, plain tick labels): one panel per shift (in distribution
  first), the model bold with its bootstrap CI band (and its mean ± SE band over seeds when there are several),
  baselines dashed with lighter bands. A curve below 1e-3 of a panel's largest value leaves its axis. Writes
  ``path`` as PNG and, with the same stem, PDF (``jaxicl.plotting.save``); returns the PNG path."""
  import matplotlib
  from jaxicl import plotting
  entries = _entries(report)
  ncols = min(3, len(entries))
  nrows = -(-len(entries) // ncols)
  fig = plotting.figure(4.6 * ncols, 3.5 * nrows + 0.9)
  axes = np.asarray(fig.subplots(nrows, ncols, squeeze=False))
  n = np.asarray(report["n_context"])
  colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
  as_float = lambda a: np.asarray([np.nan if v is None else v for v in a], float)  # noqa: E731
  for ax, (name, e) in zip(axes.flat, entries):
    marker = "o" if len(n) <= 2 else None
    values = []
    for c, (label, risk) in enumerate(e["baselines"].items()):
      color = colors[c % len(colors)]
      ax.plot(n, as_float(risk), "--", color=color, marker=marker, lw=1.2, label=label)
      if e.get("baselines_ci"):
        _band(ax, n, *e["baselines_ci"][label], color, 0.12)
      values.append(as_float(risk))
    if "model_seeds" in e:
      k = len(e["model_seeds"]["risk"])
      mean, se = as_float(e["model_seeds"]["mean"]), as_float(e["model_seeds"]["se"])
      ax.plot(n, mean, ":", color="0.4", lw=1.5, marker=marker, label=f"model, mean ± SE over {k} seeds")
      ax.fill_between(n, mean - se, mean + se, color="0.5", alpha=0.25, lw=0)
    ax.plot(n, as_float(e["model"]), "k-o", ms=3, lw=2, label="model")
    if e.get("model_ci"):
      _band(ax, n, *e["model_ci"], "k", 0.25)
    values.append(as_float(e["model"]))
    finite = np.concatenate(values)
    finite = finite[np.isfinite(finite) & (finite > 0)]
    plotting.log_axis(ax, "y")
    if finite.size:  # the model's band and the bulk of every baseline in view; a diverging baseline leaves the top
      model_hi = as_float(e["model_ci"][1]) if e.get("model_ci") else values[-1]
      medians = [np.median(v[np.isfinite(v)]) for v in values if np.isfinite(v).any()]
      top = max(np.nanmax(np.where(np.isfinite(model_hi), model_hi, np.nan)), max(medians))
      ax.set_ylim(max(finite.min(), 1e-3 * top) / 1.5, top * 2)
    formula = e.get("formula")
    ax.set_title(name + (f"\n{formula}" if formula else ""), fontsize=9)
    ax.set_xlabel("in-context examples n", fontsize=8)
    ax.set_ylabel("excess risk", fontsize=8)
    ax.tick_params(which="both", labelsize=7)
    ax.grid(alpha=0.3, which="major")
  for ax in list(axes.flat)[len(entries):]:
    ax.axis("off")
  handles, labels = axes.flat[0].get_legend_handles_labels()
  ci = report.get("ci", {})
  band = f"bands: {100 * ci['level']:g}% bootstrap CI over {report['n_prompts']} prompts" if ci else ""
  fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8, frameon=False)
  fig.suptitle("\n".join(t for t in (title, band) if t), fontsize=10)
  legend_rows = -(-len(labels) // min(4, len(labels)))
  return plotting.save(fig, path, dpi=120, rect=(0, (0.25 * legend_rows + 0.15) / fig.get_figheight(), 1, 1))


def evaluate_workdir(workdir: str, n_prompts: int | None = None, run: int = 0, out_dir: str | None = None,
                     shifts: str | Sequence[Any] = (), n_boot: int = N_BOOT, ci_level: float = CI_LEVEL) -> dict:
  """``jaxicl eval``: evaluates run ``run`` of a training workdir, in distribution and under ``shifts``, against
  ``suite_baselines``; the seeds that share run ``run``'s learning rate give mean ± SE. Writes eval.json, eval.csv
  and eval.png + eval.pdf (atomically) in ``out_dir`` (default: the workdir) while holding its ``.lock``
  (``train.workdir_lock``): a second eval there, or a training in that workdir, is refused with ``ValueError``."""
  from jaxicl import plotting, train
  specs = _as_specs(shifts)
  check_ci(n_boot, ci_level)
  if n_prompts is not None and (not isinstance(n_prompts, (int, np.integer)) or n_prompts < 2):
    raise ValueError(f"n_prompts={n_prompts!r}: must be an integer >= 2")
  out_dir = out_dir or workdir
  files.check_files(out_dir, ("eval.json", "eval.csv") + tuple(f"eval.{fmt}" for fmt in plotting.FORMATS))
  result = train.load_run(workdir)
  cfg = result.config
  if not 0 <= run < len(cfg.runs):
    raise ValueError(f"run={run}: the workdir has runs 0..{len(cfg.runs) - 1}")
  task = configs.variant_tasks(cfg)[cfg.run_variants[run]]  # the run's own (unpadded) task
  model = build_model(cfg.model, task)
  seed, lr = cfg.runs[run]
  variant = cfg.run_variants[run]
  same_lr = [r for r, (_, lr_r) in enumerate(cfg.runs) if lr_r == lr and cfg.run_variants[r] == variant]
  run_params = jax.tree.map(lambda a: a[np.asarray(same_lr)], result.state.params)
  index = layouts.get_layout(model.layout).target_index(task.n_points)
  for spec in specs:
    shifts_lib.check_task(spec, task.d, index)
  os.makedirs(out_dir, exist_ok=True)
  # one writer per folder: a second eval, or a training in the workdir written into, is refused (the error names
  # `out` even where it defaults to the workdir: another --out is the way out)
  with train.workdir_lock(out_dir, "writing an evaluation", "out"):
    baselines = suite_baselines(task, index)
    report = evaluate_runs(model, run_params, task, n_prompts or cfg.train.eval_prompts, baselines,
                           shifts=specs, run=same_lr.index(run), n_boot=n_boot, ci_level=ci_level)
    report.update(run=run, seed=seed, lr=lr, step=int(np.asarray(result.state.step)[run]),
                  seeds=[cfg.runs[r][0] for r in same_lr])
    report["table"] = os.path.join(out_dir, "eval.json")
    report["csv"] = write_csv(report, os.path.join(out_dir, "eval.csv"))
    title = f"{cfg.model.name}, d={task.d}, {task.family} (seed {seed}, step {report['step']})"
    report["plot"] = plot_report(report, os.path.join(out_dir, "eval.png"), title)

    def write(tmp):
      with open(tmp, "w") as f:
        json.dump(report, f, indent=1)

    files.atomic_write(report["table"], write)
    return report
