"""Presets of study 1 ("multi-head superiority"): a base ``configs.Config`` + the grid trained around it.

A ``Preset`` is (name, doc, config, study). The base config holds everything a run shares (model family and
embedding dimension p, optimizer, steps, batch, seeds, learning rates, evaluation prompts); ``StudySettings``
holds the grid: the sections of the study, each a set of *groups* (d, D, h, p, task variant, read-in, lazy).
``configure(name, overrides)`` applies ``--set`` overrides: ``section.field=value`` to the base config,
``study.field=value`` to the settings; a config field the grid sets per group (task.*, model.heads,
model.read_in, optim.freeze, train.task_variants) is refused with the study field to use instead.

Task variants (``Variant``) are the scenarios of the study: label noise σ², equicorrelated features
Σ = (1−ρ)I + ρ11ᵀ, local examples x_i = x + r·g_i, and prior knowledge θ ~ N(θ0, τ²I) with ||θ0|| given
and τ² = 1/d (weak) or τ² = κ/D (strong). Everything else follows ``shared/theory.md``: x ~ N(0, I_d),
θ ~ N(0, I_d/d), loss against the noise-free query label.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

from jaxicl import configs, tasks
from jaxicl.models import ModelConfig
from jaxicl.studies import check_applies, preset_registrar, split_overrides


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


ABLATIONS = ("no_read_in", "lazy")


@dataclasses.dataclass(frozen=True)
class StudySettings:
  """What study 1 trains around its base config: the grid of groups and the analysis.

  Attributes:
    ds, Ds, hs: the main grid d × D × h (clean isotropic task, σ² = 0) at the base ``model.embed_dim`` p.
    sweep_d, sweep_D: the (d, D) of the heads and p sweeps (figure 2).
    hsweep_hs, hsweep_ps: heads h swept at each embedding dimension p in ``hsweep_ps``.
    psweep_ps, psweep_hs: embedding dimensions p swept at each h in ``psweep_hs``.
    scenario_d, scenario_Ds, scenario_hs, scenarios: figure 3: variants (names in ``VARIANTS``) at d, D, h.
    ablation_d, ablation_Ds, ablation_hs, ablations: figure 4: modes ``no_read_in`` and/or ``lazy``.
    head_d: d of figure 5 (head parameters at the largest main D).
    mc_prompts: Monte Carlo prompts of the finite-D theory curves (0: none).
    scenario_seeds: seeds of the scenario and ablation groups (``None``: the base ``train.seeds``).
  """

  ds: tuple[int, ...]
  Ds: tuple[int, ...]
  hs: tuple[int, ...]
  sweep_d: int
  sweep_D: int
  hsweep_hs: tuple[int, ...] = ()
  hsweep_ps: tuple[int, ...] = ()
  psweep_ps: tuple[int, ...] = ()
  psweep_hs: tuple[int, ...] = ()
  scenario_d: int = 5
  scenario_Ds: tuple[int, ...] = ()
  scenario_hs: tuple[int, ...] = ()
  scenarios: tuple[str, ...] = ()
  ablation_d: int = 5
  ablation_Ds: tuple[int, ...] = ()
  ablation_hs: tuple[int, ...] = ()
  ablations: tuple[str, ...] = ()
  head_d: int = 5
  mc_prompts: int = 0
  scenario_seeds: tuple[int, ...] | None = None

  def __post_init__(self):
    def need(ok: bool, field: str, why: str):
      if not ok:
        raise ValueError(f"study.{field}={getattr(self, field)!r}: {why}")

    def positive(v) -> bool:
      return isinstance(v, int) and not isinstance(v, bool) and v >= 1

    for field in ("ds", "Ds", "hs"):
      need(len(getattr(self, field)) >= 1, field, "needs at least one value")
    for field in ("ds", "Ds", "hs", "hsweep_hs", "hsweep_ps", "psweep_ps", "psweep_hs", "scenario_Ds", "scenario_hs",
                  "ablation_Ds", "ablation_hs"):
      values = getattr(self, field)
      need(all(positive(v) for v in values), field, "need integers >= 1")
      need(len(set(values)) == len(values), field, "values must be distinct")
    for field in ("sweep_d", "sweep_D", "scenario_d", "ablation_d", "head_d"):
      need(positive(getattr(self, field)), field, "must be an integer >= 1")
    need(isinstance(self.mc_prompts, int) and self.mc_prompts >= 0, "mc_prompts", "must be an integer >= 0")
    need(bool(self.hsweep_hs) == bool(self.hsweep_ps), "hsweep_hs", "set with hsweep_ps (both or neither)")
    need(bool(self.psweep_ps) == bool(self.psweep_hs), "psweep_ps", "set with psweep_hs (both or neither)")
    need(all(v in VARIANTS for v in self.scenarios), "scenarios", f"known variants: {sorted(VARIANTS)}")
    need(all(a in ABLATIONS for a in self.ablations), "ablations", f"known: {ABLATIONS}")
    need(self.head_d in self.ds, "head_d", f"must be one of study.ds={self.ds}")
    need(self.scenario_seeds is None or (len(self.scenario_seeds) >= 1 and all(
        isinstance(s, int) and 0 <= s < 2**31 for s in self.scenario_seeds)), "scenario_seeds",
         "need seeds in [0, 2**31) (or none)")

  def unused(self) -> dict[str, str]:
    """The settings that do nothing with the others as they are: {field: why}."""
    out = {}
    for part, fields in (("scenarios", ("scenario_d", "scenario_Ds", "scenario_hs")),
                         ("ablations", ("ablation_d", "ablation_Ds", "ablation_hs"))):
      if not getattr(self, part):
        out.update({f: f"does not apply without study.{part}" for f in fields})
    if not self.scenarios and not self.ablations:
      out["scenario_seeds"] = "does not apply without study.scenarios or study.ablations"
    if not self.hsweep_hs and not self.psweep_ps:
      out.update({f: "does not apply without study.hsweep_hs or study.psweep_ps" for f in ("sweep_d", "sweep_D")})
    return out


class Preset(NamedTuple):
  """One preset: its name, docstring (command and expected time), base config and grid.

  The base config's task and ``model.heads`` stand for the grid's values (they are set per group); its
  ``model.embed_dim`` is the p of the main grid, the scenarios and the ablations."""

  name: str
  doc: str
  config: configs.Config
  study: StudySettings

  @property
  def p(self) -> int:
    return self.config.model.embed_dim

  @property
  def side_seeds(self) -> tuple[int, ...]:
    """Seeds of the scenario and ablation groups."""
    return self.study.scenario_seeds or self.config.train.seeds


PRESETS: dict[str, Callable[[], Preset]] = {}
_preset = preset_registrar(PRESETS, Preset)  # @_preset: fn() -> (base config, settings)


def _base(p: int, *, lr: float, steps: int, batch_size: int, seeds: tuple[int, ...], log_every: int,
          eval_prompts: int, warmup_steps: int = 0, lrs: tuple[float, ...] = (), ckpt_every: int = 0
          ) -> configs.Config:
  """The shared config: softmax attention of embedding dimension p, Adam with a cosine schedule."""
  return configs.Config(
      task=tasks.TaskConfig(d=5, n_points=51),  # set per group by the grid
      model=ModelConfig(name="softmax_icl", embed_dim=p, heads=(1,)),
      optim=configs.OptimConfig(lr=lr, schedule="cosine", warmup_steps=warmup_steps),
      train=configs.TrainConfig(steps=steps, batch_size=batch_size, seeds=seeds, lrs=lrs, log_every=log_every,
                                ckpt_every=ckpt_every, eval_prompts=eval_prompts))


@_preset
def tiny():
  """Seconds-scale smoke run for the tests: d=2, D=8, h ∈ {1, 2}, p=4, 2 seeds, 30 steps; numbers are meaningless.

  `jaxicl reproduce multihead --preset tiny --out /tmp/mh_tiny` — about 20 s on an idle 2-core CPU, almost all of
  it compilation (6 groups in 3 programs); not for a GPU.
  """
  return (_base(4, lr=3e-3, steps=30, batch_size=16, seeds=(0, 1), log_every=15, eval_prompts=128),
          StudySettings(ds=(2,), Ds=(8,), hs=(1, 2), sweep_d=2, sweep_D=8, hsweep_hs=(1, 2, 4), hsweep_ps=(4,),
                        scenario_d=2, scenario_Ds=(8,), scenario_hs=(2,), scenarios=("noise1", "prior_strong"),
                        ablation_d=2, ablation_Ds=(8,), ablation_hs=(2,), ablations=("lazy",), head_d=2,
                        mc_prompts=256))


@_preset
def quick():
  """CPU-sized study: d=5, D ∈ {20, 50, 100}, h ∈ {1, 4}, p=32, 3 seeds, 600 Adam steps (cosine), batch 128;
  heads sweep h ∈ {1, 4, 8} at p=32 and p sweep p ∈ {4, 8, 32} at h=4 (D=50); scenarios σ²=1, equicorrelated,
  local r=2 and strong prior at D=50 with 2 seeds; lazy and no-read-in ablations (h=4, D=50).

  `jaxicl reproduce multihead --preset quick --out results/multihead_quick` — 3.5 minutes on an idle 2-core CPU
  with an empty compilation cache, 2 minutes with the cache a first run filled (measured 2026-11-26: 3 min 33 s
  and 2 min 1 s): 19 groups in 6 compiled programs (one per (h, p, read-in); D, the scenario and lazy training
  are per-run values, contexts padded to D=100). On a CPU the two big programs are bound by sampling the padded
  prompts on device, not by compilation. Shows the ordering: multi-head D·L below single-head D·L at every D.
  """
  return (_base(32, lr=5e-3, steps=600, batch_size=128, seeds=(0, 1, 2), log_every=50, eval_prompts=4096,
                warmup_steps=30, ckpt_every=150),
          StudySettings(ds=(5,), Ds=(20, 50, 100), hs=(1, 4), sweep_d=5, sweep_D=50, hsweep_hs=(1, 4, 8),
                        hsweep_ps=(32,), psweep_ps=(4, 8, 32), psweep_hs=(4,), scenario_d=5, scenario_Ds=(50,),
                        scenario_hs=(1, 4), scenarios=("noise1", "corr0.5", "local2", "prior_strong"),
                        ablation_d=5, ablation_Ds=(50,), ablation_hs=(4,), ablations=("no_read_in", "lazy"),
                        head_d=5, mc_prompts=8192, scenario_seeds=(0, 1)))


@_preset
def full():
  """The study as specified in shared/studies.md: d ∈ {2, 5, 10} × D ∈ {10, 20, 50, 100, 200, 500} ×
  h ∈ {1, 2, 4, 8} at p=64, 5 seeds × 2 learning rates (1e-3, 3e-3; best per seed on training loss),
  6000 Adam steps (cosine, warmup 200), batch 512; heads sweep h ∈ {1, 2, 4, 8} at p ∈ {16, 32} and p sweep
  p ∈ {8, 16, 32, 64, 128} at h=4 (d=10, D=100); every scenario (σ² ∈ {0.25, 1}, equicorrelated ρ=0.5,
  local r ∈ {1, 3}, weak and strong prior) at d=5, D ∈ {20, 50, 100, 200}, h ∈ {1, 4}; no-read-in and lazy
  ablations at d=5, D ∈ {20, 50, 100, 200}, h ∈ {1, 4}.

  `jaxicl reproduce multihead --preset full --out results/multihead_full` — ~16–17 minutes on one H100 plus the
  analysis, measured in part (2026-11-26: the first 9 of its 24 compiled programs, 118 of the 154 groups, in 8 min
  55 s with the process start; the 15 programs left derived from their cost at ~7 min;
  results/accelerator_NVIDIA_H100_80GB_HBM3/multihead_full_partial/). One program per (d, h, p, read-in), every D,
  scenario and lazy group of a program padded to its largest D, up to 500. The two d = 5 programs (380 runs each,
  the main grid with the scenarios and the lazy runs) take 86 and 134 s of it; every program ~10 s of compile and
  start. XLA's cost analysis (``python benchmarks/estimate_full.py --preset full``,
  results/estimates/multihead_full_cost.json) counts 1.6 PFLOP in all, so the programs run at 1–4 TFLOP/s, far
  from the matmul peak (not profiled; a step is mostly sampling padded prompts and elementwise work over 501
  tokens). Impractical on a CPU (days). Each program trains in its own workdir under --out/programs, checkpointed
  every 1500 steps, so an interrupted run resumes mid-program; finished programs' records (--out/groups) carry a
  run to another machine (``run.finished_program``).
  """
  return (_base(64, lr=1e-3, lrs=(1e-3, 3e-3), steps=6000, batch_size=512, seeds=(0, 1, 2, 3, 4), log_every=500,
                eval_prompts=32768, warmup_steps=200, ckpt_every=1500),
          StudySettings(ds=(2, 5, 10), Ds=(10, 20, 50, 100, 200, 500), hs=(1, 2, 4, 8), sweep_d=10, sweep_D=100,
                        hsweep_hs=(1, 2, 4, 8), hsweep_ps=(16, 32), psweep_ps=(8, 16, 32, 64, 128), psweep_hs=(4,),
                        scenario_d=5, scenario_Ds=(20, 50, 100, 200), scenario_hs=(1, 4),
                        scenarios=("noise0.25", "noise1", "corr0.5", "local1", "local3", "prior_weak",
                                   "prior_strong"),
                        ablation_d=5, ablation_Ds=(20, 50, 100, 200), ablation_hs=(1, 4),
                        ablations=("no_read_in", "lazy"), head_d=5, mc_prompts=20000))


# Config fields the grid sets per group: an override of one of them is refused (it would be silently replaced).
GRID_FIELDS = {"task.*": "study.ds / study.Ds / study.scenarios", "model.heads": "study.hs (and the sweeps)",
               "model.read_in": "study.ablations", "optim.freeze": "study.ablations",
               "train.task_variants": "study.Ds / study.scenarios"}


def configure(name: str, overrides: list[str] | tuple[str, ...] = ()) -> Preset:
  """The preset ``name`` with ``overrides`` applied (``section.field=value`` to the base config as ``jaxicl train
  --set``, ``study.field=value`` to the grid); ``ValueError`` naming the field for a bad or grid-set one. Every
  group's config is built, so a bad value fails before anything trains."""
  if name not in PRESETS:
    raise ValueError(f"preset={name!r}: unknown; known: {sorted(PRESETS)}")
  p = PRESETS[name]()
  config_sets, study_values = split_overrides(overrides, StudySettings, GRID_FIELDS, "study 1")
  try:
    study = dataclasses.replace(p.study, **study_values)
  except (TypeError, OverflowError, ArithmeticError) as e:
    raise ValueError(f"study: invalid values ({type(e).__name__}: {e})") from None
  check_applies(study_values, study.unused())
  p = p._replace(config=configs.override(p.config, config_sets), study=study)
  if p.config.model.name != "softmax_icl":
    raise ValueError(f"model.name={p.config.model.name!r}: study 1 trains 'softmax_icl' (the theory's model)")
  return p

