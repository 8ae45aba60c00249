"""Fault injection: killed runs, corrupted checkpoints and run files, concurrent writers, bad filesystems, divergence.

Every case asserts survival by its outcome: the resumed (or restarted) run ends with parameters and optimizer
state bit-identical to an uninterrupted run, ``metrics.jsonl`` holds exactly one record per logged step with the
uninterrupted run's losses, and refused input is a one-line error naming the path (exit 2).

CI runs a sampled subset (one case per kind). The whole battery (every file of the latest checkpoint × truncate /
garble / delete, SIGKILL at many random offsets, ...) runs with ``JAXICL_FAULTS=all python -m pytest -q
tests/test_faults.py``; ``JAXICL_FAULTS_SEED`` changes the sampled cases and kill offsets.
"""

from __future__ import annotations

import gc
import inspect
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import types
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, subprocess_env
from jaxicl import checkpoint, cli, configs, files, tasks, train

FULL = os.environ.get("JAXICL_FAULTS", "") == "all"
SEED = int(os.environ.get("JAXICL_FAULTS_SEED", "0"))
OVERRIDES = ["train.steps=40", "train.log_every=10", "train.ckpt_every=10", "train.keep_ckpts=3"]


def _cfg() -> configs.Config:
  return configs.get_config("tiny", OVERRIDES)


def _leaves(state) -> list[np.ndarray]:
  return [np.asarray(x) for x in jax.tree.leaves((state.params, state.opt_state, state.step))]


def _assert_same_state(a, b) -> None:
  for x, y in zip(_leaves(a), _leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


def _records(workdir) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _assert_metrics_intact(workdir, reference_history) -> None:
  """One record per logged step, the uninterrupted run's steps and losses (bit-exact)."""
  records = _records(workdir)
  assert [r["step"] for r in records] == [h["step"] for h in reference_history]
  assert [r["loss"] for r in records] == [h["loss"] for h in reference_history]


def _one_line_error(text: str, *needles: str) -> None:
  lines = [line for line in text.splitlines() if line.strip()]
  assert lines and "Traceback" not in text, text
  assert "error:" in lines[-1] and all(n in lines[-1] for n in needles), text


@pytest.fixture(scope="module")
def reference():
  """The uninterrupted run (in this process; the engine's programs are reused by the cases)."""
  return train.train(_cfg())


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
  """A workdir stopped at step 30 (checkpoints 10, 20, 30), copied by each case."""
  workdir = str(tmp_path_factory.mktemp("stopped") / "run")
  train.train(_cfg(), workdir, stop_after=30)
  return workdir


def _copy(stopped, tmp_path) -> str:
  workdir = str(tmp_path / "run")
  shutil.copytree(stopped, workdir, ignore=shutil.ignore_patterns(".lock*"))
  return workdir


# ----------------------------------------------------------------------------- corrupted checkpoints

def _latest(workdir) -> str:
  return os.path.join(workdir, "checkpoints", "30")


def _files(directory) -> list[str]:
  return sorted(os.path.relpath(os.path.join(root, f), directory)
                for root, _, files in os.walk(directory) for f in files)


def _truncate(path):
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.truncate(size // 2)


def _garble(path):
  size = os.path.getsize(path)
  rng = random.Random(path)
  with open(path, "r+b") as f:
    f.seek(size // 3)
    f.write(bytes(rng.randrange(256) for _ in range(max(1, min(64, size - size // 3)))))


FILE_FAULTS = {"truncate": _truncate, "garble": _garble, "delete": os.remove}


def _file_cases() -> list[tuple[str, int]]:
  """(fault, index of a file of the latest checkpoint): every file with JAXICL_FAULTS=all, else one per fault."""
  if FULL:
    return [(fault, i) for fault in FILE_FAULTS for i in range(16)]
  rng = random.Random(SEED)
  return [(fault, rng.randrange(1000)) for fault in FILE_FAULTS]


def _resume_and_check(workdir, reference, capsys=None):
  result = train.train(_cfg(), workdir)
  _assert_same_state(result.state, reference.state)
  _assert_metrics_intact(workdir, reference.history)
  steps = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), repair=False).steps()
  assert steps and steps[-1] == 40 and all(s % 10 == 0 for s in steps), steps
  return result


@pytest.mark.parametrize("fault,index", _file_cases())
def test_damaged_file_in_the_latest_checkpoint(fault, index, stopped, reference, tmp_path):
  workdir = _copy(stopped, tmp_path)
  files = _files(_latest(workdir))
  if FULL and index >= len(files):
    pytest.skip(f"the checkpoint has {len(files)} files")
  FILE_FAULTS[fault](os.path.join(_latest(workdir), files[index % len(files)]))
  _resume_and_check(workdir, reference)


def _empty_dir(workdir):
  shutil.rmtree(_latest(workdir))
  os.makedirs(_latest(workdir))


def _plain_file(workdir):
  shutil.rmtree(_latest(workdir))
  with open(_latest(workdir), "w") as f:
    f.write("not a checkpoint")


def _all_garbled(workdir):
  for f in _files(_latest(workdir)):
    with open(os.path.join(_latest(workdir), f), "wb") as fh:
      fh.write(b"garbage")


def _nan_state(workdir):
  """A checkpoint that Orbax reads fine but holds NaN parameters (e.g. saved from a broken state)."""
  cfg = _cfg()
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), keep=cfg.train.keep_ckpts)
  state = ckpt.restore_latest(train.Engine(cfg).abstract_state())[1]
  shutil.rmtree(_latest(workdir))
  ckpt.manager.reload()
  state = state._replace(params=jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), state.params))
  ckpt.save(30, state, {"step": 30})
  ckpt.close()


def _wrong_values(workdir):
  """A well-formed checkpoint whose values differ from the ones saved (fingerprint mismatch)."""
  cfg = _cfg()
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), keep=cfg.train.keep_ckpts)
  step, state, meta = ckpt.restore_latest(train.Engine(cfg).abstract_state())
  shutil.rmtree(_latest(workdir))
  ckpt.manager.reload()
  ckpt.save(30, state._replace(params=jax.tree.map(lambda x: x + 1.0, state.params)), {"step": 30})
  ckpt.wait()
  with open(os.path.join(_latest(workdir), "meta", "metadata")) as f:
    saved = json.load(f)
  saved["fingerprint"] = meta["fingerprint"]
  with open(os.path.join(_latest(workdir), "meta", "metadata"), "w") as f:
    json.dump(saved, f)
  ckpt.close()


def _array_data_truncated(workdir):
  """Every array data file of the latest checkpoint cut to half: Orbax's concurrent reads fail part-way."""
  state = os.path.join(_latest(workdir), "state")
  for root, _, names in os.walk(state):
    if os.path.basename(root) == "d":
      for name in names:
        _truncate(os.path.join(root, name))


def _tmp_leftover(workdir):
  """A save interrupted by a kill leaves Orbax's temporary folder behind."""
  os.makedirs(os.path.join(workdir, "checkpoints", "40.orbax-checkpoint-tmp-1234567", "state"))


def _all_checkpoints_bad(workdir):
  for step in (10, 20, 30):
    shutil.rmtree(os.path.join(workdir, "checkpoints", str(step)))
    os.makedirs(os.path.join(workdir, "checkpoints", str(step)))


def _checkpoints_is_a_file(workdir):
  shutil.rmtree(os.path.join(workdir, "checkpoints"))
  with open(os.path.join(workdir, "checkpoints"), "w") as f:
    f.write("oops")


CHECKPOINT_FAULTS = {"empty_dir": _empty_dir, "plain_file": _plain_file, "all_files_garbled": _all_garbled,
                     "nan_values": _nan_state, "wrong_values": _wrong_values, "tmp_leftover": _tmp_leftover,
                     "none_restorable": _all_checkpoints_bad, "checkpoints_dir_is_a_file": _checkpoints_is_a_file,
                     "array_data_truncated": _array_data_truncated}
_SAMPLED_CHECKPOINT_FAULTS = ("empty_dir", "plain_file", "nan_values", "none_restorable", "array_data_truncated")


@pytest.mark.parametrize("fault", [f for f in CHECKPOINT_FAULTS if FULL or f in _SAMPLED_CHECKPOINT_FAULTS])
def test_bad_latest_checkpoint_is_skipped_and_set_aside(fault, stopped, reference, tmp_path, capsys):
  workdir = _copy(stopped, tmp_path)
  CHECKPOINT_FAULTS[fault](workdir)
  records = open(os.path.join(workdir, "metrics.jsonl")).read()
  capsys.readouterr()
  _resume_and_check(workdir, reference)
  err = capsys.readouterr().err
  if fault != "tmp_leftover":
    assert "moved it to" in err and os.listdir(os.path.join(workdir, "checkpoints_corrupt")), err
  if fault in ("none_restorable", "checkpoints_dir_is_a_file"):
    assert "starting from step 0" in err or "is not a directory" in err, err
  if fault == "none_restorable":  # the records of the run that no checkpoint restores are kept beside them
    corrupt = os.path.join(workdir, "checkpoints_corrupt")
    (kept,) = [n for n in os.listdir(corrupt) if n.startswith("metrics.jsonl")]
    assert open(os.path.join(corrupt, kept)).read() == records
  assert "Traceback" not in err and all(line.startswith("jaxicl: ") for line in err.strip().splitlines()), err


def test_a_read_that_fails_part_way_reports_one_line_and_no_leftover_errors(stopped, reference, tmp_path, capsys,
                                                                             caplog, monkeypatch):
  """Orbax reads a checkpoint's arrays concurrently; when one read fails the others are dropped, and their errors
  (unraisable exceptions, asyncio's "Task exception was never retrieved") used to print dozens of tracebacks."""
  workdir = _copy(stopped, tmp_path)
  _array_data_truncated(workdir)
  leftovers = []
  monkeypatch.setattr(sys, "unraisablehook", leftovers.append)  # what a plain Python process would print
  capsys.readouterr()
  with caplog.at_level(logging.ERROR, logger="asyncio"):
    _resume_and_check(workdir, reference)
    time.sleep(1.0)
    gc.collect()
  err = capsys.readouterr().err
  assert [line for line in err.strip().splitlines() if "is unreadable" in line and "moved it to" in line], err
  assert not leftovers, [f"{u.exc_type.__name__}: {u.exc_value}" for u in leftovers][:5]
  assert not [r for r in caplog.records if r.name == "asyncio"], caplog.text[:2000]
  # What such a read leaves becomes garbage later too, often at exit: from now on this process drops an Orbax
  # coroutine never awaited and the closed loop's error, while anything else still reaches the hook and warnings.
  from orbax.checkpoint._src.serialization import serialization

  async def ours():
    pass

  read = serialization._read_array_index_and_device_put
  required = [p for p in inspect.signature(read).parameters.values() if p.default is inspect.Parameter.empty]
  args = [None for p in required if p.kind is not inspect.Parameter.KEYWORD_ONLY]
  kwargs = {p.name: None for p in required if p.kind is inspect.Parameter.KEYWORD_ONLY}
  with warnings.catch_warnings(record=True) as caught:
    dropped_read, our_coroutine = read(*args, **kwargs), ours()
    del dropped_read, our_coroutine
    gc.collect()
  assert [str(w.message) for w in caught if "never awaited" in str(w.message)] == [
      f"coroutine '{ours.__qualname__}' was never awaited"], [str(w.message) for w in caught]
  for error in (RuntimeError("Event loop is closed"), RuntimeError("something else")):
    sys.unraisablehook(types.SimpleNamespace(exc_type=RuntimeError, exc_value=error, exc_traceback=None,
                                             err_msg=None, object=None))
  assert [str(u.exc_value) for u in leftovers] == ["something else"]


def test_read_only_loading_skips_without_moving(stopped, tmp_path, capsys):
  workdir = _copy(stopped, tmp_path)
  _empty_dir(workdir)
  loaded = train.load_run(workdir)
  assert int(np.asarray(loaded.state.step)[0]) == 20
  assert "unreadable" in capsys.readouterr().err
  assert os.path.isdir(_latest(workdir)) and not os.path.exists(os.path.join(workdir, "checkpoints_corrupt"))


# ----------------------------------------------------------------------------- run files

def _torn_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
    f.write('{"step": 40, "loss": [1.2')


def _garbled_metrics_line(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  lines = open(path).read().splitlines(keepends=True)
  lines.insert(1, "\x00\x00garbage\n")
  open(path, "w").writelines(lines)


def _duplicated_metrics(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  lines = open(path).read().splitlines(keepends=True)
  open(path, "w").writelines(lines + lines[-1:])


def _records_past_the_checkpoint(workdir):
  """Killed after logging step 40 but before its checkpoint: the record is recomputed, not duplicated."""
  with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
    f.write(json.dumps({"step": 40, "loss": [123.0], "last_loss": [123.0], "steps_per_s": 1.0}) + "\n")


def _metrics_missing(workdir):
  os.remove(os.path.join(workdir, "metrics.jsonl"))


RUN_FILE_FAULTS = {"torn_metrics_line": _torn_metrics, "garbled_metrics_line": _garbled_metrics_line,
                   "duplicated_metrics_line": _duplicated_metrics, "records_past_checkpoint": _records_past_the_checkpoint}


@pytest.mark.parametrize("fault", [f for f in RUN_FILE_FAULTS if FULL or f in ("torn_metrics_line",
                                                                                "records_past_checkpoint")])
def test_damaged_metrics_are_repaired_on_resume(fault, stopped, reference, tmp_path, capsys):
  workdir = _copy(stopped, tmp_path)
  RUN_FILE_FAULTS[fault](workdir)
  _resume_and_check(workdir, reference)
  if fault in ("torn_metrics_line", "garbled_metrics_line"):
    assert "dropping an unreadable record" in capsys.readouterr().err


def test_empty_config_before_any_checkpoint_is_rewritten(reference, tmp_path, capsys):
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "config.json").write_text("")  # killed in its first seconds, before atomic writes existed
  (workdir / "metrics.jsonl").write_text('{"step": 10, "loss": [1.0]')
  result = train.train(_cfg(), str(workdir))
  _assert_same_state(result.state, reference.state)
  _assert_metrics_intact(str(workdir), reference.history)
  assert configs.from_dict(json.loads((workdir / "config.json").read_text())) == _cfg()
  assert "rewritten" in capsys.readouterr().err


@pytest.mark.parametrize("content", ["", "{\"task\": {\"d\": 3", "[1, 2]", "{\"task\": {\"d\": 2.5}}", None])
def test_bad_config_json_beside_checkpoints_is_a_one_line_error(content, stopped, tmp_path, capsys):
  if not FULL and content not in ("", None):
    pytest.skip("sampled: JAXICL_FAULTS=all runs every variant")
  workdir = _copy(stopped, tmp_path)
  path = os.path.join(workdir, "config.json")
  if content is None:
    os.remove(path)
  else:
    open(path, "w").write(content)
  args = ["train", "--config", "tiny", "--workdir", workdir, "--quiet"] + [a for o in OVERRIDES for a in ("--set", o)]
  assert cli.main(args) == 2
  _one_line_error(capsys.readouterr().err, path)
  assert os.path.isdir(_latest(workdir))  # nothing was touched


# ----------------------------------------------------------------------------- filesystem

def _train_cli(workdir: str) -> list[str]:
  return ["train", "--config", "tiny", "--workdir", workdir, "--quiet", "--set", "train.steps=10",
          "--set", "train.log_every=10"]


def _fs_cases(tmp_path):
  cases = {}
  (tmp_path / "a_file").write_text("x")
  cases["workdir_is_a_file"] = (str(tmp_path / "a_file"), "a_file")
  cases["inside_a_file"] = (str(tmp_path / "a_file" / "run"), "a_file")
  long = "n" * 300
  cases["name_too_long"] = (str(tmp_path / long / "run"), long)
  if os.geteuid() == 0:  # root ignores permission bits: use a filesystem that refuses everyone
    cases["parent_not_writable"] = ("/sys/jaxicl_fault_test/run", "/sys/jaxicl_fault_test")
  else:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    cases["parent_not_writable"] = (str(ro / "run"), str(ro))
  return cases


@pytest.mark.parametrize("case", ["workdir_is_a_file", "inside_a_file", "name_too_long", "parent_not_writable"])
def test_filesystem_errors_are_one_line_errors_naming_the_path(case, tmp_path, capsys):
  workdir, needle = _fs_cases(tmp_path)[case]
  assert cli.main(_train_cli(workdir)) == 2
  _one_line_error(capsys.readouterr().err, needle)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits")
def test_read_only_finished_workdir_is_a_one_line_error(tmp_path, capsys):
  workdir = tmp_path / "run"
  assert cli.main(_train_cli(str(workdir))) == 0
  for root, dirs, names in os.walk(workdir):
    for name in dirs + names:
      os.chmod(os.path.join(root, name), 0o500 if name in dirs else 0o400)
  workdir.chmod(0o500)
  try:
    assert cli.main(_train_cli(str(workdir))) == 2
    _one_line_error(capsys.readouterr().err, str(workdir))
  finally:
    for root, dirs, _ in os.walk(workdir):
      for name in dirs:
        os.chmod(os.path.join(root, name), 0o700)
    workdir.chmod(0o700)


# ----------------------------------------------------------------------------- divergence

@tasks.register_family("rare_nan_for_test")
def _rare_nan(key, cfg):
  w = jax.random.normal(key, (cfg.d,))
  return jnp.where(jax.random.uniform(jax.random.fold_in(key, 7)) < 2e-3, jnp.nan, w)


def test_divergence_stops_with_exit_3_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
  sets = ["task.family=rare_nan_for_test", "train.steps=30", "train.log_every=10", "train.ckpt_every=10"]
  cfg = configs.get_config("tiny", sets)
  data_key = np.asarray(train._engine(cfg, None).init().data_key)[0]
  first_nan = next(t for t in range(cfg.train.steps) if np.isnan(np.asarray(
      tasks.sample_batch(tasks.batch_key(data_key, t), cfg.task, cfg.train.batch_size).ys)).any())
  assert 10 <= first_nan < 30, first_nan  # the case needs a checkpoint before the NaN
  workdir = str(tmp_path / "run")
  rc = cli.main(["train", "--config", "tiny", "--workdir", workdir, "--quiet"] + [a for s in sets for a in ("--set", s)])
  assert rc == cli.EXIT_DIVERGED == train.EXIT_DIVERGED == 3
  last_good = first_nan // 10 * 10
  _one_line_error(capsys.readouterr().err, f"non-finite loss at step {first_nan} in run 0", "seed=0", "lr=0.003",
                  f"last good checkpoint: step {last_good}", "grad_clip")
  loaded = train.load_run(workdir)
  assert int(np.asarray(loaded.state.step)[0]) == last_good
  assert all(np.all(np.isfinite(x)) for x in _leaves(loaded.state))
  assert max(r["step"] for r in _records(workdir)) == last_good


# ----------------------------------------------------------------------------- killed processes, concurrent writers

SUB_OVERRIDES = ["train.steps=100", "train.log_every=10", "train.ckpt_every=10", "train.seeds=0,1"]


def _sub_cmd(workdir: str) -> list[str]:
  cmd = [sys.executable, "-m", "jaxicl.cli", "train", "--config", "tiny", "--workdir", workdir, "--quiet"]
  for o in SUB_OVERRIDES:
    cmd += ["--set", o]
  return cmd


def _sub_run(workdir: str, cache: str) -> subprocess.CompletedProcess:
  proc = subprocess.run(_sub_cmd(workdir), cwd=REPO, env=subprocess_env(cache), capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


@pytest.fixture(scope="module")
def sub_reference(tmp_path_factory, xla_cache):
  """An uninterrupted subprocess run (the same compiler flags as the killed ones) and its wall time."""
  workdir = str(tmp_path_factory.mktemp("sub_reference") / "run")
  t0 = time.monotonic()
  _sub_run(workdir, xla_cache)
  return train.load_run(workdir), _records(workdir), time.monotonic() - t0


def _wait_for(predicate, proc, timeout=300.0, poll=0.002) -> bool:
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if predicate():
      return True
    if proc.poll() is not None:
      return False
    time.sleep(poll)
  return False


def _ckpt_entries(workdir):
  d = os.path.join(workdir, "checkpoints")
  return os.listdir(d) if os.path.isdir(d) else []


KILL_POINTS = {
    "before_first_checkpoint": lambda w: os.path.exists(os.path.join(w, "config.json")),
    "during_a_save": lambda w: any("tmp" in e for e in _ckpt_entries(w)),
    "after_some_checkpoints": lambda w: sum(e.isdigit() for e in _ckpt_entries(w)) >= 2,
}


def _kill_cases():
  rng = random.Random(SEED)
  cases = [("random_offset", rng.random()) for _ in range(12 if FULL else 0)]  # CI: the writer test kills at random
  cases += [(k, None) for k in KILL_POINTS for _ in range(3 if FULL else 1) if FULL or k == "during_a_save"]
  return cases


def _check_survived(workdir, sub_reference):
  ref, ref_records, _ = sub_reference
  resumed = train.load_run(workdir)
  _assert_same_state(resumed.state, ref.state)
  records = _records(workdir)
  assert [r["step"] for r in records] == [r["step"] for r in ref_records]
  assert [r["loss"] for r in records] == [r["loss"] for r in ref_records]
  steps = [int(e) for e in _ckpt_entries(workdir) if e.isdigit()]
  assert steps and all(s % 10 == 0 for s in steps), steps


@pytest.mark.parametrize("point,offset", _kill_cases())
def test_sigkill_at_any_moment_resumes_bit_identically(point, offset, sub_reference, tmp_path, xla_cache):
  workdir = str(tmp_path / "run")
  proc = subprocess.Popen(_sub_cmd(workdir), cwd=REPO, env=subprocess_env(xla_cache), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE)
  try:
    if point == "random_offset":
      time.sleep(offset * sub_reference[2])
    else:
      _wait_for(lambda: KILL_POINTS[point](workdir), proc)
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  _sub_run(workdir, xla_cache)
  _check_survived(workdir, sub_reference)


def test_second_writer_is_refused_and_a_killed_writer_does_not_block(sub_reference, tmp_path, xla_cache):
  workdir = str(tmp_path / "run")
  env = subprocess_env(xla_cache)
  first = subprocess.Popen(_sub_cmd(workdir), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  try:
    assert _wait_for(lambda: os.path.exists(os.path.join(workdir, ".lock.owner")), first)
    second = subprocess.run(_sub_cmd(workdir), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    running = first.poll() is None
  finally:
    first.send_signal(signal.SIGKILL)
    first.wait()
  if running:  # the first writer held the lock during the whole attempt
    assert second.returncode == 2
    _one_line_error(second.stderr, "another process is training", f"pid {first.pid}")
  _sub_run(workdir, xla_cache)  # the killed holder's lock died with it
  _check_survived(workdir, sub_reference)


def test_lock_is_refused_within_one_process_too(tmp_path):
  with train.workdir_lock(str(tmp_path)):
    with pytest.raises(ValueError, match=f"another process is training in it \\(pid {os.getpid()}"):
      with train.workdir_lock(str(tmp_path)):
        pass
  with train.workdir_lock(str(tmp_path)):  # released
    pass


@pytest.mark.parametrize("argv", [["reproduce", "head-utilization", "--preset", "tiny"],
                                  ["reproduce", "head-utilization", "--preset", "tiny", "--baselines-only"],
                                  ["reproduce", "multihead", "--preset", "tiny"],
                                  ["sweep", "--config", "tiny", "--grid", "optim.lr=1e-3,2e-3", "--seeds", "1"]])
def test_a_study_or_sweep_output_folder_has_one_writer(argv, tmp_path, capsys):
  """While one writer holds a study's or a sweep's --out, a second command on it is refused before it writes
  anything: exit 2, one line naming the folder and the holder."""
  out = str(tmp_path / "out")
  os.makedirs(out)
  with train.workdir_lock(out, "running a study", "out"):
    assert cli.main(argv + ["--out", out]) == 2
    assert sorted(os.listdir(out)) == [".lock", ".lock.owner"]
  _one_line_error(capsys.readouterr().err, f"out={out!r}", "another process is", f"pid {os.getpid()}")


def test_an_evaluation_folder_has_one_writer(tmp_path, capsys):
  """``jaxicl eval`` holds its output folder's lock: a second eval into the same --out, or an eval into a workdir
  being trained, is refused before it writes (exit 2, one line naming the folder and what the holder does), and a
  training is refused in a workdir that an eval is writing into."""
  workdir, out = str(tmp_path / "run"), str(tmp_path / "eval")
  cfg = configs.get_config("tiny", ["train.steps=2", "train.log_every=1"])
  train.train(cfg, workdir)
  before = _contents(workdir)
  os.makedirs(out)
  with train.workdir_lock(out, "writing an evaluation", "out"):
    assert cli.main(["eval", "--workdir", workdir, "--out", out]) == 2
    assert sorted(os.listdir(out)) == [".lock", ".lock.owner"]
  _one_line_error(capsys.readouterr().err, f"out={out!r}", "another process is writing an evaluation in it",
                  f"pid {os.getpid()}")
  with train.workdir_lock(workdir):  # a training holds the workdir: eval's default output folder
    assert cli.main(["eval", "--workdir", workdir]) == 2
  _one_line_error(capsys.readouterr().err, f"out={workdir!r}", "another process is training in it")
  with train.workdir_lock(workdir, "writing an evaluation", "workdir"):
    with pytest.raises(ValueError, match="another process is writing an evaluation in it"):
      train.train(cfg, workdir)
  assert _contents(workdir) == before
  assert cli.main(["eval", "--workdir", workdir, "--out", out, "--prompts", "8", "--bootstrap", "10"]) == 0
  assert os.path.exists(os.path.join(out, "eval.json"))


@pytest.mark.parametrize("argv,folder", [(["reproduce", "head-utilization", "--preset", "tiny"], "records"),
                                         (["reproduce", "multihead", "--preset", "tiny"], "groups"),
                                         (["sweep", "--config", "tiny", "--grid", "optim.lr=1e-3,2e-3"], "plans")])
def test_a_file_where_a_study_writes_a_folder_is_a_one_line_error(argv, folder, tmp_path, capsys):
  """A plain file in the way of a subfolder a study or sweep writes stops the command before it trains: exit 2,
  one line naming the path and what to do, nothing written."""
  out = tmp_path / "out"
  out.mkdir()
  (out / folder).write_text("not a folder")
  assert cli.main(argv + ["--quiet", "--out", str(out)]) == 2
  _one_line_error(capsys.readouterr().err, str(out / folder), "a file where the command needs a folder")
  assert sorted(os.listdir(out)) == [".lock", ".lock.owner", folder]


def _contents(folder: str) -> dict[str, bytes]:
  """Every file under ``folder`` (but the lock owner, rewritten by each command that takes the lock)."""
  out = {}
  for root, _, names in os.walk(folder):
    for name in names:
      if name != ".lock.owner":
        path = os.path.join(root, name)
        out[os.path.relpath(path, folder)] = open(path, "rb").read()
  return out


def test_a_folder_holds_one_kind_of_output(tmp_path, capsys):
  """A command refuses a folder that another kind of command wrote (a training run, a sweep, a study) or the same
  kind with other settings (another sweep's grid): exit 2, one line naming the folder and what it holds, and
  nothing in the folder changes. A sweep's results were overwritten, and a study trained inside a sweep's folder."""
  base = ["--set", "train.steps=2", "--set", "train.log_every=1", "--quiet"]
  sweep_out, workdir = str(tmp_path / "sweep"), str(tmp_path / "run")
  assert cli.main(["sweep", "--config", "tiny", "--grid", "optim.lr=1e-3,2e-3", "--out", sweep_out] + base) == 0
  assert cli.main(["train", "--config", "tiny", "--workdir", workdir, "--set", "train.lrs=1e-3,2e-3"] + base) == 0
  before = {f: _contents(f) for f in (sweep_out, workdir)}
  capsys.readouterr()
  for argv, needle in [
      (["sweep", "--config", "tiny", "--grid", "optim.lr=1e-3", "--out", sweep_out] + base, "holds another sweep"),
      (["train", "--config", "tiny", "--workdir", sweep_out] + base, "holds a sweep, not a training run"),
      (["reproduce", "head-utilization", "--preset", "tiny", "--out", sweep_out, "--quiet"], "holds a sweep"),
      (["sweep", "--config", "tiny", "--grid", "optim.lr=1e-3,2e-3", "--out", workdir] + base, "holds a training run"),
      (["reproduce", "multihead", "--preset", "tiny", "--out", workdir, "--quiet"], "holds a training run"),
      (["train", "--config", "tiny", "--workdir", workdir, "--set", "train.lrs=1e-3,2e-3", "--stop-after", "1"] + base,
       "already at step 2")]:
    assert cli.main(argv) == 2, argv
    err = capsys.readouterr().err
    _one_line_error(err, needle)
    assert len(err.strip().splitlines()) == 1, err
  assert {f: _contents(f) for f in before} == before


def test_a_write_killed_half_way_leaves_no_temporary_file_behind(tmp_path):
  """A command killed (SIGKILL) while it writes a file atomically leaves the temporary file; found after kills in
  the last seconds of both studies (their figures), which a rerun completed but kept the strays. The next command
  that claims the folder removes them (subfolders too, Orbax's checkpoint folders aside), and a write of a file
  removes its own; a live process's temporary file (a concurrent `jaxicl eval`) is kept."""
  dead = 99_999_999  # above any pid_max: no such process
  strays = [tmp_path / f".summary.json.{dead}.abcd_123", tmp_path / "records" / f".r.json.{dead}.zz99zz99"]
  kept = [tmp_path / f".eval.json.{os.getpid()}.live1234", tmp_path / ".lock.owner", tmp_path / ".hidden.abcdefgh",
          tmp_path / "checkpoints" / f".x.{dead}.abcdefgh"]
  for path in strays + kept:
    path.parent.mkdir(exist_ok=True)
    path.write_text("")
  files.claim_folder(str(tmp_path), "training run", "workdir")
  assert [p.exists() for p in strays + kept] == [False] * len(strays) + [True] * len(kept)
  own, other = tmp_path / f".config.json.{dead}.qwertyui", tmp_path / f".metrics.jsonl.{dead}.qwertyui"
  own.write_text(""), other.write_text("")
  files.write_text(str(tmp_path / "config.json"), "{}")
  assert not own.exists() and other.exists()


def test_a_folder_where_a_run_writes_a_file_is_a_one_line_error(tmp_path, capsys):
  """The config or metrics file of a workdir, or an evaluation's output, replaced by a folder: one line naming it
  (not the temporary file beside it), before anything is written."""
  for name in ("config.json", "metrics.jsonl"):
    workdir = tmp_path / name
    (workdir / name).mkdir(parents=True)
    assert cli.main(["train", "--config", "tiny", "--workdir", str(workdir), "--set", "train.steps=2", "--quiet"]) == 2
    err = capsys.readouterr().err
    _one_line_error(err, str(workdir / name), "a folder where the command writes a file")
    assert len(err.strip().splitlines()) == 1, err
    assert sorted(os.listdir(workdir)) == [".lock", ".lock.owner", name]
  (tmp_path / "eval" / "eval.json").mkdir(parents=True)
  assert cli.main(["eval", "--workdir", str(tmp_path / "none"), "--out", str(tmp_path / "eval")]) == 2
  _one_line_error(capsys.readouterr().err, str(tmp_path / "eval" / "eval.json"), "a folder where")


@pytest.mark.parametrize("script, args, needle", [
    ("learning_speed.py", ["--no-reference", "--json", "{tmp}"], "a folder where the command writes a file"),
    ("bench_train.py", ["--learning-speed-json", "{tmp}/none.json"], "{tmp}/none.json: no such file"),
    ("bench_train.py", ["--md", "{tmp}/a_file/out.md"], "{tmp}/a_file/out.md: cannot make its folder"),
    ("step_cost.py", ["--preset", "tiny", "--json", "{tmp}/a_file/x/cost.json"], "cannot make its folder"),
])
def test_a_benchmark_refuses_a_path_it_cannot_use_before_it_measures(script, args, needle, tmp_path, xla_cache):
  """The benchmarks run for minutes to an hour (learning_speed.py's sparse setting: ~70 min) and wrote their
  results, or read the learning-speed JSON, only at the end: a path they cannot use cost the whole run and ended in
  a traceback. They check every path first: exit 2 and one line naming it, long before any training (the timeout
  is far below one measurement's time on this CPU)."""
  (tmp_path / "a_file").write_text("")
  fill = lambda s: s.replace("{tmp}", str(tmp_path))
  proc = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", script), *map(fill, args)], cwd=tmp_path,
                        env=subprocess_env(xla_cache), capture_output=True, text=True, timeout=90)
  assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert fill(needle) in last and "Traceback" not in proc.stderr, proc.stderr
  assert os.listdir(tmp_path) == ["a_file"]  # nothing written


class _SignalAt:
  """A progress bar that sends this process ``signum`` when training passes ``step`` (deterministic delivery)."""

  def __init__(self, signum: int, step: int):
    self.signum, self.step, self.n = signum, step, 0

  def update(self, n: int) -> None:
    self.n += n
    if self.n >= self.step and self.signum is not None:
      signum, self.signum = self.signum, None
      signal.raise_signal(signum)

  def set_postfix(self, **kw) -> None:
    pass


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_saves_a_checkpoint_at_the_chunk_end_and_the_run_resumes_bit_identically(signum, reference,
                                                                                           tmp_path):
  """SIGINT / SIGTERM during training (here at step 20 of 40, log_every 10) ends that chunk, saves a checkpoint of
  its step and raises Interrupted; the handlers are restored, and the resumed run equals the uninterrupted one."""
  workdir = str(tmp_path / "run")
  # a process started in the background (CI under nohup, say) ignores SIGINT, and training leaves an ignored signal
  # ignored: give this one the usual handlers
  usual = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
  outer = {s: signal.signal(s, h) for s, h in usual.items()}
  try:
    with pytest.raises(train.Interrupted, match=f"{signal.Signals(signum).name} at step 20; checkpoint saved") as e:
      train.train(_cfg(), workdir, progress=_SignalAt(signum, 15))
    assert {s: signal.getsignal(s) for s in usual} == usual
  finally:
    for s, h in outer.items():
      signal.signal(s, h)
  assert isinstance(e.value, KeyboardInterrupt) and (e.value.signum, e.value.step) == (signum, 20)
  assert max(int(entry) for entry in _ckpt_entries(workdir) if entry.isdigit()) == 20
  resumed = train.train(_cfg(), workdir)
  _assert_same_state(resumed.state, reference.state)
  _assert_metrics_intact(workdir, reference.history)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_cli_stopped_by_a_signal_exits_128_plus_it_with_one_line_and_a_checkpoint_there(signum, tmp_path, xla_cache):
  workdir = str(tmp_path / "run")
  # SIGINT not ignored even if this process ignores it (as above): the CLI's own start, with the usual handler
  start = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
           "from jaxicl.cli import entry; sys.exit(entry())")
  cmd = [sys.executable, "-c", start, "train", "--config", "tiny", "--workdir", workdir, "--quiet",
         "--set", "train.steps=1000000", "--set", "train.log_every=10", "--set", "train.ckpt_every=100000"]
  proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(xla_cache), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, start_new_session=True)
  try:
    assert _wait_for(lambda: os.path.exists(os.path.join(workdir, "metrics.jsonl"))
                     and len(_records(workdir)) >= 2, proc, poll=0.05)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 128 + signum, err
  _one_line_error(err, f"interrupted by {signal.Signals(signum).name} at step", "run the same command to resume")
  step = int(err.split(" at step ")[1].split(";")[0])
  assert step % 10 == 0 and _records(workdir)[-1]["step"] == step
  assert [int(entry) for entry in _ckpt_entries(workdir) if entry.isdigit()] == [step]


# ----------------------------------------------------------------------------- resume cadence

def test_checkpoints_stay_on_the_grid_after_an_off_grid_stop(reference, tmp_path):
  workdir = str(tmp_path / "run")
  first = train.train(_cfg(), workdir, stop_after=25)
  assert [h["step"] for h in first.history] == [10, 20, 25]
  result = train.train(_cfg(), workdir)
  assert [h["step"] for h in result.history] == [10, 20, 25, 30, 40]
  _assert_same_state(result.state, reference.state)
  steps = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), repair=False).steps()
  assert steps == [25, 30, 40]
