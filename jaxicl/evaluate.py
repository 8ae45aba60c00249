"""Evaluation: excess risk vs number of in-context examples, for a trained model and classical baselines
on the same held-out prompts.

Shape legend: B prompts, N points, P model predictions per prompt.
Excess risk at n = E(ŷ_n − wᵀx_n)², the prediction for point n from the n points before it.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxicl import configs, estimators, layouts, tasks
from jaxicl.models import ICLModel, build_model

EVAL_SEED = 1_000_003  # held-out prompts: a key no training step uses (training keys are fold_in(seed, step))


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


@functools.lru_cache(maxsize=32)
def _runs_sq_err(model: ICLModel):
  """Compiled once per model: summed squared errors [R, P] of every run (its own head mask) on a prompt chunk,
  counting only the first ``valid`` prompts (the chunk is zero-padded to a fixed size)."""

  @jax.jit
  def sq_err(run_params, masks, xs, ys, targets, valid):
    index = layouts.get_layout(model.layout).target_index(xs.shape[1])
    keep = (jnp.arange(xs.shape[0]) < valid).astype(jnp.float32)[:, None]

    def one(p, m):
      preds = model.apply(p, xs, ys, head_mask=m)
      return jnp.sum(keep * jnp.square(preds - targets[:, index]), axis=0)

    return jax.vmap(one)(run_params, masks)

  return sq_err


def run_risks(model: ICLModel, run_params: Any, prompts: tasks.Prompt, head_masks: np.ndarray | None = None,
              chunk: int = 1024) -> np.ndarray:
  """Excess risk at each prediction point of every run [R, P]; params (and optional masks [R, L, H]) carry a
  leading run axis R. One compiled program for all runs, over fixed-size prompt chunks (the last is padded)."""
  n_runs = jax.tree.leaves(run_params)[0].shape[0]
  if head_masks is None:
    head_masks = np.ones((n_runs, len(model.n_heads), max(model.n_heads)), np.float32)
  n_prompts = prompts.xs.shape[0]
  chunk = min(chunk, n_prompts)
  sq_err = _runs_sq_err(model)
  total = 0.0
  for start in range(0, n_prompts, chunk):
    parts = [np.asarray(a[start:start + chunk]) for a in (prompts.xs, prompts.ys, prompts.targets)]
    valid = parts[0].shape[0]
    parts = [np.pad(a, [(0, chunk - valid)] + [(0, 0)] * (a.ndim - 1)) for a in parts]
    total = total + np.asarray(sq_err(run_params, jnp.asarray(head_masks, jnp.float32), *parts, valid), np.float64)
  return total / n_prompts


def model_risk(model: ICLModel, params: Any, prompts: tasks.Prompt, head_mask: jax.Array | None = None,
               chunk: int = 1024) -> np.ndarray:
  """Excess risk of one parameter set at each of its prediction points [P] (P = N for gpt2, 1 for one-layer models)."""
  stacked = jax.tree.map(lambda a: jnp.asarray(a)[None], params)
  masks = None if head_mask is None else np.asarray(head_mask, np.float32)[None]
  return run_risks(model, stacked, prompts, masks, chunk)[0]


def evaluate(model: ICLModel, params: Any, task: tasks.TaskConfig, n_prompts: int = 1024,
             baselines: dict[str, tuple[str, dict[str, Any]]] | None = None, seed: int = EVAL_SEED) -> dict[str, Any]:
  """Excess risk vs n for the model and each baseline on the same prompts.

  Returns {"n_context": [P], "model": [P], "baselines": {label: [P]}, "n_prompts": B}, where n_context[j]
  is the number of examples before prediction j.
  """
  prompts = eval_prompts(task, n_prompts, seed)
  index = layouts.get_layout(model.layout).target_index(task.n_points)
  report = {"n_context": index.tolist(), "model": model_risk(model, params, prompts).tolist(), "baselines": {},
            "n_prompts": n_prompts}
  for label, (name, hparams) in (baselines if baselines is not None else default_baselines(task)).items():
    preds = estimators.predict(name, prompts.xs, prompts.ys, task_cfg=task, **hparams)
    report["baselines"][label] = np.asarray(estimators.excess_risk(preds, prompts.targets))[index].tolist()
  return report


def plot_report(report: dict[str, Any], path: str, title: str = "") -> str:
  """Excess risk vs number of in-context examples (log y), model bold, baselines dashed. Writes a PNG."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  n = report["n_context"]
  for label, risk in report["baselines"].items():
    ax.plot(n, risk, "--", label=label)
  ax.plot(n, report["model"], "k-o", ms=3, lw=2, label="model")
  ax.set_yscale("log")
  ax.set_xlabel("in-context examples n")
  ax.set_ylabel("excess risk  E(ŷ − wᵀx)²")
  ax.set_title(title)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def evaluate_workdir(workdir: str, n_prompts: int | None = None, run: int = 0, out_dir: str | None = None) -> dict:
  """``jaxicl eval``: evaluates run ``run`` of a training workdir; writes eval.json and eval.png."""
  from jaxicl import train
  result = train.load_run(workdir)
  cfg = result.config
  if not 0 <= run < len(cfg.runs):
    raise ValueError(f"run={run}: the workdir has runs 0..{len(cfg.runs) - 1}")
  task = configs.variant_tasks(cfg)[cfg.run_variants[run]]  # the run's own (unpadded) task
  model = build_model(cfg.model, task)
  report = evaluate(model, train.run_params(result.state, run), task, n_prompts or cfg.train.eval_prompts)
  seed, lr = cfg.runs[run]
  report.update(run=run, seed=seed, lr=lr, step=int(np.asarray(result.state.step)[run]))
  out_dir = out_dir or workdir
  os.makedirs(out_dir, exist_ok=True)
  report["table"] = os.path.join(out_dir, "eval.json")
  report["plot"] = plot_report(report, os.path.join(out_dir, "eval.png"),
                               f"{cfg.model.name}, d={cfg.task.d}, {cfg.task.family} (seed {seed}, step {report['step']})")
  with open(report["table"], "w") as f:
    json.dump(report, f, indent=1)
  return report
