"""Interpretability tools for trained ICL models: head importance, pruning, per-layer probing, attention maps.

Shape legend: B prompts, N points, P predictions per prompt (P = N for gpt2), L layers, H = max_l H_l
heads (the width of a head mask), M = L·H single-head masks, R runs (seeds × learning rates), T tokens,
E decoder width, F probe features.

Everything is a pure function of (model, params, prompts): nothing is trained or mutated.

Head importance. With m_(l,k) the [L, H] mask that is 1 everywhere except 0 at (l, k),

    I[l, k] = R(m_(l,k)) − R(1),   R(m) = mean over the chosen prediction points of E_prompts (ŷ_m − wᵀx)²,

the excess-risk increase when head (l, k) is removed (its output zeroed before the output projection,
which is exactly dropping that head's slice of W_O). All M masks are stacked into one [M, L, H] array and
the risk is vmapped over them (and over runs), so one compiled program evaluates every head of every
seed. Heads that do not exist (k ≥ H_l) get NaN.

Pruning. ``pruning_mask`` keeps every head of the layers in ``keep_all`` and the ``top_k`` most
important heads of every other layer; the default (keep_all=(0,), top_k=1) is the study's "all heads in
layer 1, one head in each later layer". The pruned model is the trained model evaluated through the
mask (``masked_risk``), with no retraining.

Probing. For each layer l = 0..L (0 = embeddings, l = output of block l) the hidden state h_l(t) at each
prediction position t (the x_i token) is a feature vector; one linear read-out ŷ = aᵀh + c per layer,
shared over positions, is fitted in closed form (ridge, float64) on one prompt set and evaluated on
another, against the noise-free targets wᵀx_i: probe risk [L+1, P].
"""

from __future__ import annotations

import functools
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxicl import evaluate, layouts, tasks
from jaxicl.models import ICLModel

Params = Any


# ----------------------------------------------------------------------------------------------
# Masks


def mask_shape(n_heads: Sequence[int]) -> tuple[int, int]:
  """(L, H) of the head mask of a model with ``n_heads`` heads per layer."""
  return len(n_heads), max(n_heads)


def valid_heads(n_heads: Sequence[int]) -> np.ndarray:
  """bool [L, H]: True where head (l, k) exists (k < H_l)."""
  L, H = mask_shape(n_heads)
  return np.arange(H)[None, :] < np.asarray(n_heads)[:, None]


def single_head_masks(n_heads: Sequence[int]) -> np.ndarray:
  """The M = L·H masks removing one head each, stacked: [M, L, H], mask m = l·H + k zeroes (l, k)."""
  L, H = mask_shape(n_heads)
  masks = np.ones((L * H, L, H), np.float32)
  masks[np.arange(L * H), np.arange(L * H) // H, np.arange(L * H) % H] = 0.0
  return masks


# ----------------------------------------------------------------------------------------------
# Risks


def masked_risk(model: ICLModel, params: Params, prompts: tasks.Prompt, head_mask: jax.Array | None) -> jax.Array:
  """Excess risk at each prediction point [P] of the model through ``head_mask`` [L, H] (pure; jit/vmap-safe)."""
  return evaluate.pointwise_risk(model, params, prompts, head_mask)


def _reduce(risks: jax.Array | np.ndarray, points: Sequence[int] | np.ndarray | None) -> np.ndarray:
  """Mean over the last axis [..., P] -> [...] in float64, over all points or the given point indices."""
  risks = np.asarray(risks, np.float64)
  if points is None:
    return risks.mean(axis=-1)
  return risks[..., np.asarray(points)].mean(axis=-1)


@functools.lru_cache(maxsize=32)
def _importance_sq_err_runs(model: ICLModel, batch_size: int | None):
  """Compiled once per (model, mask batch): summed squared errors of every run under every single-head mask and
  unmasked, ([R, M, P], [R, P]), over the first ``valid`` prompts of a padded chunk (``evaluate.chunk_sq_err``)."""

  @jax.jit
  def sq_err(run_params, masks, xs, ys, targets, valid):
    def err(p, m):
      return evaluate.chunk_sq_err(model, p, m, xs, ys, targets, valid)

    def run(p):
      masked = (jax.vmap(lambda m: err(p, m))(masks) if batch_size is None
                else jax.lax.map(lambda m: err(p, m), masks, batch_size=batch_size))
      return masked, err(p, None)

    return jax.vmap(run)(run_params)

  return sq_err


def _importance_from(risks_masked: jax.Array, risk_full: jax.Array, n_heads: Sequence[int],
                     points) -> np.ndarray:
  """[..., M, P], [..., P] -> importance [..., L, H] (NaN where the head does not exist)."""
  L, H = mask_shape(n_heads)
  delta = _reduce(risks_masked, points) - _reduce(risk_full, points)[..., None]  # [..., M]
  imp = np.asarray(delta, np.float64).reshape(delta.shape[:-1] + (L, H))
  return np.where(valid_heads(n_heads), imp, np.nan)


def head_importance(model: ICLModel, params: Params, prompts: tasks.Prompt, *, points=None,
                    batch_size: int | None = None, prompt_chunk: int = 256) -> np.ndarray:
  """I [L, H]: excess-risk increase when each single head is masked (NaN for non-existent heads).

  ``points``: prediction indices the risk is averaged over (None: all P). ``head_importance_runs`` for one run:
  one program over the L·H single-head masks (``batch_size`` at a time) and the prompts in chunks of
  ``prompt_chunk``, compiled once per model object and chunk shape.
  """
  stacked = jax.tree.map(lambda a: jnp.asarray(a)[None], params)
  return head_importance_runs(model, stacked, prompts, points=points, batch_size=batch_size,
                              prompt_chunk=prompt_chunk)[0]


def head_importance_runs(model: ICLModel, run_params: Params, prompts: tasks.Prompt, *, points=None,
                         batch_size: int | None = None, prompt_chunk: int = 256) -> np.ndarray:
  """``head_importance`` for every run of a stacked parameter tree (leading R axis): [R, L, H].

  One program, vmapped over runs and over masks (``batch_size`` masks at a time), run over the prompts in chunks
  of ``prompt_chunk``: memory grows with R × batch_size × prompt_chunk, not with the number of prompts (study 2's
  full preset, 3 runs × 2048 prompts × 80 tokens × width 256 in one piece, asked for 62 GB).
  """
  masks = jnp.asarray(single_head_masks(model.n_heads))
  sq_err = _importance_sq_err_runs(model, batch_size)
  risks, full = evaluate.chunked_prompt_mean(lambda *chunk: sq_err(run_params, masks, *chunk), prompts, prompt_chunk)
  return _importance_from(risks, full, model.n_heads, points)


def zero_head(params: Params, layer: int, head: int, n_heads: Sequence[int]) -> Params:
  """A copy of ``params`` with head (layer, head)'s slice of the output projection set to 0.

  gpt2: ``block_l/attn/out/kernel[head]`` ([H, K, E]); one-layer models: rows head·K..(head+1)·K of
  ``W_out/kernel`` ([p, 1]). The output bias is shared by all heads and is left alone.
  """
  params = jax.tree.map(lambda a: a, params)  # new containers, shared leaves
  if f"block_{layer}" in params:
    block = dict(params[f"block_{layer}"])
    attn = dict(block["attn"])
    out = dict(attn["out"])
    out["kernel"] = jnp.asarray(out["kernel"]).at[head].set(0.0)
    attn["out"], block["attn"] = out, attn
    params = dict(params)
    params[f"block_{layer}"] = block
    return params
  if "W_out" in params and layer == 0:
    kernel = jnp.asarray(params["W_out"]["kernel"])
    width = kernel.shape[0] // n_heads[0]
    params = dict(params)
    params["W_out"] = {**params["W_out"], "kernel": kernel.at[head * width:(head + 1) * width].set(0.0)}
    return params
  raise ValueError(f"zero_head: no layer {layer} in a parameter tree with keys {sorted(params)}")


# ----------------------------------------------------------------------------------------------
# Pruning


def pruning_mask(importance: np.ndarray, n_heads: Sequence[int], *, keep_all: Sequence[int] = (0,),
                 top_k: int = 1) -> np.ndarray:
  """Head mask [L, H]: all heads of the layers in ``keep_all``, the ``top_k`` most important of the others.

  ``importance`` [L, H] (NaN for missing heads; ties go to the lower head index). Policies:
  keep_all=(0,), top_k=1 — the study's pruning (layer 1 whole, one head per later layer);
  keep_all=(), top_k=k — top-k in every layer; keep_all=range(1, L), top_k=1 — the mirrored control
  (layer 1 cut to one head). A given mask needs no policy: pass it to ``masked_risk`` directly.
  """
  importance = np.asarray(importance, np.float64)
  valid = valid_heads(n_heads)
  if importance.shape != valid.shape:
    raise ValueError(f"importance has shape {importance.shape}; expected [L, H] = {list(valid.shape)}")
  if top_k < 1:
    raise ValueError(f"top_k={top_k}: must be >= 1")
  mask = np.zeros(valid.shape, np.float32)
  for layer, h in enumerate(n_heads):
    if layer in tuple(keep_all):
      mask[layer, :h] = 1.0
      continue
    scores = np.where(np.isnan(importance[layer, :h]), -np.inf, importance[layer, :h])
    order = np.argsort(-scores, kind="stable")
    mask[layer, order[:top_k]] = 1.0
  return mask


def pruned_risk(model: ICLModel, params: Params, prompts: tasks.Prompt, importance: np.ndarray | None = None, *,
                mask: np.ndarray | None = None, **policy) -> tuple[np.ndarray, np.ndarray]:
  """(mask [L, H], risk [P]) of the pruned model: the trained ``params`` evaluated through the mask, no retraining.

  The mask is ``mask`` if given, else ``pruning_mask(importance, model.n_heads, **policy)``.
  """
  if mask is None:
    if importance is None:
      raise ValueError("pruned_risk: pass an importance map (with a policy) or a mask")
    mask = pruning_mask(importance, model.n_heads, **policy)
  mask = np.asarray(mask, np.float32)
  risk = masked_risk_runs(model, jax.tree.map(lambda a: jnp.asarray(a)[None], params), prompts, mask[None])[0]
  return mask, risk


def pruning_masks_runs(importance_runs: np.ndarray, n_heads: Sequence[int], **policy) -> np.ndarray:
  """``pruning_mask`` for each run: [R, L, H] -> [R, L, H]."""
  return np.stack([pruning_mask(imp, n_heads, **policy) for imp in importance_runs])


def masked_risk_runs(model: ICLModel, run_params: Params, prompts: tasks.Prompt, masks: np.ndarray | None) -> np.ndarray:
  """Risk curves [R, P] of every run through its own mask ([R, L, H]; None = full model)."""
  return evaluate.run_risks(model, run_params, prompts, masks)


def head_usage(importance: np.ndarray, n_heads: Sequence[int]) -> dict[str, list[float]]:
  """Per-layer summaries of an importance map [L, H] (negative importances clipped to 0):

  * ``effective_heads`` — (Σ_k I⁺)² / Σ_k (I⁺)², between 1 (one head carries it all) and H_l (all equal);
    NaN if no head matters (Σ I⁺ = 0);
  * ``top1_share`` — max_k I⁺ / Σ_k I⁺.
  """
  eff, top = [], []
  for layer, h in enumerate(n_heads):
    imp = np.clip(np.nan_to_num(np.asarray(importance[layer, :h], np.float64)), 0.0, None)
    total = imp.sum()
    eff.append(float(total**2 / np.sum(imp**2)) if total > 0 else float("nan"))
    top.append(float(imp.max() / total) if total > 0 else float("nan"))
  return {"effective_heads": eff, "top1_share": top}


# ----------------------------------------------------------------------------------------------
# Probing


def hidden_states(model: ICLModel, params: Params, xs: jax.Array, ys: jax.Array, head_mask: jax.Array | None = None,
                  chunk: int = 512) -> np.ndarray:
  """Residual-stream states at the prediction positions of every layer: [L+1, B, P, E] (float32 numpy).

  Layer 0 is the embedding (read-in + positions), layer l the output of block l (before the final LN).
  Needs a gpt2 model (``aux["hidden"]``).
  """
  positions = layouts.get_layout(model.layout).pred_positions(xs.shape[1])
  out = []
  for start in range(0, xs.shape[0], chunk):
    aux = _capture(model, params, xs[start:start + chunk], ys[start:start + chunk], head_mask)
    out.append(np.asarray(aux["hidden"][:, :, positions]))
  return np.concatenate(out, axis=1)


@functools.partial(jax.jit, static_argnums=0)
def _capture(model: ICLModel, params: Params, xs: jax.Array, ys: jax.Array, head_mask: jax.Array | None) -> dict:
  """``model.apply(..., capture=True)``'s aux dict (attention weights, hidden states), jitted per model."""
  return model.apply(params, xs, ys, head_mask=head_mask, capture=True)[1]


def fit_probe(features: np.ndarray, y: np.ndarray, lam: float = 1e-6) -> tuple[np.ndarray, float]:
  """Closed-form ridge read-out with intercept: (a, c) minimising (1/M)||F a + c − y||² + λ·s·||a||².

  features [M, F], y [M]; s = mean feature variance (so λ is scale-free). Solved in float64 on
  centred data: a = (C + λ s I)⁻¹ Fᶜᵀ yᶜ / M, c = ȳ − aᵀ f̄.
  """
  f = np.asarray(features, np.float64)
  t = np.asarray(y, np.float64)
  mean_f, mean_t = f.mean(0), t.mean()
  fc, tc = f - mean_f, t - mean_t
  cov = fc.T @ fc / f.shape[0]
  scale = max(float(np.trace(cov)) / cov.shape[0], 1e-30)
  a = np.linalg.solve(cov + lam * scale * np.eye(cov.shape[0]), fc.T @ tc / f.shape[0])
  return a, float(mean_t - mean_f @ a)


def apply_probe(probe: tuple[np.ndarray, float], features: np.ndarray) -> np.ndarray:
  """ŷ = F a + c: [..., F] -> [...]."""
  a, c = probe
  return np.asarray(features, np.float64) @ a + c


def probe_risks(model: ICLModel, params: Params, fit_prompts: tasks.Prompt, eval_prompts: tasks.Prompt,
                head_mask: jax.Array | None = None, lam: float = 1e-6, fit_target: str = "ys") -> np.ndarray:
  """Per-layer linear-probe excess risk [L+1, P].

  For every layer l = 0..L a probe (``fit_probe``) is fitted on the hidden states at all prediction
  positions of ``fit_prompts`` (labels: ``fit_target`` = "ys" (noisy) or "targets"), then evaluated on
  ``eval_prompts``: risk[l, t] = mean_b (probe_l(h_l(b, t)) − wᵀx_{b, idx(t)})².
  """
  index = layouts.get_layout(model.layout).target_index(fit_prompts.xs.shape[1])
  h_fit = hidden_states(model, params, fit_prompts.xs, fit_prompts.ys, head_mask)  # [L+1, B, P, E]
  h_eval = hidden_states(model, params, eval_prompts.xs, eval_prompts.ys, head_mask)
  y_fit = np.asarray(getattr(fit_prompts, fit_target))[:, index].reshape(-1)
  target = np.asarray(eval_prompts.targets)[:, index]
  risks = []
  for layer in range(h_fit.shape[0]):
    probe = fit_probe(h_fit[layer].reshape(-1, h_fit.shape[-1]), y_fit, lam)
    risks.append(np.mean((apply_probe(probe, h_eval[layer]) - target) ** 2, axis=0))
  return np.stack(risks)


# ----------------------------------------------------------------------------------------------
# Attention maps


def attention_maps(model: ICLModel, params: Params, xs: jax.Array, ys: jax.Array,
                   head_mask: jax.Array | None = None) -> list[np.ndarray]:
  """Attention weights of every layer for prompts xs [B, N, d], ys [B, N]: a list of L arrays [B, H_l, T, T]."""
  return [np.asarray(w) for w in _capture(model, params, xs, ys, head_mask)["attn"]]


# ----------------------------------------------------------------------------------------------
# Plots (``jaxicl.plotting``: PNG + PDF, no global matplotlib state)


def plot_importance(importance: np.ndarray, path: str, title: str = "") -> str:
  """Heatmap of an importance map [L, H] (rows = layers from 1, columns = heads; NaN cells blank); returns the PNG
  path (a PDF is written beside it)."""
  from jaxicl import plotting
  imp = np.asarray(importance, np.float64)
  fig = plotting.figure(1.0 + 0.6 * imp.shape[1], 0.8 + 0.55 * imp.shape[0])
  ax = fig.subplots()
  im = ax.imshow(np.ma.masked_invalid(imp), cmap="viridis", aspect="auto")
  for (l, k), v in np.ndenumerate(imp):
    if np.isfinite(v):
      ax.text(k, l, f"{v:.2g}", ha="center", va="center", fontsize=7, color="w")
  ax.set_xticks(range(imp.shape[1]), [str(k + 1) for k in range(imp.shape[1])])
  ax.set_yticks(range(imp.shape[0]), [str(l + 1) for l in range(imp.shape[0])])
  ax.set_xlabel("head")
  ax.set_ylabel("layer")
  ax.set_title(title, fontsize=9)
  fig.colorbar(im, ax=ax, label="risk increase when masked")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  return plotting.save(fig, path, dpi=120)


def plot_attention(maps: list[np.ndarray], path: str, prompt: int = 0, title: str = "") -> str:
  """Grid of attention maps (rows = layers, columns = heads) of prompt ``prompt``; queries on the y axis. Returns
  the PNG path (a PDF is written beside it)."""
  from jaxicl import plotting
  L, H = len(maps), max(m.shape[1] for m in maps)
  fig, axes = plotting.panels(L * H, ncols=H, size=(1.8, 1.8))
  for l, m in enumerate(maps):
    for k in range(H):
      ax = axes[l * H + k]
      ax.set_xticks([])
      ax.set_yticks([])
      if k < m.shape[1]:
        ax.imshow(m[prompt, k], cmap="magma", vmin=0.0)
        ax.set_title(f"L{l + 1} H{k + 1}", fontsize=7)
      else:
        ax.axis("off")
  fig.suptitle(title, fontsize=9)
  return plotting.save(fig, path, dpi=100)
