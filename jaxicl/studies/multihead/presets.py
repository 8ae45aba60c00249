"""Presets of study 1 ("multi-head superiority"): what is trained, how long, and which theory lines are drawn.

A ``StudyPreset`` lists the sections of the study; each section is a set of *groups*. A group is one shape
(d, D, h, p, task variant, read-in, lazy) and is trained by ONE ``jaxicl.train.train`` call in which all seeds
(and learning rates) are vmapped. Groups shared by several sections (e.g. the main grid point D=50, h=4 that
is also a point of the p sweep) are trained once.

Task variants (``Variant``) are the scenarios of the study: label noise σ², equicorrelated features
Σ = (1−ρ)I + ρ11ᵀ, local examples x_i = x + r·g_i, and prior knowledge θ ~ N(θ0, τ²I) with ||θ0|| given
and τ² = 1/d (weak) or τ² = κ/D (strong). Everything else follows ``shared/theory.md``: x ~ N(0, I_d),
θ ~ N(0, I_d/d), loss against the noise-free query label.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from jaxicl import tasks


@dataclasses.dataclass(frozen=True)
class Variant:
  """A task scenario (fields of ``jaxicl.tasks.TaskConfig``; ``kappa`` makes τ² = κ/D, the strong prior).

  Attributes:
    name: short identifier used in group names and tables.
    label: human-readable label for figures.
    scenario: the scenario panel it belongs to (``isotropic``, ``noise``, ``correlated``, ``local``, ``prior``).
    noise_var: label noise σ².
    cov, rho: input covariance (``identity`` or ``equicorrelated`` with correlation ρ).
    local_radius: r of local examples (``None``: i.i.d. context).
    prior_mean_norm: ||θ0|| of the prior mean (0: centred prior).
    kappa: if set, τ² = κ/D (strong prior); else τ² = 1/d.
  """

  name: str
  label: str
  scenario: str
  noise_var: float = 0.0
  cov: str = "identity"
  rho: float = 0.0
  local_radius: float | None = None
  prior_mean_norm: float = 0.0
  kappa: float | None = None

  def task(self, d: int, D: int) -> tasks.TaskConfig:
    """The ``TaskConfig`` of this variant with input dimension d and D context examples (n_points = D + 1)."""
    return tasks.TaskConfig(d=d, n_points=D + 1, noise_var=self.noise_var, cov=self.cov, rho=self.rho,
                            local_radius=self.local_radius, prior_mean_norm=self.prior_mean_norm,
                            w_var=None if self.kappa is None else self.kappa / D)


VARIANTS: dict[str, Variant] = {v.name: v for v in [
    Variant("clean", "σ²=0", "isotropic"),
    Variant("noise0.25", "σ²=0.25", "noise", noise_var=0.25),
    Variant("noise1", "σ²=1", "noise", noise_var=1.0),
    Variant("corr0.5", "equicorrelated ρ=0.5", "correlated", cov="equicorrelated", rho=0.5),
    Variant("local1", "local r=1", "local", local_radius=1.0),
    Variant("local2", "local r=2", "local", local_radius=2.0),
    Variant("local3", "local r=3", "local", local_radius=3.0),
    Variant("prior_weak", "weak prior ||θ0||=1, τ²=1/d, σ²=0.25", "prior", noise_var=0.25, prior_mean_norm=1.0),
    Variant("prior_strong", "strong prior ||θ0||=1, τ²=1/D, σ²=0.25", "prior", noise_var=0.25, prior_mean_norm=1.0,
            kappa=1.0),
]}


@dataclasses.dataclass(frozen=True)
class Sweep:
  """Loss vs heads at fixed p (``hs`` varies) or vs p at fixed heads (``ps`` varies), at one (d, D)."""

  d: int
  D: int
  hs: tuple[int, ...]
  ps: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class StudyPreset:
  """Everything one run of the study does.

  Attributes:
    name: preset name.
    doc: the command and expected time (the preset function's docstring).
    ds, Ds, hs: the main grid d × D × h (clean isotropic task, σ² = 0) at embedding dimension ``p``.
    p: embedding dimension of the main grid, the scenarios and the ablations.
    seeds: seeds vmapped in every group; lrs: learning rates vmapped too (per seed, the lr with the lowest
      final training loss is kept: selection on training data only).
    steps, batch_size, warmup_steps, schedule: Adam schedule (peak lr × warmup then decay).
    log_every: steps per compiled chunk (one host sync and one loss record per chunk).
    eval_prompts: held-out prompts per group (``jaxicl.evaluate.eval_prompts``, the same set for every run).
    hsweeps, psweeps: ``Sweep`` specs of figure 2.
    scenario_d, scenario_Ds, scenario_hs, scenarios: figure 3: variants (names in ``VARIANTS``) at d, D, h.
    ablation_d, ablation_Ds, ablation_hs, ablations: figure 4: modes ``no_read_in`` and/or ``lazy``.
    head_d: d of figure 5 (head parameters at the largest main D).
    mc_prompts: Monte Carlo prompts of the finite-D theory curves (0: none).
    scenario_seeds: seeds of the scenario and ablation groups (``None``: ``seeds``).
  """

  name: str
  doc: str
  ds: tuple[int, ...]
  Ds: tuple[int, ...]
  hs: tuple[int, ...]
  p: int
  seeds: tuple[int, ...]
  lrs: tuple[float, ...]
  steps: int
  batch_size: int
  warmup_steps: int
  schedule: str
  log_every: int
  eval_prompts: int
  hsweeps: tuple[Sweep, ...]
  psweeps: tuple[Sweep, ...]
  scenario_d: int
  scenario_Ds: tuple[int, ...]
  scenario_hs: tuple[int, ...]
  scenarios: tuple[str, ...]
  ablation_d: int
  ablation_Ds: tuple[int, ...]
  ablation_hs: tuple[int, ...]
  ablations: tuple[str, ...]
  head_d: int
  mc_prompts: int
  scenario_seeds: tuple[int, ...] | None = None


PRESETS: dict[str, Callable[[], StudyPreset]] = {}


def _register(fn: Callable[..., StudyPreset]) -> Callable[[], StudyPreset]:
  PRESETS[fn.__name__] = lambda: fn(fn.__doc__ or "")
  return fn


@_register
def tiny(doc: str) -> StudyPreset:
  """Seconds-scale smoke run for the tests: d=2, D=8, h ∈ {1, 2}, p=4, 2 seeds, 30 steps; numbers are meaningless.

  `jaxicl reproduce multihead --preset tiny --out /tmp/mh_tiny` — about 20 s of compilation on an idle 2-core
  CPU (6 groups, ~3 s each; minutes when the machine is heavily shared), seconds of compute; not for a GPU.
  """
  return StudyPreset(
      name="tiny", doc=doc, ds=(2,), Ds=(8,), hs=(1, 2), p=4, seeds=(0, 1), lrs=(3e-3,), steps=30, batch_size=16,
      warmup_steps=0, schedule="cosine", log_every=15, eval_prompts=128,
      hsweeps=(Sweep(d=2, D=8, hs=(1, 2, 4), ps=(4,)),), psweeps=(),
      scenario_d=2, scenario_Ds=(8,), scenario_hs=(2,), scenarios=("noise1", "prior_strong"),
      ablation_d=2, ablation_Ds=(8,), ablation_hs=(2,), ablations=("lazy",),
      head_d=2, mc_prompts=256)


@_register
def quick(doc: str) -> StudyPreset:
  """CPU-sized study: d=5, D ∈ {20, 50, 100}, h ∈ {1, 4}, p=32, 3 seeds, 600 Adam steps (cosine), batch 128;
  heads sweep h ∈ {1, 4, 8} at p=32 and p sweep p ∈ {4, 8, 32} at h=4 (D=50); scenarios σ²=1, equicorrelated,
  local r=2 and strong prior at D=50 with 2 seeds; lazy and no-read-in ablations (h=4, D=50).

  `jaxicl reproduce multihead --preset quick --out results/multihead_quick` — 19 groups trained in 7 compiled
  programs (one per (h, p, read-in, lazy); D and the scenario are per-run values, contexts padded to D=100);
  about 5 minutes on an idle 2-core CPU when each group was its own program (19 compiles; see the README for
  the measurement of the 7-program version), under a minute of compute on a GPU. Shows the ordering: multi-head
  D·L below single-head D·L at D ≥ 50.
  """
  return StudyPreset(
      name="quick", doc=doc, ds=(5,), Ds=(20, 50, 100), hs=(1, 4), p=32, seeds=(0, 1, 2), lrs=(5e-3,), steps=600,
      batch_size=128, warmup_steps=30, schedule="cosine", log_every=50, eval_prompts=4096,
      hsweeps=(Sweep(d=5, D=50, hs=(1, 4, 8), ps=(32,)),), psweeps=(Sweep(d=5, D=50, hs=(4,), ps=(4, 8, 32)),),
      scenario_d=5, scenario_Ds=(50,), scenario_hs=(1, 4), scenarios=("noise1", "corr0.5", "local2", "prior_strong"),
      ablation_d=5, ablation_Ds=(50,), ablation_hs=(4,), ablations=("no_read_in", "lazy"),
      head_d=5, mc_prompts=8192, scenario_seeds=(0, 1))


@_register
def full(doc: str) -> StudyPreset:
  """The study as specified in shared/studies.md: d ∈ {2, 5, 10} × D ∈ {10, 20, 50, 100, 200, 500} ×
  h ∈ {1, 2, 4, 8} at p=64, 5 seeds × 2 learning rates (1e-3, 3e-3; best per seed on training loss),
  6000 Adam steps (cosine, warmup 200), batch 512; heads sweeps at p ∈ {16, 32} (d=10) and p sweep
  p ∈ {8, 16, 32, 64, 128} at h=4 (d=10, D=100); every scenario (σ² ∈ {0.25, 1}, equicorrelated ρ=0.5,
  local r ∈ {1, 3}, weak and strong prior) at d=5, D ∈ {20, 50, 100, 200}, h ∈ {1, 4}; no-read-in and lazy
  ablations at d=5, D ∈ {20, 50, 100, 200}, h ∈ {1, 4}.

  `jaxicl reproduce multihead --preset full --out results/multihead_full` — 154 groups in 26 compiled programs
  (one per (d, h, p, read-in, lazy); every D and scenario of a program padded to its largest D, up to 500).
  Estimated ~90 minutes on one H100 (not yet timed on an accelerator): XLA's cost analysis of one training step
  of one run of every program (benchmarks/estimate_full.py: 0.1–14 GFLOP per run-step) × runs × 6000
  steps = 107 PFLOP, at an assumed sustained 20 TFLOP/s float32 (about 30 % of the H100's peak). The padding to
  D=500 dominates the FLOPs (above the 15-minute target); impractical on CPU (a measured CPU step of the
  smallest program ran at 0.14 GFLOP/s on the shared 2-core machine, 2026-11-25). Each program trains in its own
  workdir under --out/programs with checkpoints, so an interrupted run resumes mid-program.
  """
  return StudyPreset(
      name="full", doc=doc, ds=(2, 5, 10), Ds=(10, 20, 50, 100, 200, 500), hs=(1, 2, 4, 8), p=64,
      seeds=(0, 1, 2, 3, 4), lrs=(1e-3, 3e-3), steps=6000, batch_size=512, warmup_steps=200, schedule="cosine",
      log_every=500, eval_prompts=32768,
      hsweeps=(Sweep(d=10, D=100, hs=(1, 2, 4, 8), ps=(16,)), Sweep(d=10, D=100, hs=(1, 2, 4, 8), ps=(32,))),
      psweeps=(Sweep(d=10, D=100, hs=(4,), ps=(8, 16, 32, 64, 128)),),
      scenario_d=5, scenario_Ds=(20, 50, 100, 200), scenario_hs=(1, 4),
      scenarios=("noise0.25", "noise1", "corr0.5", "local1", "local3", "prior_weak", "prior_strong"),
      ablation_d=5, ablation_Ds=(20, 50, 100, 200), ablation_hs=(1, 4), ablations=("no_read_in", "lazy"),
      head_d=5, mc_prompts=20000)


def get_preset(name: str) -> StudyPreset:
  """The preset called ``name`` (``tiny``, ``quick`` or ``full``); ``ValueError`` otherwise."""
  if name not in PRESETS:
    raise ValueError(f"preset={name!r}: unknown; known: {sorted(PRESETS)}")
  return PRESETS[name]()
