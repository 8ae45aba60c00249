"""Strict config values: every field of every config dataclass (iterated generically, so new fields are covered)
refuses wrong types, non-finite numbers and out-of-range values with a ValueError naming the field; accepted
values are stored exactly as given (no silent coercion). CLI-only arguments likewise: one line, exit 2."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxicl import cli, configs
from jaxicl.theory import cli as theory_cli

# 40 examples per property in CI; JAXICL_HYPOTHESIS_EXAMPLES=N searches longer (e.g. 1500 before a release)
SETTINGS = settings(max_examples=int(os.environ.get("JAXICL_HYPOTHESIS_EXAMPLES", 40)), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def _fields() -> list[tuple[str, type, str, typing.Any]]:
  """(section, section class, field, annotation) of every config field."""
  out = []
  for section, cls in typing.get_type_hints(configs.Config).items():
    for name, hint in typing.get_type_hints(cls).items():
      out.append((section, cls, name, hint))
  return out


FIELDS = _fields()
IDS = [f"{s}.{n}" for s, _, n, _ in FIELDS]


def _unwrap(hint) -> tuple[typing.Any, bool]:
  """(the annotation without None, whether None is allowed)."""
  if typing.get_origin(hint) in (typing.Union, types.UnionType):
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return (args[0] if len(args) == 1 else typing.Union[tuple(args)]), type(None) in typing.get_args(hint)
  return hint, False


def _wrong_type(hint) -> st.SearchStrategy:
  """JSON values that are not of type ``hint`` (nor a number of the wrong kind)."""
  base, optional = _unwrap(hint)
  objects = st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)
  none = st.nothing() if optional else st.none()
  if base is int:
    return st.floats() | st.booleans() | st.text() | objects | none | st.integers(min_value=2**31) | \
        st.integers(max_value=-2**31 - 1)
  if base is float:
    return st.sampled_from([math.inf, -math.inf, math.nan]) | st.booleans() | st.text() | objects | none
  if base is str:
    return st.integers() | st.floats() | st.booleans() | st.lists(st.text(), max_size=2) | objects | none
  if base is bool:
    return st.integers() | st.floats() | st.text() | objects | none
  if typing.get_origin(base) is tuple:
    element = typing.get_args(base)[0]
    return objects | none | st.lists(_wrong_type(element), min_size=1, max_size=3)
  raise AssertionError(f"no strategy for {hint}")  # a new kind of field: extend the validation and this test


def _names(section, cls, name) -> tuple[str, str]:
  return f"{section}.{name}", f"{cls.__name__}.{name}"


@pytest.mark.parametrize("section,cls,name,hint", FIELDS, ids=IDS)
def test_wrong_json_types_are_refused_naming_the_field(section, cls, name, hint):
  @SETTINGS
  @given(_wrong_type(hint))
  def check(value):
    with pytest.raises(ValueError) as info:
      configs.from_dict({section: {name: value}})
    assert any(n in str(info.value) for n in _names(section, cls, name)), str(info.value)
    assert "\n" not in str(info.value)

  check()


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3), max_leaves=6)


def _same(stored, given_value) -> bool:
  if isinstance(given_value, list):
    return isinstance(stored, tuple) and len(stored) == len(given_value) and all(map(_same, stored, given_value))
  if isinstance(given_value, bool) or isinstance(stored, bool):
    return type(stored) is type(given_value) and stored == given_value
  if isinstance(given_value, int) and isinstance(stored, float):  # an int for a float field: exact
    return stored == given_value
  return type(stored) is type(given_value) and stored == given_value


@pytest.mark.parametrize("section,cls,name,hint", FIELDS, ids=IDS)
def test_any_json_value_is_refused_or_stored_exactly(section, cls, name, hint):
  @SETTINGS
  @given(JSON)
  def check(value):
    try:
      cfg = configs.from_dict({section: {name: value}})
    except ValueError as e:
      assert "\n" not in str(e)
      return
    stored = getattr(getattr(cfg, section), name)
    if value is None and section == "model":  # None: the model family's default for its own fields
      value = getattr(type(cfg.model)(name=cfg.model.name), name)
      value = list(value) if isinstance(value, tuple) else value
    if isinstance(value, (bool, int, float, str)) and isinstance(stored, tuple):  # a 1-tuple written as its entry
      value = [value]
    assert _same(stored, value), (value, stored)
    for v in jax_free_leaves(stored):
      assert not isinstance(v, float) or math.isfinite(v)

  check()


def jax_free_leaves(value):
  if isinstance(value, tuple):
    for v in value:
      yield from jax_free_leaves(v)
  else:
    yield value


@pytest.mark.parametrize("section,name,value", [("optim", "eps", 2**53 + 1), ("train", "lrs", [1e-3, 2**60 + 1])])
def test_an_integer_a_float_field_cannot_hold_exactly_is_refused(section, name, value):
  """(Found by the property test above: 2**53 + 1 in a float field was stored as 2**53.)"""
  with pytest.raises(ValueError, match=rf"^{section}\.{name}(\[1\])?=\d+: not exactly representable as a float"):
    configs.from_dict({section: {name: value}})
  exact = getattr(getattr(configs.from_dict({section: {name: 2**53}}), section), name)  # representable: kept
  assert exact in (2.0**53, (2.0**53,))


@pytest.mark.parametrize("section,cls,name,hint", FIELDS, ids=IDS)
def test_override_strings_must_parse_exactly(section, cls, name, hint):
  base, _ = _unwrap(hint)
  if base is float:
    bad = ["nan", "inf", "-inf", "1e999", "abc", ""]
  elif base is int:
    bad = ["2.5", "1e-3", "nan", "inf", "abc", "true", str(2**31)]
  elif base is bool:
    bad = ["maybe", "2", ""]
  elif typing.get_origin(base) is tuple and typing.get_args(base)[0] in (int, float):
    bad = ["1,nan", "[1, true]", "[1", "abc"]
  else:
    pytest.skip(f"{section}.{name}: every string is a candidate value")
  for text in bad:
    with pytest.raises(ValueError) as info:
      configs.get_config("tiny", [f"{section}.{name}={text}"])
    assert any(n in str(info.value) for n in _names(section, cls, name)), str(info.value)


@pytest.mark.parametrize("override", [
    "optim.lr=inf", "optim.lr=0", "train.lrs=1e-3,inf", "train.lrs=1e-3,-1", "optim.eps=-1", "optim.eps=0",
    "optim.b1=1", "optim.grad_clip=0", "optim.grad_clip=inf", "optim.weight_decay=-1", "optim.warmup_steps=-1",
    "train.eval_prompts=0", "train.steps=0", "train.batch_size=0", "train.seeds=-1", "train.log_every=0",
    "train.keep_ckpts=0", "curriculum.dims_inc=-1", "curriculum.points_inc=-5", "curriculum.every=0",
    "task.noise_var=inf", "task.noise_var=-1", "task.w_var=inf", "task.w_var=-1", "task.d=0", "task.n_points=0",
    "task.rho=nan", "model.width=0", "model.attn_scale=inf", "task=5", "train=x", "task.d=2.5", "nope.x=1",
])
def test_out_of_range_values_are_one_line_errors_with_exit_2(override, tmp_path, capsys):
  field = override.split("=")[0]
  assert cli.main(["train", "--config", "tiny", "--set", override, "--workdir", str(tmp_path / "w")]) == 2
  err = capsys.readouterr().err
  lines = err.strip().splitlines()
  assert len(lines) == 1 and "Traceback" not in err, err
  value = override.split("=")[1].split(",")[-1]
  section, _, name = field.partition(".")
  cls_name = type(getattr(configs.Config(), section, None)).__name__
  assert field in lines[0] or f"{cls_name}.{name}" in lines[0], err
  assert field.startswith("nope") or value in lines[0], err
  assert not (tmp_path / "w").exists()  # refused before touching the workdir


@pytest.mark.parametrize("sets,applies", [  # tiny: linear family, identity covariance, no curriculum
    (["task.sparsity=2"], ["task.family=sparse"]),
    (["task.rho=0.5"], ["task.cov=equicorrelated"]),
    (["task.d=1", "task.cov=given", "task.cov_matrix=1", "task.rho=0.2"], ["task.cov=toeplitz", "task.cov_matrix=none"]),
    (["task.cov_matrix=1,0,0"], None),
    (["task.prior_mean=1,0,0", "task.prior_mean_norm=2"], ["task.prior_mean=none"]),
    (["curriculum.every=100"], ["curriculum.dims_start=1"]),
    (["curriculum.dims_inc=2"], ["curriculum.dims_start=1"]),
    (["curriculum.dims_start=2", "curriculum.points_inc=4"], ["curriculum.points_start=2"]),
])
def test_a_value_that_would_be_ignored_is_an_error_naming_the_field(sets, applies, tmp_path, capsys):
  argv = ["train", "--config", "tiny", "--workdir", str(tmp_path / "w")]
  for s in sets:
    argv += ["--set", s]
  assert cli.main(argv) == 2
  err = capsys.readouterr().err
  lines = err.strip().splitlines()
  assert len(lines) == 1 and "Traceback" not in err and "does not apply" in lines[0], err
  assert f".{sets[-1].split('=')[0].split('.')[1]}=" in lines[0], err
  assert not (tmp_path / "w").exists()
  if applies is not None:  # the same value where it applies is accepted (``applies`` replaces a key of ``sets``)
    keys = {a.split("=", 1)[0] for a in applies}
    configs.get_config("tiny", [s for s in sets if s.split("=", 1)[0] not in keys] + applies)


@pytest.mark.parametrize("sets,named", [
    (["train.seeds=0,0"], "train.seeds"), (["train.lrs=0.001,1e-3"], "train.lrs"),
    (["train.task_variants=noise_var=1,noise_var=1"], "train.task_variants"),
    (["train.steps=30", "train.steps=20"], "train.steps"), (["task.d=\u0663"], "task.d"),
    (["train.steps=20", "--stop-after=21"], "stop_after=21"),
])
def test_repeated_or_ambiguous_values_are_one_line_errors(sets, named, tmp_path, capsys):
  """A value given twice (which was meant?), a seed or learning rate listed twice (identical runs), a digit that is
  not ASCII, a stop beyond the run's end: refused before anything is written."""
  argv = ["train", "--config", "tiny", "--workdir", str(tmp_path / "w")]
  for s in sets:
    argv += s.split("=", 1) if s.startswith("--") else ["--set", s]
  assert cli.main(argv) == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and named in lines[0], lines
  assert not (tmp_path / "w").exists()


def test_a_key_given_twice_is_refused_by_the_library_too():
  """The CLI's check on a repeated ``--set`` key holds for library callers: ``configs.override`` and the studies'
  ``configure`` refuse it, naming the key, instead of taking the last value."""
  from jaxicl.studies.head_utilization import run as hu
  from jaxicl.studies.multihead import presets as mh
  with pytest.raises(ValueError, match="override task.d: given twice"):
    configs.override(configs.get_config("tiny"), ["task.d=3", "train.steps=5", "task.d=4"])
  with pytest.raises(ValueError, match="override task.d: given twice"):
    configs.get_config("tiny", ["task.d=3", " task.d =4"])
  for configure, study_key in ((hu.configure, "study.probe_prompts"), (mh.configure, "study.mc_prompts")):
    for sets in (["train.steps=5", "train.steps=6"], [f"{study_key}=64", f"{study_key}=32"]):
      with pytest.raises(ValueError, match=f"{sets[0].split('=')[0]}: given twice"):
        configure("tiny", sets)
  assert configs.override(configs.get_config("tiny"), ["task.d=3", "model.max_points=8"]).task.d == 3


@pytest.mark.parametrize("document", ["[1, 2]", "5", "{\"task\": 5}", "{\"task\": {\"d\": 2.5}}",
                                      "{\"train\": {\"steps\": 20}, \"train\": {\"steps\": 30}}",
                                      "{\"task\": {\"d\": true}}", "{\"optim\": {\"lr\": \"1e-3\"}}", "{", ""])
def test_bad_config_files_are_one_line_errors_naming_the_file(document, tmp_path, capsys):
  path = tmp_path / "c.json"
  path.write_text(document)
  assert cli.main(["train", "--config", str(path), "--workdir", str(tmp_path / "w")]) == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1, lines
  assert "c.json" in lines[0], lines


@pytest.mark.parametrize("argv", [
    ["train", "--config", "tiny", "--workdir", "W", "--stop-after", "-1"],
    ["train", "--config", "tiny", "--workdir", "W", "--stop-after", "0"],
    ["train", "--config", "tiny", "--workdir", "W", "--stop-after", "2.5"],
    ["eval", "--workdir", "W", "--prompts", "0"],
    ["eval", "--workdir", "W", "--prompts", "1"],
    ["eval", "--workdir", "W", "--prompts", "-5"],
    ["eval", "--workdir", "W", "--prompts", "x"],
])
def test_bad_cli_arguments_are_one_line_errors(argv, tmp_path, capsys):
  argv = [str(tmp_path / "w") if a == "W" else a for a in argv]
  with pytest.raises(SystemExit) as info:
    cli.main(argv)
  assert info.value.code == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and argv[-2] in lines[0], lines


@pytest.mark.parametrize("args", [
    ["--d", "5", "--temperature", "inf"], ["--d", "5", "--temperature", "nan"], ["--d", "5", "--temperature", "0"],
    ["--d", "0"], ["--d", "2.5"], ["--d", "5", "--noise-var", "inf"], ["--d", "5", "--noise-var", "-1"],
    ["--d", "5", "--tau2", "nan"], ["--d", "5", "--w-min", "inf"], ["--d", "5", "--w-min", "-1"],
    ["--d", "5", "--heads", "0"], ["--d", "5", "--p", "0"], ["--d", "5", "--D", "0"], ["--d", "5", "--bogus"],
    ["--d", "5", "--tau2", "0"], ["--d", "5", "--heads", "17"],
    ["--d", "5", "--D", "100"], ["--d", "5", "--p", "64", "--D", "100"],  # no rank-limited analysis uses D
])
@pytest.mark.parametrize("as_json", [False, True])
def test_theory_cli_refuses_bad_flags_in_one_line(args, as_json, capfd):
  assert theory_cli.main(args + (["--json"] if as_json else [])) == 2
  out, err = capfd.readouterr()
  lines = err.strip().splitlines()
  assert len(lines) == 1 and "error" in lines[0], err
  if as_json:
    assert "error" in json.loads(out)
  else:
    assert out == ""


def test_every_config_dataclass_is_covered():
  """The generic tests above iterate these fields; a field of a new kind must get a strategy."""
  for section, cls, name, hint in FIELDS:
    assert dataclasses.is_dataclass(cls)
    _wrong_type(hint)


@pytest.mark.parametrize("study", ["multihead", "head_utilization"])
def test_study_module_runs_with_python_m_without_runpy_warning(study, xla_cache):
  """`python -m jaxicl.studies.<study>.run` is a documented entry point: the package must not import ``run`` itself
  (runpy would warn and execute a second copy of the module); its names still import from the package."""
  import importlib
  import subprocess
  import sys

  from conftest import REPO, subprocess_env
  proc = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", f"jaxicl.studies.{study}.run", "--help"],
                        cwd=REPO, env=subprocess_env(xla_cache), capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert "RuntimeWarning" not in proc.stderr and "--preset" in proc.stdout
  package = importlib.import_module(f"jaxicl.studies.{study}")
  assert callable(package.main) and callable(package.configure) and "quick" in package.PRESETS
  with pytest.raises(AttributeError, match="no attribute 'nope'"):
    package.nope  # noqa: B018
