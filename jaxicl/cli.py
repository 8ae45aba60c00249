"""Command line: ``jaxicl train | eval | theory | reproduce | sweep``. Thin shell over the library.

Exit status: 0 success; 2 bad input (an invalid value, argument, config file or workdir, named in a one-line
message on stderr); 3 a training run diverged (non-finite loss; the last good checkpoint is kept); 128 + the signal
(130 SIGINT / Ctrl-C, 143 SIGTERM) when stopped by one: training ends its current chunk, saves a checkpoint there
and says so in one line; the same command resumes (a second signal stops at once).
Every command uses JAX's persistent compilation cache, so a program compiled once (same shapes, same jax
and XLA) is read from disk by later processes instead of being compiled again. Location: the environment
variable ``JAXICL_COMPILATION_CACHE`` (a folder, or ``none`` to disable), default
``$XDG_CACHE_HOME/jaxicl/xla`` (``~/.cache/jaxicl/xla``); JAX's own ``JAX_COMPILATION_CACHE_DIR``, when
set, takes precedence.

Run as a program (``jaxicl``, ``python -m jaxicl.cli``, ``entry``), the CLI splits the CPU into one JAX device per
usable core, at most ``MAX_CPU_DEVICES`` (``jax_num_cpu_devices``): on a CPU, XLA runs one small program's operations
on only ~1.2-1.5 of 2 cores, while runs or batch parts sharded over one device per core (``train.fit_devices``) keep
every core busy (1.05-1.5× the training throughput on a 2-core CPU: README "Performance"; more cores are untested).
``JAXICL_CPU_DEVICES=N`` sets the count (1: JAX's single CPU device); an ``XLA_FLAGS`` with
``--xla_force_host_platform_device_count`` is left as it is. Accelerators are not affected. ``main(argv)`` called
in-process (tests, notebooks) keeps the process's devices.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3  # = jaxicl.train.EXIT_DIVERGED (not imported: the CLI starts without loading JAX)


class _Parser(argparse.ArgumentParser):
  """argparse with a one-line usage error (``prog: error: ...``, exit 2)."""

  def error(self, message: str):
    self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def _int_at_least(lo: int):
  def parse(text: str) -> int:
    try:
      value = int(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"{text!r}: expected an integer >= {lo}") from None
    if value < lo:
      raise argparse.ArgumentTypeError(f"{text!r}: must be >= {lo}")
    return value
  parse.__name__ = f"integer >= {lo}"
  return parse
def _runs_per_program(text: str) -> int | str:
  if text in ("auto", "all"):
    return text
  try:
    return _int_at_least(1)(text)
  except argparse.ArgumentTypeError:
    raise argparse.ArgumentTypeError(f"{text!r}: expected auto, all or an integer >= 1") from None


CACHE_ENV = "JAXICL_COMPILATION_CACHE"


def compilation_cache_dir(environ: dict | None = None) -> str | None:
  """The persistent compilation cache folder the CLI uses (``None``: disabled); see the module docstring."""
  environ = os.environ if environ is None else environ
  if environ.get("JAX_COMPILATION_CACHE_DIR"):
    return environ["JAX_COMPILATION_CACHE_DIR"]
  value = environ.get(CACHE_ENV)
  if value is None:
    base = environ.get("XDG_CACHE_HOME") or os.path.join(environ.get("HOME") or os.path.expanduser("~"), ".cache")
    return os.path.join(base, "jaxicl", "xla")
  if value.strip().lower() in ("", "none", "off", "0"):
    return None
  return os.path.expanduser(value)


CPU_DEVICES_ENV = "JAXICL_CPU_DEVICES"
MAX_CPU_DEVICES = 8  # the default's cap: a batch split into many tiny parts is untested


def cpu_device_count(environ: dict | None = None) -> int | None:
  """JAX CPU devices the CLI program asks for (module docstring): ``JAXICL_CPU_DEVICES`` or the usable cores (at
  most ``MAX_CPU_DEVICES``); None when ``XLA_FLAGS`` already forces a count. ``ValueError`` naming the variable for a bad value."""
  environ = os.environ if environ is None else environ
  if "xla_force_host_platform_device_count" in environ.get("XLA_FLAGS", ""):
    return None
  raw = environ.get(CPU_DEVICES_ENV)
  if raw is None:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(cores, MAX_CPU_DEVICES)
  try:
    value = int(raw)
  except ValueError:
    value = 0
  if value < 1:
    raise ValueError(f"{CPU_DEVICES_ENV}={raw!r}: expected an integer >= 1")
  return value


def enable_compilation_cache() -> str | None:
  """Points JAX's persistent compilation cache at ``compilation_cache_dir()``; call before the first compile.

  Every program is cached (the CLI's small programs compile in under JAX's default 1 s threshold, yet
  together dominate a short run), unless ``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`` says otherwise.
  """
  import jax
  path = compilation_cache_dir()
  if path is None:
    return None
  jax.config.update("jax_compilation_cache_dir", path)
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  return path


def _train(args) -> int:
  import jax
  from jaxicl import configs, train
  cfg = configs.get_config(args.config, args.set)
  result = train.train(cfg, args.workdir, progress=not args.quiet, stop_after=args.stop_after)
  last = result.history[-1] if result.history else {}
  devices = len(jax.tree.leaves(result.state.params)[0].sharding.device_set)
  print(json.dumps({"workdir": args.workdir, "step": last.get("step"), "loss": last.get("loss"), "devices": devices}))
  return 0


def _eval(args) -> int:
  from jaxicl import evaluate, shifts
  specs = shifts.parse(args.shift)  # bad options fail before the workdir is loaded
  if args.bootstrap < 1:
    raise ValueError(f"--bootstrap={args.bootstrap}: must be >= 1")
  if not 0 < args.ci_level < 1:
    raise ValueError(f"--ci-level={args.ci_level}: must be in (0, 1)")
  report = evaluate.evaluate_workdir(args.workdir, n_prompts=args.prompts, run=args.run, out_dir=args.out,
                                     shifts=specs, n_boot=args.bootstrap, ci_level=args.ci_level)
  print(json.dumps({k: report[k] for k in ("table", "csv", "plot") if k in report}))
  return 0


def _theory(argv: list[str]) -> int:
  from jaxicl.theory import cli as theory_cli
  return theory_cli.main(argv)


def _reproduce(args) -> int:
  if args.list:
    print(preset_list())
    return 0
  if args.study is None or args.out is None:
    raise ValueError("a study (multihead or head-utilization) and --out are required (or --list)")
  if args.study == "multihead":
    from jaxicl.studies.multihead import run as study
  else:
    from jaxicl.studies.head_utilization import run as study
  extra = {}
  if args.baselines_only:
    if args.study != "head-utilization":
      raise ValueError(f"--baselines-only: applies to head-utilization only, not {args.study}")
    extra["baselines_only"] = True
  study.main(preset=args.preset, out=args.out, overrides=args.set, stop_after=args.stop_after,
             progress=not args.quiet, **extra)
  return 0


def preset_list(width: int = 110) -> str:
  """``jaxicl reproduce --list``: every study's presets with their command and expected time (from the preset
  docstrings, ``jaxicl.studies.catalogue``)."""
  import textwrap
  from jaxicl import studies
  lines = []
  for row in studies.catalogue():
    summary = row["summary"].split(". ")[0].rstrip(".") + "."
    lines += textwrap.wrap(f"{row['study']} --preset {row['preset']}: {summary}", width, subsequent_indent="    ")
    lines += textwrap.wrap(f"expected time: {row['time'] or 'not stated'}", width, initial_indent="    ",
                           subsequent_indent="      ")
    if row["command"]:
      lines.append(f"    command: {row['command']}")
  return "\n".join(lines)


def _sweep(args) -> int:
  from jaxicl import sweep
  sweep.run_sweep(args.config, grid=args.grid, n_seeds=args.seeds, out=args.out, overrides=args.set,
                  runs_per_program=args.runs_per_program,
                  progress=not args.quiet)
  return 0


def parser() -> argparse.ArgumentParser:
  p = _Parser(prog="jaxicl", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

  t = sub.add_parser("train", help="train (or resume) a run in --workdir")
  t.add_argument("--config", required=True, help="preset name or config .json")
  t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. task.d=10")
  t.add_argument("--workdir", required=True)
  t.add_argument("--stop-after", type=_int_at_least(1), default=None, help="stop (checkpointed) at this step")
  t.add_argument("--quiet", action="store_true", help="no progress bar")
  t.set_defaults(fn=_train)

  e = sub.add_parser("eval", help="excess risk vs number of in-context examples against baselines, in distribution "
                     "and under distribution shifts, with bootstrap confidence intervals")
  e.add_argument("--workdir", required=True)
  e.add_argument("--prompts", type=_int_at_least(2), default=None, help="held-out prompts (default: train.eval_prompts)")
  e.add_argument("--run", type=int, default=0, help="which run (seed × lr) of the workdir")
  e.add_argument("--out", default=None, help="folder for eval.json / eval.csv / eval.png + .pdf (default: workdir)")
  e.add_argument("--shift", action="append", default=[], metavar="NAME[=VALUE],...",
                 help="shifts evaluated besides in distribution, e.g. skewed,scaled=3, or all (names, defaults and "
                      "formulas: jaxicl/shifts.py; an unknown name lists the known ones)")
  e.add_argument("--bootstrap", type=int, default=1000, metavar="M", help="bootstrap resamples of the CIs")
  e.add_argument("--ci-level", type=float, default=0.95, help="confidence level of the bootstrap intervals")
  e.set_defaults(fn=_eval)

  sub.add_parser("theory", help="study-1 O(1/D) constants (see `jaxicl theory --help`)", add_help=False)

  r = sub.add_parser("reproduce", help="run a study end to end (--list: the presets and their expected times)")
  r.add_argument("study", nargs="?", choices=["multihead", "head-utilization"])
  r.add_argument("--preset", default="quick", choices=["tiny", "quick", "cpu", "full"])
  r.add_argument("--out", default=None, help="output folder (required unless --list)")
  r.add_argument("--list", action="store_true", help="list every study's presets with their expected time, then exit")
  r.add_argument("--quiet", action="store_true", help="no progress bar or per-group lines (the summary is printed)")
  r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="override every training config of the study, e.g. train.steps=100; head-utilization also "
                      "takes its grid and analysis settings, e.g. study.noise_stds=0.1,0.5")
  r.add_argument("--stop-after", type=_int_at_least(1), default=None,
                 help="stop every program at this step (checkpointed); run again to resume")
  r.add_argument("--baselines-only", action="store_true",
                 help="head-utilization: tune the baselines into OUT/baselines/ (read by the full run), train nothing")
  r.set_defaults(fn=_reproduce)

  s = sub.add_parser("sweep", help="grid × seeds, grouped into vmapped programs")
  s.add_argument("--config", required=True)
  s.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...")
  s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
  s.add_argument("--seeds", type=int, default=1)
  s.add_argument("--out", required=True)
  s.add_argument("--runs-per-program", type=_runs_per_program, default="auto", metavar="auto|all|N",
                 help="runs vmapped per compiled program: auto (by memory; also timed on accelerators), all, or N")
  s.add_argument("--quiet", action="store_true", help="no progress bar or per-group lines")
  s.set_defaults(fn=_sweep)
  return p


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  enable_compilation_cache()
  if argv and argv[0] == "theory":
    return _theory(argv[1:])
  args = parser().parse_args(argv)
  from jaxicl import configs
  try:
    configs.check_repeated(getattr(args, "set", []), "--set")  # before a study or sweep takes its folder
    return args.fn(args)
  except KeyboardInterrupt as e:  # train.Interrupted (checkpoint saved) or a signal outside training
    signum = getattr(e, "signum", signal.SIGINT)
    _error(args.command, e if str(e) else f"interrupted by {signal.Signals(signum).name}")
    return 128 + signum
  except FloatingPointError as e:  # train.DivergenceError
    _error(args.command, e)
    return EXIT_DIVERGED
  except ValueError as e:
    _error(args.command, e)
    return EXIT_BAD_INPUT
  except OSError as e:  # a filesystem failure not caught earlier: name the path
    where = f"{e.filename}: " if e.filename else ""
    why = e.strerror or str(e)
    if isinstance(e, (FileExistsError, NotADirectoryError)) and e.filename and not os.path.isdir(e.filename):
      from jaxicl.files import FOLDER_IN_THE_WAY
      why = f"{why} ({FOLDER_IN_THE_WAY})"
    _error(args.command, f"{where}{why}")
    return EXIT_BAD_INPUT


def _error(command: str, message) -> None:
  print(f"jaxicl {command}: error: {' '.join(str(message).split())}", file=sys.stderr)


def entry(argv: list[str] | None = None) -> int:
  """The ``jaxicl`` program: one JAX CPU device per core (module docstring), then ``main(argv)``."""
  try:
    count = cpu_device_count()
  except ValueError as e:
    print(f"jaxicl: error: {e}", file=sys.stderr)
    return EXIT_BAD_INPUT
  if count is not None:
    import jax
    jax.config.update("jax_num_cpu_devices", count)
  return main(argv)


if __name__ == "__main__":
  sys.exit(entry())
