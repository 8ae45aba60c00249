"""Study 2 — how trained transformers use their heads on in-context sparse linear regression.

Reconstruction of Chen, Zhao & Zou (arXiv 2408.04532) under the protocol of ``shared/studies.md``:
x ~ N(0, I_d), w s-sparse (uniform support, N(0, 1) entries), y = wᵀx + ε, ε ~ N(0, σ²); GPT-2-style
decoders (interleaved tokens, loss on every query position) with L layers × H heads and, for
comparison, models with one head per layer.

A preset is a base ``configs.Config`` (task / model / optim / curriculum / train: the vocabulary of
``jaxicl train``) plus ``StudySettings``: the study's grid (noise levels σ, depths L, heads per layer H, the
single-head models) and its analysis settings (prompt sets, baseline grids, probe penalty); no setting is
both. Each (L, H) of the grid is ONE ``jaxicl.train.train`` program in its workdir ``out/runs/L<L>_H<H>_<hash>``
(``model_config``): every σ is a per-run ``train.task_variants`` entry (``noise_var=σ²``) and every seed is
vmapped, so an interrupted reproduction resumes from the last checkpoint of each program; a finished program's
analysis is kept in ``out/records/`` (``read_record``), which alone resumes the study on another machine, and
each σ's tuned baselines in ``out/baselines/`` (``read_baselines``). The eval set, ``train.eval_prompts`` prompts,
is drawn per σ from the base task.

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
  * baselines tuned per n on a separate tuning set and evaluated on the held-out set: PtO (η, T), GD (η, T) and
    iterated PtO (η, T, rounds; this project's extension, ``estimators.iterated_pto``) with T on a log grid up
    to 1e5 plus T = ∞ (the min-norm least-squares limit), all from one eigendecomposition per prompt and prefix
    (``estimators.gd_path_risks``); ridge (λ), Lasso (α), OLS, and the Bayes-optimal posterior mean of the
    task's prior (``estimators.sparse_bayes``, exact enumeration of the C(d, s) supports) as the floor. Step
    sizes are eligible at n only if η·λ_max(X̃ᵀX̃/n) <= 0.5 on every tuning prompt (a quarter of the
    divergence threshold 2: λ_max is heavy-tailed at small n, and a barely stable step diverges on a few
    held-out prompts). The winner per n is reported, and a winner at a grid edge is warned about;
  * per seed, a verdict of the study's claim under the stated rule ``CLAIM_RULE``.

Outputs in ``out``: ``risk_vs_n.png/.csv`` (figure 1), ``importance_<model>.png`` + ``importance.json``
(figure 2), ``probe_<σ>_L<L>.png`` + ``probe.csv`` (figure 3), ``pto_vs_baselines_<σ>.png`` +
``baselines.csv`` (figure 4), ``attention_<model>.png`` (attention maps of one prompt); every figure also as
PDF (``jaxicl.plotting``); the machine-checkable ``summary.json`` (``summarize``: per model ``mean_risk``,
``effective_heads``, ``pruned_risk``, ``mirror_pruned_risk``, the claim per seed, its ``workdir``; per baseline
``mean_risk``, winners and grid edges; ``warnings``); a summary table is printed at the end.

Presets (``--preset``; each docstring gives the command and expected times), changed with ``--set``:
``section.field=value`` sets the base config (e.g. ``train.steps=100``, ``optim.lr=3e-4``), ``study.field=value``
a ``StudySettings`` field (e.g. ``study.noise_stds=0.1,0.5``, ``study.layers=2,3``, ``study.pto_steps=1,10,inf``).
The grid's own config fields (``task.noise_var``, ``model.n_layers``, ``model.heads``, ``train.task_variants``)
are set through ``study.*`` only.
``tiny`` (the tests), ``quick`` (minutes on a CPU), ``cpu`` (an hour on a CPU, resumable) and ``full`` (the
study, sized for a GPU): each preset's docstring below is the one place its sizes, command and expected time are
written (``jaxicl reproduce --list`` prints them).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import inspect
import io
import json
import math
import os
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxicl import configs, estimators, evaluate, interpret, plotting, report, tasks, train
from jaxicl.files import check_folders, claim_folder, read_json, write_json, write_text
from jaxicl.models import ModelConfig
from jaxicl.progress import JobProgress
from jaxicl.studies import check_applies, preset_registrar, split_overrides

INF = math.inf
_STEPS = (0, 1, 3, 10, 30, 100, 300, 1000, 3000, 10_000, 30_000, 100_000, INF)  # T; INF = the T → ∞ limit


@dataclasses.dataclass(frozen=True)
class StudySettings:
  """What study 2 adds to its base ``configs.Config``: the grid trained around it and the analysis.

  Attributes:
    noise_stds: label-noise standard deviations σ (each a ``train.task_variants`` entry noise_var = σ²).
    layers: model depths L (``model.n_layers``), each with ``heads`` heads per layer and, if ``single_head``, 1.
    heads: heads per layer of the multi-head models (``model.heads``).
    single_head: also train the one-head-per-layer model of every depth.
    probe_prompts: prompts the probes are fitted on (the held-out set has ``train.eval_prompts``).
    tune_prompts: prompts the baselines' hyper-parameters are tuned on (a third set).
    importance_batch: single-head masks vmapped at once (None: all).
    probe_lam: relative ridge penalty of the probes.
    pto_lrs, gd_lrs: step sizes η tried for PtO / GD; pto_steps, gd_steps: numbers of steps T tried (integers
      or inf, the T → ∞ limit); ipto_steps, ipto_rounds: the same for iterated PtO, over 1..ipto_rounds rounds.
    ridge_lams, lasso_alphas: the ridge λ and Lasso α grids.
  """

  noise_stds: tuple[float, ...]
  layers: tuple[int, ...]
  heads: int
  single_head: bool = False
  probe_prompts: int = 512
  tune_prompts: int = 512
  importance_batch: int | None = None
  probe_lam: float = 1e-6
  pto_lrs: tuple[float, ...] = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3)
  pto_steps: tuple[float, ...] = _STEPS
  gd_lrs: tuple[float, ...] = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
  gd_steps: tuple[float, ...] = _STEPS
  ipto_steps: tuple[float, ...] = (1, 10, 100, 1000, 10_000, 100_000, INF)
  ipto_rounds: int = 8
  ridge_lams: tuple[float, ...] = (1e-3, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
  lasso_alphas: tuple[float, ...] = (1e-4, 1e-3, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)

  def __post_init__(self):
    def need(ok: bool, field: str, why: str):
      if not ok:
        raise ValueError(f"study.{field}={getattr(self, field)!r}: {why}")

    def finite(x) -> bool:
      return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    need(len(self.noise_stds) >= 1 and all(finite(x) and x >= 0 for x in self.noise_stds), "noise_stds",
         "need finite values >= 0")
    need(len(set(self.noise_stds)) == len(self.noise_stds), "noise_stds", "values must be distinct")
    need(len(self.layers) >= 1 and all(x >= 1 for x in self.layers), "layers", "need depths >= 1")
    need(len(set(self.layers)) == len(self.layers), "layers", "values must be distinct")
    need(self.heads >= 1, "heads", "must be >= 1")
    for field in ("probe_prompts", "tune_prompts", "ipto_rounds"):
      need(getattr(self, field) >= 1, field, "must be >= 1")
    need(self.importance_batch is None or self.importance_batch >= 1, "importance_batch", "must be >= 1 (or none)")
    need(finite(self.probe_lam) and self.probe_lam > 0, "probe_lam", "must be a finite number > 0")
    for field in ("pto_lrs", "gd_lrs", "ridge_lams", "lasso_alphas"):
      values = getattr(self, field)
      need(len(values) >= 1 and all(finite(x) and x > 0 for x in values), field, "need finite values > 0")
    for field in ("pto_steps", "gd_steps", "ipto_steps"):
      values = getattr(self, field)
      need(len(values) >= 1 and all(t >= 0 and (math.isinf(t) or t == int(t)) for t in values), field,
           "need integers >= 0 (or inf)")

  def unused(self) -> dict[str, str]:
    """The settings that do nothing with the others as they are: {field: why}."""
    return {"single_head": "does not apply with study.heads=1 (those models have one head per layer already)"
            } if self.heads == 1 else {}

  @property
  def model_heads(self) -> tuple[int, ...]:
    """Heads per layer of the trained models: (H, 1) with ``single_head``, else (H,)."""
    return (self.heads, 1) if self.single_head and self.heads > 1 else (self.heads,)


class Preset(NamedTuple):
  """One preset: its name, docstring (command and expected time), base config and study settings.

  The base config's ``task.noise_var``, ``model.n_layers`` and ``model.heads`` stand for the grid's values (its
  family defaults); ``model_config`` sets them per (L, H) program and σ."""

  name: str
  doc: str
  config: configs.Config
  study: StudySettings


PRESETS: dict[str, Callable[[], Preset]] = {}
_preset = preset_registrar(PRESETS, Preset)  # @_preset: fn() -> (base config, settings)


def _sparse_gpt2(d: int, sparsity: int, n_points: int, width: int,
                 qk_init: str = "gpt2") -> tuple[tasks.TaskConfig, ModelConfig]:
  """The study's task (s-sparse w with N(0, 1) entries) and decoder family (MLP blocks, positions for N points,
  query / key init ``qk_init``); σ, L and H are set by the grid."""
  return (tasks.TaskConfig(family="sparse", d=d, sparsity=sparsity, w_var=1.0, n_points=n_points),
          ModelConfig(name="gpt2", width=width, mlp=True, max_points=n_points, qk_init=qk_init))


@_preset
def tiny():
  """Smoke test for the test suite: d=5, s=2, N=8, a 2-layer × 2-head and a 2-layer single-head model
  (width 16), 2 seeds, 20 steps; every figure and table is written but the numbers mean nothing.

  `jaxicl reproduce head-utilization --preset tiny --out /tmp/hu_tiny` — about 20-40 s on a 2-core CPU
  (almost all compilation), about the same on a GPU.
  """
  task, model = _sparse_gpt2(d=5, sparsity=2, n_points=8, width=16)
  return (configs.Config(task=task, model=model, optim=configs.OptimConfig(lr=1e-3),
                         train=configs.TrainConfig(steps=20, batch_size=16, seeds=(0, 1), log_every=10,
                                                   eval_prompts=32)),
          StudySettings(noise_stds=(0.1,), layers=(2,), heads=2, single_head=True, probe_prompts=32, tune_prompts=32,
                        pto_lrs=(0.0003, 0.003), pto_steps=(0, 1, 5, INF), gd_lrs=(0.01, 0.1), gd_steps=(1, 5, 1000),
                        ipto_steps=(5, INF), ipto_rounds=2, ridge_lams=(0.1, 1.0), lasso_alphas=(0.03,)))


@_preset
def quick():
  """The CPU study, shrunk to what a 2-core CPU trains to tuned ridge's risk in minutes: d=5, s=2, N=10, σ=0.5;
  4 layers × 4 heads (width 32, MLP), 3 seeds vmapped; 16000 Adam steps at lr 2e-3 (500 warmup, cosine decay,
  batch 64) with a curriculum on the active dims (2 → 5, one more every 1000 steps, the support drawn among the
  active dims).

  `jaxicl reproduce head-utilization --preset quick --out runs/head_utilization_quick` — 11 min 57 s measured on the
  idle 2-core CPU with the batch split over its 2 CPU devices (2026-11-27: training 656 s at 22-26 steps/s, model
  analysis 12 s, baselines 42 s; 12 min 48 s in a second run). Every seed ends below tuned ridge (mean excess risk
  0.863-0.870 against 0.876).

  Chosen by a schedule search (3 seeds, 2-core CPU, README "Study 2"): without the dims curriculum the same model
  stays on the plateau; with it, at σ = 0.1, 2 / 3 / 4 layers end at 0.87 / 0.71 / 0.68 against tuned ridge's 0.61
  (batch 32, 24000 steps, the preset until 2026-11-27), and batch 64 was the one lever left; at σ = 0.5 (a noise
  level of the study's `full` preset) the batch-32 schedule ends level with ridge (0.878 vs 0.876) and batch 64 ×
  16000 steps below it. Resumable (checkpoint every 2000 steps).
  """
  task, model = _sparse_gpt2(d=5, sparsity=2, n_points=10, width=32)
  return (configs.Config(task=task, model=model,
                         optim=configs.OptimConfig(lr=2e-3, warmup_steps=500, schedule="cosine"),
                         curriculum=configs.CurriculumConfig(dims_start=2, every=1000),
                         train=configs.TrainConfig(steps=16000, batch_size=64, seeds=(0, 1, 2), log_every=500,
                                                   ckpt_every=2000, eval_prompts=1024)),
          StudySettings(noise_stds=(0.5,), layers=(4,), heads=4, probe_prompts=512, tune_prompts=512,
                        # wider than the defaults: with them PtO's and GD's η, ridge's λ and Lasso's α won at a grid
                        # edge for some n (README "Study 2")
                        pto_lrs=(1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4) + StudySettings.pto_lrs,
                        gd_lrs=(1e-5, 3e-5, 1e-4, 3e-4, 0.001) + StudySettings.gd_lrs,
                        ridge_lams=(1e-4, 1e-3, 0.003, 0.01, 0.02, 0.03, 0.05, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0),
                        lasso_alphas=(1e-5,) + StudySettings.lasso_alphas + (3.0,)))


@_preset
def cpu():
  """The study's shape scaled to a CPU, on the σ = 0.1 quick preset's schedule (batch 32): d=10, s=3, N=20,
  σ ∈ {0.1, 0.5}; 3 layers × 4 heads (width 32, MLP, query / key kernels N(0, 1/E)), 3 seeds vmapped (both σ in
  one program of 6 runs); 40000 Adam steps at lr 2e-3 (500 warmup, cosine, batch 32) with Garg et al.'s curriculum
  shape on dims and points (3 → 10 active dims and 7 → 20 points, +1 dim and +2 points every 1500 steps, the full
  task from step 10500); checkpointed every 2000 steps under out/runs, so it runs in pieces (interrupt and re-run
  the same command to resume).

  `jaxicl reproduce head-utilization --preset cpu --out runs/head_utilization_cpu` — 40 min 23 s measured on the
  2-core CPU with its 6 runs sharded 3 per CPU device (2026-12-08, beside a 22-minute benchmark: training 37 min at
  10-25 steps/s, model analyses 17 s, baselines read from a copy of an earlier run's out/baselines; tuning them
  takes ~16 min more; 47 min 17 s idle with the former init on 2026-11-27). It does not reach the study's regime:
  the models end at mean excess risk 1.13-1.45 against tuned ridge's 0.87 (σ = 0.1) and 1.18 (σ = 0.5), level with
  ridge at n = 1 and above ridge and GD for n = 2..9 (README "Study 2").

  Two levers take every run off the loss plateau early: the points axis of the curriculum (with the dims curriculum
  alone, the preset until 2026-11-27, one run of six sat on it for 30000 steps) and the query / key init
  ``qk_init="fan_in"`` (unit-variance logits at init instead of GPT-2's near-uniform attention; since 2026-12-08:
  every run below a training loss of 2.0 by step 1500, mean excess risk 1.16 / 1.36 for σ = 0.1 / 0.5 against 1.28 /
  1.74 with GPT-2's 0.02). The PyTorch reference trained on this program with GPT-2's init at σ = 0.5 learned it no
  faster than jaxicl with that init (``python benchmarks/learning_speed.py --setting sparse-d10``, 8 seeds each).
  """
  task, model = _sparse_gpt2(d=10, sparsity=3, n_points=20, width=32, qk_init="fan_in")
  return (configs.Config(task=task, model=model,
                         optim=configs.OptimConfig(lr=2e-3, warmup_steps=500, schedule="cosine"),
                         curriculum=configs.CurriculumConfig(dims_start=3, points_start=7, every=1500),
                         train=configs.TrainConfig(steps=40000, batch_size=32, seeds=(0, 1, 2), log_every=500,
                                                   ckpt_every=2000, eval_prompts=1024)),
          StudySettings(noise_stds=(0.1, 0.5), layers=(3,), heads=4, probe_prompts=512, tune_prompts=512,
                        # smaller η than the defaults: at d = 10 PtO and GD won at the smallest default η for many n
                        pto_lrs=(3e-5, 1e-4, 3e-4) + StudySettings.pto_lrs, gd_lrs=(3e-4, 0.001) + StudySettings.gd_lrs))


@_preset
def full():
  """The study: d=20, s=3, N=40, σ ∈ {0, 0.1, 0.5}; L ∈ {2, 3, 4} layers × 8 heads (width 256, MLP) and the
  single-head model of each depth; 3 seeds vmapped; 12000 Adam steps (lr 1e-3, 400 warmup, cosine, batch 64, clip 1)
  with Garg et al.'s curriculum shape: 3 → 20 active dims and 7 → 40 points (+1 dim and +2 points every 250 steps,
  the full task from step 4250; the support drawn among the active dims), query / key kernels N(0, 1/E)
  (``qk_init="fan_in"``) — the levers that took the CPU presets' models off the plateau (the points axis and the
  query / key init at d = 10; README "Study 2"; untested at d = 20).

  `jaxicl reproduce head-utilization --preset full --out runs/head_utilization` — not run yet. Its length comes from
  the training cost measured per step on one H100 (``python benchmarks/step_cost.py --study head-utilization
  --preset full``, 2026-11-26, TF32, results/accelerator_NVIDIA_H100_80GB_HBM3): 7.75 / 11.58 ms per step for the
  8-head L = 2 / 3 programs, 6.37 / 9.35 ms for the single-head ones (9 runs each: 3 σ × 3 seeds), compile 9-18 s;
  L = 4 (not reached in that lease) ~15.4 / ~12.3 ms by the per-layer increment: 62.8 ms per step over the 6
  programs, so 12000 steps are ~12.6 minutes of training + ~1 minute of compiles, leaving ~16 of the 30-minute budget
  to the analyses and baselines (not timed on a GPU; on the 2-core CPU all baselines cost ~1.2-1.7 s per prompt at
  d = 20, iterated PtO most of it: 87 min measured for σ = 0's 3072 prompts beside other work, ≤ 2.7 GB, every
  stage over chunks of 64 prompts; ``--baselines-only`` tunes them ahead of the GPU run, which reads them from a
  copy of out/baselines; README "Study 2"). The curriculum masks inputs and points and does not change the step's cost.
  XLA's cost analysis: 1.5e11 / 2.3e11 / 3.1e11 flops per step (3 seeds) for L = 2 / 3 / 4; on the 2-core CPU
  (3.8e10 flop/s measured) the preset is ~2 weeks. Every program is checkpointed under out/runs, so an interrupted
  run resumes, and a finished program's analysis is kept in out/records, which carries the run to the next lease.
  """
  task, model = _sparse_gpt2(d=20, sparsity=3, n_points=40, width=256, qk_init="fan_in")
  return (configs.Config(task=task, model=model,
                         optim=configs.OptimConfig(lr=1e-3, warmup_steps=400, schedule="cosine", grad_clip=1.0),
                         curriculum=configs.CurriculumConfig(dims_start=3, points_start=7, every=250),
                         train=configs.TrainConfig(steps=12000, batch_size=64, seeds=(0, 1, 2), log_every=1000,
                                                   ckpt_every=2000, eval_prompts=2048)),
          StudySettings(noise_stds=(0.0, 0.1, 0.5), layers=(2, 3, 4), heads=8, single_head=True, probe_prompts=2048,
                        tune_prompts=1024, importance_batch=4,
                        # wider than the defaults: with them, on 128 + 128 prompts at σ = 0.5, PtO's and GD's
                        # smallest η, ridge's smallest λ and Lasso's largest α won at many n (README "Study 2")
                        pto_lrs=(3e-5, 1e-4, 3e-4) + StudySettings.pto_lrs,
                        gd_lrs=(3e-4, 0.001) + StudySettings.gd_lrs,
                        ridge_lams=(1e-4,) + StudySettings.ridge_lams,
                        lasso_alphas=StudySettings.lasso_alphas + (3.0, 10.0)))


EVAL_SEED = evaluate.EVAL_SEED  # held-out prompts; probe-fit and tuning sets use EVAL_SEED + 1, + 2

# Config fields the grid sets per model: an override of one of them is refused (it would be silently replaced).
GRID_FIELDS = {"task.noise_var": "study.noise_stds", "train.task_variants": "study.noise_stds",
               "model.n_layers": "study.layers", "model.heads": "study.heads / study.single_head"}
_STEP_GRIDS = ("pto_steps", "gd_steps", "ipto_steps")


# ----------------------------------------------------------------------------------------------
# Configs


def configure(preset: str, overrides: list[str] | tuple[str, ...] = ()) -> Preset:
  """The preset ``preset`` with ``overrides`` applied: ``section.field=value`` to the base config (as ``jaxicl train
  --set``), ``study.field=value`` to the ``StudySettings`` (lists comma-separated; ``inf`` allowed in the step
  grids). Every model config of the grid is built, so a bad value raises ``ValueError`` naming the field before
  anything trains."""
  if preset not in PRESETS:
    raise ValueError(f"preset={preset!r}: known presets {sorted(PRESETS)}")
  p = PRESETS[preset]()

  def parse(name: str, raw: str, annotation, key: str):
    if name in _STEP_GRIDS:
      return tuple(INF if v.strip().lower() == "inf" else configs.parse_value(v, int, f"{key}[{i}]")
                   for i, v in enumerate(raw.split(",")) if v.strip())
    return configs.parse_value(raw, annotation, key)

  config_sets, study_values = split_overrides(overrides, StudySettings, GRID_FIELDS, "study 2", parse)
  try:
    study = dataclasses.replace(p.study, **study_values)
  except (TypeError, OverflowError, ArithmeticError) as e:  # a check that compared values of a wrong kind
    raise ValueError(f"study: invalid values ({type(e).__name__}: {e})") from None
  check_applies(study_values, study.unused())
  p = p._replace(config=configs.override(p.config, config_sets), study=study)
  check(p)
  return p


def check(p: Preset) -> None:
  """Raises ``ValueError`` naming the field unless ``p`` is a study-2 setup: sparse task with N >= 2, a gpt2 model,
  no task variants of its own, and every (L, H) model of the grid a valid config."""
  c = p.config
  if c.task.family != "sparse":
    raise ValueError(f"task.family={c.task.family!r}: study 2 needs the 'sparse' family")
  if c.task.n_points < 2:
    raise ValueError(f"task.n_points={c.task.n_points!r}: study 2 needs >= 2 (a context and a prediction)")
  if c.model.name != "gpt2":
    raise ValueError(f"model.name={c.model.name!r}: study 2 trains 'gpt2' decoders")
  if c.train.task_variants:
    raise ValueError(f"train.task_variants={c.train.task_variants!r}: set by study 2's grid (study.noise_stds)")
  if c.train.lrs:
    raise ValueError(f"train.lrs={c.train.lrs!r}: study 2 trains one learning rate (optim.lr)")
  for n_layers in p.study.layers:
    for heads in p.study.model_heads:
      model_config(p, n_layers, heads)


def model_config(p: Preset, n_layers: int, heads: int) -> configs.Config:
  """The training config of the (L, H) model: the base config with L layers of H heads and one task variant per σ
  (noise_var = σ²); all seeds and all σ train in this one program (run r: σ index r // R, seed r % R)."""
  c = p.config
  return dataclasses.replace(
      c, model=dataclasses.replace(c.model, n_layers=n_layers, heads=(heads,)),
      train=dataclasses.replace(c.train, task_variants=tuple(f"noise_var={s * s!r}" for s in p.study.noise_stds)))


def task_config(p: Preset, sigma: float) -> tasks.TaskConfig:
  """The base task at noise level σ (the task of σ's runs, and of its held-out / probe / tuning prompts)."""
  return dataclasses.replace(p.config.task, noise_var=float(sigma) ** 2)


def model_tag(sigma: float, n_layers: int, heads: int) -> str:
  return f"sigma{sigma:g}_L{n_layers}_H{heads}"


def run_dir(out: str, cfg: configs.Config) -> str:
  """The train workdir of one (L, H) program: ``out/runs/L<L>_H<H>_<config hash>`` (a changed config trains anew)."""
  digest = hashlib.sha1(json.dumps(configs.to_dict(cfg), sort_keys=True).encode()).hexdigest()[:10]
  return os.path.join(out, "runs", f"L{cfg.model.n_layers}_H{cfg.model.heads[0]}_{digest}")


RECORD_VERSION = 1  # bump when analyze_model's record changes: older records are then analysed again


def record_key(p: Preset, cfg: configs.Config) -> str:
  """What a program's analysis record depends on: its training config (which holds the task, hence the prompt
  sets' tasks, and ``train.eval_prompts``) and the analysis settings ``analyze_model`` reads."""
  st = p.study
  key = {"program": configs.to_dict(cfg), "probe_prompts": st.probe_prompts, "probe_lam": st.probe_lam,
         "eval_seed": EVAL_SEED, "version": RECORD_VERSION}
  return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()


def record_path(out: str, cfg: configs.Config) -> str:
  """``out/records/<the program's workdir name>.json``: the analysis of every σ of one (L, H) program."""
  return os.path.join(out, "records", os.path.basename(run_dir(out, cfg)) + ".json")


def _encode(tree):
  """JSON-ready copy of a record: arrays as {"array": nested lists, "dtype"} (``_decode`` restores them exactly)."""
  if isinstance(tree, dict):
    return {k: _encode(v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return [_encode(v) for v in tree]
  if isinstance(tree, (np.ndarray, jax.Array)):
    a = np.asarray(tree)
    return {"array": a.tolist(), "dtype": str(a.dtype)}
  if isinstance(tree, np.generic):
    return tree.item()
  return tree


def _decode(tree):
  if isinstance(tree, dict):
    if set(tree) == {"array", "dtype"}:
      return np.asarray(tree["array"], dtype=tree["dtype"])
    return {k: _decode(v) for k, v in tree.items()}
  if isinstance(tree, list):
    return [_decode(v) for v in tree]
  return tree


def read_record(p: Preset, cfg: configs.Config, out: str) -> dict[str, Any] | None:
  """The program's analysis record written by ``main`` ({"key", "per_sigma": [{"record", "final_loss",
  "workdir", "attention"}]}), or None when it is missing, unreadable or of another key (another config, analysis
  setting or record version): the program is then trained (or read back from its workdir) and analysed again."""
  try:
    saved = read_json(record_path(out, cfg))
    if saved["key"] != record_key(p, cfg) or len(saved["per_sigma"]) != len(p.study.noise_stds):
      return None
    return _decode(saved)
  except (OSError, ValueError, KeyError, TypeError):
    return None


class PromptSets(NamedTuple):
  eval: tasks.Prompt  # held-out: risks, importance, pruning, probe evaluation, baseline evaluation
  probe: tasks.Prompt  # probe fitting
  tune: tasks.Prompt  # baseline hyper-parameter tuning


def prompt_sets(p: Preset, task: tasks.TaskConfig) -> PromptSets:
  return PromptSets(evaluate.eval_prompts(task, p.config.train.eval_prompts, EVAL_SEED),
                    evaluate.eval_prompts(task, p.study.probe_prompts, EVAL_SEED + 1),
                    evaluate.eval_prompts(task, p.study.tune_prompts, EVAL_SEED + 2))


# ----------------------------------------------------------------------------------------------
# Baselines


PATH_BASELINES = ("PtO", "iterated PtO", "GD")


def _path_points(lrs, steps, rounds: int | None = None) -> list[dict[str, Any]]:
  """Grid points of a path tuner in the order of its risks' flattened axes (η, T[, round]); at T = 0 and
  T = inf the step size does not matter (0, resp. the min-norm limit), so it is reported as None."""
  points = []
  for lr in lrs:
    for t in steps:
      hp = {"lr": None if t == 0 or math.isinf(t) else float(lr), "steps": float(t) if math.isinf(t) else int(t)}
      points += [dict(hp, rounds=k + 1) for k in range(rounds)] if rounds else [hp]
  return points


def _path_tuned(tune: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], lrs, steps,
                rounds: int | None, n_points: int) -> dict[str, Any]:
  """Per-n choice of a path tuner: (risks, step ratios) on the tuning set and on the held-out set; chosen by the
  tuning risks, reported on the held-out set.

  Eligible: η·λ_max <= ``estimators.STABILITY_MARGIN`` (in every round so far) on every prompt the estimator is
  run on — the tuning prompts and the held-out ones, whose λ_max comes from their context points alone (no
  target) — or T = 0 / T = inf, which do not depend on η. Checked on the tuning prompts only, a step size stable
  there diverged on a held-out prompt whose preprocessed Gram matrix had a 10× larger λ_max (PtO, d = 8, n = 3),
  and the reported risk was NaN."""
  ratios = []
  for risks, ratio in (tune, test):
    if rounds is None:  # ratio [n_lr, N] -> [n_lr, C, N]
      ratio = np.broadcast_to(ratio[:, None, :], risks.shape)
    ratios.append(ratio)
  tune_r, test_r = tune[0], test[0]
  steps_axis = np.asarray(steps, np.float64).reshape((1, -1) + (1,) * (tune_r.ndim - 2))
  free = (steps_axis == 0) | np.isinf(steps_axis)
  eligible = (np.maximum(*ratios) <= estimators.STABILITY_MARGIN) | free
  grid = {"lr": tuple(float(x) for x in lrs), "steps": tuple(steps)}
  if rounds:
    grid["rounds"] = tuple(range(1, rounds + 1))
  return estimators.tune_per_n(tune_r.reshape(-1, n_points), test_r.reshape(-1, n_points),
                               _path_points(lrs, steps, rounds), grid,
                               np.broadcast_to(eligible, tune_r.shape).reshape(-1, n_points))


def baseline_curves(st: StudySettings, sets: PromptSets, task: tasks.TaskConfig) -> dict[str, dict[str, Any]]:
  """label -> {"risk": [N] on the held-out set, "hparams": per-n choice (tuned on the tuning set), "edges": per-n
  hyper-parameters at a grid edge}.

  PtO and GD: step sizes × step counts up to ``max(steps)`` and T = inf (the min-norm least-squares limit), from
  one eigendecomposition per prompt and prefix (``estimators.gd_path_risks``), under the stability rule (on the
  tuning and the held-out prompts, ``_path_tuned``);
  iterated PtO (this project's extension, ``estimators.iterated_pto``): the same over 1..``ipto_rounds`` rounds;
  ridge λ and Lasso α grids; OLS; and the Bayes-optimal estimator of the task's prior (``sparse_bayes``, no
  hyper-parameters), the floor every method is measured against.
  """
  n = task.n_points
  out: dict[str, dict[str, Any]] = {}
  for label, preprocess, lrs, steps in (("PtO", True, st.pto_lrs, st.pto_steps), ("GD", False, st.gd_lrs, st.gd_steps)):
    tune = estimators.gd_path_risks(sets.tune, lrs, steps, preprocess)
    test = estimators.gd_path_risks(sets.eval, lrs, steps, preprocess)
    out[label] = _path_tuned(tune, test, lrs, steps, None, n)
  tune = estimators.iterated_pto_path_risks(sets.tune, st.pto_lrs, st.ipto_steps, st.ipto_rounds)
  test = estimators.iterated_pto_path_risks(sets.eval, st.pto_lrs, st.ipto_steps, st.ipto_rounds)
  out["iterated PtO"] = _path_tuned(tune, test, st.pto_lrs, st.ipto_steps, st.ipto_rounds, n)
  for label, name, grid in (("ridge", "ridge", {"lam": st.ridge_lams}), ("Lasso", "lasso", {"alpha": st.lasso_alphas})):
    tune_r, points = estimators.grid_risks(name, grid, sets.tune)
    test_r, _ = estimators.grid_risks(name, grid, sets.eval)
    out[label] = estimators.tune_per_n(tune_r, test_r, [{k: float(v) for k, v in p.items()} for p in points], grid)
  for label, name in (("OLS", "ols"), ("Bayes", "sparse_bayes")):
    preds = estimators.predict(name, sets.eval.xs, sets.eval.ys, task)
    out[label] = {"risk": np.asarray(estimators.excess_risk(preds, sets.eval.targets), np.float64).tolist(),
                  "hparams": None, "edges": [[] for _ in range(n)]}
  return out


_BASELINE_CODE = (estimators, tasks, evaluate, baseline_curves, _path_tuned, _path_points)


@functools.lru_cache(maxsize=1)
def _baselines_code_digest() -> str:
  code = hashlib.sha1()
  for obj in _BASELINE_CODE:
    code.update(inspect.getsource(obj).encode())
  return code.hexdigest()


def baselines_key(p: Preset, sigma: float) -> str:
  """What σ's baselines depend on: the task, the tuning and held-out prompt sets, every grid, and the code that
  computes them (the source of ``estimators``, ``tasks`` and ``evaluate``, and of the tuners here), so that a change
  to an estimator computes them again."""
  st = p.study
  key = {"task": dataclasses.asdict(task_config(p, sigma)), "eval_prompts": p.config.train.eval_prompts,
         "tune_prompts": st.tune_prompts, "eval_seed": EVAL_SEED, "code": _baselines_code_digest(),
         "grids": {f: getattr(st, f) for f in ("pto_lrs", "pto_steps", "gd_lrs", "gd_steps", "ipto_steps",
                                               "ipto_rounds", "ridge_lams", "lasso_alphas")}}
  return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def baselines_path(out: str, p: Preset, sigma: float) -> str:
  """``out/baselines/sigma<σ>_<key>.json``: σ's tuned baselines (``baseline_curves``) under ``baselines_key``."""
  return os.path.join(out, "baselines", f"sigma{sigma:g}_{baselines_key(p, sigma)[:12]}.json")


def read_baselines(out: str, p: Preset, sigma: float) -> dict[str, dict[str, Any]] | None:
  """σ's baselines kept by an earlier run with the same key, or None (missing, unreadable or another key)."""
  try:
    saved = read_json(baselines_path(out, p, sigma))
    return saved["baselines"] if saved["key"] == baselines_key(p, sigma) else None
  except (OSError, ValueError, KeyError, TypeError):
    return None


def edge_warnings(baselines: dict[str, dict[str, Any]], sigma: float) -> list[str]:
  """One line per baseline whose per-n winner sits at a grid edge for some n (see ``estimators.grid_edges``)."""
  lines = []
  for label, b in baselines.items():
    at_edge = {n: e for n, e in enumerate(b.get("edges", [])) if e}
    if at_edge:
      keys = sorted({k for e in at_edge.values() for k in e})
      lines.append(f"σ={sigma:g} {label}: the tuned {'/'.join(keys)} is at a grid edge for n in {sorted(at_edge)}")
  return lines


# ----------------------------------------------------------------------------------------------
# Models


def analyze_model(model, params: Any, sets: PromptSets, st: StudySettings) -> dict[str, Any]:
  """Risk curves, head importance, pruning and probes of every seed of one trained (σ, L, H) model
  (``params``: its R runs stacked on a leading axis)."""
  n_heads = model.n_heads
  n_runs = jax.tree.leaves(params)[0].shape[0]
  record: dict[str, Any] = {"n_heads": list(n_heads), "risk": interpret.masked_risk_runs(model, params, sets.eval, None)}
  masks = {"full": None}
  if max(n_heads) > 1:
    imp = interpret.head_importance_runs(model, params, sets.eval, batch_size=st.importance_batch)  # [R, L, H]
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
      per_run.append(interpret.probe_risks(model, jax.tree.map(lambda a: a[r], params), sets.probe, sets.eval, mask,
                                           lam=st.probe_lam))
    probes[label] = np.stack(per_run)  # [R, L+1, P]
  record["probe"] = probes
  return record


def variant_runs(cfg: configs.Config, variant: int) -> list[int]:
  """Indices of the runs of task variant ``variant`` (one σ) in a ``model_config`` program, in seed order."""
  return [r for r, v in enumerate(cfg.run_variants) if v == variant]


# ----------------------------------------------------------------------------------------------
# Figures and tables (``jaxicl.plotting``: PNG + PDF, no global matplotlib state)


def _mean_band(ax, x, curves: np.ndarray, label: str, style: str = "-", **kw):
  """Mean over runs (rows) with a min-max band."""
  curves = np.asarray(curves, np.float64)
  line, = ax.plot(x, curves.mean(0), style, label=label, **kw)
  if curves.shape[0] > 1:
    ax.fill_between(x, curves.min(0), curves.max(0), color=line.get_color(), alpha=0.15)


def plot_risk_vs_n(p: Preset, records: dict, baselines: dict, path: str) -> str:
  """Figure 1: excess risk vs n for every model (mean ± range over seeds), pruned models dashed."""
  sigmas = p.study.noise_stds
  fig, axes = plotting.panels(len(sigmas), ncols=len(sigmas), size=(5.5, 4))
  n = np.arange(p.config.task.n_points)
  for ax, sigma in zip(axes, sigmas):
    for (s, L, H), rec in records.items():
      if s != sigma:
        continue
      _mean_band(ax, n, rec["risk"], f"{L} layers × {H} head{'s' if H > 1 else ''}")
      if "pruned_risk" in rec:
        _mean_band(ax, n, rec["pruned_risk"], f"{L}×{H} pruned (all L1, 1 later)", "--")
    for label, color in (("OLS", "gray"), ("ridge", "tab:olive"), ("Lasso", "k"), ("Bayes", "tab:red")):
      ax.plot(n, baselines[sigma][label]["risk"], ":", color=color, label=label)
    _risk_axes(ax, p.config.task, sigma)
  return plotting.save(fig, path)


def plot_importance_panels(imp: np.ndarray, seeds: tuple[int, ...], path: str, title: str) -> str:
  """Figure 2: heatmaps (layer × head) for each seed and their mean, one shared colour scale."""
  panels = [(f"seed {s}", imp[r]) for r, s in enumerate(seeds)] + [("mean", np.nanmean(imp, axis=0))]
  L, H = imp.shape[1:]
  fig = plotting.figure(1.6 + 0.55 * H * len(panels), 1.5 + 0.5 * L)
  axes = fig.subplots(1, len(panels) + 1, gridspec_kw={"width_ratios": [H] * len(panels) + [0.3]})
  vmax = float(np.nanmax(imp)) if np.isfinite(np.nanmax(imp)) else 1.0
  vmin = min(0.0, float(np.nanmin(imp)))
  for ax, (label, m) in zip(axes, panels):
    im = ax.imshow(np.ma.masked_invalid(m), cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(H), [str(k + 1) for k in range(H)], fontsize=7)
    ax.set_yticks(range(L), [str(l + 1) for l in range(L)], fontsize=7)
    ax.set_xlabel("head", fontsize=8)
    ax.set_title(label, fontsize=8)
  axes[0].set_ylabel("layer", fontsize=8)
  fig.colorbar(im, cax=axes[-1], label="risk increase when masked")
  fig.suptitle(title, fontsize=9)
  return plotting.save(fig, path)


def plot_probes(records: dict, sigma: float, n_layers: int, heads: int, path: str) -> str:
  """Figure 3: probe risk (mean over positions) vs layer for the full, pruned and single-head models."""
  fig = plotting.figure(5, 3.8)
  ax = fig.subplots()
  layers = np.arange(n_layers + 1)
  multi, single = records.get((sigma, n_layers, heads)), records.get((sigma, n_layers, 1))
  curves = []
  if multi is not None and heads > 1:
    curves += [(f"{heads} heads, full", multi["probe"]["full"], "-o"), (f"{heads} heads, pruned", multi["probe"]["pruned"], "--s")]
  if single is not None:
    curves.append(("1 head / layer", single["probe"]["full"], "-^"))
  for label, probe, style in curves:
    per_layer = probe.mean(-1)  # [R, L+1]
    ax.errorbar(layers, per_layer.mean(0), yerr=per_layer.std(0), fmt=style, capsize=3, label=label)
  plotting.log_axis(ax, "y")
  ax.set_xticks(layers, ["emb"] + [str(l) for l in layers[1:]])
  ax.set_xlabel("layer")
  ax.set_ylabel("probe excess risk (mean over n)")
  ax.set_title(f"linear probes, σ = {sigma:g}, {n_layers} layers", fontsize=9)
  ax.legend(fontsize=7)
  return plotting.save(fig, path)


def plot_baselines(p: Preset, sigma: float, baselines: dict, records: dict, path: str) -> str:
  """Figure 4: PtO vs tuned GD / ridge / Lasso / OLS and the trained transformers, excess risk vs n."""
  fig = plotting.figure(6, 4)
  ax = fig.subplots()
  n = np.arange(p.config.task.n_points)
  styles = {"PtO": "-", "iterated PtO": "-", "GD": "-", "ridge": "-", "Lasso": "-", "OLS": ":", "Bayes": "-."}
  for label, style in styles.items():
    suffix = {"OLS": "", "Bayes": " (optimal)", "iterated PtO": " (ours, tuned per n)"}.get(label, " (tuned per n)")
    ax.plot(n, baselines[label]["risk"], style, label=label + suffix)
  for (s, L, H), rec in records.items():
    if s == sigma and H > 1:
      ax.plot(n, rec["risk"].mean(0), "k--", lw=1.5, label=f"transformer {L}×{H}")
  _risk_axes(ax, p.config.task, sigma)
  return plotting.save(fig, path)


def _risk_axes(ax, task: tasks.TaskConfig, sigma: float) -> None:
  """Log-scale excess risk vs n, with n = d marked."""
  plotting.log_axis(ax, "y")
  ax.axvline(task.d, color="gray", lw=0.5)
  ax.set_xlabel("in-context examples n")
  ax.set_ylabel("excess risk")
  ax.set_title(f"σ = {sigma:g}, d={task.d}, s={task.sparsity}", fontsize=9)
  ax.legend(fontsize=7)


def _write_csv(path: str, header: list[str], rows: list[list]) -> str:
  text = io.StringIO(newline="")
  writer = csv.writer(text)
  writer.writerow(header)
  writer.writerows(rows)
  return write_text(path, text.getvalue())


def _json_clean(tree):
  """NaN -> None, ±inf -> "inf" / "-inf" (strict JSON; T = inf is the limit step count), recursively."""
  if isinstance(tree, dict):
    return {k: _json_clean(v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return [_json_clean(v) for v in tree]
  if isinstance(tree, float) and np.isnan(tree):
    return None
  if isinstance(tree, float) and np.isinf(tree):
    return "inf" if tree > 0 else "-inf"
  return tree


def _json_array(a) -> list:
  return _json_clean(np.asarray(a, np.float64).tolist())


def _float_mean(a) -> float:
  return float(np.mean(np.asarray(a, np.float64)))


# ----------------------------------------------------------------------------------------------
# Main


def tuned_baselines(p: Preset, out: str, sets: dict[float, PromptSets] | None = None, log: Callable = print,
                    timings: dict[str, float] | None = None) -> dict[float, dict[str, dict[str, Any]]]:
  """Every σ's tuned baselines: read from ``out/baselines`` (``read_baselines``) or tuned (``baseline_curves``) and
  kept there; grid-edge warnings logged. ``jaxicl reproduce head-utilization --baselines-only`` runs just this (a
  CPU can tune a preset's baselines while a GPU trains its models)."""
  baselines = {}
  for sigma in p.study.noise_stds:
    t0 = time.perf_counter()
    baselines[sigma] = read_baselines(out, p, sigma)
    path = baselines_path(out, p, sigma)
    if baselines[sigma] is None:
      task = task_config(p, sigma)
      baselines[sigma] = baseline_curves(p.study, sets[sigma] if sets else prompt_sets(p, task), task)
      os.makedirs(os.path.dirname(path), exist_ok=True)
      write_json(path, {"key": baselines_key(p, sigma), "baselines": baselines[sigma]}, indent=None)
      elapsed = time.perf_counter() - t0
      if timings is not None:
        timings[f"baselines sigma{sigma:g}"] = elapsed
      log(f"baselines for σ={sigma:g} in {elapsed:.0f}s -> {os.path.relpath(path, out)}")
    else:
      log(f"baselines for σ={sigma:g} read from {os.path.relpath(path, out)}")
    for line in edge_warnings(baselines[sigma], sigma):
      log(f"WARNING: {line}")
  return baselines


def _plot_attention(maps: list[np.ndarray], out: str, tag: str, seed: int) -> str:
  return interpret.plot_attention(maps, os.path.join(out, f"attention_{tag}.png"),
                                  title=f"attention, {tag}, seed {seed}")


def main(preset: str = "quick", out: str = "runs/head_utilization", *, overrides: list[str] | tuple[str, ...] = (),
         stop_after: int | None = None, progress: bool = True, baselines_only: bool = False
         ) -> dict[str, Any] | None:
  """Runs the study with preset ``tiny`` | ``quick`` | ``cpu`` | ``full`` and ``overrides`` (``configure``); writes
  figures, tables and summary.json in ``out`` and returns the summary dict.

  Each (L, H) program trains in its workdir under ``out/runs`` (``run_dir``): a finished one is read back, an
  interrupted one resumes from its last checkpoint. A program's analysis is kept in ``out/records`` (``read_record``):
  a program with a record of the same key is neither trained nor read again, so ``records/`` alone, copied into a
  fresh ``out`` on another machine, goes on where a run stopped. Each σ's tuned baselines are kept in
  ``out/baselines`` (``read_baselines``, keyed by the task, the prompt sets, the grids and the estimators' code), so
  a re-analysis, or a run whose baselines were computed elsewhere (copy the folder), does not tune them again.
  ``stop_after``: stop every program at that step (checkpointed) and return None; a later call resumes, and its
  outputs equal those of an uninterrupted run. ``progress``: one bar over every program's steps
  (``jaxicl.progress.JobProgress``) and the log lines; False prints only the summary. ``baselines_only``: tune and
  keep the baselines (``tuned_baselines``), train nothing, and return None.
  Tables and figure links also go to ``out/summary.md``. One process at a time writes in ``out``
  (``train.workdir_lock``).
  """
  p = configure(preset, overrides)
  if baselines_only and stop_after is not None:
    raise ValueError(f"stop_after={stop_after}: does not apply with baselines_only (nothing is trained)")
  train.check_stop_after(stop_after, p.config)
  os.makedirs(out, exist_ok=True)
  steps = stop_after or p.config.train.steps  # each program's, in the job's bar (stop_after <= train.steps)
  total = 0 if baselines_only else len(p.study.layers) * len(p.study.model_heads) * steps
  with train.workdir_lock(out, "running a study", "out"):
    check_folders(out, ("runs", "records", "baselines"))  # a file in the way fails here, before anything trains
    claim_folder(out, "study head-utilization", "out", preset, f"preset {preset}")
    with JobProgress(total, f"study 2 ({preset})", enabled=progress) as job:  # closed before an error is printed
      return _main(p, preset, out, stop_after, steps, job, baselines_only)


def _main(p: Preset, preset: str, out: str, stop_after: int | None, steps: int, job: JobProgress,
          baselines_only: bool) -> dict[str, Any] | None:
  st, c = p.study, p.config
  t_start = time.perf_counter()

  def log(msg: str):
    job.line(f"[head-utilization {time.perf_counter() - t_start:7.1f}s] {msg}")

  if baselines_only:
    tuned_baselines(p, out, log=log)
    job.close()
    return None

  log(f"preset {preset} on {jax.default_backend()}: d={c.task.d}, s={c.task.sparsity}, N={c.task.n_points}, "
      f"σ={st.noise_stds}, layers={st.layers}, heads={st.model_heads}, seeds={c.train.seeds}, steps={c.train.steps}")
  sets = {sigma: prompt_sets(p, task_config(p, sigma)) for sigma in st.noise_stds}
  records: dict[tuple[float, int, int], dict[str, Any]] = {}
  final_loss: dict[tuple, list[float]] = {}
  workdirs: dict[tuple, str] = {}
  timings: dict[str, float] = {}
  attention_files = []
  stopped = False
  for n_layers in st.layers:
    for heads in st.model_heads:
      cfg = model_config(p, n_layers, heads)
      workdir = run_dir(out, cfg)
      program = f"L{n_layers}_H{heads}"
      job.stage(program)
      saved = read_record(p, cfg, out)
      if saved is not None:  # trained and analysed before: no checkpoint is read (carried records suffice)
        job.skip(steps)
        for v, sigma in enumerate(st.noise_stds):
          entry = saved["per_sigma"][v]
          key = (sigma, n_layers, heads)
          records[key], final_loss[key], workdirs[key] = entry["record"], entry["final_loss"], entry["workdir"]
          if entry["attention"] is not None:
            attention_files.append(_plot_attention(entry["attention"], out, model_tag(*key), c.train.seeds[0]))
        log(f"{program}: read from {os.path.relpath(record_path(out, cfg), out)}")
        continue
      t0 = time.perf_counter()
      result = train.train(cfg, workdir, stop_after=stop_after, progress=job.bar)
      timings[f"train {program}"] = time.perf_counter() - t0
      step = int(np.asarray(result.state.step)[0])
      log(f"trained {program} ({len(st.noise_stds)} σ × {len(c.train.seeds)} seeds, one program) to step {step} "
          f"in {timings[f'train {program}']:.0f}s")
      if step < c.train.steps:
        stopped = True
        continue
      params = jax.tree.map(np.asarray, result.state.params)
      per_sigma = []
      for v, sigma in enumerate(st.noise_stds):
        tag = model_tag(sigma, n_layers, heads)
        runs = variant_runs(cfg, v)
        workdirs[(sigma, n_layers, heads)] = os.path.relpath(workdir, out)
        final_loss[(sigma, n_layers, heads)] = ([result.history[-1]["loss"][r] for r in runs] if result.history
                                                else [])
        log(f"{tag}: final loss {np.round(final_loss[(sigma, n_layers, heads)], 4).tolist()}")
        run_params = jax.tree.map(lambda a: a[np.asarray(runs)], params)
        t0 = time.perf_counter()
        records[(sigma, n_layers, heads)] = analyze_model(result.model, run_params, sets[sigma], st)
        timings[f"analyse {tag}"] = time.perf_counter() - t0
        log(f"analysed {tag} in {timings[f'analyse {tag}']:.0f}s")
        maps = None
        if heads > 1 and n_layers == max(st.layers):
          maps = interpret.attention_maps(result.model, jax.tree.map(lambda a: a[runs[0]], params),
                                          sets[sigma].eval.xs[:1], sets[sigma].eval.ys[:1])
          attention_files.append(_plot_attention(maps, out, tag, c.train.seeds[0]))
        key = (sigma, n_layers, heads)
        per_sigma.append({"record": records[key], "final_loss": final_loss[key], "workdir": workdirs[key],
                          "attention": maps})
      os.makedirs(os.path.dirname(record_path(out, cfg)), exist_ok=True)
      write_json(record_path(out, cfg), {"key": record_key(p, cfg), "per_sigma": _encode(per_sigma)},
                 indent=None)
  if stopped:
    log(f"stopped at step {stop_after}; run the same command again to resume")
    job.close()
    return None
  order = [(s, L, H) for s in st.noise_stds for L in st.layers for H in st.model_heads]
  records = {k: records[k] for k in order}
  baselines = tuned_baselines(p, out, sets, log, timings)

  outputs = write_outputs(p, records, baselines, out) + attention_files
  summary = summarize(p, records, baselines, final_loss, workdirs, outputs, time.perf_counter() - t_start)
  summary["timings_s"] = timings
  job.close()
  write_json(os.path.join(out, "summary.json"), _json_clean(summary))
  write_summary_md(summary, os.path.join(out, "summary.md"))
  print_summary(summary)
  return summary


def write_outputs(p: Preset, records: dict, baselines: dict, out: str) -> list[str]:
  """All figures and tables (except the attention maps and summary.json)."""
  st, n_points, seeds = p.study, p.config.task.n_points, p.config.train.seeds
  files = [plot_risk_vs_n(p, records, baselines, os.path.join(out, "risk_vs_n.png"))]
  rows = []
  for (sigma, L, H), rec in records.items():
    for label in ("risk", "pruned_risk", "layer1_cut_risk", "one_per_layer_risk"):
      if label in rec:
        curves = np.asarray(rec[label], np.float64)
        model = f"{L}x{H}" + ("" if label == "risk" else f" {label[:-5]}")
        rows += [[sigma, model, n, curves[:, n].mean(), curves[:, n].std()] for n in range(n_points)]
  files.append(_write_csv(os.path.join(out, "risk_vs_n.csv"), ["sigma", "model", "n", "risk_mean", "risk_std"], rows))

  importance = {}
  for (sigma, L, H), rec in records.items():
    if "importance" in rec:
      tag = model_tag(sigma, L, H)
      files.append(plot_importance_panels(rec["importance"], seeds, os.path.join(out, f"importance_{tag}.png"),
                                          f"head importance, {tag}"))
      importance[tag] = {"seeds": list(seeds), "importance": _json_array(rec["importance"]),
                         "mean": _json_array(np.nanmean(rec["importance"], 0)),
                         "pruned_masks": rec["masks"]["pruned"].tolist(), "usage_mean": _json_clean(rec["usage_mean"]),
                         "usage_per_seed": _json_clean(rec["usage"]), "note": "null marks heads that do not exist"}
  files.append(write_json(os.path.join(out, "importance.json"), importance))

  rows = []
  for sigma in st.noise_stds:
    for L in st.layers:
      files.append(plot_probes(records, sigma, L, st.heads, os.path.join(out, f"probe_sigma{sigma:g}_L{L}.png")))
      for H in st.model_heads:
        rec = records.get((sigma, L, H))
        for label, probe in rec["probe"].items():
          for layer in range(L + 1):
            per_run = probe[:, layer].mean(-1)
            rows.append([sigma, f"{L}x{H}", label, layer, per_run.mean(), per_run.std(), probe[:, layer, -1].mean()])
  files.append(_write_csv(os.path.join(out, "probe.csv"),
                          ["sigma", "model", "variant", "layer", "risk_mean_over_n", "risk_std_seeds", "risk_at_last_n"],
                          rows))

  rows = []
  for sigma in st.noise_stds:
    files.append(plot_baselines(p, sigma, baselines[sigma], records,
                                os.path.join(out, f"pto_vs_baselines_sigma{sigma:g}.png")))
    for label, b in baselines[sigma].items():
      for n in range(n_points):
        rows.append([sigma, label, n, b["risk"][n], json.dumps(_json_clean(b["hparams"][n])) if b["hparams"] else ""])
    for (s, L, H), rec in records.items():
      if s == sigma:
        rows += [[sigma, f"transformer {L}x{H}", n, float(rec["risk"][:, n].mean()), ""] for n in range(n_points)]
  files.append(_write_csv(os.path.join(out, "baselines.csv"), ["sigma", "method", "n", "risk", "hparams"], rows))
  return files


CLAIM_RULE = (
    "Per seed, the claim 'layer 1: all heads matter; later layers: about one head suffices' holds iff "
    "(a) layer 1's effective number of heads (ΣI)²/ΣI² (I = risk increase when one head is masked, clipped at 0) "
    "is >= H/2; (b) pruning every later layer to its most important head, layer 1 kept whole, raises the mean "
    "excess risk over n by at most 20% of the full model's; (c) the mirror control (layer 1 cut to its most "
    "important head, later layers whole) raises it by more than that pruning does; (d) the seed is off the "
    "plateau (a model that does not regress in context has no head pattern to speak of: such a seed is 'plateau', "
    "not 'yes').")
PRUNE_TOLERANCE = 0.2  # (b): relative risk increase allowed for "about one head suffices"
PLATEAU_FRACTION = 0.5  # a seed is off the plateau iff its mean risk < this × the zero predictor's (s·τ²)


def claim_verdicts(rec: dict[str, Any], seeds: tuple[int, ...], heads: int,
                   off_plateau: list[bool]) -> list[dict[str, Any]]:
  """Per-seed verdict of the study's claim under ``CLAIM_RULE`` (a multi-head model's record); ``off_plateau``
  [R]: the seeds whose model regresses in context (rule (d))."""
  out = []
  for r, seed in enumerate(seeds):
    full = float(np.mean(rec["risk"][r]))
    pruned = float(np.mean(rec["pruned_risk"][r]))
    mirror = float(np.mean(rec["layer1_cut_risk"][r]))
    eff1 = rec["usage"][r]["effective_heads"][0]
    a = bool(np.isfinite(eff1) and eff1 >= heads / 2)
    b = bool(pruned - full <= PRUNE_TOLERANCE * full)
    c = bool(mirror - full > pruned - full)
    d = bool(off_plateau[r])
    out.append({"seed": seed, "layer1_effective_heads": eff1, "layer1_all_heads_matter": a,
                "pruned_risk_increase": (pruned - full) / full, "later_layers_one_head_suffices": b,
                "mirror_risk_increase": (mirror - full) / full, "mirror_costs_more": c,
                "off_plateau": d, "claim_holds": a and b and c and d})
  return out


def _per_seed(curves) -> dict[str, Any]:
  """Mean over n of each seed's risk curve [R, P], and their mean."""
  per_seed = np.asarray(curves, np.float64).mean(-1)
  return {"per_seed": per_seed.tolist(), "mean": float(per_seed.mean())}


def summarize(p: Preset, records: dict, baselines: dict, final_loss: dict, workdirs: dict, files: list[str],
              elapsed: float) -> dict[str, Any]:
  """The machine-checkable summary (``summary.json``).

  models[tag]: ``mean_risk`` / ``pruned_risk`` / ``mirror_pruned_risk`` / ``one_per_layer_risk`` (excess risk
  averaged over n = 0..N-1: per seed and mean), ``effective_heads`` (per layer: per seed and the mean over
  seeds), ``claim`` (per-seed verdicts, ``claim_verdicts``), ``off_plateau`` and ``beats_ridge`` per seed, risks at
  n = d/2 and N-1, probes, ``workdir`` (its program's train workdir, relative to ``out``). baselines[sigma][label]: ``mean_risk`` and the per-n winners and grid edges.
  ``warnings``: baselines whose winner is at a grid edge. NaN is written as null (a layer with no important head).
  """
  task, seeds = p.config.task, p.config.train.seeds
  n_small, n_last = task.d // 2, task.n_points - 1
  zero_risk = task.sparsity * task.tau2  # E(wᵀx)² = s·τ² (centred prior): the risk of predicting 0 (the plateau)
  base = {}
  warnings = []
  for sigma in p.study.noise_stds:
    base[f"sigma{sigma:g}"] = {label: {"mean_risk": _float_mean(b["risk"]), f"risk_at_n{n_small}": float(b["risk"][n_small]),
                                       f"risk_at_n{n_last}": float(b["risk"][n_last]), "risk": list(b["risk"]),
                                       "hparams": b["hparams"], "edges": b["edges"]}
                               for label, b in baselines[sigma].items()}
    warnings += edge_warnings(baselines[sigma], sigma)
  models = {}
  for (sigma, L, H), rec in records.items():
    risk = np.asarray(rec["risk"], np.float64)
    ridge = base[f"sigma{sigma:g}"]["ridge"]["mean_risk"]
    per_seed = risk.mean(-1)
    entry = {"sigma": sigma, "layers": L, "heads": H, "seeds": list(seeds), "workdir": workdirs[(sigma, L, H)],
             "final_train_loss": final_loss[(sigma, L, H)], "mean_risk": _per_seed(risk),
             f"risk_at_n{n_small}": _float_mean(risk[:, n_small]), f"risk_at_n{n_last}": _float_mean(risk[:, n_last]),
             "off_plateau": (per_seed < PLATEAU_FRACTION * zero_risk).tolist(),
             "beats_ridge": (per_seed <= ridge).tolist(),
             "probe_full_by_layer": rec["probe"]["full"].mean(-1).mean(0).tolist()}
    for label, key in (("pruned", "pruned_risk"), ("layer1_cut", "mirror_pruned_risk"),
                       ("one_per_layer", "one_per_layer_risk")):
      if f"{label}_risk" in rec:
        entry[key] = _per_seed(rec[f"{label}_risk"])
    if "importance" in rec:
      eff = np.asarray([u["effective_heads"] for u in rec["usage"]], np.float64)  # [R, L]
      with np.errstate(invalid="ignore"):
        eff_mean = [float(np.nanmean(col)) if np.any(np.isfinite(col)) else float("nan") for col in eff.T]
      entry["effective_heads"] = {"per_seed": eff.tolist(), "mean": eff_mean,
                                  "of_mean_importance": rec["usage_mean"]["effective_heads"]}
      entry["top1_share_by_layer"] = rec["usage_mean"]["top1_share"]
      entry["importance_mean"] = np.nanmean(rec["importance"], 0).tolist()  # NaN: the head does not exist
      entry["probe_pruned_by_layer"] = rec["probe"]["pruned"].mean(-1).mean(0).tolist()
      entry["claim"] = claim_verdicts(rec, seeds, H, entry["off_plateau"])
      entry["seeds_showing_claim"] = sum(v["claim_holds"] for v in entry["claim"])
    models[model_tag(sigma, L, H)] = entry
  return {"preset": p.name, "preset_doc": p.doc.strip(), "backend": jax.default_backend(), "elapsed_s": elapsed,
          "config": configs.to_dict(p.config), "study": dataclasses.asdict(p.study),
          "claim_rule": CLAIM_RULE, "plateau_rule": f"off the plateau iff mean risk < {PLATEAU_FRACTION} × s·τ² "
          f"(= {PLATEAU_FRACTION * zero_risk:g}, half the risk of predicting 0)", "models": models,
          "baselines": base, "warnings": warnings, "files": [os.path.basename(f) for f in files]}


def summary_tables(summary: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
  """The summary as tables: per model the mean excess risk over n (full, pruned, mirror, one head per layer),
  effective heads per layer and the claim per seed; per σ the baselines' mean risk."""
  models = []
  for tag, m in summary["models"].items():
    row = {"model": tag, "full": m["mean_risk"]["mean"]}
    for key, label in (("pruned_risk", "pruned"), ("mirror_pruned_risk", "mirror"), ("one_per_layer_risk", "1/layer")):
      row[label] = m[key]["mean"] if key in m else None
    row["eff. heads by layer"] = " ".join("n/a" if e is None else f"{e:.2f}"
                                          for e in m.get("effective_heads", {}).get("mean", []))
    row["claim per seed"] = " ".join("yes" if v["claim_holds"] else "no" if v["off_plateau"] else "plateau"
                                     for v in m.get("claim", []))
    models.append(row)
  baselines = [{"σ": sigma, **{k: v["mean_risk"] for k, v in base.items()}} for sigma, base in summary["baselines"].items()]
  return {"Models (excess risk averaged over n = 0..N-1)": models, "Baselines (same held-out prompts)": baselines}


def write_summary_md(summary: dict[str, Any], path: str) -> str:
  """``summary.md``: ``summary_tables``, the claim rule, warnings and links to every figure (``jaxicl.report``)."""
  intro = (f"Preset `{summary['preset']}` on {summary['backend']}, {summary['elapsed_s']:.0f} s. "
           f"Claim rule: {summary['claim_rule']}")
  out = os.path.dirname(os.path.abspath(path))
  figures = [os.path.join(out, f) for f in summary["files"] if f.endswith(".png")]
  return report.write_summary_md(path, "Study 2: head utilization on sparse regression", summary_tables(summary),
                                 summary["warnings"], figures, intro)


def print_summary(summary: dict[str, Any]) -> None:
  """``summary_tables`` as a short fixed-width table, then the warnings."""
  print("\nStudy 2 summary (excess risk averaged over n = 0..N-1; eff. heads = (ΣI)²/ΣI² per layer, seed mean)")
  print(f"{'model':<22}{'full':>9}{'pruned':>9}{'mirror':>9}{'1/layer':>9}  eff. heads by layer   claim per seed")
  models, baselines = summary_tables(summary).values()
  for row in models:
    cells = [float("nan") if row[k] is None else row[k] for k in ("full", "pruned", "mirror", "1/layer")]
    print(f"{row['model']:<22}" + "".join(f"{c:9.4f}" for c in cells)
          + f"  {row['eff. heads by layer']:<20}  {row['claim per seed']}")
  for row in baselines:
    print(f"baselines {row['σ']}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k != "σ"))
  for line in summary["warnings"]:
    print(f"WARNING: {line}")


if __name__ == "__main__":  # the same as `jaxicl reproduce head-utilization ...` (its errors: one line, exit 2)
  import sys

  from jaxicl import cli
  raise SystemExit(cli.entry(["reproduce", "head-utilization", *sys.argv[1:]]))
