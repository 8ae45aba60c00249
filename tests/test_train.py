"""Training engine: vmapped runs, lr axis, sharding, exact resume, lazy training, curriculum, bad input."""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, subprocess_env
from jaxicl import configs, tasks, train


def _tiny(*overrides):
  return configs.get_config("tiny", list(overrides))


# Adam's eps=1e-8 turns float noise in near-zero gradients into lr-sized steps; comparisons of runs
# that differ only in float reduction order use a larger eps so that they measure the engine, not that.
QUIET_ADAM = "optim.eps=1e-5"


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _assert_same_model(result, params_a, params_b):
  """Same function (predictions on fixed prompts) and parameters up to float32 reduction-order noise.

  Adam turns near-zero gradients (e.g. of key biases) into lr-sized steps of either sign, so raw
  parameters are compared with an absolute tolerance well below the lr and the predictions tightly.
  """
  prompts = tasks.sample_batch(jax.random.PRNGKey(99), result.config.task, 64)
  pa = np.asarray(result.model.apply(params_a, prompts.xs, prompts.ys))
  pb = np.asarray(result.model.apply(params_b, prompts.xs, prompts.ys))
  np.testing.assert_allclose(pa, pb, rtol=1e-3, atol=1e-4)
  for a, b in zip(_leaves(params_a), _leaves(params_b)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=2e-4)


def test_vmapped_seeds_equal_separate_runs():
  together = train.train(_tiny("train.steps=30", "train.log_every=10", "train.seeds=0,1,2", QUIET_ADAM))
  for r, seed in enumerate((0, 1, 2)):
    alone = train.train(_tiny("train.steps=30", "train.log_every=10", f"train.seeds={seed}", QUIET_ADAM))
    _assert_same_model(alone, train.run_params(together.state, r), train.run_params(alone.state))
    np.testing.assert_allclose([h["loss"][r] for h in together.history], [h["loss"][0] for h in alone.history],
                               rtol=1e-4)
  assert not np.allclose(_leaves(train.run_params(together.state, 0))[0], _leaves(train.run_params(together.state, 1))[0])


def test_learning_rate_axis_equals_separate_runs():
  both = train.train(_tiny("train.steps=30", "train.log_every=10", "train.lrs=0.001,0.01", QUIET_ADAM))
  assert [lr for _, lr in both.config.runs] == [0.001, 0.01]
  for r, lr in enumerate((0.001, 0.01)):
    alone = train.train(_tiny("train.steps=30", "train.log_every=10", f"optim.lr={lr}", QUIET_ADAM))
    _assert_same_model(alone, train.run_params(both.state, r), train.run_params(alone.state))


def test_lazy_training_keeps_frozen_parameters_fixed():
  cfg = configs.get_config("study1", ["train.steps=20", "train.log_every=10", "train.batch_size=16",
                                      "optim.freeze=W_in", "task.n_points=11"])
  engine = train.Engine(cfg)
  before = engine.init()
  w_in = np.asarray(before.params["W_in"]["kernel"])
  other = [np.asarray(x) for x in jax.tree.leaves(before.params["W_out"])]
  after = train.train(cfg).state
  np.testing.assert_array_equal(np.asarray(after.params["W_in"]["kernel"]), w_in)
  assert any(not np.allclose(a, np.asarray(b)) for a, b in zip(other, jax.tree.leaves(after.params["W_out"])))


def test_freeze_of_unknown_parameter_is_an_error():
  cfg = configs.get_config("study1", ["optim.freeze=W_nope"])
  with pytest.raises(ValueError, match="optim.freeze"):
    train.Engine(cfg)


def test_curriculum_schedule_and_no_recompilation():
  cfg = _tiny("task.d=6", "task.n_points=12", "curriculum.dims_start=2", "curriculum.points_start=4",
              "curriculum.every=10", "curriculum.dims_inc=1", "curriculum.points_inc=3",
              "train.steps=60", "train.log_every=10")
  assert int(train.active_dims(cfg, jnp.asarray(0))) == 2
  assert int(train.active_dims(cfg, jnp.asarray(25))) == 4
  assert int(train.active_dims(cfg, jnp.asarray(10_000))) == 6
  assert int(train.active_points(cfg, jnp.asarray(25))) == 10
  assert int(train.active_points(cfg, jnp.asarray(10_000))) == 12
  engine = train.Engine(cfg)
  state = engine.init()
  for _ in range(6):
    state, losses = engine.run_chunk(state, 10)
    assert np.all(np.isfinite(np.asarray(losses)))
  chunks = [p for length, p in engine._programs.items() if length is not None]
  assert len(chunks) == 1 and chunks[0]._cache_size() == 1


def test_prediction_loss_ignores_points_beyond_the_active_count():
  cfg = _tiny()
  engine = train.Engine(cfg)
  params = train.run_params(engine.init())
  prompts = tasks.sample_batch(jax.random.PRNGKey(3), cfg.task, 8)
  spoiled = prompts._replace(ys=prompts.ys.at[:, 5:].set(1e6))
  a = train.prediction_loss(engine.model, params, prompts, 5)
  b = train.prediction_loss(engine.model, params, spoiled, 5)
  np.testing.assert_allclose(a, b, rtol=1e-6)
  preds = engine.model.apply(params, prompts.xs, prompts.ys)
  np.testing.assert_allclose(a, np.mean((np.asarray(preds) - np.asarray(prompts.ys))[:, :5] ** 2), rtol=1e-5)


def test_nan_loss_stops_with_a_clear_error(tmp_path):
  @tasks.register_family("nan_for_test")
  def _nan(key, cfg):
    del key
    return jnp.full((cfg.d,), jnp.nan)

  cfg = _tiny("task.family=nan_for_test", "train.steps=20", "train.log_every=10")
  with pytest.raises(FloatingPointError, match="non-finite loss at step 0 in run 0"):
    train.train(cfg, str(tmp_path))


def test_resume_with_a_different_config_is_refused(tmp_path):
  train.train(_tiny("train.steps=10", "train.log_every=10"), str(tmp_path))
  with pytest.raises(ValueError, match="different config.*task.d"):
    train.train(_tiny("train.steps=10", "train.log_every=10", "task.d=4"), str(tmp_path))


def test_resume_continues_from_the_checkpoint(tmp_path):
  cfg = _tiny("train.steps=60", "train.log_every=20", "train.ckpt_every=20")
  first = train.train(cfg, str(tmp_path), stop_after=40)
  assert [h["step"] for h in first.history] == [20, 40]
  second = train.train(cfg, str(tmp_path))
  assert [h["step"] for h in second.history] == [20, 40, 60]
  straight = train.train(cfg)
  for a, b in zip(_leaves(second.state.params), _leaves(straight.state.params)):
    np.testing.assert_array_equal(a, b)
  loaded = train.load_run(str(tmp_path))
  assert int(np.asarray(loaded.state.step)[0]) == 60


def test_corrupt_latest_checkpoint_is_skipped(tmp_path, capsys):
  cfg = _tiny("train.steps=40", "train.log_every=20", "train.ckpt_every=20")
  train.train(cfg, str(tmp_path))
  latest = os.path.join(tmp_path, "checkpoints", "40")
  for root, _, files in os.walk(latest):
    for f in files:
      with open(os.path.join(root, f), "wb") as fh:
        fh.write(b"garbage")
  loaded = train.load_run(str(tmp_path))
  assert int(np.asarray(loaded.state.step)[0]) == 20
  assert "unreadable" in capsys.readouterr().err


def test_killed_run_resumes_bit_exactly(tmp_path):
  overrides = ["train.steps=1200", "train.log_every=50", "train.ckpt_every=100", "train.seeds=0,1"]
  workdir = str(tmp_path / "killed")
  cmd = [sys.executable, "-m", "jaxicl.cli", "train", "--config", "tiny", "--workdir", workdir, "--quiet"]
  for o in overrides:
    cmd += ["--set", o]
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  deadline = time.time() + 240
  while time.time() < deadline:
    done = [int(s) for s in (os.listdir(ckpt_dir) if os.path.isdir(ckpt_dir) else []) if s.isdigit()]
    if done and max(done) >= 300:
      break
    assert proc.poll() is None, proc.stderr.read().decode()
    time.sleep(0.05)
  assert proc.poll() is None, "the run finished before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  # Resumed and straight runs both as the CLI program: the same devices (one CPU device per core), so the same
  # float reductions as the killed process.
  straight_dir = str(tmp_path / "straight")
  for cmd in (cmd, [a if a != workdir else straight_dir for a in cmd]):
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300)
  resumed, straight = train.load_run(workdir), train.load_run(straight_dir)
  assert int(np.asarray(resumed.state.step)[0]) == 1200
  assert [r["step"] for r in resumed.history] == [r["step"] for r in straight.history]
  for a, b in zip(_leaves(resumed.state.params), _leaves(straight.state.params)):
    np.testing.assert_array_equal(a, b)


_SHARDED = textwrap.dedent("""
    import json, jax, numpy as np
    from jaxicl import configs, train
    out = {"devices": len(jax.devices())}
    for mode, seeds in (("batch", "0"), ("runs", "0,1,2,3")):
      cfg = configs.get_config("tiny", ["train.steps=20", "train.log_every=10", f"train.shard={mode}", "optim.eps=1e-5",
                                        f"train.seeds={seeds}"])
      multi = train.train(cfg)
      single = train.train(cfg, devices=jax.devices()[:1])
      diffs = [float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
               for a, b in zip(jax.tree.leaves(multi.state.params), jax.tree.leaves(single.state.params))]
      leaf = jax.tree.leaves(multi.state.params)[0]
      out[mode] = {"max_diff": max(diffs), "n_shards": len(leaf.sharding.device_set)}
    print(json.dumps(out))
""")


def test_sharded_over_four_cpu_devices_equals_single_device(xla_cache):
  # FAST_XLA (subprocess_env): 20 steps compile far longer than they run; both sides of the comparison share it
  env = subprocess_env(xla_cache)
  env["XLA_FLAGS"] += " --xla_force_host_platform_device_count=4"
  res = subprocess.run([sys.executable, "-c", _SHARDED], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=300)
  assert res.returncode == 0, res.stderr
  out = json.loads(res.stdout.strip().splitlines()[-1])
  assert out["devices"] == 4
  assert out["runs"]["n_shards"] == 4  # params of the 4 runs live on 4 devices
  assert out["batch"]["max_diff"] < 1e-4 and out["runs"]["max_diff"] < 1e-5, out


@pytest.mark.parametrize("seeds,batch,shard,n_dev,want", [
    ("0,1,2", 32, "auto", 2, (2, "batch")),  # runs do not divide, the batch does
    ("0,1,2,3", 32, "auto", 2, (2, "runs")),
    ("0,1,2", 5, "auto", 4, (3, "runs")),  # neither divides 4: the most devices that one of them divides
    ("0", 7, "auto", 2, (1, "runs")),
    ("0,1,2", 32, "batch", 4, (4, "batch")),  # an explicit mode keeps every device
])
def test_fit_devices_uses_the_most_devices_an_axis_divides(seeds, batch, shard, n_dev, want):
  cfg = _tiny(f"train.seeds={seeds}", f"train.batch_size={batch}", f"train.shard={shard}")
  fitted = train.fit_devices(cfg, [f"dev{i}" for i in range(n_dev)])
  assert fitted == [f"dev{i}" for i in range(want[0])]
  assert train.shard_mode(cfg, len(fitted)) == want[1]


def test_cli_program_trains_on_one_cpu_device_per_core(tmp_path, xla_cache):
  """``python -m jaxicl.cli`` asks JAX for JAXICL_CPU_DEVICES CPU devices and the engine shards over them."""
  from jaxicl import cli
  assert cli.cpu_device_count({"XLA_FLAGS": "--xla_force_host_platform_device_count=3"}) is None
  assert cli.cpu_device_count({cli.CPU_DEVICES_ENV: "3"}) == 3
  assert cli.cpu_device_count({}) == min(len(os.sched_getaffinity(0)), cli.MAX_CPU_DEVICES)
  env = subprocess_env(xla_cache)  # no device count in its XLA_FLAGS: the CLI sets it
  cmd = [sys.executable, "-m", "jaxicl.cli", "train", "--config", "tiny", "--quiet", "--set", "train.steps=2",
         "--set", "train.log_every=1", "--set", "train.seeds=0,1,2"]
  for n, want in (("2", 2), ("3", 3)):  # 3 runs, batch 32: the batch over 2 devices, the runs over 3
    proc = subprocess.run(cmd + ["--workdir", str(tmp_path / n)], cwd=REPO, env={**env, cli.CPU_DEVICES_ENV: n}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["devices"] == want
  proc = subprocess.run(cmd + ["--workdir", str(tmp_path / "0")], cwd=REPO, env={**env, cli.CPU_DEVICES_ENV: "0"}, capture_output=True, text=True)
  assert proc.returncode == 2 and proc.stderr.strip() == "jaxicl: error: JAXICL_CPU_DEVICES='0': expected an integer >= 1"


def test_uneven_sharding_is_a_clear_error():
  cfg = _tiny("train.batch_size=30", "train.shard=batch")
  with pytest.raises(ValueError, match="train.batch_size=30"):
    train.shard_mode(cfg, 4)


@pytest.mark.parametrize("override,field", [
    ("train.ckpt_every=30", "train.ckpt_every"),
    ("optim.lr=-1", "optim.lr"),
    ("optim.schedule=exp", "optim.schedule"),
    ("train.nope=1", "train.nope"),
    ("task.d=0", "TaskConfig.d"),
    ("model.embed_dim=10", "embed_dim"),
    ("task.n_points=40", "task.n_points"),
])
def test_bad_config_values_are_named(override, field):
  base = "study1" if override.startswith("model.embed") else "tiny"
  extra = ["model.heads=4"] if base == "study1" else []
  with pytest.raises(ValueError, match=field.replace(".", r"\.")):
    configs.get_config(base, extra + [override])


@pytest.mark.parametrize("base,override,message", [
    ("tiny", "model.embed_dim=8", "ModelConfig.embed_dim=8: does not apply to model 'gpt2'"),
    ("study1", "model.width=64", "ModelConfig.width=64: does not apply to model 'softmax_icl'"),
    ("study1", "model.n_layers=3", "ModelConfig.n_layers=3: does not apply to model 'softmax_icl'"),
    ("tiny", "model.num_heads=8", "model.num_heads"),  # the old one-layer name is no field any more
])
def test_an_inapplicable_model_field_is_an_error(base, override, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    configs.get_config(base, [override])


def test_one_heads_field_sets_every_model():
  assert configs.get_config("study1", ["model.heads=8"]).model.head_dims == (8,)  # p = 64
  assert configs.get_config("tiny", ["model.heads=4"]).model.layer_heads == (4, 4)
  with pytest.raises(ValueError, match="exactly one entry"):
    configs.get_config("study1", ["model.heads=4,4"])


def test_config_round_trips_through_json(tmp_path):
  cfg = configs.get_config("standard", ["model.heads=8,1,1", "model.n_layers=3", "optim.freeze=read_in"])
  path = tmp_path / "c.json"
  path.write_text(json.dumps(configs.to_dict(cfg)))
  assert configs.get_config(str(path)) == cfg
  assert cfg.model.heads == (8, 1, 1) and cfg.optim.freeze == ("read_in",)


def test_cli_reports_a_bad_config_value_and_exits_2(tmp_path, capsys):
  from jaxicl import cli
  assert cli.main(["train", "--config", "tiny", "--set", "task.d=0", "--workdir", str(tmp_path / "w")]) == 2
  assert "TaskConfig.d=0" in capsys.readouterr().err
  assert cli.main(["eval", "--workdir", str(tmp_path / "missing")]) == 2
  assert "config.json" in capsys.readouterr().err


def test_metrics_go_to_jsonl_and_tensorboard(tmp_path):
  pytest.importorskip("tensorboardX")
  import glob
  import struct

  from tensorboardX.proto import event_pb2

  train.train(_tiny("train.steps=20", "train.log_every=10", "train.seeds=0,1"), str(tmp_path))
  records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in records] == [10, 20] and len(records[0]["loss"]) == 2
  (path,) = glob.glob(str(tmp_path / "tensorboard" / "events.*"))
  data, i, scalars = open(path, "rb").read(), 0, {}
  while i < len(data):  # TFRecord framing: length, crc, payload, crc
    n = struct.unpack("<Q", data[i:i + 8])[0]
    event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
    i += 16 + n
    for v in event.summary.value:
      scalars[(v.tag, event.step)] = v.simple_value
  for r in records:
    for run, loss in enumerate(r["loss"]):
      assert scalars[(f"loss/run{run}", r["step"])] == pytest.approx(loss, rel=1e-6)
  # reading the finished run back (as a study's re-run does) trains nothing and writes no second event file
  again = train.train(_tiny("train.steps=20", "train.log_every=10", "train.seeds=0,1"), str(tmp_path))
  assert [r["step"] for r in again.history] == [10, 20]
  assert glob.glob(str(tmp_path / "tensorboard" / "events.*")) == [path]


def test_the_tensorboard_writer_is_made_without_importing_torch(tmp_path, xla_cache):
  """tensorboardX imports torch, when installed, at its own import (seconds); the writer is made without it and
  torch stays importable afterwards. A stand-in torch package, first on the path, records whether it was run."""
  pytest.importorskip("tensorboardX")
  fake = tmp_path / "site" / "torch"
  fake.mkdir(parents=True)
  mark = tmp_path / "torch_was_imported"
  (fake / "__init__.py").write_text(f"open({str(mark)!r}, 'w').close()\n")
  code = textwrap.dedent(f"""
      import os, sys
      from jaxicl import train
      board = train._tensorboard({str(tmp_path / 'w')!r})
      board.add_scalar("x", 1.0, 1)
      board.close()
      assert "torch" not in sys.modules and not os.path.exists({str(mark)!r})
      import torch
      assert os.path.exists({str(mark)!r})
      """)
  env = subprocess_env(xla_cache)
  env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "site"), env["PYTHONPATH"]])
  proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert os.listdir(tmp_path / "w" / "tensorboard")


def test_compilation_cache_location_is_documented_and_overridable(tmp_path):
  from jaxicl import cli
  home = {"HOME": str(tmp_path)}
  assert cli.compilation_cache_dir(home) == os.path.join(str(tmp_path), ".cache", "jaxicl", "xla")
  assert cli.compilation_cache_dir({**home, "XDG_CACHE_HOME": "/c"}) == "/c/jaxicl/xla"
  assert cli.compilation_cache_dir({**home, "JAXICL_COMPILATION_CACHE": "/x"}) == "/x"
  assert cli.compilation_cache_dir({**home, "JAXICL_COMPILATION_CACHE": "none"}) is None
  assert cli.compilation_cache_dir({"JAXICL_COMPILATION_CACHE": "/x", "JAX_COMPILATION_CACHE_DIR": "/j"}) == "/j"


def _variants_cfg(n_points: int, variants: tuple[str, ...]) -> configs.Config:
  return configs.Config(
      task=tasks.TaskConfig(d=2, n_points=n_points),
      model=configs.ModelConfig(name="softmax_icl", embed_dim=4, heads=(2,)),
      optim=configs.OptimConfig(lr=1e-2),
      train=configs.TrainConfig(steps=6, batch_size=8, seeds=(0, 1), log_every=3, task_variants=variants))


def test_fused_task_variants_equal_separately_compiled_groups():
  """Runs differing in D (padded to the largest and masked) and in noise / correlation / prior share one program
  and train exactly as each group compiled on its own at its own unpadded length (float32 reduction order)."""
  variants = ("n_points=9", "n_points=6;noise_var=0.5;cov=equicorrelated;rho=0.3", "n_points=4;prior_mean_norm=1")
  fused = train.train(_variants_cfg(9, variants))
  assert len(fused.config.runs) == 6 and fused.config.run_variants == [0, 0, 1, 1, 2, 2]
  for v, variant in enumerate(variants):
    n = int(configs.parse_variant(variant)["n_points"])
    alone = train.train(_variants_cfg(n, (variant,)))
    for leaf_f, leaf_a in zip(jax.tree.leaves(fused.state.params), jax.tree.leaves(alone.state.params)):
      np.testing.assert_allclose(np.asarray(leaf_f)[2 * v:2 * v + 2], np.asarray(leaf_a), rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(np.asarray(fused.history[-1]["loss"])[2 * v:2 * v + 2], alone.history[-1]["loss"],
                               rtol=2e-4)


def test_a_variant_that_freezes_trains_as_optim_freeze_alone():
  """``freeze=W_in`` in one task variant (a per-run mask) leaves that variant's runs exactly where a separate
  program with ``optim.freeze=W_in`` leaves them, while the other variant's runs train W_in."""
  base = _variants_cfg(9, ("n_points=9;freeze=W_in", "n_points=6"))
  cfg = configs.override(base, ["optim.grad_clip=0.5", "optim.weight_decay=0.1"])  # both must skip frozen leaves
  fused = train.train(cfg)
  init = train.Engine(cfg).init()
  w_in = np.asarray(fused.state.params["W_in"]["kernel"])
  np.testing.assert_array_equal(w_in[:2], np.asarray(init.params["W_in"]["kernel"])[:2])
  assert not np.allclose(w_in[2:], np.asarray(init.params["W_in"]["kernel"])[2:])
  alone = train.train(configs.override(cfg, ["train.task_variants=n_points=9", "optim.freeze=W_in"]))
  for leaf_f, leaf_a in zip(jax.tree.leaves(fused.state.params), jax.tree.leaves(alone.state.params)):
    np.testing.assert_allclose(np.asarray(leaf_f)[:2], np.asarray(leaf_a), rtol=2e-4, atol=2e-5)
  with pytest.raises(ValueError, match=r"train.task_variants\[0\].freeze"):
    train.Engine(_variants_cfg(9, ("freeze=W_nope",)))


def test_task_variants_are_validated():
  with pytest.raises(ValueError, match="n_points must be <= task.n_points=5"):
    _variants_cfg(5, ("n_points=9",))
  with pytest.raises(ValueError, match="d=3"):
    _variants_cfg(5, ("d=3",))
  with pytest.raises(ValueError, match="one-layer model"):
    configs.get_config("tiny", ["train.task_variants=n_points=4,n_points=8"])
  assert len(configs.get_config("tiny", ["train.task_variants=noise_var=0,noise_var=1"]).runs) == 2
