"""benchmarks/accelerator_run.sh cannot rot: its --dry-run executes every step at tiny sizes, records each
step as done, and a second run resumes (skips every finished step)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

from conftest import REPO, subprocess_env


def _run(out: str, cache: str) -> subprocess.CompletedProcess:
  env = subprocess_env(cache)
  env.update(PYTHON=sys.executable, JAXICL_PIECE_S="1100")  # one piece: a slow machine must not cut it
  return subprocess.run(["bash", os.path.join(REPO, "benchmarks", "accelerator_run.sh"), "--dry-run", out],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)


def test_dry_run_executes_every_step_and_resumes(tmp_path, xla_cache):
  out = str(tmp_path / "acc")
  first = _run(out, xla_cache)
  assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-2000:]
  assert "all done" in first.stdout
  steps = ("bench", "step_cost", "multihead", "head_utilization")
  assert all(os.path.exists(os.path.join(out, f".done_{s}")) for s in steps)
  with open(os.path.join(out, "bench.json")) as f:
    bench = json.load(f)
  ours = next(r for r in bench["rows"] if r["impl"] == "jaxicl")
  assert ours["steps_per_s"] > 0 and ours["flops_per_step"] > 0  # XLA's cost analysis counted the step
  assert 0 < ours["fraction_of_matmul_peak"] < 1.5 and math.isfinite(bench["matmul_peak_flop_per_s"])
  with open(os.path.join(out, "step_cost.json")) as f:
    cost = json.load(f)
  row = cost["rows"][0]  # the study's first program (L2_H2: 1 σ × 2 seeds, 20 steps), timed
  assert (cost["programs"], cost["measured"], row["program"], row["runs"], row["steps"]) == (2, 1, "L2_H2", 2, 20)
  assert 0 < row["sec_per_step"] < 10 and row["compile_s"] > 0
  for study in ("multihead_tiny", "head_utilization_tiny"):
    with open(os.path.join(out, study, "summary.json")) as f:
      assert json.load(f)["preset"] == "tiny"
  second = _run(out, xla_cache)
  assert second.returncode == 0 and second.stdout.count("done before, skipped") == len(steps), second.stdout


def test_step_cost_times_the_programs_the_studies_train():
  """benchmarks/step_cost.py's program list is the studies' own: study 2's (L, H) configs and study 1's
  compiled programs, config for config (no compile)."""
  sys.path.insert(0, os.path.join(REPO, "benchmarks"))
  try:
    import step_cost
  finally:
    sys.path.pop(0)
  from jaxicl.studies.head_utilization import run as hu
  from jaxicl.studies.multihead import presets, run as mh
  p = hu.configure("quick")
  got = step_cost.study_programs("head-utilization", "quick")
  assert got == [(f"L{L}_H{H}", hu.model_config(p, L, H)) for L in p.study.layers for H in p.study.model_heads]
  spec = presets.configure("tiny")
  planned = mh.plan(spec)
  want = [mh.program_config(spec, g, planned) for g in mh.programs(planned).values()]
  got = step_cost.study_programs("multihead", "tiny")
  assert [c for _, c in got] == want and len(want) > 1
  assert len({name for name, _ in got}) == len(got)
