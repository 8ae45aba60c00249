"""Shared test helpers: the repository root on sys.path (jaxicl importable without an install), and fast subprocess runs of
``jaxicl reproduce`` sharing one persistent XLA compilation cache."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run from a checkout without `pip install -e .`
  sys.path.insert(0, REPO)

# Tiny shapes compile far longer than they run: cheaper XLA passes keep the study pipelines' tests quick.
FAST_XLA = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def subprocess_env(cache: str) -> dict:
  """Environment for a CPU subprocess using the persistent compilation cache ``cache``."""
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
def xla_cache(tmp_path_factory) -> str:
  return str(tmp_path_factory.mktemp("xla_cache"))
