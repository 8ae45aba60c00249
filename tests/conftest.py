"""Shared test helpers: the repository root on sys.path (jaxicl importable without an install), and fast subprocess runs of
``jaxicl reproduce`` sharing one persistent XLA compilation cache."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run from a checkout without `pip install -e .`
  sys.path.insert(0, REPO)

# One persistent XLA compilation cache for the test session, shared by the xdist workers (and inherited by their
# subprocesses unless a test sets its own): many tests train the same small programs, which then compile once.
# Set before jax is imported (it reads JAX_COMPILATION_CACHE_DIR at import); an outer setting wins.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    tempfile.gettempdir(), "jaxicl-tests-" + os.environ.get("PYTEST_XDIST_TESTRUNUID", str(os.getpid())), "xla"))

# XLA flags of the tests (an outer XLA_FLAGS wins). In this process (its workers read XLA_FLAGS when jax makes its
# CPU client, after this import): optimisation level 1 without LLVM's expensive passes compiles faster than the
# default (a 20-step sweep test: 56 -> 43 s) and runs as fast (500 training steps, 3 seeds: 35.2 vs 35.7 s).
# FAST_XLA, for subprocesses that mostly compile (the tiny study pipelines): level 0 compiles faster still
# (the same sweep test: 32 s) but runs long programs ~3x slower (a 1500-step training: 92 -> 278 s; lasso fits
# 20 -> 76 s), so it is not the in-process default.
DEFAULT_XLA = "--xla_backend_optimization_level=1 --xla_llvm_disable_expensive_passes=true"
FAST_XLA = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
os.environ.setdefault("XLA_FLAGS", DEFAULT_XLA)


def subprocess_env(cache: str) -> dict:
  """Environment for a CPU subprocess using the persistent compilation cache ``cache`` and ``FAST_XLA``."""
  env = dict(os.environ)
  env.update(JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0", XLA_FLAGS=FAST_XLA, JAX_PLATFORMS="cpu",
             PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""))
  return env


def reproduce(study: str, out: str, cache: str, *extra: str) -> subprocess.CompletedProcess:
  """``jaxicl reproduce STUDY --preset tiny --out OUT [EXTRA...]`` in a subprocess; fails the test on a non-zero
  exit."""
  proc = subprocess.run([sys.executable, "-m", "jaxicl.cli", "reproduce", study, "--preset", "tiny", "--out", out,
                         *extra],
                        cwd=REPO, env=subprocess_env(cache), capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return proc


@pytest.fixture(scope="session")
def xla_cache() -> str:
  """The session's compilation cache for subprocesses: the one this process uses, shared by the xdist workers, so
  a tiny study pipeline compiled for one worker's test is read back by another's (FAST_XLA is part of the key)."""
  return os.environ["JAX_COMPILATION_CACHE_DIR"]


# ------------------------------------------------------------------------------- the wheel in a fresh venv

def run_checked(cmd: list[str], env: dict, cwd: str, timeout: int = 900) -> subprocess.CompletedProcess:
  """Runs ``cmd``; fails the test with its output tails on a non-zero exit."""
  proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
  assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
  return proc


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> str:
  """``pip wheel`` of a copy of the package sources (pyproject.toml, README.md, jaxicl/): the build leaves nothing
  in the checkout and sees no stale build folder."""
  src = tmp_path_factory.mktemp("wheel_src")
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(os.path.join(REPO, name), src / name)
  shutil.copytree(os.path.join(REPO, "jaxicl"), src / "jaxicl", ignore=shutil.ignore_patterns("__pycache__"))
  dist = tmp_path_factory.mktemp("dist")
  run_checked([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q", "-w",
               str(dist)], dict(os.environ), str(src))
  (path,) = [str(dist / f) for f in os.listdir(dist) if f.endswith(".whl")]
  return path


@pytest.fixture(scope="session")
def venv(wheel, tmp_path_factory, xla_cache) -> dict:
  """A venv with the wheel installed: {"python", "bin", "env" (for its subprocesses), "cwd" (outside the checkout)}."""
  root = tmp_path_factory.mktemp("venv")
  assert not str(root).startswith(REPO)
  run_checked([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(root)], dict(os.environ),
              str(root))
  bindir = os.path.join(root, "Scripts" if os.name == "nt" else "bin")
  python = os.path.join(bindir, "python")
  purelib = run_checked([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        dict(os.environ), str(root)).stdout.strip()
  ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
  with open(os.path.join(purelib, "_running_env.pth"), "w") as f:  # plain paths: their own .pth files are not run
    f.write("\n".join(sorted(ours)) + "\n")
  # subprocess_env's cache and XLA settings, without the checkout on PYTHONPATH: the wheel must be what is imported
  env = {k: v for k, v in subprocess_env(xla_cache).items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
  env.update(PATH=bindir + os.pathsep + env.get("PATH", ""), JAXICL_SOURCE=REPO)
  cwd = str(tmp_path_factory.mktemp("elsewhere"))
  run_checked([python, "-m", "pip", "install", "-q", "--no-deps", "--ignore-installed", "--no-index", wheel], env, cwd)
  return {"python": python, "bin": bindir, "env": env, "cwd": cwd, "root": str(root)}


NOTEBOOK_DRIVER = ("import sys, nbformat, nbclient\n"
                   "nb = nbformat.read(sys.argv[1], as_version=4)\n"
                   "nbclient.NotebookClient(nb, timeout=900, kernel_name='python3',\n"
                   "                        resources={'metadata': {'path': sys.argv[3]}}).execute()\n"
                   "nbformat.write(nb, sys.argv[2])\n")


def run_notebook_in_venv(venv: dict, name: str, **env: str) -> str:
  """Executes ``notebooks/<name>`` with the venv's interpreter (the wheel installed, the checkout not on sys.path),
  from a folder outside the checkout, with ``env`` added; returns the text its code cells printed."""
  pytest.importorskip("nbclient")
  executed = os.path.join(venv["cwd"], "executed_" + name)
  run_checked([venv["python"], "-c", NOTEBOOK_DRIVER, os.path.join(REPO, "notebooks", name), executed, venv["cwd"]],
              dict(venv["env"], **env), venv["cwd"])
  with open(executed) as f:
    cells = json.load(f)["cells"]
  return "".join("".join(o.get("text", "")) for c in cells if c["cell_type"] == "code" for o in c.get("outputs", []))
