"""Figures of study 1 (PNG + PDF through ``jaxicl.plotting``; no global matplotlib state). Every figure draws the
measured D·L (mean over seeds ± SE) together with the theory's constants (C_single: dashed, C_multi: dash-dotted,
each labelled on the line and in the legend; finite-D Monte Carlo optima: dotted).

  * fig0_loss_curves.png — D·(training loss − σ²) vs step of the main groups (convergence check);
  * fig1_dl_vs_D.png — D·L vs D, single vs multi-head, one panel per d;
  * fig2_heads_vs_embedding.png — D·L vs h at fixed p and vs p at fixed h; shaded where p/h < d; crosses:
    the theory's rank-limited leading-order optimum;
  * fig3_scenarios.png — one panel per scenario (noise levels, correlated features, local examples, prior);
  * fig4_ablations.png — full training vs no read-in layer vs lazy (frozen W_in);
  * fig5_head_parameters.png — learned (w_k, c_k) vs theory's optimum, Σ c_k w_k and Σ c_k, and measured D·L
    vs the theory's prediction for the learned kernels.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from jaxicl import plotting
from jaxicl.studies.multihead.presets import VARIANTS, Preset

H_COLORS = {1: "tab:red", 2: "tab:orange", 4: "tab:blue", 8: "tab:purple", 16: "tab:brown"}
MODE_STYLE = {"full": ("tab:blue", "o"), "no_read_in": ("tab:green", "s"), "lazy": ("tab:gray", "^")}


def _hcolor(h: int) -> str:
  return H_COLORS.get(h, "tab:olive")


def _constants(ax, c_single: float, c_multi: float, color_single: str = "tab:red", color_multi: str = "k",
               label: bool = True, suffix: str = "") -> None:
  """C_single (dashed) and C_multi (dash-dotted), written on the lines; in the legend too with ``label``."""
  plotting.theory_line(ax, c_single, f"C_single{suffix} = {c_single:.2f}", color_single, "--", legend=label)
  plotting.theory_line(ax, c_multi, f"C_multi{suffix} = {c_multi:.2f}", color_multi, "-.", legend=label)


def _save(fig, out: str, name: str) -> str:
  """PNG + PDF of ``fig`` in ``out``; returns the PNG path."""
  return plotting.save(fig, os.path.join(out, name))


_panels = plotting.panels


def _group_items(records: dict, section: str):
  return [(g, r) for g, r in sorted(records.items()) if section in r["sections"]]


def fig_loss_curves(spec: Preset, records: dict, out: str) -> str:
  """D·(training loss − σ²) vs step for the main groups (selected runs averaged), one panel per d."""
  fig, axes = _panels(len(spec.study.ds))
  for ax, d in zip(axes, spec.study.ds):
    for g, rec in _group_items(records, "main"):
      if g.d != d:
        continue
      steps = np.asarray(rec["history"]["step"])
      loss = np.asarray(rec["history"]["loss"])[:, rec["selected"]].mean(axis=1)
      noise = VARIANTS[g.variant].noise_var
      ax.plot(steps, g.D * np.maximum(loss - noise, 1e-12), color=_hcolor(g.h),
              alpha=0.35 + 0.65 * (g.D / max(spec.study.Ds)), label=f"h={g.h}, D={g.D}")
    plotting.log_axis(ax, "y")
    ax.set_xlabel("training step")
    ax.set_ylabel("D · (train loss − σ²)")
    ax.set_title(f"training curves, d={d}")
    ax.legend(fontsize=6, ncol=2)
  return _save(fig, out, "fig0_loss_curves.png")


def fig_dl_vs_D(spec: Preset, records: dict, tables: dict, out: str) -> str:
  """Figure 1: D·L vs D for every h, with C_single, C_multi and the finite-D Monte Carlo optima."""
  fig, axes = _panels(len(spec.study.ds))
  for ax, d in zip(axes, spec.study.ds):
    rows = [r for r in tables["main"] if r["d"] == d]
    for h in sorted({r["h"] for r in rows}):
      sel = sorted((r for r in rows if r["h"] == h), key=lambda r: r["D"])
      ax.errorbar([r["D"] for r in sel], [r["dl_mean"] for r in sel], yerr=[r["dl_se"] for r in sel], marker="o",
                  ms=4, capsize=3, color=_hcolor(h), label=f"trained h={h}" + (" (p/h<d)" if spec.p // h < d else ""))
    _constants(ax, rows[0]["C_single"], rows[0]["C_multi"])
    fin = tables["finite_d"].get(d)
    if fin:
      ax.plot(fin["D"], fin["single"], ":", color="tab:red", label="best 1 head at D (MC)")
      ax.plot(fin["D"], fin["pair"], ":", color="k", label="best pair at D (MC)")
    plotting.log_axis(ax, "x", minor_labels=True)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("context examples D")
    ax.set_ylabel("D · excess risk")
    ax.set_title(f"d={d}, p={spec.p}, σ²=0")
    ax.legend(fontsize=7)
  return _save(fig, out, "fig1_dl_vs_D.png")


def fig_sweeps(spec: Preset, tables: dict, out: str) -> str:
  """Figure 2: D·L vs h (fixed p) and vs p (fixed h); shaded where p/h < d; crosses: rank-limited theory."""
  st = spec.study
  panels = [(kind, fixed) for kind, fixed in (("hsweep", st.hsweep_ps), ("psweep", st.psweep_hs)) if fixed]
  fig, axes = _panels(max(len(panels), 1), ncols=2)
  if not panels:
    axes[0].text(0.5, 0.5, "no sweeps in this preset", ha="center", va="center")
    axes[0].axis("off")
  for ax, (kind, fixed_vals) in zip(axes, panels):
    rows = [r for r in tables["sweeps"] if r["sweep"] == kind]
    xkey = "h" if kind == "hsweep" else "p"
    for j, fixed in enumerate(fixed_vals):
      sel = sorted((r for r in rows if r["p" if kind == "hsweep" else "h"] == fixed), key=lambda r: r[xkey])
      if not sel:
        continue
      color = f"C{j}"
      lab = f"p={fixed}" if kind == "hsweep" else f"h={fixed}"
      ax.errorbar([r[xkey] for r in sel], [r["dl_mean"] for r in sel], yerr=[r["dl_se"] for r in sel], marker="o",
                  capsize=3, color=color, label=f"trained, {lab}")
      ax.plot([r[xkey] for r in sel], [r["theory_rank_limited_dl"] for r in sel], "x--", color=color, ms=8,
              label=f"theory rank-limited, {lab}")
      bad = [r[xkey] for r in sel if r["rank_limited"]]
      if bad:
        ax.axvspan(min(bad) / 1.4, max(bad) * 1.4, color=color, alpha=0.08,
                   label=f"p/h < d={st.sweep_d} ({lab})")
    if rows:
      _constants(ax, rows[0]["C_single"], rows[0]["C_multi"])
    plotting.log_axis(ax, "x", base=2)
    ax.set_xlabel("heads h" if kind == "hsweep" else "embedding dimension p")
    ax.set_ylabel("D · excess risk")
    ax.set_ylim(bottom=0)
    ax.set_title(f"{'loss vs heads at fixed p' if kind == 'hsweep' else 'loss vs p at fixed h'} (d={st.sweep_d}, D={st.sweep_D})")
    ax.legend(fontsize=6)
  return _save(fig, out, "fig2_heads_vs_embedding.png")


SCENARIO_TITLES = {"noise": "noisy labels", "correlated": "correlated features", "local": "local examples",
                   "prior": "prior knowledge"}


def fig_scenarios(spec: Preset, tables: dict, out: str) -> str:
  """Figure 3: one panel per scenario; each variant in its colour with its constants (C_single dashed,
  C_multi dash-dotted); prior panels also show the constants without a prior path (dotted)."""
  rows = tables["scenarios"]
  scenarios = []
  for name in spec.study.scenarios:
    sc = VARIANTS[name].scenario
    if sc not in scenarios:
      scenarios.append(sc)
  fig, axes = _panels(max(len(scenarios), 1), ncols=2)
  if not scenarios:
    axes[0].text(0.5, 0.5, "no scenarios in this preset", ha="center", va="center")
    axes[0].axis("off")
  for ax, sc in zip(axes, scenarios):
    variants = [v for v in spec.study.scenarios if VARIANTS[v].scenario == sc]
    if sc in ("noise", "correlated"):
      variants = ["clean"] + variants  # the σ² = 0 isotropic reference
    for j, v in enumerate(variants):
      color = f"C{j}"
      sel = [r for r in rows if r["variant"] == v]
      for h in sorted({r["h"] for r in sel}):
        hs = sorted((r for r in sel if r["h"] == h), key=lambda r: r["D"])
        ax.errorbar([r["D"] for r in hs], [r["dl_mean"] for r in hs], yerr=[r["dl_se"] for r in hs], capsize=3,
                    color=color, marker="o" if h == 1 else "s", ls="-" if h == 1 else "--",
                    label=f"{VARIANTS[v].label}, h={h}")
      if sel:
        _constants(ax, sel[0]["C_single"], sel[0]["C_multi"], color, color, label=False)
        for key, val in sel[0].items():
          if key.startswith("extra_") and "without_prior_path" in key and np.isfinite(val):
            ax.axhline(val, color=color, ls=":", lw=1)
    ax.plot([], [], "k--", lw=1, label="C_single")
    ax.plot([], [], "k-.", lw=1, label="C_multi")
    if sc == "prior":
      ax.plot([], [], "k:", lw=1, label="constants without prior path")
    plotting.log_axis(ax, "x", minor_labels=True)
    plotting.log_axis(ax, "y")
    ax.set_xlabel("context examples D")
    ax.set_ylabel("D · excess risk")
    ax.set_title(f"{SCENARIO_TITLES.get(sc, sc)} (d={spec.study.scenario_d}, p={spec.p})")
    ax.legend(fontsize=6)
  return _save(fig, out, "fig3_scenarios.png")


def fig_ablations(spec: Preset, tables: dict, out: str) -> str:
  """Figure 4: full training vs no read-in vs lazy (frozen W_in), one panel per h."""
  rows = tables["ablations"]
  hs = sorted({r["h"] for r in rows})
  fig, axes = _panels(max(len(hs), 1), ncols=2)
  for ax, h in zip(axes, hs):
    for mode, (color, marker) in MODE_STYLE.items():
      sel = sorted((r for r in rows if r["h"] == h and r["mode"] == mode), key=lambda r: r["D"])
      if sel:
        ax.errorbar([r["D"] for r in sel], [r["dl_mean"] for r in sel], yerr=[r["dl_se"] for r in sel], capsize=3,
                    color=color, marker=marker, label=mode.replace("_", " "))
    sel = [r for r in rows if r["h"] == h]
    _constants(ax, sel[0]["C_single"], sel[0]["C_multi"])
    plotting.log_axis(ax, "x", minor_labels=True)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("context examples D")
    ax.set_ylabel("D · excess risk")
    ax.set_title(f"read-in / lazy ablation, h={h} (d={spec.study.ablation_d}, p={spec.p})")
    ax.legend(fontsize=7)
  return _save(fig, out, "fig4_ablations.png")


def fig_heads(tables: dict, out: str) -> str:
  """Figure 5: learned head parameters vs theory."""
  groups = tables["head_groups"]
  fig = plotting.figure(15, 4.2)
  axes = fig.subplots(1, 3)
  ax = axes[0]
  wmax = 0.1
  for hg in groups:
    color = _hcolor(hg["h"])
    w = np.concatenate([np.asarray(s["w"]) for s in hg["per_seed"]])
    c = np.concatenate([np.asarray(s["c"]) for s in hg["per_seed"]])
    ax.scatter(w, c, s=18, color=color, alpha=0.8, label=f"learned heads, h={hg['h']}")
    ax.scatter(hg["optimum"]["w"], hg["optimum"]["c"], marker="*", s=160, color=color, edgecolor="k",
               label=f"theory optimum, h={hg['h']}")
    wmax = max(wmax, float(np.max(np.abs(w))) if w.size else 0.0, float(np.max(np.abs(hg["optimum"]["w"]))))
  grid = np.linspace(0.02, 1.1 * wmax, 200)
  for sign in (1, -1):
    ax.plot(sign * grid, sign / grid, "k:", lw=0.8, label="c·w = 1 (one head)" if sign > 0 else None)
    ax.plot(sign * grid, sign / (2 * grid), "k--", lw=0.8, label="c·w = 1/2 (pair member)" if sign > 0 else None)
  ax.axhline(0, color="gray", lw=0.5)
  ax.axvline(0, color="gray", lw=0.5)
  ax.set_yscale("symlog", linthresh=1.0)
  ax.set_xlabel("kernel scale w_k = tr(A_k)/d")
  ax.set_ylabel("label output weight c_k")
  ax.set_title("learned heads (sign-canonical) vs the theory's optimum")
  ax.legend(fontsize=6)

  ax = axes[1]
  hs = [hg["h"] for hg in groups]
  x = np.arange(len(groups))
  ax.bar(x - 0.2, [hg["sum_cw_mean"][0] for hg in groups], 0.4, yerr=[hg["sum_cw_mean"][1] for hg in groups],
         color="tab:blue", capsize=3, label="Σ c_k w_k (theory: 1)")
  ax.bar(x + 0.2, [hg["sum_c_mean"][0] for hg in groups], 0.4, yerr=[hg["sum_c_mean"][1] for hg in groups],
         color="tab:orange", capsize=3, label="Σ c_k (theory: 1/w for h=1, → 0 for h≥2)")
  plotting.theory_line(ax, 1.0, "theory: Σ c_k w_k = 1", "tab:blue", "--", 0.8, annotate=False)
  ax.axhline(0, color="k", lw=0.5)
  ax.set_xticks(x, [f"h={h}" for h in hs])
  ax.set_title("unbiasedness and zero-sum output weights")
  ax.legend(fontsize=7)

  ax = axes[2]
  lo, hi = math.inf, 0.0
  for hg in groups:
    meas = [s["measured_dl"] for s in hg["per_seed"]]
    pred = [s["predicted_dl"] for s in hg["per_seed"]]
    ok = [(m, p) for m, p in zip(meas, pred) if np.isfinite(p)]
    if ok:
      m, p = zip(*ok)
      ax.scatter(p, m, color=_hcolor(hg["h"]), label=f"h={hg['h']}")
      lo, hi = min(lo, *m, *p), max(hi, *m, *p)
    plotting.theory_line(ax, hg["optimum"]["constant"], f"theory optimum, h={hg['h']}: "
                         f"{hg['optimum']['constant']:.2f}", _hcolor(hg["h"]), "-.", 0.8)
  if np.isfinite(lo):
    ax.plot([lo * 0.9, hi * 1.1], [lo * 0.9, hi * 1.1], "k:", lw=0.8, label="measured = predicted")
  ax.set_xlabel("theory: D·L of the learned kernels (asymptotic)")
  ax.set_ylabel("measured D·L")
  title = f"d={groups[0]['d']}, D={groups[0]['D']}" if groups else "no head groups"
  ax.set_title(f"theory for the learned heads ({title})")
  ax.legend(fontsize=7)
  return _save(fig, out, "fig5_head_parameters.png")


def make_figures(spec: Preset, records: dict, tables: dict, out: str) -> dict[str, Any]:
  """Writes every figure into ``out``; returns {figure key: path}."""
  return {"loss_curves": fig_loss_curves(spec, records, out), "dl_vs_D": fig_dl_vs_D(spec, records, tables, out),
          "heads_vs_embedding": fig_sweeps(spec, tables, out), "scenarios": fig_scenarios(spec, tables, out),
          "ablations": fig_ablations(spec, tables, out), "head_parameters": fig_heads(tables, out)}
