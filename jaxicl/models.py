"""Models: one-layer multi-head attention predictors (study 1) and a GPT-2-style decoder (study 2).

Shape legend: B batch of prompts, N points per prompt, D = N-1 context points of the theory layout,
d input dimension, T tokens, P predictions per prompt, L layers, H heads (of a layer), K head width,
p embedding dimension of the one-layer models, E width of the decoder, F = E·mlp_ratio MLP width.

Every model is built by ``build_model(cfg, task)`` into an ``ICLModel`` of pure functions:

  * ``init(key) -> params``: a plain nested dict of float32 arrays (the Flax ``"params"`` collection);
  * ``apply(params, xs_BxNxd, ys_BxN, *, head_mask=None, capture=False)``: lays the prompt out into
    tokens itself (``jaxicl.layouts``) and returns float32 predictions [B, P] at the layout's
    prediction positions, or ``(preds, aux)`` with ``capture=True``.

``head_mask`` is a float array [L, max_l H_l] (1 keep, 0 remove; entries beyond a layer's head count
are ignored). Head k of layer l has its output multiplied by ``head_mask[l, k]`` before the output
projection, so a 0 removes exactly that head's contribution (its slice of the projection weights).

The models (``ModelConfig.name``):

``softmax_icl`` (theory layout, P = 1, the prediction for the query = last point)
    e_i = W_in z_i ∈ R^p, z_i = [x_i; y_i] (query z_q = [x_q; 0]); for heads k = 1..h of width K = p/h
    q_k = W_Q^k e_q, k_ki = W_K^k e_i, v_ki = W_V^k e_i (i = 1..D context tokens only: the query does
    not attend to itself), a_ki = softmax_i(s · q_k·k_ki), head_k = Σ_i a_ki v_ki,
    ŷ = W_out · concat_k(mask_k · head_k). s = ``attn_scale`` (default 1/√K). There is no LayerNorm,
    no MLP, no residual connection and no bias anywhere: ŷ is exactly the kernel smoother of theory.md,
    ŷ = Σ_k Σ_i (c_kᵀ W_V^k e_i) softmax_i(s e_qᵀ W_Q^kᵀ W_K^k e_i), c_k = head k's rows of W_out.
    With ``read_in=False`` W_in is the fixed zero-padding z ↦ [z; 0] ∈ R^p (needs p ≥ d+1).
``linear_icl``
    the same without softmax: head_k = (1/D) Σ_i (s · q_k·k_ki) v_ki.
``gpt2`` (interleaved layout, P = N, prediction i for y_i read at token x_i, given points < i)
    h_0 = read_in(token) + pos_embed[t]; for each layer l: h += MHA_l(LN(h)) (causal, H_l heads of
    width E/H_l, logits scaled by 1/√(E/H_l) or ``attn_scale``), then h += MLP(LN(h)) (GELU, width F;
    optional); ŷ = read_out(LN_f(h)). Compute dtype ``cfg.dtype`` (float32 or bfloat16), parameters
    always float32, attention softmax always in float32, predictions returned in float32. Without
    ``capture`` only what the predictions need is computed: the last y token is dropped and the last
    block runs its queries, residual and MLP at the x tokens only (the same function, about 1/(2L) less work).

Initialisation.
  * One-layer models: W_in, W_Q, W_K, W_V LeCun-normal (variance 1/fan_in), so embeddings, queries,
    keys and values have O(1) entries and the logits s·q·k are O(1) at the default s = 1/√K;
    W_out ~ N(0, (0.01)²/p), i.e. the read-out starts ~100× smaller than LeCun: the initial
    prediction is ≈ 0 (initial loss ≈ E y²), so early training is not dominated by the random
    kernel's noise, while W_out ≠ 0 keeps gradients flowing to all other parameters from step 1.
  * gpt2 blocks: the GPT-2 scheme: every kernel and the positional embedding N(0, 0.02²), the two
    residual-branch output projections (attention ``out``, MLP ``proj``) N(0, 0.02²/(2L)), biases 0,
    LayerNorm scale 1 / bias 0.
  * gpt2 query / key kernels (``qk_init``): ``gpt2`` (default) is the scheme above; ``fan_in`` draws them
    from N(0, 1/E), so that for a LayerNorm'd token (unit-variance entries) queries and keys have unit-variance
    entries and the logits s·q·k unit variance: attention is not uniform at init. With GPT-2's 0.02 the logits'
    variance is (0.02²E)² ≈ 7e-4 at E = 64: every head starts as a plain causal average of the tokens, a
    symmetric point that the early training sits near. ``fan_in`` leaves that loss plateau about twice as early
    (benchmarks/learning_speed.py, README "Performance"); the study-2 ``cpu`` and ``full`` presets use it.
  * gpt2 ``read_in`` / ``read_out`` (``io_init``): ``fan_in`` (default) draws kernel and bias from
    U(±1/√fan_in), the default of a plain linear layer in PyTorch, which the GPT-2 ICL reference keeps
    for these two layers; ``gpt2`` draws the kernels from N(0, 0.02²) with zero biases. With ``gpt2`` a
    token's content enters the residual stream at ~2× the positional embedding's scale and training sits
    far longer on the loss plateau (benchmarks/learning_speed.py measures both against the reference).

Parameter trees (top-level names are relied on by lazy training):
  one-layer:
    W_in/kernel [d+1, p]                (absent with read_in=False)
    attn/{query,key,value}/kernel [p, H, K]
    W_out/kernel [p, 1]                 (row k·K + j reads coordinate j of head k)
  gpt2:
    read_in/{kernel [d_tok, E], bias [E]}, pos_embed [2·max_points, E]
    block_l/ln_1/{scale, bias}, block_l/attn/{query,key,value}/{kernel [E, H_l, K_l], bias [H_l, K_l]},
    block_l/attn/out/{kernel [H_l, K_l, E], bias [E]}, block_l/ln_2, block_l/mlp/fc [E, F], block_l/mlp/proj [F, E]
    (ln_2 and mlp absent with mlp=False), ln_f/{scale, bias}, read_out/{kernel [E, 1], bias [1]}

``capture=True`` returns ``(preds, aux)``: ``aux["attn"]`` a tuple over layers of float32 attention
weights [B, H_l, Tq, Tk] (one-layer models: [B, H, 1, D], the query row over the context tokens; for
``linear_icl`` the un-normalised s·q·k_i/D), and for gpt2 ``aux["hidden"]`` [L+1, B, T, E] float32:
the input embedding and every block's output (the residual stream before ``ln_f``).

Attention implementations (``attention_impl``). One-layer models: ``auto`` computes the query's attention
in token space (the factored path of ``OneLayerICL``: O(D·H·(d+1)) per prompt, no key or value per context
token; weights come free), ``einsum`` projects every context token to keys and values and forms the weights
explicitly, ``xla`` does the same projections and calls ``jax.nn.dot_product_attention`` (softmax_icl only;
``capture=True`` is then an error). gpt2: ``auto`` calls ``jax.nn.dot_product_attention`` unless weights are
requested (``capture=True`` takes the einsum path), ``einsum`` is always explicit, ``xla`` always
``jax.nn.dot_product_attention``. All paths compute the same function (tests/test_models.py).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxicl import layouts, tasks

MODEL_NAMES = ("softmax_icl", "linear_icl", "gpt2")
ONE_LAYER_MODELS = ("softmax_icl", "linear_icl")
GPT2_LAYOUTS = ("interleaved", "interleaved_flag")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
ATTENTION_IMPLS = ("einsum", "xla", "auto")
IO_INITS = ("fan_in", "gpt2")
QK_INITS = ("gpt2", "fan_in")
W_OUT_INIT_SCALE = 0.01  # W_out ~ N(0, W_OUT_INIT_SCALE² / p) in the one-layer models
GPT2_INIT_STD = 0.02
LAYER_NORM_EPS = 1e-5  # GPT-2's LayerNorm epsilon (Flax's default is 1e-6)

Params = Any


def _fail(field: str, value, why: str):
  raise ValueError(f"ModelConfig.{field}={value!r}: {why}")


def _is_pos_int(v) -> bool:
  return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1


# Fields that only one family of models has, with their defaults (``None`` in a ModelConfig = this default).
ONE_LAYER_FIELDS = {"embed_dim": 64, "read_in": True}
GPT2_FIELDS = {"width": 256, "n_layers": 12, "mlp": True, "mlp_ratio": 4, "max_points": 101, "layout": "interleaved",
               "io_init": "fan_in", "qk_init": "gpt2"}
DEFAULT_HEADS = {"softmax_icl": (4,), "linear_icl": (4,), "gpt2": (8,)}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """What a model is. Hashable, so it can be a static argument of ``jax.jit``.

  Fields that belong to one family of models default to ``None`` and take the family's default
  (``ONE_LAYER_FIELDS`` / ``GPT2_FIELDS``) when they apply; set on a model they do not apply to, they
  are an error naming the model (``ModelConfig.width=64: does not apply to model 'softmax_icl'``).

  Attributes:
    name: ``softmax_icl`` | ``linear_icl`` (one-layer, theory layout) | ``gpt2``.
    heads: heads per layer. One-layer models: exactly one entry h (default 4), p % h == 0. gpt2: one
      entry = the same for all layers (default 8), else one entry per layer; width % heads_l == 0.
      An int or a list is converted to a tuple.
    attn_scale: multiplier of the attention logits q·k; ``None`` = 1/√(head width).
    dtype: compute dtype ``float32`` or ``bfloat16`` (parameters stay float32).
    attention_impl: ``auto`` (one-layer models: the factored token-space path; gpt2:
      ``jax.nn.dot_product_attention`` unless attention weights are requested, then the explicit einsum),
      ``einsum`` (keys and values per token, explicit weights) or ``xla`` (``jax.nn.dot_product_attention``;
      requesting weights is an error). ``linear_icl`` has no softmax and accepts only ``auto`` / ``einsum``.
    embed_dim: one-layer models: p, the embedding dimension (default 64).
    read_in: one-layer models: learn W_in (True, default) or use the fixed zero-padding z ↦ [z; 0]
      (False, needs p ≥ d+1).
    width: gpt2: E, the decoder width (default 256).
    n_layers: gpt2: L (default 12).
    mlp: gpt2: blocks have an MLP sub-block (default True).
    mlp_ratio: gpt2: MLP width F = width · mlp_ratio (default 4).
    max_points: gpt2: the learned positional embedding covers 2·max_points tokens (default 101).
    layout: gpt2 token layout, ``interleaved`` (default) or ``interleaved_flag`` (one-layer models
      always use ``theory``).
    io_init: gpt2 read-in / read-out initialisation, ``fan_in`` (default; U(±1/√fan_in), kernel and
      bias) or ``gpt2`` (N(0, 0.02²) kernel, zero bias); see the module docstring.
    qk_init: gpt2 query / key kernels, ``gpt2`` (default; N(0, 0.02²)) or ``fan_in`` (N(0, 1/E): logits of
      unit variance at init); see the module docstring.
  """

  name: str = "softmax_icl"
  heads: tuple[int, ...] | None = None
  attn_scale: float | None = None
  dtype: str = "float32"
  attention_impl: str = "auto"
  embed_dim: int | None = None
  read_in: bool | None = None
  width: int | None = None
  n_layers: int | None = None
  mlp: bool | None = None
  mlp_ratio: int | None = None
  max_points: int | None = None
  layout: str | None = None
  io_init: str | None = None
  qk_init: str | None = None

  def __post_init__(self):
    if self.name not in MODEL_NAMES:
      _fail("name", self.name, f"unknown model; known: {MODEL_NAMES}")
    one_layer = self.name in ONE_LAYER_MODELS
    own, other = (ONE_LAYER_FIELDS, GPT2_FIELDS) if one_layer else (GPT2_FIELDS, ONE_LAYER_FIELDS)
    for field in other:
      if getattr(self, field) is not None:
        _fail(field, getattr(self, field), f"does not apply to model {self.name!r}")
    for field, default in own.items():
      if getattr(self, field) is None:
        object.__setattr__(self, field, default)
    heads = DEFAULT_HEADS[self.name] if self.heads is None else self.heads
    if isinstance(heads, (int, np.integer)) and not isinstance(heads, bool):
      heads = (int(heads),)
    elif isinstance(heads, list):
      heads = tuple(heads)
    object.__setattr__(self, "heads", heads)
    validate(self)

  @property
  def one_layer(self) -> bool:
    return self.name in ONE_LAYER_MODELS

  @property
  def layer_heads(self) -> tuple[int, ...]:
    """Heads of each layer: ``heads`` for one-layer models, length ``n_layers`` for gpt2."""
    if self.one_layer or len(self.heads) > 1:
      return tuple(self.heads)
    return self.heads * self.n_layers

  @property
  def head_dims(self) -> tuple[int, ...]:
    """Head width K_l of each layer: p/h (one-layer) or E/H_l (gpt2)."""
    model_width = self.embed_dim if self.one_layer else self.width
    return tuple(model_width // h for h in self.layer_heads)

  def logit_scale(self, layer: int = 0) -> float:
    """s of layer ``layer``: ``attn_scale``, or 1/√K_l."""
    if self.attn_scale is not None:
      return float(self.attn_scale)
    return 1.0 / math.sqrt(self.head_dims[layer])

  @property
  def compute_dtype(self):
    return DTYPES[self.dtype]


def validate(cfg: ModelConfig) -> None:
  """Raises ``ValueError`` naming the first invalid field of ``cfg`` (the fields that apply to its model)."""
  if cfg.name not in MODEL_NAMES:
    _fail("name", cfg.name, f"unknown model; known: {MODEL_NAMES}")
  one_layer = cfg.name in ONE_LAYER_MODELS
  sizes = ("embed_dim",) if one_layer else ("width", "n_layers", "mlp_ratio", "max_points")
  for field in sizes:
    if not _is_pos_int(getattr(cfg, field)):
      _fail(field, getattr(cfg, field), "must be an integer >= 1")
  if not isinstance(cfg.heads, tuple) or len(cfg.heads) == 0 or not all(_is_pos_int(h) for h in cfg.heads):
    _fail("heads", cfg.heads, "must be a non-empty tuple of integers >= 1")
  if one_layer:
    if len(cfg.heads) != 1:
      _fail("heads", cfg.heads, f"model {cfg.name!r} has one layer: needs exactly one entry")
    if cfg.embed_dim % cfg.heads[0] != 0:
      raise ValueError(
          f"ModelConfig.embed_dim={cfg.embed_dim} is not divisible by ModelConfig.heads={cfg.heads}: "
          "the head width p/h must be an integer")
  else:
    if len(cfg.heads) not in (1, cfg.n_layers):
      _fail("heads", cfg.heads, f"needs 1 or n_layers={cfg.n_layers} entries, got {len(cfg.heads)}")
    for h in cfg.heads:
      if cfg.width % h != 0:
        _fail("heads", cfg.heads, f"width={cfg.width} is not divisible by {h} heads")
    if cfg.layout not in GPT2_LAYOUTS:
      _fail("layout", cfg.layout, f"unknown gpt2 layout; known: {GPT2_LAYOUTS}")
    if cfg.io_init not in IO_INITS:
      _fail("io_init", cfg.io_init, f"unknown; known: {IO_INITS}")
    if cfg.qk_init not in QK_INITS:
      _fail("qk_init", cfg.qk_init, f"unknown; known: {QK_INITS}")
  if cfg.attn_scale is not None and not (
      isinstance(cfg.attn_scale, (int, float, np.floating)) and math.isfinite(cfg.attn_scale)):
    _fail("attn_scale", cfg.attn_scale, "must be None or a finite number")
  if cfg.dtype not in DTYPES:
    _fail("dtype", cfg.dtype, f"unknown dtype; known: {tuple(DTYPES)}")
  if cfg.attention_impl not in ATTENTION_IMPLS:
    _fail("attention_impl", cfg.attention_impl, f"unknown; known: {ATTENTION_IMPLS}")
  if cfg.name == "linear_icl" and cfg.attention_impl == "xla":
    _fail("attention_impl", cfg.attention_impl, "linear_icl has no softmax; use 'auto' or 'einsum'")
  for field in ("read_in",) if one_layer else ("mlp",):
    if not isinstance(getattr(cfg, field), (bool, np.bool_)):
      _fail(field, getattr(cfg, field), "must be a bool")


class ICLModel(NamedTuple):
  """A model as pure functions of (params, arrays)."""

  init: Callable[[jax.Array], Params]  # key -> params (plain dict, float32)
  apply: Callable[..., Any]  # apply(params, xs_BxNxd, ys_BxN, *, head_mask=None, capture=False)
  layout: str
  n_heads: tuple[int, ...]  # heads per layer


# ----------------------------------------------------------------------------------------------
# Attention kernels


def _large_negative(dtype) -> float:
  return float(-0.7 * jnp.finfo(dtype).max)


def causal_mask(q_positions: np.ndarray, n_keys: int) -> np.ndarray:
  """[Tq, Tk] bool: query i (at token position ``q_positions[i]``) may attend to keys s ≤ that position."""
  return np.arange(n_keys)[None, :] <= np.asarray(q_positions)[:, None]


def softmax_weights(q: jax.Array, k: jax.Array, scale: float, causal: bool,
                    key_mask: jax.Array | None = None, q_positions: np.ndarray | None = None) -> jax.Array:
  """a = softmax_s(scale · q_t·k_s) in float32; q [B, Tq, H, K], k [B, Tk, H, K] -> [B, H, Tq, Tk].

  ``causal`` masks keys s > t, t the query's token position: ``q_positions`` [Tq] (static), by default
  0..Tq-1 (queries and keys index the same sequence); ``key_mask`` [B, Tk] (bool) masks the keys where it
  is False. Masked weights are exactly 0.
  """
  logits = jnp.einsum("bthk,bshk->bhts", q, k, preferred_element_type=jnp.float32) * scale
  if causal:
    tq, tk = logits.shape[-2:]
    allowed = causal_mask(np.arange(tq) if q_positions is None else q_positions, tk)
    logits = jnp.where(allowed, logits, _large_negative(jnp.float32))
  if key_mask is not None:
    logits = jnp.where(key_mask[:, None, None, :], logits, _large_negative(jnp.float32))
  return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)


def weighted_values(weights: jax.Array, v: jax.Array) -> jax.Array:
  """o_t = Σ_s a_ts v_s: weights [B, H, Tq, Tk], v [B, Tk, H, K] -> [B, Tq, H, K] in v's dtype."""
  return jnp.einsum("bhts,bshk->bthk", weights.astype(v.dtype), v)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, scale: float, causal: bool,
           use_xla: bool, key_mask: jax.Array | None = None,
           q_positions: np.ndarray | None = None) -> tuple[jax.Array, jax.Array | None]:
  """Softmax attention q [B, Tq, H, K], k and v [B, Tk, H, K] -> ([B, Tq, H, K], weights [B, H, Tq, Tk] or None).

  ``use_xla``: ``jax.nn.dot_product_attention`` (no weights returned); else the explicit einsum path.
  ``key_mask`` [B, Tk] bool: attend only to the keys where it is True. ``q_positions`` [Tq] (static):
  the queries' token positions for the causal mask when they are a subset of the keys' (default 0..Tq-1).
  """
  if use_xla:
    mask = None if key_mask is None else key_mask[:, None, None, :]
    if causal and q_positions is not None:
      allowed = jnp.asarray(causal_mask(q_positions, k.shape[1]))[None, None]
      mask = allowed if mask is None else mask & allowed
    out = jax.nn.dot_product_attention(q, k, v, scale=scale, is_causal=causal and q_positions is None, mask=mask)
    return out, None
  weights = softmax_weights(q, k, scale, causal, key_mask, q_positions)
  return weighted_values(weights, v), weights


def take_positions(x: jax.Array, positions: np.ndarray) -> jax.Array:
  """x[:, positions] for static token positions [P]; an evenly spaced run (the interleaved layouts' x tokens)
  is a strided slice, whose gradient is a pad rather than a scatter."""
  positions = np.asarray(positions)
  step = int(positions[1] - positions[0]) if len(positions) > 1 else 1
  if step > 0 and np.array_equal(positions, positions[0] + step * np.arange(len(positions))):
    return x[:, int(positions[0]):int(positions[-1]) + 1:step]
  return x[:, positions]


def _head_mask_for_layer(head_mask: jax.Array | None, layer: int, n_heads: int) -> jax.Array | None:
  """Row ``layer`` of the [L, max_heads] mask, cut to the layer's ``n_heads`` heads ([H] or None)."""
  if head_mask is None:
    return None
  return head_mask[layer, :n_heads]


def _check_head_mask(head_mask, n_heads: tuple[int, ...]) -> jax.Array | None:
  if head_mask is None:
    return None
  head_mask = jnp.asarray(head_mask, jnp.float32)
  want = (len(n_heads), max(n_heads))
  if head_mask.ndim != 2 or head_mask.shape[0] != want[0] or head_mask.shape[1] < want[1]:
    raise ValueError(f"head_mask has shape {head_mask.shape}; expected [L, max_heads] = {list(want)}")
  return head_mask


# ----------------------------------------------------------------------------------------------
# One-layer models (study 1)


class Kernel(nn.Module):
  """A bare kernel [fan_in, *features] under the name ``kernel``, initialised exactly as ``nn.DenseGeneral`` /
  ``nn.Dense`` initialise theirs (the initializer sees the flattened [fan_in, prod(features)] shape), so the
  one-layer models can use their weights directly (the factored path) with the parameter tree of dense layers."""

  fan_in: int
  features: tuple[int, ...]
  init: Callable

  @nn.compact
  def __call__(self) -> jax.Array:
    def flat_init(key, shape, dtype=jnp.float32):
      return jnp.reshape(self.init(key, (shape[0], math.prod(shape[1:])), dtype), shape)
    return self.param("kernel", flat_init, (self.fan_in, *self.features), jnp.float32)


class AttentionKernels(nn.Module):
  """The query, key and value kernels [p, H, K] of a one-layer model (``attn/{query,key,value}/kernel``)."""

  embed_dim: int
  num_heads: int
  head_dim: int

  @nn.compact
  def __call__(self) -> dict[str, jax.Array]:
    return {name: Kernel(self.embed_dim, (self.num_heads, self.head_dim), nn.initializers.lecun_normal(),
                         name=name)() for name in ("query", "key", "value")}


class OneLayerICL(nn.Module):
  """One-layer multi-head attention read at the query token of the theory layout (see module doc).

  Input tokens [B, N, d+1] (query label already zeroed); output ŷ [B, 1] and the attention weights
  [B, H, 1, D] (softmax weights, or s·q·k/D for linear attention).

  ``impl`` ``factored``: the query attends in token space. With J = d+1 and the read-in W_in [J, p],
  logit_ki = s·q_kᵀ W_K^kᵀ W_in ᵀ z_i = s·r_k·z_i with r_k = W_in W_K^k q_k ∈ R^J (one vector per prompt and
  head), and head_k = Σ_i a_ki W_V^kᵀ W_in ᵀ z_i = W_V^kᵀ W_in ᵀ (Σ_i a_ki z_i): O(D·H·J) per prompt instead of
  the O(D·p²) of projecting every context token. ``einsum`` / ``xla``: keys and values of every context
  token, then explicit weights / ``jax.nn.dot_product_attention``. The three compute the same function.
  """

  embed_dim: int
  num_heads: int
  head_dim: int
  read_in: bool
  softmax: bool
  attn_scale: float
  impl: str  # "factored" | "einsum" | "xla"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens: jax.Array, head_mask: jax.Array | None = None, want_weights: bool = False,
               n_context: jax.Array | None = None) -> tuple[jax.Array, jax.Array | None]:
    p, h, kdim, j = self.embed_dim, self.num_heads, self.head_dim, tokens.shape[-1]
    dt = self.dtype
    tokens = tokens.astype(dt)
    if self.read_in:
      w_in = Kernel(j, (p,), nn.initializers.lecun_normal(), name="W_in")().astype(dt)  # [J, p]
    else:
      w_in = jnp.eye(j, p, dtype=dt)  # z ↦ [z; 0]
    kernels = {name: k.astype(dt) for name, k in AttentionKernels(p, h, kdim, name="attn")().items()}  # [p, H, K]
    z_ctx, z_q = tokens[:, :-1], tokens[:, -1]  # [B, D, J], [B, J]
    key_mask = None
    if n_context is not None:  # padded prompts: only the first n_context tokens are context
      n_context = jnp.broadcast_to(jnp.asarray(n_context), (tokens.shape[0],))
      key_mask = jnp.arange(z_ctx.shape[1])[None, :] < n_context[:, None]  # [B, D]
    q = jnp.einsum("bj,jp,phk->bhk", z_q, w_in, kernels["query"])  # [B, H, K]
    if self.impl == "factored":
      r = jnp.einsum("bhk,phk,jp->bhj", q, kernels["key"], w_in)  # [B, H, J]
      logits = jnp.einsum("bhj,bsj->bhs", r, z_ctx, preferred_element_type=jnp.float32) * self.attn_scale
      weights = self._normalise(logits, key_mask)  # [B, H, D]
      z_bar = jnp.einsum("bhs,bsj->bhj", weights.astype(dt), z_ctx)  # Σ_i a_ki z_i
      heads = jnp.einsum("bhj,jp,phk->bhk", z_bar, w_in, kernels["value"])  # [B, H, K]
      weights = weights[:, :, None, :]
    else:
      e_ctx = z_ctx @ w_in  # [B, D, p]
      k = jnp.einsum("bsp,phk->bshk", e_ctx, kernels["key"])
      v = jnp.einsum("bsp,phk->bshk", e_ctx, kernels["value"])
      if self.softmax:
        out, weights = attend(q[:, None], k, v, self.attn_scale, causal=False,
                              use_xla=self.impl == "xla" and not want_weights, key_mask=key_mask)
      else:
        logits = jnp.einsum("bhk,bshk->bhs", q, k, preferred_element_type=jnp.float32) * self.attn_scale
        weights = self._normalise(logits, key_mask)[:, :, None, :]
        out = weighted_values(weights, v)
      heads = out[:, 0]  # [B, H, K]
    if head_mask is not None:
      heads = heads * head_mask.astype(heads.dtype)[None, :, None]
    concat = heads.reshape(heads.shape[0], p)  # head k at rows k·K..(k+1)·K-1
    out_init = nn.initializers.normal(W_OUT_INIT_SCALE / math.sqrt(p))
    y = nn.Dense(1, use_bias=False, dtype=dt, param_dtype=jnp.float32,
                 kernel_init=out_init, name="W_out")(concat)  # [B, 1]
    return y.astype(jnp.float32), weights

  def _normalise(self, logits: jax.Array, key_mask: jax.Array | None) -> jax.Array:
    """Softmax over the context (masked keys get weight 0), or for linear attention logits / D."""
    if self.softmax:
      if key_mask is not None:
        logits = jnp.where(key_mask[:, None, :], logits, _large_negative(jnp.float32))
      return jax.nn.softmax(logits, axis=-1)
    if key_mask is None:
      return logits / logits.shape[-1]
    return jnp.where(key_mask[:, None, :], logits, 0.0) / jnp.sum(key_mask, -1)[:, None, None]


# ----------------------------------------------------------------------------------------------
# GPT-2-style decoder


def fan_in_uniform(fan_in: int) -> Callable:
  """U(±1/√fan_in) for any shape: PyTorch's default for a linear layer's weight and bias."""
  bound = 1.0 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def io_initializers(io_init: str, fan_in: int) -> tuple[Callable, Callable]:
  """(kernel_init, bias_init) of the gpt2 read-in / read-out layers (``ModelConfig.io_init``)."""
  if io_init == "gpt2":
    return nn.initializers.normal(GPT2_INIT_STD), nn.initializers.zeros
  return fan_in_uniform(fan_in), fan_in_uniform(fan_in)


class MultiHeadAttention(nn.Module):
  """Causal multi-head self-attention [B, T, E] -> [B, T, E]; head outputs masked before ``out``."""

  num_heads: int
  head_dim: int
  width: int
  scale: float
  use_xla: bool
  out_std: float
  qk_std: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, head_mask: jax.Array | None, want_weights: bool,
               q_positions: np.ndarray | None = None) -> tuple[jax.Array, jax.Array | None]:
    """x [B, T, E] -> [B, T, E], or [B, Tq, E] for the queries at token positions ``q_positions`` [Tq] only."""
    h, kdim = self.num_heads, self.head_dim

    def proj(name, std):
      return nn.DenseGeneral((h, kdim), dtype=self.dtype, param_dtype=jnp.float32,
                             kernel_init=nn.initializers.normal(std), name=name)

    x_q = x if q_positions is None else take_positions(x, q_positions)
    q, k = proj("query", self.qk_std)(x_q), proj("key", self.qk_std)(x)  # [B, Tq, H, K], [B, T, H, K]
    v = proj("value", GPT2_INIT_STD)(x)  # [B, T, H, K]
    o, weights = attend(q, k, v, self.scale, causal=True, use_xla=self.use_xla and not want_weights,
                        q_positions=q_positions)
    if head_mask is not None:
      o = o * head_mask.astype(o.dtype)[None, None, :, None]
    out = nn.DenseGeneral(self.width, axis=(-2, -1), dtype=self.dtype, param_dtype=jnp.float32,
                          kernel_init=nn.initializers.normal(self.out_std), name="out")(o)
    return out, weights


class MLP(nn.Module):
  """x -> proj(GELU(fc(x))): [B, T, E] -> [B, T, F] -> [B, T, E]."""

  width: int
  hidden: int
  out_std: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.Dense(self.hidden, dtype=self.dtype, param_dtype=jnp.float32,
                 kernel_init=nn.initializers.normal(GPT2_INIT_STD), name="fc")(x)
    x = nn.gelu(x)
    return nn.Dense(self.width, dtype=self.dtype, param_dtype=jnp.float32,
                    kernel_init=nn.initializers.normal(self.out_std), name="proj")(x)


class Block(nn.Module):
  """Pre-LayerNorm block: h += MHA(LN_1 h); h += MLP(LN_2 h) (if ``mlp``)."""

  num_heads: int
  head_dim: int
  width: int
  mlp: bool
  mlp_ratio: int
  scale: float
  use_xla: bool
  out_std: float
  qk_std: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, head_mask: jax.Array | None, want_weights: bool,
               q_positions: np.ndarray | None = None) -> tuple[jax.Array, jax.Array | None]:
    """x [B, T, E] -> [B, T, E]; with ``q_positions`` [Tq], only the outputs at those token positions,
    [B, Tq, E] (every token is still a key and a value: the same outputs, less work)."""
    ln = lambda name: nn.LayerNorm(epsilon=LAYER_NORM_EPS, dtype=self.dtype, param_dtype=jnp.float32, name=name)
    attn = MultiHeadAttention(self.num_heads, self.head_dim, self.width, self.scale, self.use_xla, self.out_std,
                              self.qk_std, self.dtype, name="attn")
    a, weights = attn(ln("ln_1")(x), head_mask, want_weights, q_positions)
    x = (x if q_positions is None else take_positions(x, q_positions)) + a
    if self.mlp:
      x = x + MLP(self.width, self.width * self.mlp_ratio, self.out_std, self.dtype, name="mlp")(ln("ln_2")(x))
    return x, weights


class GPT2(nn.Module):
  """GPT-2-style causal decoder: tokens [B, T, d_tok] -> (outputs [B, P] float32 at ``out_positions``, weights,
  hidden).

  Without ``capture`` it computes only what the outputs depend on: the tokens after the last output position
  are dropped (causal: nothing before them reads them) and the last block runs its queries, residual and MLP at
  the output positions only (the interleaved layouts' x tokens: half of the last block's work). With
  ``capture`` every token goes through every block, so the weights and hidden states cover all T positions.
  """

  cfg: ModelConfig

  @nn.compact
  def __call__(self, tokens: jax.Array, out_positions: np.ndarray, head_mask: jax.Array | None = None,
               capture: bool = False) -> tuple[jax.Array, tuple, jax.Array | None]:
    cfg = self.cfg
    dtype = cfg.compute_dtype
    n_tokens = tokens.shape[1]
    if n_tokens > 2 * cfg.max_points:
      raise ValueError(f"ModelConfig.max_points={cfg.max_points}: a prompt of {n_tokens // 2} points needs "
                       f"{n_tokens} positions > 2·max_points")
    out_positions = np.asarray(out_positions)
    if not capture:
      n_tokens = int(out_positions.max()) + 1
      tokens = tokens[:, :n_tokens]
    init = nn.initializers.normal(GPT2_INIT_STD)
    in_kernel, in_bias = io_initializers(cfg.io_init, tokens.shape[-1])
    x = nn.Dense(cfg.width, dtype=dtype, param_dtype=jnp.float32, kernel_init=in_kernel, bias_init=in_bias,
                 name="read_in")(tokens.astype(dtype))
    pos = self.param("pos_embed", init, (2 * cfg.max_points, cfg.width), jnp.float32)
    x = x + pos[:n_tokens].astype(dtype)[None]
    out_std = GPT2_INIT_STD / math.sqrt(2 * cfg.n_layers)
    qk_std = GPT2_INIT_STD if cfg.qk_init == "gpt2" else 1.0 / math.sqrt(cfg.width)
    hidden, weights = [x], []
    use_xla = cfg.attention_impl in ("xla", "auto")
    last = len(cfg.layer_heads) - 1
    for layer, h in enumerate(cfg.layer_heads):
      q_positions = out_positions if layer == last and not capture else None
      x, w = Block(h, cfg.head_dims[layer], cfg.width, cfg.mlp, cfg.mlp_ratio, cfg.logit_scale(layer), use_xla,
                   out_std, qk_std, dtype, name=f"block_{layer}")(x, _head_mask_for_layer(head_mask, layer, h), capture,
                                                          q_positions)
      hidden.append(x)
      weights.append(w)
    if capture:
      x = take_positions(x, out_positions)
    x = nn.LayerNorm(epsilon=LAYER_NORM_EPS, dtype=dtype, param_dtype=jnp.float32, name="ln_f")(x)
    out_kernel, out_bias = io_initializers(cfg.io_init, cfg.width)
    y = nn.Dense(1, dtype=dtype, param_dtype=jnp.float32, kernel_init=out_kernel, bias_init=out_bias,
                 name="read_out")(x)[..., 0]
    stacked = jnp.stack(hidden).astype(jnp.float32) if capture else None
    return y.astype(jnp.float32), tuple(weights), stacked


# ----------------------------------------------------------------------------------------------
# Builder


def _plain(tree):
  """Flax variables -> plain nested dicts."""
  if isinstance(tree, dict) or hasattr(tree, "items"):
    return {k: _plain(v) for k, v in tree.items()}
  return tree


def build_model(cfg: ModelConfig, task: tasks.TaskConfig) -> ICLModel:
  """The model of ``cfg`` for prompts of ``task`` (its d and n_points fix the dummy init input).

  Raises ``ValueError`` for combinations the config alone cannot check: one-layer models need
  n_points ≥ 2 (a context) and, with read_in=False, embed_dim ≥ d+1; gpt2 needs n_points ≤ max_points.
  """
  d, n = task.d, task.n_points
  n_heads = cfg.layer_heads
  if cfg.name in ONE_LAYER_MODELS:
    if n < 2:
      raise ValueError(f"TaskConfig.n_points={n}: one-layer models need >= 1 context point + the query")
    if not cfg.read_in and cfg.embed_dim < d + 1:
      _fail("embed_dim", cfg.embed_dim, f"read_in=False zero-pads [x; y] into R^p, needs embed_dim >= d+1 = {d + 1}")
    layout_name = "theory"
    impl = {"auto": "factored"}.get(cfg.attention_impl, cfg.attention_impl)
    module = OneLayerICL(cfg.embed_dim, n_heads[0], cfg.head_dims[0], cfg.read_in, cfg.name == "softmax_icl",
                         cfg.logit_scale(0), impl, dtype=cfg.compute_dtype)
  else:
    if n > cfg.max_points:
      _fail("max_points", cfg.max_points, f"smaller than TaskConfig.n_points={n}")
    layout_name = cfg.layout
    module = GPT2(cfg)
  layout = layouts.get_layout(layout_name)

  def init(key: jax.Array) -> Params:
    xs = jnp.zeros((1, n, d), jnp.float32)
    ys = jnp.zeros((1, n), jnp.float32)
    if cfg.name in ONE_LAYER_MODELS:
      return _plain(module.init(key, layout.tokens(xs, ys))["params"])
    return _plain(module.init(key, layout.tokens(xs, ys), layout.pred_positions(n))["params"])

  def apply(params: Params, xs: jax.Array, ys: jax.Array, *, head_mask: jax.Array | None = None,
            capture: bool = False, n_context: jax.Array | int | None = None):
    """Predictions [B, P] (float32) for prompts xs [B, N, d], ys [B, N]; with capture, (preds, aux).

    ``n_context`` (one-layer models; scalar or [B]): padded prompts whose context is only the first
    ``n_context`` points (the query stays the last point); the others are masked out of attention.
    """
    if n_context is not None and cfg.name not in ONE_LAYER_MODELS:
      raise ValueError(f"n_context: padded contexts need a one-layer model, not {cfg.name!r}")
    if capture and cfg.attention_impl == "xla":
      _fail("attention_impl", cfg.attention_impl, "returns no attention weights (capture=True); use 'auto' or 'einsum'")
    mask = _check_head_mask(head_mask, n_heads)
    tokens = layout.tokens(xs, ys)
    if cfg.name in ONE_LAYER_MODELS:
      preds, weights = module.apply({"params": params}, tokens, _head_mask_for_layer(mask, 0, n_heads[0]),
                                    capture, n_context)
      aux = {"attn": (weights,)}
    else:
      preds, weights, hidden = module.apply({"params": params}, tokens, layout.pred_positions(xs.shape[1]), mask,
                                            capture)
      aux = {"attn": weights, "hidden": hidden}
    return (preds, aux) if capture else preds

  return ICLModel(init=init, apply=apply, layout=layout_name, n_heads=n_heads)
