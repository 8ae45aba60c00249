"""Stored traced programs (jaxicl.programs): read back without tracing, the same bits as the traced function, a torn
file replaced, an unexportable function run as it is; the engine's programs equal its plain jit (the path taken
without a compilation cache), and a second CLI process traces neither of them."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, subprocess_env
from jaxicl import configs, programs, tasks, train


def _counting_fn(traces: list):
  """A fresh jitted function of (dict, array) each call, as a new process would have; appends to ``traces`` when
  traced."""

  @jax.jit
  def f(state, x):
    traces.append(1)
    return {"w": state["w"] * jnp.sum(x), "step": state["step"] + 1}, jnp.tanh(x) @ x.T

  return f


def _args():
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 4))
  return {"w": jnp.arange(4.0), "step": jnp.zeros((), jnp.int32)}, x


def _same(a, b) -> bool:
  la, ta = jax.tree.flatten(a)
  lb, tb = jax.tree.flatten(b)
  return ta == tb and all(np.array_equal(np.asarray(u), np.asarray(v)) for u, v in zip(la, lb))


@pytest.fixture
def store(tmp_path, monkeypatch):
  folder = str(tmp_path / "programs")
  monkeypatch.setattr(programs, "directory", lambda: folder)
  return folder


def _program(traces, key="k"):
  replicated = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return programs.program("f", _counting_fn(traces), _args(), key=key, out_shardings=replicated)


def test_a_stored_program_is_read_back_without_tracing_and_computes_the_same_bits(store):
  traces = []
  plain = _counting_fn([])(*_args())
  first = _program(traces)
  assert isinstance(first, programs.Program) and len(traces) == 1 and len(os.listdir(store)) == 1
  again = _program(traces)
  assert len(traces) == 1  # read back: not traced
  assert _same(first(*_args()), plain) and _same(again(*_args()), plain)
  assert _same(jax.tree.map(lambda a: (a.shape, a.dtype), again.out_avals),
               jax.tree.map(lambda a: (a.shape, a.dtype), jax.eval_shape(_counting_fn([]), *_args())))
  _program(traces, key="another")
  assert len(traces) == 2 and len(os.listdir(store)) == 2  # another key: traced and stored again
  with pytest.raises(ValueError, match="exported for"):
    again(_args()[0])


def test_a_torn_stored_program_is_a_miss_and_is_replaced(store):
  traces = []
  _program(traces)
  (name,) = os.listdir(store)
  with open(os.path.join(store, name), "r+b") as f:
    f.truncate(100)
  torn = _program(traces)
  assert len(traces) == 2 and _same(torn(*_args()), _counting_fn([])(*_args()))
  _program(traces)
  assert len(traces) == 2  # the replaced file reads back


def test_an_unwritable_folder_is_a_warning_and_the_program_still_runs(tmp_path, monkeypatch):
  blocked = tmp_path / "file"
  blocked.write_text("a file where the folder should be")
  monkeypatch.setattr(programs, "directory", lambda: str(blocked / "programs"))
  with pytest.warns(UserWarning, match="cannot store a traced program"):
    program = _program([])
  assert _same(program(*_args()), _counting_fn([])(*_args()))


def test_a_function_export_refuses_runs_as_it_is(store):
  @jax.jit
  def with_callback(x):
    return jax.pure_callback(lambda v: np.asarray(v) * 2, jax.ShapeDtypeStruct(x.shape, x.dtype), x)

  x = jnp.arange(3.0)
  got = programs.program("cb", with_callback, (x,), key="k", out_shardings=None)
  assert got is with_callback and not os.path.exists(store)
  np.testing.assert_array_equal(np.asarray(got(x)), [0.0, 2.0, 4.0])


def _avals(tree):
  return jax.tree.map(lambda a: (a.shape, str(a.dtype), a.sharding), tree)


@pytest.mark.parametrize("cfg", [
    configs.get_config("tiny", ["train.steps=20", "train.log_every=10"]),
    # one-layer model, task variants (per-run task values) and a per-run freeze mask, 2 seeds each
    configs.Config(task=tasks.TaskConfig(d=2, n_points=9),
                   model=configs.ModelConfig(name="softmax_icl", embed_dim=4, heads=(2,)),
                   train=configs.TrainConfig(steps=20, batch_size=8, seeds=(0, 1), log_every=10,
                                             task_variants=("n_points=9;freeze=W_in", "n_points=6;noise_var=0.5"))),
], ids=["gpt2", "one_layer_variants"])
def test_the_engines_stored_programs_equal_its_traced_ones(store, monkeypatch, cfg):
  stored = train.Engine(cfg)
  s_state = stored.init()
  with monkeypatch.context() as m:
    m.setattr(programs, "directory", lambda: None)
    traced = train.Engine(cfg)
    t_state = traced.init()
    assert _same(s_state, t_state) and _avals(stored.abstract_state()) == _avals(traced.abstract_state())
    for _ in range(2):
      t_state, t_loss = traced.run_chunk(t_state, 10)
  for _ in range(2):
    s_state, s_loss = stored.run_chunk(s_state, 10)
  assert _same((s_state, s_loss), (t_state, t_loss))
  # lowered for the abstract state (as the sweep's memory analysis does), it is the same program and runs the same
  bound = stored.bind(stored.lower(stored.abstract_state(), 10).compile())
  b_state = stored.init()
  for _ in range(2):
    b_state, b_loss = bound(b_state)
  assert _same((b_state, b_loss), (s_state, s_loss)) and len(stored._programs) == 2
  assert all(isinstance(p, programs.Program) for p in stored._programs.values())
  assert not any(isinstance(p, programs.Program) for p in traced._programs.values())


def test_a_second_cli_process_reads_the_training_programs_back(tmp_path):
  """Across processes the keys agree: the second ``jaxicl train`` traces neither init nor the chunk (JAX's compile
  log), and trains to the same losses."""
  env = subprocess_env(str(tmp_path / "cache"))
  env["JAX_LOG_COMPILES"] = "1"
  outs = []
  for workdir in ("a", "b"):
    proc = subprocess.run([sys.executable, "-m", "jaxicl.cli", "train", "--config", "tiny", "--workdir",
                           str(tmp_path / workdir), "--stop-after", "20", "--quiet"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outs.append(proc)
  traced = [{name for name in ("jaxicl_init", "jaxicl_chunk") if f"Finished tracing {name} " in p.stderr}
            for p in outs]
  assert traced == [{"jaxicl_init", "jaxicl_chunk"}, set()], traced
  assert outs[0].stdout.splitlines()[-1].split('"loss"')[1] == outs[1].stdout.splitlines()[-1].split('"loss"')[1]
