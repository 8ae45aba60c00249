"""The CLI's persistent compilation cache: time of a cold vs a warm ``jaxicl train`` process to its first step.

Runs ``jaxicl train --config CONFIG --stop-after K`` (K = the config's ``train.log_every``: init and one compiled
chunk) twice in fresh processes sharing a fresh cache folder (``JAXICL_COMPILATION_CACHE``), each into a new
workdir, and prints for both the time from process start to its first logged step (the first line of
``metrics.jsonl``), the import time of ``jaxicl.train`` in a third process (paid by both, not cacheable), and the
ratios with and without it.

  python benchmarks/bench_compile_cache.py --config tiny
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_once(config: str, workdir: str, cache: str, stop_after: int) -> float:
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  env.update(JAXICL_COMPILATION_CACHE=cache, PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""))
  metrics = os.path.join(workdir, "metrics.jsonl")
  t0 = time.perf_counter()
  proc = subprocess.Popen([sys.executable, "-m", "jaxicl.cli", "train", "--config", config, "--workdir", workdir,
                           "--stop-after", str(stop_after), "--quiet"], env=env, cwd=REPO,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  first = None
  while proc.poll() is None and first is None:
    if os.path.exists(metrics) and os.path.getsize(metrics) > 0:
      first = time.perf_counter() - t0
    time.sleep(0.05)
  if proc.wait() != 0:
    raise RuntimeError(f"jaxicl train --config {config} failed")
  return first if first is not None else time.perf_counter() - t0


def import_time() -> float:
  t0 = time.perf_counter()
  subprocess.run([sys.executable, "-c", "import jaxicl.train, jaxicl.cli"], check=True, cwd=REPO,
                 env={**os.environ, "PYTHONPATH": REPO})
  return time.perf_counter() - t0


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--config", default="tiny")
  args = ap.parse_args()
  sys.path.insert(0, REPO)
  from jaxicl import configs
  stop_after = configs.get_config(args.config).train.log_every
  with tempfile.TemporaryDirectory() as tmp:
    cache = os.path.join(tmp, "cache")
    cold = run_once(args.config, os.path.join(tmp, "w1"), cache, stop_after)
    warm = run_once(args.config, os.path.join(tmp, "w2"), cache, stop_after)
    n_files = sum(len(f) for _, _, f in os.walk(cache))
  imp = import_time()
  print(json.dumps({"config": args.config, "first_step_after": stop_after, "cold_s": round(cold, 2),
                    "warm_s": round(warm, 2), "speedup": round(cold / warm, 2), "import_s": round(imp, 2),
                    "speedup_after_import": round((cold - imp) / max(warm - imp, 1e-3), 2),
                    "cache_entries": n_files, "load_avg_1min": round(os.getloadavg()[0], 1)}))


if __name__ == "__main__":
  main()
