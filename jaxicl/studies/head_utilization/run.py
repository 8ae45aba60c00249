"""Study 2 — how trained transformers use their heads on in-context sparse linear regression.

Reconstruction of Chen, Zhao & Zou (arXiv 2408.04532) under the protocol of ``shared/studies.md``:
x ~ N(0, I_d), w s-sparse (uniform support, N(0, 1) entries), y = wᵀx + ε, ε ~ N(0, σ²); GPT-2-style
decoders (interleaved tokens, loss on every query position) with L layers × H heads and, for
comparison, models with one head per layer; every (σ, L, heads) model is trained for all seeds at once
(seeds vmapped in one program, ``TrainConfig.seeds``).

Shape legend: R runs (seeds), L layers, H heads, N points per prompt (n = 0..N-1 in-context examples
before prediction n), P = N predictions, G hyper-parameter grid points.

For every model the study measures (``jaxicl.interpret``, all pure functions of the trained params):
  * excess risk vs n on held-out prompts (risk = E(ŷ − wᵀx)²);
  * head importance I[l, k] = risk increase when head (l, k) is masked (per seed and averaged), and per
    layer the effective number of heads (Σ I⁺)² / Σ (I⁺)² and the top head's share;
  * pruning with no retraining: "paper" = all heads of layer 1 + the most important head of each later
    layer; "layer-1 cut" = the mirrored control (one head in layer 1, all heads later);
    "one per layer" = the top head of every layer;
  * per-layer linear probes (ridge read-out of the residual stream at the x-token positions, fitted on
    one prompt set, evaluated on the held-out set against wᵀx) for the full, pruned and single-head models;
  * baselines tuned per n on a separate tuning set and evaluated on the held-out set: PtO (η, T), GD (η, T),
    ridge (λ), Lasso (α), and OLS (minimum-norm least squares). GD / PtO step sizes are eligible at n only
    if η·λ_max(X̃ᵀX̃/n) <= 0.5 on every tuning prompt (a quarter of the divergence threshold 2): λ_max is heavy-tailed at
    small n, and a step size that is barely stable on the tuning prompts diverges on a few held-out ones.

Outputs in ``out``: ``risk_vs_n.png/.csv`` (figure 1), ``importance_<model>.png`` + ``importance.json``
(figure 2), ``probe_<σ>_L<L>.png`` + ``probe.csv`` (figure 3), ``pto_vs_baselines_<σ>.png`` +
``baselines.csv`` (figure 4), ``attention_<model>.png`` (attention maps of one prompt) and
``summary.json``; a summary table is printed at the end.

Presets (``--preset``; each docstring gives the command and expected times):
  * ``tiny``  — seconds, for the tests; numbers are meaningless.
  * ``quick`` — ≤ 10 minutes on a 2-core CPU; a shrunken study (see its docstring for what it shows).
  * ``full``  — the study: d = 20, s = 3, N = 40, σ ∈ {0, 0.1, 0.5}, L ∈ {2, 3, 4} × 8 heads and single-head
    models, 3 seeds; one GPU.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import itertools
import json
import os
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxicl import configs, estimators, evaluate, interpret, tasks, train
from jaxicl.models import ModelConfig


@dataclasses.dataclass(frozen=True)
class StudyConfig:
  """Everything one run of the study depends on (see the presets).

  Attributes:
    name: preset name.
    d, sparsity, n_points: input dimension, s, and N points per prompt.
    noise_stds: label-noise standard deviations σ (one study per σ).
    layers: model depths L trained (each with ``heads`` heads per layer and, if ``single_head``, 1).
    heads: heads per layer of the multi-head models.
    single_head: also train the one-head-per-layer model of every depth.
    width, mlp: decoder width E and whether blocks have an MLP.
    steps, batch_size, lr, warmup_steps, grad_clip, seeds, log_every: training (Adam, constant lr after warmup).
    dims_start, dims_every: optional curriculum on the active input dimensions (None: off).
    eval_prompts: held-out prompts for risks, importance, pruning and probe evaluation.
    probe_prompts: prompts the probes are fitted on (a different set).
    tune_prompts: prompts the baselines' hyper-parameters are tuned on (a third set).
    importance_batch: single-head masks vmapped at once (None: all).
    pto_lrs, gd_lrs: step sizes η tried for PtO / GD; pto_steps, gd_steps: numbers of steps T tried.
    ridge_lams, lasso_alphas: the ridge λ and Lasso α grids.
    probe_lam: relative ridge penalty of the probes.
    checkpoint: keep a training workdir under ``out/runs`` (resumable) instead of training in memory.
    ckpt_every: with ``checkpoint``, also save every this many steps (a multiple of ``log_every``; 0: at the end).
  """

  name: str
  d: int
  sparsity: int
  n_points: int
  noise_stds: tuple[float, ...]
  layers: tuple[int, ...]
  heads: int
  single_head: bool
  width: int
  mlp: bool
  steps: int
  batch_size: int
  lr: float
  warmup_steps: int
  grad_clip: float | None
  seeds: tuple[int, ...]
  log_every: int
  eval_prompts: int
  probe_prompts: int
  tune_prompts: int
  importance_batch: int | None
  pto_lrs: tuple[float, ...]
  pto_steps: tuple[int, ...]
  gd_lrs: tuple[float, ...]
  gd_steps: tuple[int, ...]
  ridge_lams: tuple[float, ...]
  lasso_alphas: tuple[float, ...]
  probe_lam: float = 1e-6
  dims_start: int | None = None
  dims_every: int = 1000
  checkpoint: bool = False
  ckpt_every: int = 0


_BASELINE_GRIDS = dict(
    pto_lrs=(0.0003, 0.001, 0.003, 0.01, 0.03),
    pto_steps=(1, 3, 10, 30, 100, 300, 1000, 3000),
    gd_lrs=(0.01, 0.03, 0.1, 0.3),
    gd_steps=(1, 3, 10, 30, 100, 300),
    ridge_lams=(1e-3, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0),
    lasso_alphas=(1e-3, 0.01, 0.03, 0.1, 0.3),
)


def tiny() -> StudyConfig:
  """Smoke test for the test suite: d=5, s=2, N=8, a 2-layer × 2-head and a 2-layer single-head model
  (width 16), 2 seeds, 20 steps; every figure and table is written but the numbers mean nothing.

  `jaxicl reproduce head-utilization --preset tiny --out /tmp/hu_tiny` — about 20-40 s on a 2-core CPU
  (almost all compilation), about the same on a GPU.
  """
  return StudyConfig(
      name="tiny", d=5, sparsity=2, n_points=8, noise_stds=(0.1,), layers=(2,), heads=2, single_head=True,
      width=16, mlp=True, steps=20, batch_size=16, lr=1e-3, warmup_steps=0, grad_clip=None, seeds=(0, 1),
      log_every=10, eval_prompts=32, probe_prompts=32, tune_prompts=32, importance_batch=None,
      pto_lrs=(0.0003, 0.003), pto_steps=(1, 5), gd_lrs=(0.01, 0.1), gd_steps=(1, 5), ridge_lams=(0.1, 1.0),
      lasso_alphas=(0.03,))


def quick() -> StudyConfig:
  """The CPU study, shrunk: d=6, s=2, N=16, σ=0.1; 2 layers × 4 heads (width 64, MLP) vs 2 layers × 1 head,
  2 seeds, 6000 Adam steps at lr 1e-3 (batch 64).

  `jaxicl reproduce head-utilization --preset quick --out runs/head_utilization_quick` — about 8-10 minutes on
  an otherwise idle 2-core CPU (2-3× longer on a loaded one), about a minute on a GPU.

  Why so small: on CPU these GPT-2 models sit on a loss plateau (ŷ ≈ 0, loss ≈ E y² = 2) for a long time.
  In our trials (lr 1e-3 unless noted, batch 64, width 64, 4 heads): d=10, N=20, 3 layers did not leave it
  within 4000 steps (also not at lr 2e-3/3e-3 or with a dims curriculum); d=6, N=16, 3 layers left it after
  ~1-1.5k steps for one seed of two (not at lr 2e-3/3e-3, nor with the flagged layout or without MLP);
  d=6, N=16, 2 layers left it after ~1k steps for both seeds, then reached a second plateau near loss 1.75
  by 4k steps. The quick models are therefore only partly trained (risk far above Lasso's): their importance
  maps show an early stage of head specialisation, not the converged picture of the full preset.
  Measured: 8.5 min wall (574 s CPU) on a 2-core CPU shared with other jobs. Result of that run: mean risk
  1.82 (2×4) and 1.96 (2×1; one seed never left the plateau) vs 0.44 for tuned Lasso; layer-1 heads carry
  nearly all importance (0.14-0.53 each vs 0.015-0.046 in layer 2); pruning layer 2 to its top head costs
  +0.08 risk, cutting layer 1 to one head +0.90.
  """
  return StudyConfig(
      name="quick", d=6, sparsity=2, n_points=16, noise_stds=(0.1,), layers=(2,), heads=4, single_head=True,
      width=64, mlp=True, steps=6000, batch_size=64, lr=1e-3, warmup_steps=100, grad_clip=None, seeds=(0, 1),
      log_every=500, eval_prompts=1024, probe_prompts=512, tune_prompts=512, importance_batch=None,
      **_BASELINE_GRIDS)


def full() -> StudyConfig:
  """The study: d=20, s=3, N=40, σ ∈ {0, 0.1, 0.5}; L ∈ {2, 3, 4} layers × 8 heads (width 256, MLP) and the
  single-head model of each depth; 3 seeds vmapped; 50k Adam steps (lr 3e-4, 2k warmup, batch 64).

  `jaxicl reproduce head-utilization --preset full --out runs/head_utilization` — not measured (no GPU was
  available when it was written); estimated 1.5-3 hours on one A100/H100 GPU (18 trainings of 50k steps, each
  checkpointed under out/runs, so an interrupted run resumes), days on CPU.
  """
  return StudyConfig(
      name="full", d=20, sparsity=3, n_points=40, noise_stds=(0.0, 0.1, 0.5), layers=(2, 3, 4), heads=8,
      single_head=True, width=256, mlp=True, steps=50_000, batch_size=64, lr=3e-4, warmup_steps=2000,
      grad_clip=1.0, seeds=(0, 1, 2), log_every=1000, eval_prompts=2048, probe_prompts=2048,
      tune_prompts=1024, importance_batch=4, checkpoint=True, ckpt_every=10_000, **_BASELINE_GRIDS)


PRESETS: dict[str, Callable[[], StudyConfig]] = {"tiny": tiny, "quick": quick, "full": full}

STABILITY_MARGIN = 0.5  # GD / PtO step sizes must satisfy η·λ_max(G) <= this on all tuning prompts (divergence: > 2)
EVAL_SEED = evaluate.EVAL_SEED  # held-out prompts; probe-fit and tuning sets use EVAL_SEED + 1, + 2


# ----------------------------------------------------------------------------------------------
# Configs


def task_config(sc: StudyConfig, sigma: float) -> tasks.TaskConfig:
  return tasks.TaskConfig(family="sparse", d=sc.d, sparsity=sc.sparsity, w_var=1.0, n_points=sc.n_points,
                          noise_var=float(sigma) ** 2)


def run_config(sc: StudyConfig, sigma: float, n_layers: int, heads: int) -> configs.Config:
  """The training config of one (σ, L, H) model; all seeds train together."""
  curriculum = (configs.CurriculumConfig(dims_start=sc.dims_start, every=sc.dims_every) if sc.dims_start
                else configs.CurriculumConfig())
  return configs.Config(
      task=task_config(sc, sigma),
      model=ModelConfig(name="gpt2", width=sc.width, n_layers=n_layers, heads=(heads,), mlp=sc.mlp,
                        max_points=sc.n_points),
      optim=configs.OptimConfig(lr=sc.lr, warmup_steps=sc.warmup_steps, grad_clip=sc.grad_clip),
      curriculum=curriculum,
      train=configs.TrainConfig(steps=sc.steps, batch_size=sc.batch_size, seeds=sc.seeds, log_every=sc.log_every,
                                ckpt_every=sc.ckpt_every if sc.checkpoint else 0))


def model_tag(sigma: float, n_layers: int, heads: int) -> str:
  return f"sigma{sigma:g}_L{n_layers}_H{heads}"


class PromptSets(NamedTuple):
  eval: tasks.Prompt  # held-out: risks, importance, pruning, probe evaluation, baseline evaluation
  probe: tasks.Prompt  # probe fitting
  tune: tasks.Prompt  # baseline hyper-parameter tuning


def prompt_sets(sc: StudyConfig, task: tasks.TaskConfig) -> PromptSets:
  return PromptSets(evaluate.eval_prompts(task, sc.eval_prompts, EVAL_SEED),
                    evaluate.eval_prompts(task, sc.probe_prompts, EVAL_SEED + 1),
                    evaluate.eval_prompts(task, sc.tune_prompts, EVAL_SEED + 2))


# ----------------------------------------------------------------------------------------------
# Baselines


def gd_path_risks(prompts: tasks.Prompt, lrs, checkpoints, preprocess: bool) -> np.ndarray:
  """Excess risk [len(lrs), len(checkpoints), N] of GD (or PtO with ``preprocess``) after each of the
  increasing step counts ``checkpoints``, every prefix n at once.

  One GD trajectory per (η, prompt, prefix) is run to max(checkpoints) and read at each checkpoint, so
  the cost is that of the largest T only; the iterates are exactly ``estimators.gd_weights`` /
  ``estimators.pto_weights`` (w ← w − η(Gw − b), G = X̃ᵀX̃/n, b = X̃ᵀy/n, X̃ = X or diag(r̂)X).
  """
  checkpoints = tuple(int(c) for c in checkpoints)
  if list(checkpoints) != sorted(checkpoints) or checkpoints[0] < 0:
    raise ValueError(f"checkpoints={checkpoints}: must be increasing and >= 0")
  risks = _gd_path_risks(prompts.xs, prompts.ys, prompts.targets, jnp.asarray(lrs, jnp.float32), checkpoints,
                         bool(preprocess))
  return np.asarray(risks, np.float64)


@functools.partial(jax.jit, static_argnames=("checkpoints", "preprocess"))
def _gd_path_risks(xs_all, ys_all, targets, lrs, checkpoints: tuple[int, ...], preprocess: bool) -> jax.Array:
  """[B, N, d], [B, N], [B, N], [n_lr] -> [n_lr, C, N] (see ``gd_path_risks``)."""
  masks = estimators.prefix_masks(xs_all.shape[1])

  def one_query(xs, ys, mask, x_q, lr):
    X, y = xs * mask[:, None], ys * mask
    n = jnp.maximum(jnp.sum(mask), 1.0)
    if preprocess:
      r_hat = X.T @ y / n
      X, x_q = X * r_hat, x_q * r_hat
    gram, b = X.T @ X / n, X.T @ y / n
    w, done, preds = jnp.zeros(X.shape[1], X.dtype), 0, []
    for c in checkpoints:
      w = jax.lax.fori_loop(0, c - done, lambda _, v: v - lr * (gram @ v - b), w)
      done = c
      preds.append(w @ x_q)
    return jnp.stack(preds)  # [C]

  def risks_for(lr):
    preds = jax.vmap(lambda xs, ys: jax.vmap(lambda m, xq: one_query(xs, ys, m, xq, lr))(masks, xs))(xs_all, ys_all)
    return jnp.mean(jnp.square(preds - targets[:, :, None]), axis=0).T  # [C, N]

  return jax.vmap(risks_for)(lrs)


def gram_lambda_max(prompts: tasks.Prompt, preprocess: bool) -> np.ndarray:
  """λ_max of the GD Gram matrix G = X̃ᵀX̃/n of every prompt and prefix n: [B, N] (X̃ = X, or diag(r̂)X for PtO).

  GD with step η on that prefix diverges iff η·λ_max > 2.
  """
  return np.asarray(_gram_lambda_max(prompts.xs, prompts.ys, bool(preprocess)), np.float64)


@functools.partial(jax.jit, static_argnames="preprocess")
def _gram_lambda_max(xs_all, ys_all, preprocess: bool) -> jax.Array:
  masks = estimators.prefix_masks(xs_all.shape[1])

  def one(xs, ys, mask):
    X, y = xs * mask[:, None], ys * mask
    n = jnp.maximum(jnp.sum(mask), 1.0)
    if preprocess:
      X = X * (X.T @ y / n)
    return jnp.linalg.eigvalsh(X.T @ X / n)[-1]

  return jax.vmap(lambda xs, ys: jax.vmap(lambda m: one(xs, ys, m))(masks))(xs_all, ys_all)


def grid_risks(name: str, grid: dict[str, tuple], prompts: tasks.Prompt) -> tuple[np.ndarray, list[dict]]:
  """Excess risk [G, N] of estimator ``name`` at every point of ``grid`` (vmapped over the grid), all n at once."""
  keys = list(grid)
  points = [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]
  arrays = {k: jnp.asarray([p[k] for p in points], jnp.float32) for k in keys}
  return np.asarray(_grid_risks(name, arrays, prompts.xs, prompts.ys, prompts.targets), np.float64), points


@functools.partial(jax.jit, static_argnames="name")
def _grid_risks(name: str, arrays: dict[str, jax.Array], xs, ys, targets) -> jax.Array:
  fn = estimators.ESTIMATORS[name]

  def risk(hp):
    return estimators.excess_risk(jax.vmap(lambda x, y: fn(x, y, **hp))(xs, ys), targets)

  return jax.vmap(risk)(arrays)


def _tuned(tune_risks: np.ndarray, test_risks: np.ndarray, points: list[dict]) -> dict[str, Any]:
  """Per-n choice on the tuning set ([G, N]; non-finite never chosen unless all are), read on the test set."""
  ranked = np.where(np.isfinite(tune_risks), tune_risks, np.inf)
  best = np.argmin(ranked, axis=0)  # [N]
  return {"risk": test_risks[best, np.arange(test_risks.shape[1])].tolist(), "hparams": [points[g] for g in best]}


def baseline_curves(sc: StudyConfig, sets: PromptSets) -> dict[str, dict[str, Any]]:
  """label -> {"risk": [N] on the held-out set, "hparams": per-n choice (tuned on the tuning set)}."""
  out: dict[str, dict[str, Any]] = {}
  for label, preprocess, lrs, steps in (("PtO", True, sc.pto_lrs, sc.pto_steps), ("GD", False, sc.gd_lrs, sc.gd_steps)):
    # a step size is eligible at n only if η·λ_max(G) <= STABILITY_MARGIN on every tuning prompt (a factor
    # 2/margin below divergence), else rare held-out prompts diverge and the Monte Carlo risk explodes
    lam_max = gram_lambda_max(sets.tune, preprocess).max(axis=0)  # [N]
    stable = np.asarray(lrs)[:, None] * lam_max[None, :] <= STABILITY_MARGIN  # [n_lr, N]
    tune_r = gd_path_risks(sets.tune, lrs, steps, preprocess)
    tune_r = np.where(stable[:, None, :], tune_r, np.inf).reshape(-1, sc.n_points)
    test_r = gd_path_risks(sets.eval, lrs, steps, preprocess).reshape(-1, sc.n_points)
    points = [{"lr": float(lr), "steps": int(t)} for lr in lrs for t in steps]
    out[label] = _tuned(tune_r, test_r, points)
  for label, name, grid in (("ridge", "ridge", {"lam": sc.ridge_lams}), ("Lasso", "lasso", {"alpha": sc.lasso_alphas})):
    tune_r, points = grid_risks(name, grid, sets.tune)
    test_r, _ = grid_risks(name, grid, sets.eval)
    out[label] = _tuned(tune_r, test_r, [{k: float(v) for k, v in p.items()} for p in points])
  ols = jax.jit(estimators.batched(estimators.ols))(sets.eval.xs, sets.eval.ys)
  out["OLS"] = {"risk": np.asarray(estimators.excess_risk(ols, sets.eval.targets), np.float64).tolist(), "hparams": None}
  return out


# ----------------------------------------------------------------------------------------------
# Models


def analyze_model(result: train.TrainResult, sets: PromptSets, sc: StudyConfig) -> dict[str, Any]:
  """Risk curves, head importance, pruning and probes of every seed of one trained (σ, L, H) model."""
  model, params = result.model, result.state.params
  n_heads = model.n_heads
  n_runs = len(result.config.runs)
  record: dict[str, Any] = {"n_heads": list(n_heads), "risk": interpret.masked_risk_runs(model, params, sets.eval, None)}
  masks = {"full": None}
  if max(n_heads) > 1:
    imp = interpret.head_importance_runs(model, params, sets.eval, batch_size=sc.importance_batch)  # [R, L, H]
    L = len(n_heads)
    policies = {"pruned": dict(keep_all=(0,), top_k=1), "layer1_cut": dict(keep_all=tuple(range(1, L)), top_k=1),
                "one_per_layer": dict(keep_all=(), top_k=1)}
    for label, policy in policies.items():
      masks[label] = interpret.pruning_masks_runs(imp, n_heads, **policy)
      record[f"{label}_risk"] = interpret.masked_risk_runs(model, params, sets.eval, masks[label])
    record["importance"] = imp
    record["masks"] = {k: v for k, v in masks.items() if v is not None}
    record["usage"] = [interpret.head_usage(i, n_heads) for i in imp]
    record["usage_mean"] = interpret.head_usage(np.nanmean(imp, axis=0), n_heads)
  probes = {}
  for label in ("full", "pruned"):
    if label not in masks:
      continue
    per_run = []
    for r in range(n_runs):
      mask = None if masks[label] is None else jnp.asarray(masks[label][r])
      per_run.append(interpret.probe_risks(model, train.run_params(result.state, r), sets.probe, sets.eval, mask,
                                           lam=sc.probe_lam))
    probes[label] = np.stack(per_run)  # [R, L+1, P]
  record["probe"] = probes
  return record


def train_model(sc: StudyConfig, sigma: float, n_layers: int, heads: int, out: str) -> train.TrainResult:
  cfg = run_config(sc, sigma, n_layers, heads)
  workdir = os.path.join(out, "runs", model_tag(sigma, n_layers, heads)) if sc.checkpoint else None
  return train.train(cfg, workdir)


# ----------------------------------------------------------------------------------------------
# Figures and tables


def _plt():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def _mean_band(ax, x, curves: np.ndarray, label: str, style: str = "-", **kw):
  """Mean over runs (rows) with a min-max band."""
  curves = np.asarray(curves, np.float64)
  line, = ax.plot(x, curves.mean(0), style, label=label, **kw)
  if curves.shape[0] > 1:
    ax.fill_between(x, curves.min(0), curves.max(0), color=line.get_color(), alpha=0.15)


def plot_risk_vs_n(sc: StudyConfig, records: dict, baselines: dict, path: str) -> str:
  """Figure 1: excess risk vs n for every model (mean ± range over seeds), pruned models dashed."""
  plt = _plt()
  fig, axes = plt.subplots(1, len(sc.noise_stds), figsize=(5.5 * len(sc.noise_stds), 4), squeeze=False)
  n = np.arange(sc.n_points)
  for ax, sigma in zip(axes[0], sc.noise_stds):
    for (s, L, H), rec in records.items():
      if s != sigma:
        continue
      _mean_band(ax, n, rec["risk"], f"{L} layers × {H} head{'s' if H > 1 else ''}")
      if "pruned_risk" in rec:
        _mean_band(ax, n, rec["pruned_risk"], f"{L}×{H} pruned (all L1, 1 later)", "--")
    for label in ("OLS", "Lasso"):
      ax.plot(n, baselines[sigma][label]["risk"], ":", color="gray" if label == "OLS" else "k", label=label)
    _risk_axes(ax, sc, sigma)
  return _save(fig, path)


def plot_importance_panels(imp: np.ndarray, seeds: tuple[int, ...], path: str, title: str) -> str:
  """Figure 2: heatmaps (layer × head) for each seed and their mean, one shared colour scale."""
  plt = _plt()
  panels = [(f"seed {s}", imp[r]) for r, s in enumerate(seeds)] + [("mean", np.nanmean(imp, axis=0))]
  L, H = imp.shape[1:]
  fig, axes = plt.subplots(1, len(panels), figsize=(1.6 + 0.55 * H * len(panels), 1.2 + 0.5 * L), squeeze=False)
  vmax = float(np.nanmax(imp)) if np.isfinite(np.nanmax(imp)) else 1.0
  vmin = min(0.0, float(np.nanmin(imp)))
  for ax, (label, m) in zip(axes[0], panels):
    im = ax.imshow(np.ma.masked_invalid(m), cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(H), [str(k + 1) for k in range(H)], fontsize=7)
    ax.set_yticks(range(L), [str(l + 1) for l in range(L)], fontsize=7)
    ax.set_xlabel("head", fontsize=8)
    ax.set_title(label, fontsize=8)
  axes[0, 0].set_ylabel("layer", fontsize=8)
  fig.colorbar(im, ax=list(axes[0]), label="risk increase when masked", shrink=0.9)
  fig.suptitle(title, fontsize=9, y=1.04)
  fig.savefig(path, dpi=120, bbox_inches="tight")
  plt.close(fig)
  return path


def plot_probes(records: dict, sigma: float, n_layers: int, heads: int, path: str) -> str:
  """Figure 3: probe risk (mean over positions) vs layer for the full, pruned and single-head models."""
  plt = _plt()
  fig, ax = plt.subplots(figsize=(5, 3.8))
  layers = np.arange(n_layers + 1)
  multi, single = records.get((sigma, n_layers, heads)), records.get((sigma, n_layers, 1))
  curves = []
  if multi is not None:
    curves += [(f"{heads} heads, full", multi["probe"]["full"], "-o"), (f"{heads} heads, pruned", multi["probe"]["pruned"], "--s")]
  if single is not None:
    curves.append(("1 head / layer", single["probe"]["full"], "-^"))
  for label, probe, style in curves:
    per_layer = probe.mean(-1)  # [R, L+1]
    ax.errorbar(layers, per_layer.mean(0), yerr=per_layer.std(0), fmt=style, capsize=3, label=label)
  ax.set_yscale("log")
  ax.set_xticks(layers, ["emb"] + [str(l) for l in layers[1:]])
  ax.set_xlabel("layer")
  ax.set_ylabel("probe excess risk (mean over n)")
  ax.set_title(f"linear probes, σ = {sigma:g}, {n_layers} layers", fontsize=9)
  ax.legend(fontsize=7)
  return _save(fig, path)


def plot_baselines(sc: StudyConfig, sigma: float, baselines: dict, records: dict, path: str) -> str:
  """Figure 4: PtO vs tuned GD / ridge / Lasso / OLS and the trained transformers, excess risk vs n."""
  plt = _plt()
  fig, ax = plt.subplots(figsize=(6, 4))
  n = np.arange(sc.n_points)
  styles = {"PtO": "-", "GD": "-", "ridge": "-", "Lasso": "-", "OLS": ":"}
  for label, style in styles.items():
    ax.plot(n, baselines[label]["risk"], style, label=label + (" (tuned per n)" if label != "OLS" else ""))
  for (s, L, H), rec in records.items():
    if s == sigma and H > 1:
      ax.plot(n, rec["risk"].mean(0), "k--", lw=1.5, label=f"transformer {L}×{H}")
  _risk_axes(ax, sc, sigma)
  return _save(fig, path)


def _risk_axes(ax, sc, sigma: float) -> None:
  """Log-scale excess risk vs n, with n = d marked."""
  ax.set_yscale("log")
  ax.axvline(sc.d, color="gray", lw=0.5)
  ax.set_xlabel("in-context examples n")
  ax.set_ylabel("excess risk")
  ax.set_title(f"σ = {sigma:g}, d={sc.d}, s={sc.sparsity}", fontsize=9)
  ax.legend(fontsize=7)


def _save(fig, path: str) -> str:
  import matplotlib.pyplot as plt
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def _write_csv(path: str, header: list[str], rows: list[list]) -> str:
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(header)
    writer.writerows(rows)
  return path


def _json_clean(tree):
  """NaN / inf floats -> None (strict JSON), recursively through dicts and lists."""
  if isinstance(tree, dict):
    return {k: _json_clean(v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return [_json_clean(v) for v in tree]
  if isinstance(tree, float) and not np.isfinite(tree):
    return None
  return tree


def _json_array(a) -> list:
  return _json_clean(np.asarray(a, np.float64).tolist())


def _finite_mean(a) -> float:
  return float(np.mean(np.asarray(a, np.float64)))


# ----------------------------------------------------------------------------------------------
# Main


def main(preset: str = "quick", out: str = "runs/head_utilization") -> dict[str, Any]:
  """Runs the study with preset ``tiny`` | ``quick`` | ``full``; writes figures, tables and summary.json in
  ``out`` and returns the summary dict."""
  if preset not in PRESETS:
    raise ValueError(f"preset={preset!r}: known presets {sorted(PRESETS)}")
  sc = PRESETS[preset]()
  os.makedirs(out, exist_ok=True)
  t_start = time.perf_counter()

  def log(msg: str):
    print(f"[head-utilization {time.perf_counter() - t_start:7.1f}s] {msg}", flush=True)

  log(f"preset {preset} on {jax.default_backend()}: d={sc.d}, s={sc.sparsity}, N={sc.n_points}, σ={sc.noise_stds}, "
      f"layers={sc.layers}, heads={sc.heads}, seeds={sc.seeds}, steps={sc.steps}")
  records: dict[tuple[float, int, int], dict[str, Any]] = {}
  baselines: dict[float, dict[str, Any]] = {}
  final_loss: dict[tuple, list[float]] = {}
  attention_files = []
  for sigma in sc.noise_stds:
    sets = prompt_sets(sc, task_config(sc, sigma))
    for n_layers in sc.layers:
      for heads in ((sc.heads, 1) if sc.single_head else (sc.heads,)):
        tag = model_tag(sigma, n_layers, heads)
        t0 = time.perf_counter()
        result = train_model(sc, sigma, n_layers, heads, out)
        final_loss[(sigma, n_layers, heads)] = result.history[-1]["loss"] if result.history else []
        log(f"trained {tag} ({len(sc.seeds)} seeds) in {time.perf_counter() - t0:.0f}s; final loss "
            f"{np.round(final_loss[(sigma, n_layers, heads)], 4).tolist()}")
        t0 = time.perf_counter()
        records[(sigma, n_layers, heads)] = analyze_model(result, sets, sc)
        log(f"analysed {tag} in {time.perf_counter() - t0:.0f}s")
        if heads > 1 and n_layers == max(sc.layers):
          maps = interpret.attention_maps(result.model, train.run_params(result.state, 0), sets.eval.xs[:1],
                                          sets.eval.ys[:1])
          path = os.path.join(out, f"attention_{tag}.png")
          attention_files.append(interpret.plot_attention(maps, path, title=f"attention, {tag}, seed {sc.seeds[0]}"))
    t0 = time.perf_counter()
    baselines[sigma] = baseline_curves(sc, sets)
    log(f"baselines for σ={sigma:g} in {time.perf_counter() - t0:.0f}s")

  files = write_outputs(sc, records, baselines, out)
  files += attention_files
  summary = summarize(sc, records, baselines, final_loss, files, time.perf_counter() - t_start)
  with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(_json_clean(summary), f, indent=1)
  print_summary(summary)
  return summary


def write_outputs(sc: StudyConfig, records: dict, baselines: dict, out: str) -> list[str]:
  """All figures and tables (except the attention maps and summary.json)."""
  files = [plot_risk_vs_n(sc, records, baselines, os.path.join(out, "risk_vs_n.png"))]
  rows = []
  for (sigma, L, H), rec in records.items():
    for label in ("risk", "pruned_risk", "layer1_cut_risk", "one_per_layer_risk"):
      if label in rec:
        curves = np.asarray(rec[label], np.float64)
        model = f"{L}x{H}" + ("" if label == "risk" else f" {label[:-5]}")
        rows += [[sigma, model, n, curves[:, n].mean(), curves[:, n].std()] for n in range(sc.n_points)]
  files.append(_write_csv(os.path.join(out, "risk_vs_n.csv"), ["sigma", "model", "n", "risk_mean", "risk_std"], rows))

  importance = {}
  for (sigma, L, H), rec in records.items():
    if "importance" in rec:
      tag = model_tag(sigma, L, H)
      files.append(plot_importance_panels(rec["importance"], sc.seeds, os.path.join(out, f"importance_{tag}.png"),
                                          f"head importance, {tag}"))
      importance[tag] = {"seeds": list(sc.seeds), "importance": _json_array(rec["importance"]),
                         "mean": _json_array(np.nanmean(rec["importance"], 0)),
                         "pruned_masks": rec["masks"]["pruned"].tolist(), "usage_mean": _json_clean(rec["usage_mean"]),
                         "usage_per_seed": _json_clean(rec["usage"]), "note": "null marks heads that do not exist"}
  with open(os.path.join(out, "importance.json"), "w") as f:
    json.dump(importance, f, indent=1)
  files.append(os.path.join(out, "importance.json"))

  rows = []
  for sigma in sc.noise_stds:
    for L in sc.layers:
      files.append(plot_probes(records, sigma, L, sc.heads, os.path.join(out, f"probe_sigma{sigma:g}_L{L}.png")))
      for H in (sc.heads, 1):
        rec = records.get((sigma, L, H))
        if rec is None:
          continue
        for label, probe in rec["probe"].items():
          for layer in range(L + 1):
            per_run = probe[:, layer].mean(-1)
            rows.append([sigma, f"{L}x{H}", label, layer, per_run.mean(), per_run.std(), probe[:, layer, -1].mean()])
  files.append(_write_csv(os.path.join(out, "probe.csv"),
                          ["sigma", "model", "variant", "layer", "risk_mean_over_n", "risk_std_seeds", "risk_at_last_n"],
                          rows))

  rows = []
  for sigma in sc.noise_stds:
    files.append(plot_baselines(sc, sigma, baselines[sigma], records,
                                os.path.join(out, f"pto_vs_baselines_sigma{sigma:g}.png")))
    for label, b in baselines[sigma].items():
      for n in range(sc.n_points):
        rows.append([sigma, label, n, b["risk"][n], json.dumps(b["hparams"][n]) if b["hparams"] else ""])
    for (s, L, H), rec in records.items():
      if s == sigma:
        rows += [[sigma, f"transformer {L}x{H}", n, float(rec["risk"][:, n].mean()), ""] for n in range(sc.n_points)]
  files.append(_write_csv(os.path.join(out, "baselines.csv"), ["sigma", "method", "n", "risk", "hparams"], rows))
  return files


def summarize(sc: StudyConfig, records: dict, baselines: dict, final_loss: dict, files: list[str],
              elapsed: float) -> dict[str, Any]:
  """The summary: per model risks (mean over n, at n = d/2, at n = N-1), pruning, head usage, probes.

  May hold NaN (a layer with no important head, a head that does not exist); summary.json writes them as null.
  """
  n_small, n_last = sc.d // 2, sc.n_points - 1
  models = {}
  for (sigma, L, H), rec in records.items():
    risk = np.asarray(rec["risk"], np.float64)
    entry = {"sigma": sigma, "layers": L, "heads": H, "final_train_loss": final_loss[(sigma, L, H)],
             "risk_mean_over_n": _finite_mean(risk), f"risk_at_n{n_small}": _finite_mean(risk[:, n_small]),
             f"risk_at_n{n_last}": _finite_mean(risk[:, n_last]),
             "probe_full_by_layer": rec["probe"]["full"].mean(-1).mean(0).tolist()}
    for label in ("pruned", "layer1_cut", "one_per_layer"):
      if f"{label}_risk" in rec:
        entry[f"{label}_risk_mean_over_n"] = _finite_mean(rec[f"{label}_risk"])
    if "importance" in rec:
      entry["effective_heads_by_layer"] = rec["usage_mean"]["effective_heads"]  # NaN: no head of the layer matters
      entry["top1_share_by_layer"] = rec["usage_mean"]["top1_share"]
      entry["importance_mean"] = np.nanmean(rec["importance"], 0).tolist()  # NaN: the head does not exist
      entry["probe_pruned_by_layer"] = rec["probe"]["pruned"].mean(-1).mean(0).tolist()
    models[model_tag(sigma, L, H)] = entry
  base = {f"sigma{sigma:g}": {label: {"risk_mean_over_n": _finite_mean(b["risk"]),
                                      f"risk_at_n{n_small}": float(b["risk"][n_small]),
                                      f"risk_at_n{n_last}": float(b["risk"][n_last])}
                              for label, b in baselines[sigma].items()} for sigma in sc.noise_stds}
  return {"preset": sc.name, "backend": jax.default_backend(), "elapsed_s": elapsed, "config": dataclasses.asdict(sc),
          "models": models, "baselines": base, "files": [os.path.basename(f) for f in files]}


def print_summary(summary: dict[str, Any]) -> None:
  """A short table: risk averaged over n for each model, its pruned variants and per-layer head usage."""
  print("\nStudy 2 summary (excess risk averaged over n = 0..N-1; eff. heads = (ΣI)²/ΣI² per layer)")
  print(f"{'model':<22}{'full':>9}{'pruned':>9}{'L1 cut':>9}{'1/layer':>9}  eff. heads by layer")
  for tag, m in summary["models"].items():
    cells = [m["risk_mean_over_n"]] + [m.get(f"{k}_risk_mean_over_n", float("nan"))
                                       for k in ("pruned", "layer1_cut", "one_per_layer")]
    cells = [float("nan") if c is None else c for c in cells]
    eff = " ".join("n/a" if e is None else f"{e:.2f}" for e in m.get("effective_heads_by_layer", []))
    print(f"{tag:<22}" + "".join(f"{c:9.4f}" for c in cells) + f"  {eff}")
  for sigma, base in summary["baselines"].items():
    print(f"baselines {sigma}: " + ", ".join(f"{k} {v['risk_mean_over_n']:.4f}" for k, v in base.items()))


if __name__ == "__main__":
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--preset", default="quick", choices=sorted(PRESETS))
  p.add_argument("--out", default="runs/head_utilization")
  args = p.parse_args()
  main(args.preset, args.out)
