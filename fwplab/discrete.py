"""Discrete fast weight programmers (docs/maths.md, section 3): recurrent and attention forms.

At every step ``t`` a slow network has produced a key ``k_t``, a value ``v_t``, a query
``q_t`` and a rate ``beta_t``; each head owns a fast weight ``W`` of shape ``(d_v, d_k)``
that is written with one of the outer-product rules of :mod:`fwplab.rules.fast_weight`
and read with the query::

    Hebb:            W_t = W_{t-1} + beta_t v_t phi(k_t)^T
    delta:           W_t = W_{t-1} + beta_t (v_t - W_{t-1} phi(k_t)) phi(k_t)^T
    Oja-style FWP:   W_t = W_{t-1} + beta_t v_t (phi(k_t) - W_{t-1}^T v_t)^T
    output:          y_t = W_t phi(q_t)

The rule called ``"oja"`` here is *the Oja-style FWP update*: neither Oja's rule of
notebook 1 (``dw/dt = y (x - y w)``, which finds a principal component) nor *the softmax
Oja rule* of the continuous models (:func:`fwplab.rules.fast_weight.oja_rule`, softmax
after the subtraction).

:func:`fast_weight_recurrent` runs this loop step by step (the reference form).
:func:`fast_weight_attention` computes the same outputs for all steps at once::

    Hebb:   y_t = W_0 phi(q_t) + sum_{s<=t} beta_s v_s (phi(k_s) . phi(q_t))
            (un-normalised causal linear attention)
    delta:  y_t = W_0 phi(q_t) + sum_{s<=t} u_s (phi(k_s) . phi(q_t)), with corrected
            values u_s = beta_s (v_s - W_{s-1} phi(k_s)) found for all s by one unit
            lower-triangular solve
    Oja-style: W^T follows the delta rule with keys v and values phi(k), so the same
            solve gives corrected keys

The module also holds the memory capacity experiment of notebook 2: store ``N``
random key/value pairs in a ``d x d`` fast weight and measure how well they come back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .rules.fast_weight import RULES, delta_update, hebb_update, oja_update

__all__ = [
    "CAPACITY_KEYS",
    "DISCRETE_UPDATES",
    "FEATURE_MAPS",
    "CapacityResult",
    "FastWeightLayer",
    "apply_feature_map",
    "capacity_experiment",
    "fast_weight_attention",
    "fast_weight_recurrent",
    "random_keys",
    "retrieval_error",
    "store_pairs",
]


def _elu_plus_one(x: Tensor) -> Tensor:
    return F.elu(x) + 1.0


def _softmax_last(x: Tensor) -> Tensor:
    return torch.softmax(x, dim=-1)


def _identity(x: Tensor) -> Tensor:
    return x


#: Key/query feature maps ``phi``, chosen by name (``"softmax"`` is the paper's choice).
FEATURE_MAPS: dict[str, Callable[[Tensor], Tensor]] = {
    "softmax": _softmax_last,
    "identity": _identity,
    "elu+1": _elu_plus_one,
}

class _DiscreteUpdates(Mapping):
    """Rule name -> discrete update, read live from :data:`fwplab.rules.RULES`.

    Lists every registered rule that has a ``discrete`` update (built-in or added with
    :func:`fwplab.rules.register_rule`).
    """

    def __getitem__(self, name: str) -> Callable[..., Tensor]:
        record = RULES.get(name)
        if record is None or record.discrete is None:
            raise KeyError(name)
        return record.discrete

    def __iter__(self) -> Iterator[str]:
        return iter([name for name, record in RULES.items() if record.discrete is not None])

    def __len__(self) -> int:
        return sum(record.discrete is not None for record in RULES.values())

    def __repr__(self) -> str:
        return f"DISCRETE_UPDATES({dict(self)!r})"


#: The discrete outer-product updates ``dW(W, key, value, rate)``, chosen by rule name: a
#: view of the rule records' ``discrete`` field.
DISCRETE_UPDATES: Mapping[str, Callable[..., Tensor]] = _DiscreteUpdates()

#: The discrete updates with an attention form in :func:`fast_weight_attention`.
_ATTENTION_FORMS = {hebb_update: "hebb", delta_update: "delta", oja_update: "oja"}


def apply_feature_map(x: Tensor, feature_map: str) -> Tensor:
    """Apply the feature map called ``feature_map`` over the last dimension of ``x``.

    Args:
        x: keys or queries ``(..., d_k)``.
        feature_map: one of ``FEATURE_MAPS``: ``"softmax"``, ``"identity"``, ``"elu+1"``.

    Returns:
        ``phi(x)``, same shape as ``x``.
    """
    return _check_feature_map(feature_map)(x)


def _check_feature_map(feature_map: str) -> Callable[[Tensor], Tensor]:
    try:
        return FEATURE_MAPS[feature_map]
    except KeyError:
        raise ValueError(
            f"feature_map: expected one of {sorted(FEATURE_MAPS)}, got {feature_map!r}"
        ) from None


def _check_rule(rule: str) -> Callable[..., Tensor]:
    try:
        return DISCRETE_UPDATES[rule]
    except KeyError:
        raise ValueError(f"rule: expected one of {sorted(DISCRETE_UPDATES)}, got {rule!r}") \
            from None


def _check_sequences(
    keys: Tensor,
    values: Tensor,
    queries: Tensor,
    rates: Tensor | None,
    initial_weight: Tensor | None,
) -> Tensor:
    """Validate the shapes of the inputs; return the rates as ``(batch, time, heads, 1)``."""
    for name, x in (("keys", keys), ("values", values), ("queries", queries)):
        if not isinstance(x, Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(
                f"{name}: expected shape (batch, time, heads, dim), got {tuple(x.shape)}"
            )
    batch, time, heads, d_k = keys.shape
    if time == 0:
        raise ValueError("keys: expected at least one time step, got time = 0")
    if queries.shape != keys.shape:
        raise ValueError(
            f"queries: expected the shape of keys {tuple(keys.shape)}, got {tuple(queries.shape)}"
        )
    if values.shape[:3] != keys.shape[:3]:
        raise ValueError(
            f"values: expected shape ({batch}, {time}, {heads}, d_v) like keys, "
            f"got {tuple(values.shape)}"
        )
    d_v = values.shape[-1]
    if rates is None:
        rates = keys.new_ones(batch, time, heads, 1)
    elif not isinstance(rates, Tensor):
        raise TypeError(f"rates: expected a torch.Tensor or None, got {type(rates).__name__}")
    elif rates.shape == (batch, time, heads):
        rates = rates.unsqueeze(-1)
    elif rates.shape != (batch, time, heads, 1):
        raise ValueError(
            f"rates: expected shape ({batch}, {time}, {heads}) or ({batch}, {time}, {heads}, 1),"
            f" got {tuple(rates.shape)}"
        )
    if initial_weight is not None and not isinstance(initial_weight, Tensor):
        raise TypeError(
            f"initial_weight: expected a torch.Tensor or None, got {type(initial_weight).__name__}"
        )
    if initial_weight is not None and initial_weight.shape != (batch, heads, d_v, d_k):
        raise ValueError(
            f"initial_weight: expected shape (batch, heads, d_v, d_k) = "
            f"({batch}, {heads}, {d_v}, {d_k}), got {tuple(initial_weight.shape)}"
        )
    return rates


def _read(weight: Tensor, query: Tensor) -> Tensor:
    """``W q``: ``(..., d_v, d_k), (..., d_k) -> (..., d_v)``."""
    return torch.matmul(weight, query.unsqueeze(-1)).squeeze(-1)


def _write_sequence(
    update: Callable[..., Tensor],
    weight: Tensor,
    keys: Tensor,
    values: Tensor,
    rates: Tensor,
    queries: Tensor | None = None,
) -> tuple[Tensor | None, Tensor]:
    """Write ``(keys[:, t], values[:, t])`` into ``weight`` for t = 0, 1, ...

    Reads ``W_t queries[:, t]`` after each write when ``queries`` is given.
    Shapes: keys/queries ``(batch, time, ..., d_k)``, values ``(batch, time, ..., d_v)``,
    rates ``(batch, time, ..., 1)``, weight ``(batch, ..., d_v, d_k)``.
    Returns the read-outs ``(batch, time, ..., d_v)`` (or ``None``) and the final weight.
    """
    outputs = []
    for t in range(keys.shape[1]):
        weight = weight + update(weight, keys[:, t], values[:, t], rates[:, t])
        if queries is not None:
            outputs.append(_read(weight, queries[:, t]))
    return (torch.stack(outputs, dim=1) if queries is not None else None), weight


def fast_weight_recurrent(
    keys: Tensor,
    values: Tensor,
    queries: Tensor,
    rates: Tensor | None = None,
    rule: str = "hebb",
    feature_map: str = "softmax",
    initial_weight: Tensor | None = None,
    return_final_weight: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Run a discrete fast weight programmer step by step (the reference form).

    Each head ``h`` has its own fast weight ``W`` of shape ``(d_v, d_k)``::

        W_t = W_{t-1} + dW(W_{t-1}, phi(k_t), v_t, beta_t)     (rule: hebb, delta, oja)
        y_t = W_t phi(q_t)

    with ``dW`` from :mod:`fwplab.rules.fast_weight` and ``W_0 = initial_weight`` (zero
    when not given).

    Args:
        keys: ``(batch, time, heads, d_k)``, before the feature map.
        values: ``(batch, time, heads, d_v)``.
        queries: ``(batch, time, heads, d_k)``, before the feature map.
        rates: ``beta``: ``(batch, time, heads)`` or ``(batch, time, heads, 1)``;
            ``None`` means 1 at every step.
        rule: ``"hebb"``, ``"delta"`` or ``"oja"`` (the Oja-style FWP update).
        feature_map: ``phi`` for keys and queries, one of ``FEATURE_MAPS``.
        initial_weight: ``W_0`` of shape ``(batch, heads, d_v, d_k)`` or ``None``.
        return_final_weight: also return ``W_T``.

    Returns:
        Outputs ``(batch, time, heads, d_v)``; with ``return_final_weight`` the pair
        ``(outputs, W_T)`` with ``W_T`` of shape ``(batch, heads, d_v, d_k)``.
    """
    update = _check_rule(rule)
    rates = _check_sequences(keys, values, queries, rates, initial_weight)
    batch, _, heads, d_k = keys.shape
    if initial_weight is None:
        initial_weight = keys.new_zeros(batch, heads, values.shape[-1], d_k)
    outputs, final_weight = _write_sequence(
        update,
        initial_weight,
        apply_feature_map(keys, feature_map),
        values,
        rates,
        queries=apply_feature_map(queries, feature_map),
    )
    if return_final_weight:
        return outputs, final_weight
    return outputs


def _causal(scores: Tensor, strict: bool = False) -> Tensor:
    """Keep ``scores[..., t, s]`` for ``s <= t`` (``s < t`` when ``strict``), zero elsewhere."""
    return torch.tril(scores, diagonal=-1 if strict else 0)


def _corrected_values(
    write_keys: Tensor, write_values: Tensor, rates: Tensor, initial_readout: Tensor
) -> Tensor:
    """Solve the delta rule's recurrence for all steps at once.

    With ``W_t = W_0 + sum_{s<=t} u_s a_s^T`` the delta rule on write keys ``a`` and write
    values ``b`` gives ``u_t = beta_t (b_t - W_0 a_t - sum_{s<t} u_s (a_s . a_t))``, i.e.::

        (I + tril_strict(beta a a^T)) U = beta (B - W_0 A)

    a unit lower-triangular system. Shapes (heads-major): ``write_keys (batch, heads, time,
    m)``, ``write_values`` and ``initial_readout`` (``W_0 a_t``) ``(batch, heads, time, n)``,
    ``rates (batch, heads, time, 1)``. Returns ``U`` of shape ``(batch, heads, time, n)``.
    """
    # Only the strictly lower part is passed: ``unitriangular`` implies the unit diagonal.
    coupling = _causal(rates * (write_keys @ write_keys.transpose(-1, -2)), strict=True)
    return torch.linalg.solve_triangular(
        coupling, rates * (write_values - initial_readout), upper=False, unitriangular=True
    )


def fast_weight_attention(
    keys: Tensor,
    values: Tensor,
    queries: Tensor,
    rates: Tensor | None = None,
    rule: str = "hebb",
    feature_map: str = "softmax",
    initial_weight: Tensor | None = None,
) -> Tensor:
    """All outputs of a discrete fast weight programmer at once (the attention form).

    Gives the outputs of :func:`fast_weight_recurrent` without a loop over time::

        Hebb:   y_t = W_0 phi(q_t) + sum_{s<=t} (beta_s v_s) (phi(k_s) . phi(q_t))
        delta:  y_t = W_0 phi(q_t) + sum_{s<=t} u_s (phi(k_s) . phi(q_t)),
                (I + tril_strict(beta phi(K) phi(K)^T)) U = beta (V - phi(K) W_0^T)
        Oja-style: y_t = W_0 phi(q_t) + sum_{s<=t} v_s (c_s . phi(q_t)),
                (I + tril_strict(beta V V^T)) C = beta (phi(K) - V W_0)

    Hebb is un-normalised causal linear attention (a causal mask on ``phi(Q) phi(K)^T``).
    The delta rule is linear attention on corrected values ``u_s = beta_s (v_s - W_{s-1}
    phi(k_s))``. Under the Oja-style FWP update ``W^T`` follows the delta rule with keys
    ``v`` and values ``phi(k)``, so it is linear attention with corrected keys ``c_s``.
    ``W_0`` enters the delta and Oja-style corrections too, not only the first term.
    Memory grows as ``time^2``.

    Args:
        keys: ``(batch, time, heads, d_k)``, before the feature map.
        values: ``(batch, time, heads, d_v)``.
        queries: ``(batch, time, heads, d_k)``, before the feature map.
        rates: ``(batch, time, heads)`` or ``(batch, time, heads, 1)``; ``None`` means 1.
        rule: ``"hebb"``, ``"delta"`` or ``"oja"`` (the Oja-style FWP update).
        feature_map: one of ``FEATURE_MAPS``.
        initial_weight: ``W_0`` of shape ``(batch, heads, d_v, d_k)`` or ``None``.

    Returns:
        Outputs ``(batch, time, heads, d_v)``.
    """
    form = _ATTENTION_FORMS.get(_check_rule(rule))
    if form is None:
        raise ValueError(f"rule: expected a rule whose discrete update has an attention form "
                         f"({sorted(_ATTENTION_FORMS.values())}), got {rule!r}; use "
                         "fast_weight_recurrent")
    rates = _check_sequences(keys, values, queries, rates, initial_weight)
    # Heads-major layout (batch, heads, time, dim) so matmuls act over time.
    phi_k = apply_feature_map(keys, feature_map).transpose(1, 2)
    phi_q = apply_feature_map(queries, feature_map).transpose(1, 2)
    v = values.transpose(1, 2)
    beta = rates.transpose(1, 2)
    if initial_weight is None:
        outputs = phi_q.new_zeros(v.shape)
        w0 = phi_k.new_zeros(*v.shape[:2], v.shape[-1], phi_k.shape[-1])
    else:
        w0 = initial_weight
        outputs = phi_q @ w0.transpose(-1, -2)
    if form == "hebb":
        outputs = outputs + _causal(phi_q @ phi_k.transpose(-1, -2)) @ (beta * v)
    elif form == "delta":
        u = _corrected_values(phi_k, v, beta, phi_k @ w0.transpose(-1, -2))
        outputs = outputs + _causal(phi_q @ phi_k.transpose(-1, -2)) @ u
    else:  # the Oja-style FWP update
        c = _corrected_values(v, phi_k, beta, v @ w0)
        outputs = outputs + _causal(phi_q @ c.transpose(-1, -2)) @ v
    return outputs.transpose(1, 2)


class FastWeightLayer(nn.Module):
    """A slow network programming multi-head fast weights (a linear Transformer layer).

    From an input sequence ``x`` of shape ``(batch, time, in_features)`` a linear slow
    projection gives, per head, ``k_t, v_t, q_t`` (each ``head_dim``) and a rate logit::

        [k, v, q, b] = S x_t + s          split per head (d, d, d, 1)
        beta_t = sigma(b)
        y_t    = W_t phi(q_t)             W_t from the chosen rule
        out_t  = P concat_h(y_t) + p      (batch, time, in_features)

    Args:
        in_features: channels of the input.
        num_heads: number of fast weights ``W_h``.
        head_dim: ``d``; each fast weight is ``d x d``.
        rule: ``"hebb"``, ``"delta"`` or ``"oja"`` (the Oja-style FWP update).
        feature_map: one of ``FEATURE_MAPS``.
    """

    def __init__(
        self,
        in_features: int,
        num_heads: int,
        head_dim: int,
        rule: str = "delta",
        feature_map: str = "softmax",
    ) -> None:
        super().__init__()
        _check_rule(rule)
        _check_feature_map(feature_map)
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.rule = rule
        self.feature_map = feature_map
        self.slow = nn.Linear(in_features, num_heads * (3 * head_dim + 1))
        self.output = nn.Linear(num_heads * head_dim, in_features)

    def forward(self, x: Tensor, form: str = "recurrent") -> Tensor:
        """Map ``x`` of shape ``(batch, time, in_features)`` to the same shape.

        Args:
            x: input sequence ``(batch, time, in_features)``.
            form: ``"recurrent"`` (step by step) or ``"attention"`` (all steps at once).

        Returns:
            ``(batch, time, in_features)``.
        """
        if x.dim() != 3 or x.shape[-1] != self.slow.in_features:
            raise ValueError(
                f"x: expected shape (batch, time, {self.slow.in_features}), got {tuple(x.shape)}"
            )
        forms = {"recurrent": fast_weight_recurrent, "attention": fast_weight_attention}
        if form not in forms:
            raise ValueError(f"form: expected one of {sorted(forms)}, got {form!r}")
        batch, time, _ = x.shape
        slow = self.slow(x).view(batch, time, self.num_heads, 3 * self.head_dim + 1)
        keys, values, queries, rate_logits = slow.split(
            [self.head_dim, self.head_dim, self.head_dim, 1], dim=-1
        )
        y = forms[form](
            keys,
            values,
            queries,
            torch.sigmoid(rate_logits),
            rule=self.rule,
            feature_map=self.feature_map,
        )
        return self.output(y.reshape(batch, time, self.num_heads * self.head_dim))


def _check_pairs(keys: Tensor, values: Tensor) -> None:
    if keys.dim() != 3 or values.dim() != 3 or keys.shape[:2] != values.shape[:2]:
        raise ValueError(
            "keys and values: expected shapes (batch, pairs, d_k) and (batch, pairs, d_v), "
            f"got {tuple(keys.shape)} and {tuple(values.shape)}"
        )


def store_pairs(
    keys: Tensor,
    values: Tensor,
    rule: str,
    rate: float | Tensor = 1.0,
    sweeps: int = 1,
) -> Tensor:
    """Write key/value pairs, in order, into a zero fast weight; return the weight.

    The pairs are written ``sweeps`` times over (pair 1, ..., N, 1, ..., N, ...)::

        W <- W + dW(W, k_i, v_i, rate_i)       (rule: hebb, delta, oja; no feature map)

    Args:
        keys: ``(batch, pairs, d_k)``.
        values: ``(batch, pairs, d_v)``.
        rule: ``"hebb"``, ``"delta"`` or ``"oja"`` (the Oja-style FWP update).
        rate: one rate for every write, or a rate per pair ``(batch, pairs)`` (0 skips a pair).
        sweeps: how many times the whole list is written (at least 1).

    Returns:
        The fast weight ``(batch, d_v, d_k)``.
    """
    update = _check_rule(rule)
    _check_pairs(keys, values)
    if sweeps < 1:
        raise ValueError(f"sweeps: expected an integer >= 1, got {sweeps}")
    batch, pairs, d_k = keys.shape
    if not isinstance(rate, Tensor):
        rate = keys.new_full((batch, pairs), float(rate))
    elif rate.shape != (batch, pairs):
        raise ValueError(
            f"rate: expected a number or shape ({batch}, {pairs}), got {tuple(rate.shape)}"
        )
    weight = keys.new_zeros(batch, values.shape[-1], d_k)
    _, weight = _write_sequence(
        update,
        weight,
        keys.repeat(1, sweeps, 1),
        values.repeat(1, sweeps, 1),
        rate.repeat(1, sweeps).unsqueeze(-1),
    )
    return weight


def _squared_errors(weight: Tensor, keys: Tensor, values: Tensor) -> Tensor:
    """``|W k_i - v_i|^2`` per pair: ``(batch, d_v, d_k), (batch, N, d_k), (batch, N, d_v)
    -> (batch, N)``."""
    retrieved = keys @ weight.transpose(-1, -2)
    return (retrieved - values).pow(2).sum(-1)


def retrieval_error(weight: Tensor, keys: Tensor, values: Tensor) -> Tensor:
    """Normalised squared retrieval error of the pairs stored in ``weight``.

    ```
    error = sum_i |W k_i - v_i|^2 / sum_i |v_i|^2
    ```
    0 is perfect recall; 1 is what the empty memory ``W = 0`` scores.

    Args:
        weight: ``(batch, d_v, d_k)``.
        keys: ``(batch, pairs, d_k)``.
        values: ``(batch, pairs, d_v)``.

    Returns:
        ``(batch,)``.
    """
    _check_pairs(keys, values)
    if weight.shape != (keys.shape[0], values.shape[-1], keys.shape[-1]):
        raise ValueError(
            f"weight: expected shape (batch, d_v, d_k) = "
            f"({keys.shape[0]}, {values.shape[-1]}, {keys.shape[-1]}), got {tuple(weight.shape)}"
        )
    return _squared_errors(weight, keys, values).sum(-1) / values.pow(2).sum((-1, -2))


#: Key distributions of :func:`capacity_experiment`, chosen by name.
CAPACITY_KEYS = ("unit", "softmax")


def random_keys(
    trials: int,
    pairs: int,
    dim: int,
    key_features: str,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Random keys ``(trials, pairs, dim)`` of the capacity experiment.

    ```
    "unit":     k = z / |z|          |k| = 1
    "softmax":  k = softmax(z)       k_i > 0, sum_i k_i = 1, so |k| < 1 for dim > 1
    ```
    with ``z`` standard normal. Softmax keys are what the paper's models write with.

    Args:
        trials: independent draws.
        pairs: keys per draw.
        dim: key dimension ``d``.
        key_features: ``"unit"`` or ``"softmax"``.
        generator: source of the random numbers.
        dtype: floating dtype of the keys.

    Returns:
        ``(trials, pairs, dim)``.
    """
    if key_features not in CAPACITY_KEYS:
        raise ValueError(f"key_features: expected one of {CAPACITY_KEYS}, got {key_features!r}")
    logits = torch.randn(trials, pairs, dim, generator=generator, dtype=dtype)
    if key_features == "unit":
        return F.normalize(logits, dim=-1)
    return torch.softmax(logits, dim=-1)


@dataclass(frozen=True)
class CapacityResult:
    """Retrieval errors of ``N = 1, ..., max_pairs`` pairs stored in a ``d x d`` memory.

    Attributes:
        keys: the random keys ``(trials, max_pairs, dim)`` (see :func:`random_keys`);
            trial ``j`` with ``N`` pairs stores ``keys[j, :N]``.
        values: the standard normal values ``(trials, max_pairs, dim)``.
        num_pairs: ``N = 1, ..., max_pairs``, shape ``(max_pairs,)``.
        hebb_error: :func:`retrieval_error` of one Hebbian pass at rate 1, mean over
            trials, ``(max_pairs,)``.
        delta_error: the same for the delta rule (``sweeps`` passes at ``delta_rate``).
        least_squares_error: the same for the best ``d x d`` memory,
            ``W = argmin sum_i |W k_i - v_i|^2`` (minimum norm).
        sweeps: passes of the delta rule over the pairs.
        delta_rate: the delta rule's rate ``beta``.
        key_features: ``"unit"`` or ``"softmax"`` keys.
    """

    keys: Tensor
    values: Tensor
    num_pairs: Tensor
    hebb_error: Tensor
    delta_error: Tensor
    least_squares_error: Tensor
    sweeps: int
    delta_rate: float
    key_features: str

    @property
    def dim(self) -> int:
        """Key and value dimension ``d``."""
        return self.keys.shape[-1]


def _states_after_each_write(rule: str, keys: Tensor, values: Tensor, rate: float) -> Tensor:
    """Write the pairs once, in order, into a zero memory; keep every intermediate state.

    Shapes: keys ``(trials, pairs, d_k)``, values ``(trials, pairs, d_v)``. Returns the
    memories after writes ``1, ..., pairs``, flattened to ``(trials * pairs, d_v, d_k)``.
    """
    update = _check_rule(rule)
    trials, pairs, d_k = keys.shape
    rates = keys.new_full((trials, 1), rate)
    weight = keys.new_zeros(trials, values.shape[-1], d_k)
    states = []
    for i in range(pairs):
        weight = weight + update(weight, keys[:, i], values[:, i], rates)
        states.append(weight)
    return torch.stack(states, dim=1).flatten(0, 1)


def capacity_experiment(
    dim: int,
    max_pairs: int,
    trials: int = 4,
    sweeps: int = 1,
    delta_rate: float = 1.0,
    key_features: str = "unit",
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> CapacityResult:
    """Store ``N = 1, ..., max_pairs`` random pairs in a ``dim x dim`` fast weight.

    Keys come from :func:`random_keys` (``"unit"``: random unit vectors, independent but
    not orthogonal; ``"softmax"``: softmax of standard normal logits, as the paper's
    models use), values are standard normal. For every ``N`` the first ``N`` pairs are
    written in order with

    - Hebb: one pass at rate 1, ``W = sum_i v_i k_i^T``. With unit keys the read-out
      ``W k_j = v_j + sum_{i != j} v_i (k_i . k_j)`` carries crosstalk whose expected
      squared size, relative to ``|v_j|^2``, is ``(N - 1) / dim``.
    - delta: ``sweeps`` passes at rate ``delta_rate``. One pass is what a fast weight
      programmer does with a sequence: each pair is written once. A write corrects the
      read-out of its own key by the fraction ``delta_rate |k|^2`` (all of it for a unit
      key at rate 1) and disturbs the pairs whose keys overlap it. More passes are the
      LMS/Kaczmarz iteration on the stored pairs.

    One pass gives every ``N`` in one run (the memory after ``N`` writes); with more sweeps
    all ``N`` run together as copies of the memory, copy ``N`` at rate 0 for pairs ``i >= N``.

    Args:
        dim: key and value dimension ``d``.
        max_pairs: the largest ``N``.
        trials: independent draws of pairs to average over.
        sweeps: passes of the delta rule over the pairs (1: each pair written once).
        delta_rate: rate ``beta`` of the delta rule, in ``(0, 2)`` (stable for keys with
            ``|k| <= 1``).
        key_features: ``"unit"`` or ``"softmax"`` keys.
        seed: seed of the random pairs.
        dtype: floating dtype of the computation.

    Returns:
        A :class:`CapacityResult`.
    """
    for name, number in (
        ("dim", dim),
        ("max_pairs", max_pairs),
        ("trials", trials),
        ("sweeps", sweeps),
    ):
        if number < 1:
            raise ValueError(f"{name}: expected an integer >= 1, got {number}")
    if not 0.0 < delta_rate < 2.0:
        raise ValueError(f"delta_rate: expected a number in (0, 2), got {delta_rate}")
    generator = torch.Generator().manual_seed(seed)
    keys = random_keys(trials, max_pairs, dim, key_features, generator, dtype)
    values = torch.randn(trials, max_pairs, dim, generator=generator, dtype=dtype)

    # Memory n (n = 1..max_pairs) holds pairs 0..n-1; flattened (trials * max_pairs, ...).
    num_pairs = torch.arange(1, max_pairs + 1)
    stored = (torch.arange(max_pairs) < num_pairs.unsqueeze(-1)).to(dtype)
    stored = stored.expand(trials, max_pairs, max_pairs).reshape(trials * max_pairs, max_pairs)
    copies_keys = keys.repeat_interleave(max_pairs, dim=0)
    copies_values = values.repeat_interleave(max_pairs, dim=0)

    def mean_error(weight: Tensor) -> Tensor:
        errors = (_squared_errors(weight, copies_keys, copies_values) * stored).sum(-1)
        norms = (copies_values.pow(2).sum(-1) * stored).sum(-1)
        return (errors / norms).view(trials, max_pairs).mean(0)

    # One pass: memory n is the state after the first n writes of a single run.
    hebb = _states_after_each_write("hebb", keys, values, 1.0)
    if sweeps == 1:
        delta = _states_after_each_write("delta", keys, values, delta_rate)
    else:
        # Several passes cycle over the first n pairs only: one copy of the memory per n,
        # with rate 0 for the pairs it does not hold.
        delta = store_pairs(
            copies_keys, copies_values, "delta", rate=delta_rate * stored, sweeps=sweeps
        )
    masked_keys = copies_keys * stored.unsqueeze(-1)
    least_squares = (torch.linalg.pinv(masked_keys) @ copies_values).transpose(-1, -2)
    return CapacityResult(
        keys=keys,
        values=values,
        num_pairs=num_pairs,
        hebb_error=mean_error(hebb),
        delta_error=mean_error(delta),
        least_squares_error=mean_error(least_squares),
        sweeps=sweeps,
        delta_rate=delta_rate,
        key_features=key_features,
    )
