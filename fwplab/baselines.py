"""Discrete-time baselines: a GRU and the discrete delta-rule FWP on the observations.

They answer the first question about new data: does continuous time help? Both read
the observation sequence itself (no interpolated path, no solver) and take the same
``forward(x, times=None, lengths=None, coeffs=None)`` as the continuous models, so
``fwplab train --model gru`` and ``--model discrete_delta`` train them with the same
loop and write the same ``metrics.json``.

Both see each time step as GRU-D-style inputs (Che et al., 2018), three numbers per
channel ``c`` of ``x``::

    value_c(t) = asinh(last observed x_c up to t)    (0 before the first observation)
    mask_c(t)  = 1 if x_c is observed at t else 0
    gap_c(t)   = asinh((t - time of that last observation) / mean spacing of times)

``asinh`` is close to the identity on standardised data and keeps channels that are
not standardised (the time channel, long gaps) in a range a network can read; the
gap is the time channel of the discrete FWP. Each series is read out after its own
last observation (``lengths - 1``); both models are causal, so what follows a
series' end never matters.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .discrete import FastWeightLayer
from .paths import check_observations

__all__ = ["observation_features", "GRUBaseline", "DiscreteDeltaFWP", "BASELINES"]


def observation_features(x: Tensor, times: Tensor) -> Tensor:
    """GRU-D-style inputs ``(value, mask, gap)`` of every channel, see the module docstring.

    Args:
        x: ``(batch, time, channels)`` observations, NaN where missing.
        times: ``(time,)`` strictly increasing observation times.

    Returns:
        ``(batch, time, 3 * channels)``: values, then masks, then gaps.
    """
    batch, length, channels = x.shape
    observed = ~torch.isnan(x)
    steps = torch.arange(length, device=x.device).view(1, length, 1).expand_as(x)
    last = torch.where(observed, steps, torch.full_like(steps, -1)).cummax(dim=1).values
    seen = last >= 0
    index = last.clamp(min=0)
    values = torch.gather(torch.nan_to_num(x, nan=0.0), 1, index)
    values = torch.where(seen, values, torch.zeros_like(values))
    spacing = (times[-1] - times[0]) / (length - 1)
    since = times.view(1, length, 1) - torch.where(seen, times[index], times[0])
    return torch.cat([torch.asinh(values), observed.to(x.dtype),
                      torch.asinh(since / spacing).to(x.dtype)], dim=-1)


def _check_inputs(module: nn.Module, x: Tensor, times: Optional[Tensor],
                  lengths: Optional[Tensor], coeffs: Optional[Tensor]):
    if coeffs is not None:
        raise ValueError(f"coeffs: {module.name} reads the observations, not an interpolated "
                         "path; pass coeffs=None")
    batch = check_observations(x, times, lengths, module.input_channels)
    dtype = module.classifier.weight.dtype
    if batch.x.dtype != dtype:
        raise ValueError(f"x: expected dtype {dtype} like the model's weights, got "
                         f"{batch.x.dtype} (convert the input or the model)")
    return batch


def _positive_ints(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive integer, got {value!r}")


def _read_out(sequence: Tensor, lengths: Tensor) -> Tensor:
    """``sequence[b, lengths[b] - 1]``: ``(batch, time, features) -> (batch, features)``."""
    return sequence[torch.arange(sequence.shape[0], device=sequence.device), lengths - 1]


class GRUBaseline(nn.Module):
    """A GRU over the observation sequence with GRU-D-style inputs.

    ::

        u_t = observation_features(x, times)_t          (3 C numbers)
        h_t = GRU(u_t, h_{t-1}),  h_0 = 0               (num_layers stacked GRUs)
        logits = Linear(h_{length - 1})

    Args:
        input_channels: ``C``, channels of ``x`` (the time channel included).
        output_channels: number of classes.
        hidden_channels: ``H``, the GRU's state size.
        num_layers: stacked GRU layers.
        dropout: dropout between stacked layers (needs ``num_layers > 1`` to act).

    Raises:
        ValueError: sizes that are not positive integers, dropout outside ``[0, 1)``.
    """

    name = "gru"

    def __init__(self, input_channels: int, output_channels: int, hidden_channels: int = 64,
                 num_layers: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        _positive_ints(input_channels=input_channels, output_channels=output_channels,
                       hidden_channels=hidden_channels, num_layers=num_layers)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {dropout!r}")
        self.input_channels = input_channels
        self.output_channels = output_channels
        self.gru = nn.GRU(3 * input_channels, hidden_channels, num_layers, batch_first=True,
                          dropout=dropout if num_layers > 1 else 0.0)
        self.classifier = nn.Linear(hidden_channels, output_channels)
        self.config = dict(name=self.name, input_channels=input_channels,
                           output_channels=output_channels, hidden_channels=hidden_channels,
                           num_layers=num_layers, dropout=dropout)

    def forward(self, x: Tensor, times: Optional[Tensor] = None,
                lengths: Optional[Tensor] = None, coeffs: Optional[Tensor] = None) -> Tensor:
        """Logits ``(batch, classes)`` after each series' last observation.

        Args:
            x: ``(batch, time, channels)``, NaN where missing.
            times: ``(time,)`` observation times; default ``0, 1, ...``.
            lengths: ``(batch,)`` observations of each series; default all.
            coeffs: must be None (accepted for the common interface).
        """
        batch = _check_inputs(self, x, times, lengths, coeffs)
        states, _ = self.gru(observation_features(batch.x, batch.times))
        return self.classifier(_read_out(states, batch.lengths))


class DiscreteDeltaFWP(nn.Module):
    """The discrete delta-rule FWP (a linear Transformer with the delta rule) on the observations.

    ::

        z_0 = Linear(observation_features(x, times))          (batch, time, H)
        z   = z + FastWeightLayer_delta(LayerNorm(z))          per layer, causal
        z   = z + W_2 ReLU(W_1 LayerNorm(z))
        logits = Linear(LayerNorm(z)_{length - 1})

    Each head's fast weight is updated once per observation time by the delta rule
    ``W += beta (v - W phi(k)) phi(k)^T`` with softmax keys (notebook 2), in the
    step-by-step form.

    Args:
        input_channels: ``C``, channels of ``x`` (the time channel included).
        output_channels: number of classes.
        hidden_channels: ``H``, the model width (divisible by ``num_heads``).
        num_heads: fast weights per layer, each ``H / num_heads`` square.
        num_layers: fast-weight layers.
        ff_channels: width of each feed-forward block; default ``2 H``.
        dropout: dropout after each block.

    Raises:
        ValueError: sizes that are not positive integers, ``H`` not divisible by
            ``num_heads``, dropout outside ``[0, 1)``.
    """

    name = "discrete_delta"

    def __init__(self, input_channels: int, output_channels: int, hidden_channels: int = 64,
                 num_heads: int = 4, num_layers: int = 2, ff_channels: Optional[int] = None,
                 dropout: float = 0.0) -> None:
        super().__init__()
        ff_channels = 2 * hidden_channels if ff_channels is None else ff_channels
        _positive_ints(input_channels=input_channels, output_channels=output_channels,
                       hidden_channels=hidden_channels, num_heads=num_heads,
                       num_layers=num_layers, ff_channels=ff_channels)
        if hidden_channels % num_heads:
            raise ValueError(f"hidden_channels: expected a multiple of num_heads ({num_heads}), "
                             f"got {hidden_channels}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {dropout!r}")
        self.input_channels = input_channels
        self.output_channels = output_channels
        self.input_proj = nn.Linear(3 * input_channels, hidden_channels)
        self.fast = nn.ModuleList(
            FastWeightLayer(hidden_channels, num_heads, hidden_channels // num_heads, rule="delta")
            for _ in range(num_layers))
        self.fast_norms = nn.ModuleList(nn.LayerNorm(hidden_channels) for _ in range(num_layers))
        self.ff = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(hidden_channels), nn.Linear(hidden_channels, ff_channels),
                          nn.ReLU(), nn.Linear(ff_channels, hidden_channels))
            for _ in range(num_layers))
        self.dropout = nn.Dropout(dropout)
        self.final_norm = nn.LayerNorm(hidden_channels)
        self.classifier = nn.Linear(hidden_channels, output_channels)
        self.config = dict(name=self.name, input_channels=input_channels,
                           output_channels=output_channels, hidden_channels=hidden_channels,
                           num_heads=num_heads, num_layers=num_layers, ff_channels=ff_channels,
                           dropout=dropout)

    def forward(self, x: Tensor, times: Optional[Tensor] = None,
                lengths: Optional[Tensor] = None, coeffs: Optional[Tensor] = None) -> Tensor:
        """Logits ``(batch, classes)`` after each series' last observation (as :class:`GRUBaseline`)."""
        batch = _check_inputs(self, x, times, lengths, coeffs)
        z = self.input_proj(observation_features(batch.x, batch.times))
        for fast, norm, ff in zip(self.fast, self.fast_norms, self.ff, strict=True):
            z = z + self.dropout(fast(norm(z)))
            z = z + self.dropout(ff(z))
        return self.classifier(_read_out(self.final_norm(z), batch.lengths))


#: Baseline names and their classes (what ``build_model`` adds to its table).
BASELINES: dict[str, type[nn.Module]] = {"gru": GRUBaseline, "discrete_delta": DiscreteDeltaFWP}
