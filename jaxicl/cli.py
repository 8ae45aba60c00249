"""Command line: ``jaxicl train | eval | theory | reproduce | sweep``. Thin shell over the library."""

from __future__ import annotations

import argparse
import json
import sys


def _train(args) -> int:
  from jaxicl import configs, train
  if args.distributed:
    import jax
    jax.distributed.initialize()
  cfg = configs.get_config(args.config, args.set)
  result = train.train(cfg, args.workdir, progress=not args.quiet, stop_after=args.stop_after)
  last = result.history[-1] if result.history else {}
  print(json.dumps({"workdir": args.workdir, "step": last.get("step"), "loss": last.get("loss")}))
  return 0


def _eval(args) -> int:
  from jaxicl import evaluate
  report = evaluate.evaluate_workdir(args.workdir, n_prompts=args.prompts, run=args.run, out_dir=args.out)
  print(json.dumps({k: report[k] for k in ("table", "plot") if k in report}))
  return 0


def _theory(argv: list[str]) -> int:
  from jaxicl.theory import cli as theory_cli
  return theory_cli.main(argv)


def _reproduce(args) -> int:
  if args.study == "multihead":
    from jaxicl.studies.multihead import run as study
  else:
    from jaxicl.studies.head_utilization import run as study
  study.main(preset=args.preset, out=args.out)
  return 0


def _sweep(args) -> int:
  from jaxicl import sweep
  sweep.run_sweep(args.config, grid=args.grid, n_seeds=args.seeds, out=args.out, overrides=args.set,
                  progress=not args.quiet)
  return 0


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="jaxicl", description=__doc__)
  sub = p.add_subparsers(dest="command", required=True)

  t = sub.add_parser("train", help="train (or resume) a run in --workdir")
  t.add_argument("--config", required=True, help="preset name or config .json")
  t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. task.d=10")
  t.add_argument("--workdir", required=True)
  t.add_argument("--stop-after", type=int, default=None, help="stop (checkpointed) at this step")
  t.add_argument("--quiet", action="store_true")
  t.add_argument("--distributed", action="store_true", help="call jax.distributed.initialize() (multi-host)")
  t.set_defaults(fn=_train)

  e = sub.add_parser("eval", help="loss vs number of in-context examples against baselines")
  e.add_argument("--workdir", required=True)
  e.add_argument("--prompts", type=int, default=None)
  e.add_argument("--run", type=int, default=0, help="which run (seed × lr) of the workdir")
  e.add_argument("--out", default=None, help="folder for eval.json / eval.png (default: workdir)")
  e.set_defaults(fn=_eval)

  sub.add_parser("theory", help="study-1 O(1/D) constants (see `jaxicl theory --help`)", add_help=False)

  r = sub.add_parser("reproduce", help="run a study end to end")
  r.add_argument("study", choices=["multihead", "head-utilization"])
  r.add_argument("--preset", default="quick", choices=["tiny", "quick", "full"])
  r.add_argument("--out", required=True)
  r.set_defaults(fn=_reproduce)

  s = sub.add_parser("sweep", help="grid × seeds, grouped into vmapped programs")
  s.add_argument("--config", required=True)
  s.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...")
  s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
  s.add_argument("--seeds", type=int, default=1)
  s.add_argument("--out", required=True)
  s.add_argument("--quiet", action="store_true")
  s.set_defaults(fn=_sweep)
  return p


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if argv and argv[0] == "theory":
    return _theory(argv[1:])
  args = parser().parse_args(argv)
  try:
    return args.fn(args)
  except ValueError as e:
    print(f"jaxicl {args.command}: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
