"""The benchmarks compare like with like: jaxicl's gpt2 and the PyTorch/Hugging Face reference
(benchmarks/reference.py) compute the same predictions, loss and gradients from the same weights.
Needs the optional [bench] extra (torch, transformers)."""

from __future__ import annotations

import os
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import reference  # noqa: E402

from jaxicl import tasks, train  # noqa: E402
from jaxicl.models import ModelConfig, build_model  # noqa: E402

D, N, WIDTH, LAYERS, HEADS = 5, 11, 32, 2, 4


def _pair(seed: int = 0):
  task = tasks.TaskConfig(d=D, n_points=N, w_var=1.0)
  model = build_model(ModelConfig(name="gpt2", width=WIDTH, n_layers=LAYERS, heads=(HEADS,), max_points=N), task)
  params = model.init(jax.random.PRNGKey(seed))
  # Perturb every parameter so that zero-initialised biases and unit LayerNorm scales are checked too.
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
  params = jax.tree.unflatten(treedef, [p + 0.05 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
  ref = reference.Reference(D, N, WIDTH, LAYERS, HEADS).double()
  reference.port_weights(params, ref, LAYERS)
  ref = ref.double()
  prompts = tasks.sample_batch(jax.random.PRNGKey(seed + 2), task, 16)
  return model, params, ref, prompts


def _close(ours, theirs, what: str, ulps: float = 64) -> None:
  """jaxicl computes in float32, the reference here in float64: the gap is float32 rounding, bounded by a
  few dozen ulps of the array's largest entry through these two shallow layers (a convention difference —
  LayerNorm epsilon, GELU form, attention scale — is orders of magnitude larger)."""
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  tol = ulps * np.finfo(np.float32).eps * np.abs(theirs).max()
  assert np.abs(ours - theirs).max() <= tol, f"{what}: max gap {np.abs(ours - theirs).max():.3g} > {tol:.3g}"


def test_same_weights_give_the_same_predictions_loss_and_gradients():
  model, params, ref, prompts = _pair()
  ours = model.apply(params, prompts.xs, prompts.ys)
  loss, grads = jax.value_and_grad(lambda p: train.prediction_loss(model, p, prompts, N))(params)
  txs = torch.as_tensor(np.array(prompts.xs), dtype=torch.float64)
  tys = torch.as_tensor(np.array(prompts.ys), dtype=torch.float64)
  theirs = ref(txs, tys)
  ref_loss = ((theirs - tys) ** 2).mean()
  ref_loss.backward()
  _close(ours, theirs.detach().numpy(), "predictions")
  _close(loss, ref_loss.item(), "loss")
  _close(grads["read_in"]["kernel"], ref.read_in.weight.grad.numpy().T, "d read_in")
  _close(grads["read_out"]["bias"], ref.read_out.bias.grad.numpy(), "d read_out bias")
  qkv = ref.backbone.h[0].attn.c_attn.weight.grad.numpy()
  _close(np.asarray(grads["block_0"]["attn"]["key"]["kernel"]).reshape(WIDTH, WIDTH), qkv[:, WIDTH:2 * WIDTH],
         "d key kernel")
  _close(grads["block_1"]["mlp"]["fc"]["kernel"], ref.backbone.h[1].mlp.c_fc.weight.grad.numpy(), "d fc kernel")
  _close(grads["pos_embed"][:2 * N], ref.backbone.wpe.weight.grad.numpy(), "d pos_embed")


def test_read_in_and_read_out_use_the_reference_init():
  """Default io_init: U(±1/√fan_in) kernel and bias, the reference's nn.Linear default (bounds and variance)."""
  task = tasks.TaskConfig(d=D, n_points=N, w_var=1.0)
  model = build_model(ModelConfig(name="gpt2", width=256, n_layers=1, heads=(4,), max_points=N), task)
  params = model.init(jax.random.PRNGKey(0))
  ref = reference.Reference(D, N, 256, 1, 4)
  for ours, theirs, fan_in in ((params["read_in"]["kernel"], ref.read_in.weight, D),
                               (params["read_out"]["kernel"], ref.read_out.weight, 256)):
    ours, theirs = np.asarray(ours).ravel(), theirs.detach().numpy().ravel()
    bound = 1 / np.sqrt(fan_in)
    assert np.abs(ours).max() <= bound and np.abs(theirs).max() <= bound
    # Var of U(±b) is b²/3; the sample variance of n draws has relative SE sqrt(0.8/n) (kurtosis 1.8).
    for sample in (ours, theirs):
      assert abs(sample.var() / (bound**2 / 3) - 1) < 5 * np.sqrt(0.8 / sample.size)


def test_reference_fan_in_qk_draws_queries_and_keys_as_jaxicls_qk_init_fan_in():
  """learning_speed.py's reference with qk_init=fan_in: query / key kernels at jaxicl's N(0, 1/E), values and the
  rest as Hugging Face drew them."""
  width = 128
  task = tasks.TaskConfig(d=D, n_points=N, w_var=1.0)
  cfg = ModelConfig(name="gpt2", width=width, n_layers=2, heads=(4,), max_points=N, qk_init="fan_in")
  ours = build_model(cfg, task).init(jax.random.PRNGKey(0))["block_1"]["attn"]
  torch.manual_seed(0)
  ref = reference.Reference(D, N, width, 2, 4)
  before = [b.attn.c_attn.weight.detach().clone() for b in ref.backbone.h]
  reference.fan_in_qk_(ref, torch.Generator().manual_seed(1))
  # the sample std of n normal draws has relative SE 1/sqrt(2n) (n = 16384 here: 0.55 %)
  tol = 5 / np.sqrt(2 * width * width)
  for layer, block in enumerate(ref.backbone.h):
    w = block.attn.c_attn.weight.detach().numpy()
    for j in range(2):
      assert abs(w[:, j * width:(j + 1) * width].std() * np.sqrt(width) - 1) < tol
    np.testing.assert_array_equal(w[:, 2 * width:], before[layer].numpy()[:, 2 * width:])  # values untouched
  for name in ("query", "key"):
    assert abs(np.asarray(ours[name]["kernel"]).std() * np.sqrt(width) - 1) < tol
  assert abs(np.asarray(ours["value"]["kernel"]).std() / 0.02 - 1) < tol  # both keep GPT-2's 0.02 for values
  assert abs(before[0].numpy()[:, 2 * width:].std() / 0.02 - 1) < tol


def test_points_curriculum_on_a_prompt_prefix_equals_jaxicls_masked_loss():
  """benchmarks/learning_speed.py trains the reference on the first n points of each prompt where jaxicl masks the
  loss beyond them: for a causal model the two are the same loss and the same gradients."""
  model, params, ref, prompts = _pair(seed=3)
  n_active = 7
  loss, grads = jax.value_and_grad(lambda p: train.prediction_loss(model, p, prompts, n_active))(params)
  txs = torch.as_tensor(np.array(prompts.xs[:, :n_active]), dtype=torch.float64)
  tys = torch.as_tensor(np.array(prompts.ys[:, :n_active]), dtype=torch.float64)
  ref_loss = ((ref(txs, tys) - tys) ** 2).mean()
  ref_loss.backward()
  _close(loss, ref_loss.item(), "loss on 7 of 11 points")
  _close(grads["read_in"]["kernel"], ref.read_in.weight.grad.numpy().T, "d read_in")
  _close(grads["pos_embed"][:2 * n_active], ref.backbone.wpe.weight.grad.numpy()[:2 * n_active], "d pos_embed")
  assert np.abs(np.asarray(grads["pos_embed"][2 * n_active:])).max() == 0  # the masked tail gets no gradient


def test_reference_sampler_draws_jaxicls_sparse_curriculum_task():
  """The reference's prompts (reference.sample_prompts) have jaxicl's distribution under the dims curriculum:
  inputs zero beyond the active dims, w exactly s-sparse with its support uniform among the active dims and
  N(0, 1) entries, label noise of variance σ² (Monte Carlo, 5-SE bounds), checked on both samplers alike."""
  d, n_dims, s, sigma, batch, n = 10, 4, 3, 0.5, 4096, 6
  xs, ys, w = reference.sample_prompts(torch.Generator().manual_seed(0), batch, n, d, n_dims=n_dims, sparsity=s,
                                       noise_std=sigma)
  task = tasks.TaskConfig(family="sparse", d=d, sparsity=s, w_var=1.0, n_points=n, noise_var=sigma ** 2)
  ours = tasks.mask_dims(tasks.sample_batch(jax.random.PRNGKey(0), task, batch, n_dims), n_dims)
  for name, (x, y, w) in {"reference": (xs.numpy(), ys.numpy(), w.numpy()),
                          "jaxicl": (np.asarray(ours.xs), np.asarray(ours.ys), np.asarray(ours.w))}.items():
    assert np.all(x[..., n_dims:] == 0) and np.all(w[:, n_dims:] == 0), name
    support = w != 0
    assert np.all(support.sum(axis=1) == s), name
    freq, p = support[:, :n_dims].mean(axis=0), s / n_dims  # each active coordinate in the support w.p. s/n_dims
    assert np.all(np.abs(freq - p) < 5 * np.sqrt(p * (1 - p) / batch)), (name, freq)
    values = w[support]
    assert abs(values.var() - 1) < 5 * np.sqrt(2 / values.size), name
    assert abs(x[..., :n_dims].var() - 1) < 5 * np.sqrt(2 / x[..., :n_dims].size), name
    noise = y - np.einsum("bnd,bd->bn", x, w)
    assert abs(noise.var() / sigma ** 2 - 1) < 5 * np.sqrt(2 / noise.size), name
