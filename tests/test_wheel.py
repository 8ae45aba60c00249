"""The wheel works alone: built from the package sources, installed (``--no-deps``) into a fresh venv outside the
checkout, it runs ``jaxicl reproduce multihead --preset tiny`` and the study-1 notebook from a temporary folder.

The venv sees the running environment's packages (jax, flax, ...: ``--system-site-packages`` plus a ``.pth`` line
for this interpreter's own site-packages when it is itself a venv), so nothing is downloaded; PYTHONPATH is
cleared and the checkout's source is never on ``sys.path`` (checked: ``jaxicl.__file__`` lies in the venv). One venv (``conftest.venv``, per test
session) serves every test; the CLI run and the notebook share the session's persistent XLA cache.
"""

from __future__ import annotations

import json
import math
import os
import re
import zipfile

import pytest
from conftest import REPO, run_checked as _run, run_notebook_in_venv

from jaxicl import theory


def test_wheel_holds_the_package_and_nothing_else(wheel):
  names = zipfile.ZipFile(wheel).namelist()
  tops = {n.split("/")[0] for n in names}
  assert tops == {"jaxicl", "jaxicl-0.1.0.dist-info"}  # no experiments/, tests/, benchmarks/ packages
  sources = {os.path.relpath(os.path.join(d, f), REPO).replace(os.sep, "/")
             for d, _, fs in os.walk(os.path.join(REPO, "jaxicl")) if "__pycache__" not in d for f in fs
             if not f.endswith(".pyc")}
  assert {n for n in names if n.startswith("jaxicl/")} == sources  # every module and data file of the package
  entry_points = zipfile.ZipFile(wheel).read("jaxicl-0.1.0.dist-info/entry_points.txt").decode()
  assert "jaxicl = jaxicl.cli:entry" in entry_points


def test_installed_package_is_the_wheel_and_exposes_the_public_api(venv):
  code = ("import sys, jaxicl; from jaxicl import tasks, models, estimators, train, theory, evaluate; "
          "print(jaxicl.__file__); print(sys.prefix); print(repr(sys.path))")
  out = _run([venv["python"], "-c", code], venv["env"], venv["cwd"]).stdout.splitlines()
  assert out[0].startswith(os.path.realpath(venv["root"])) or out[0].startswith(venv["root"])
  assert os.path.realpath(out[1]) == os.path.realpath(venv["root"])
  paths = [os.path.realpath(p or venv["cwd"]) for p in eval(out[2])]  # noqa: S307 -- the list the venv printed
  # The running environment's site-packages may itself lie inside the checkout (CI's .ci-venv); what must not be on
  # sys.path is the checkout's source: the repository root or any folder that holds another jaxicl package.
  assert os.path.realpath(REPO) not in paths
  root = os.path.realpath(venv["root"])
  assert not [p for p in paths if not p.startswith(root) and os.path.exists(os.path.join(p, "jaxicl", "__init__.py"))]


def test_console_script_reproduces_the_tiny_study(venv):
  out = os.path.join(venv["cwd"], "mh_tiny")
  proc = _run([os.path.join(venv["bin"], "jaxicl"), "reproduce", "multihead", "--preset", "tiny", "--out", out,
               "--quiet"], venv["env"], venv["cwd"])
  assert "Study 1 summary" in proc.stdout  # --quiet: the summary table only, no per-group lines ...
  assert proc.stdout.lstrip().startswith("Study 1 summary") and "program " not in proc.stdout
  assert "%|" not in proc.stderr  # ... and no progress bar
  with open(os.path.join(out, "summary.json")) as f:
    summary = json.load(f)
  for row in summary["main_table"]:
    assert all(math.isfinite(row[k]) for k in ("dl_mean", "dl_se", "C_single", "C_multi"))
    assert row["C_single"] == pytest.approx(theory.c_single(row["d"], noise_var=0.0).constant, rel=1e-6)
  listed = summary["tables"] + [os.path.relpath(p, out) for p in summary["figures"].values()]
  listed += [os.path.splitext(f)[0] + ".pdf" for f in listed if f.endswith(".png")]
  assert all(os.path.getsize(os.path.join(out, f)) > 0 for f in listed), listed
  md = open(os.path.join(out, "summary.md")).read()
  links = re.findall(r"\]\(([^)]+)\)", md)
  assert {os.path.relpath(p, out) for p in summary["figures"].values()} <= set(links)
  assert all(os.path.exists(os.path.join(out, link)) for link in links)
  for row in summary["main_table"]:  # the markdown table carries the run's numbers
    assert f"| {row['d']} | {row['D']} | {row['h']} | {row['p']} | {row['n_seeds']} | {row['dl_mean']:.4g} |" in md


def test_study1_notebook_runs_in_the_venv_and_prints_the_library_numbers(venv):
  pytest.importorskip("nbclient")
  nb_out = os.path.join(venv["cwd"], "nb_out")
  text = run_notebook_in_venv(venv, "multihead_superiority.ipynb", JAXICL_OUT=nb_out, JAXICL_PRESET="tiny")
  assert "devices: [CpuDevice(id=0)]" in text and "preset: tiny" in text
  with open(os.path.join(nb_out, "summary.json")) as f:
    summary = json.load(f)
  lines = re.findall(r"d=(\d+) D=(\d+): single-head D·L = ([\d.]+) ± ([\d.]+), best multi-head \(h=(\d+)\) D·L = "
                     r"([\d.]+) ± ([\d.]+): (multi < single|multi >= single); C_single = ([\d.]+), C_multi = ([\d.]+)",
                     text)
  assert len(lines) == len(summary["ordering"]) > 0
  for line, o in zip(lines, summary["ordering"]):
    d, D, single, single_se, h, multi, multi_se, verdict, c_single, c_multi = line
    assert (int(d), int(D), int(h)) == (o["d"], o["D"], o["best_multi_h"])
    for printed, value in ((single, o["single_dl"]), (single_se, o["single_se"]), (multi, o["multi_dl"]),
                           (multi_se, o["multi_se"])):
      assert float(printed) == pytest.approx(value, abs=6e-7)
    assert (verdict == "multi < single") == (float(multi) < float(single))
    assert float(c_single) == pytest.approx(theory.c_single(int(d), noise_var=0.0).constant, abs=6e-7)
    assert float(c_multi) == pytest.approx(theory.c_multi(int(d), noise_var=0.0), abs=6e-7)
