"""World models of the RL appendix: latent ODE-RNNs whose jump at an observation is a
plain affine layer (``latent-ode``) or a recurrent fast weight programmer
(``latent-ode-rfwp``, the paper's), plus fwplab's own ``latent-ode-cfwp`` whose fast
weight keeps learning between observations.

Notation: ``S`` state size, ``A`` action size, ``x = [s_hat; a]`` (the normalised state
and the action), ``L`` latent size, ``H`` heads of size ``d = L / H``. A model step
reads ``x_i``, the latent before the step and the gap ``g_i`` to the next decision::

    latent-ode       h = J [x; z] + j                       (the jump)
                     z' = Phi_g(h)                          (the flow, dz/dt = f(z))
    latent-ode-rfwp  u = LN(P x + p);  m = M [u; phi(z)] + c   (phi = tanh for Hebb, id else)
                     [k~, v~, b~] = B m + e  per head;  beta = sigmoid(b~)
                     W' = W + dW(W, k~, v~, beta)           (the rule's discrete update)
                     q = softmax(Q LN(R x + r)), per head;  o = concat_h W'_h q_h
                     y = O o;  z~ = y + FF(LN(y));  z' = Phi_g(z~)
    latent-ode-cfwp  as latent-ode-rfwp, then over the gap (z, W) follow together
                     dz/dt = f(z),  dW/dt = dW(W, k~(t), v~(t), beta(t))
                     with the controls of a second update network fed [u; phi(z(t))]
    every model      s_hat' = D z' + o_d                    (the decoder)
                     timer logits = T2 tanh(T1 [x; z] + t1) + t2,  g = min_gap + argmax

The rules' updates, per head (rows of ``W`` index values, columns keys)::

    hebb:   k = softmax(k~),  v = beta tanh(v~),           dW = v k^T
    oja:    v = tanh(v~),     k = beta softmax(k~ - W^T v), dW = v k^T
    delta:  k = softmax(k~),  v = beta tanh(v~ - W k),     dW = v k^T

In ``latent-ode-rfwp`` the fast weight is constant between observations and jumps by one
update at each; the discrete update is one Euler step of size 1 of ``dW/dt`` above, so
``latent-ode-cfwp`` is the continuous-time version the main paper's models use.

Batches (the official convention, kept): one solve per step on the grid ``[0] + sorted
unique gaps`` and each sample reads the solution at its own gap; when every gap of the
batch is 0 (padding) the step returns the latent unchanged, otherwise samples with gap 0
get the post-jump latent. An adaptive solver's step sizes are shared by the batch.

Build a model by name with :func:`build_world_model`; load the official code's weights
with :func:`load_official_world_model`. :func:`sequence_losses` is the training and test
pass over chunks of trajectories.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Optional

import torch
import torchdiffeq
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from ..baselines import _positive_ints
from .flow import METHODS, flow, mlp_field

__all__ = [
    "RULE_UPDATES",
    "WORLD_MODELS",
    "WorldModelConfig",
    "WorldModel",
    "SequenceResult",
    "build_world_model",
    "load_official_world_model",
    "official_parameter_name",
    "sequence_losses",
]


# ------------------------------------------------------------------------ the rules
def _hebb_update(W: Tensor, k: Tensor, v: Tensor, beta: Tensor) -> Tensor:
    """Hebb: ``beta tanh(v) softmax(k)^T``; ``W (..., d, d)``, ``k, v (..., d)``, ``beta (..., 1)``."""
    return (beta * torch.tanh(v)).unsqueeze(-1) * torch.softmax(k, -1).unsqueeze(-2)


def _oja_update(W: Tensor, k: Tensor, v: Tensor, beta: Tensor) -> Tensor:
    """Oja: ``tanh(v) (beta softmax(k - W^T tanh(v)))^T``."""
    v = torch.tanh(v)
    k = beta * torch.softmax(k - (W.transpose(-1, -2) @ v.unsqueeze(-1)).squeeze(-1), -1)
    return v.unsqueeze(-1) * k.unsqueeze(-2)


def _delta_update(W: Tensor, k: Tensor, v: Tensor, beta: Tensor) -> Tensor:
    """Delta (post-tanh): ``beta tanh(v - W k) k^T`` with ``k = softmax(k)``."""
    k = torch.softmax(k, -1)
    v = beta * torch.tanh(v - (W @ k.unsqueeze(-1)).squeeze(-1))
    return v.unsqueeze(-1) * k.unsqueeze(-2)


#: The learning rules: ``name -> (update(W, k~, v~, beta) -> dW, tanh on z before merging)``.
RULE_UPDATES: dict[str, tuple[Callable[[Tensor, Tensor, Tensor, Tensor], Tensor], bool]] = {
    "hebb": (_hebb_update, True),
    "oja": (_oja_update, False),
    "delta": (_delta_update, False),
}


# ------------------------------------------------------------------------- records
class _ModelRecord(NamedTuple):
    fast_weight: bool
    continuous_rule: bool
    origin: str


#: One record per world model: whether it has a fast weight, whether the weight keeps
#: learning between observations, and where the model comes from.
WORLD_MODELS: dict[str, _ModelRecord] = {
    "latent-ode": _ModelRecord(False, False, "the appendix's baseline (Latent ODE-RNN, Du et al. 2020)"),
    "latent-ode-rfwp": _ModelRecord(True, False, "the appendix's FWP model (Latent ODE-RFWP)"),
    "latent-ode-cfwp": _ModelRecord(True, True, "fwplab's own: the fast weight also learns "
                                                "between observations"),
}


@dataclasses.dataclass(frozen=True)
class WorldModelConfig:
    """Sizes and solver of a world model (defaults: the appendix's README command).

    Attributes:
        state_dim, action_dim: ``S`` and ``A``.
        min_gap, max_gap: the gaps the timer classifies (``max_gap - min_gap + 1`` classes).
        latent_dim: ``L``. num_heads: ``H`` (fast-weight models: ``L`` divisible by ``H``). ff_dim: the
            read-out's feed-forward width. ode_dim: the flow MLP's width.
        encoder_width: the encoder's hidden-to-posterior width.
        rule: ``hebb`` (the appendix's runs), ``oja`` or ``delta``.
        method: a method of :data:`fwplab.rl.flow.METHODS`; ``dopri5`` is the official.
        rtol, atol: the adaptive method's tolerances (official: ``1e-5``, ``1e-6``).
        step_size: a fixed-grid method's step; ``None`` steps once per interval of the
            batch's grid of gaps.
        adjoint: gradients through torchdiffeq's adjoint ODE (the README's ``--adjoint``)
            instead of backpropagation through the solver.
    """

    state_dim: int
    action_dim: int
    min_gap: int = 1
    max_gap: int = 7
    latent_dim: int = 128
    num_heads: int = 16
    ff_dim: int = 512
    ode_dim: int = 128
    encoder_width: int = 20
    rule: str = "hebb"
    method: str = "dopri5"
    rtol: float = 1e-5
    atol: float = 1e-6
    step_size: Optional[float] = None
    adjoint: bool = False

    def __post_init__(self) -> None:
        sizes = ("state_dim", "action_dim", "latent_dim", "num_heads", "ff_dim", "ode_dim",
                 "encoder_width", "min_gap")
        _positive_ints(**{name: getattr(self, name) for name in sizes})
        if not isinstance(self.max_gap, int) or self.max_gap < self.min_gap:
            raise ValueError(f"max_gap: expected an integer >= min_gap {self.min_gap}, "
                             f"got {self.max_gap!r}")
        if self.rule not in RULE_UPDATES:
            raise ValueError(f"rule: expected one of {', '.join(RULE_UPDATES)}, got {self.rule!r}")
        if self.method not in METHODS:
            raise ValueError(f"method: expected one of {', '.join(METHODS)}, got {self.method!r}")
        if self.step_size is not None and not self.step_size > 0:
            raise ValueError(f"step_size: expected a positive number or None, got {self.step_size!r}")
        if self.adjoint and self.step_size is not None:
            raise ValueError("adjoint: torchdiffeq's adjoint is used with the official grid only; "
                             "drop step_size or adjoint")

    @property
    def head_dim(self) -> int:
        return self.latent_dim // self.num_heads

    @property
    def gap_classes(self) -> int:
        return self.max_gap - self.min_gap + 1


# ---------------------------------------------------------------------- the parts
def _mlp(sizes: list[int], activation: type[nn.Module] = nn.Tanh) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        if i:
            layers.append(activation())
        layers.append(nn.Linear(a, b))
    return nn.Sequential(*layers)


class _Field(nn.Module):
    """The latent flow ``dz/dt = f(z)``, an MLP ``L -> o -> o -> L`` with tanh; autonomous."""

    def __init__(self, latent_dim: int, width: int) -> None:
        super().__init__()
        self.net = _mlp([latent_dim, width, width, latent_dim])

    def forward(self, *time_and_z: Tensor) -> Tensor:
        """``f(z)``; called as ``(t, z)`` by torchdiffeq and as ``(z,)`` by :func:`flow`."""
        return self.net(time_and_z[-1])


class _Encoder(nn.Module):
    """GRU over ``x_i = [s_hat_i; a_i]`` of the valid steps, then ``[mu; log var]``."""

    def __init__(self, input_dim: int, latent_dim: int, width: int) -> None:
        super().__init__()
        self.gru = nn.GRU(input_dim, latent_dim, batch_first=True)
        self.to_posterior = _mlp([latent_dim, width, 2 * latent_dim])

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, hidden = self.gru(packed)
        mean, log_var = self.to_posterior(hidden[0]).chunk(2, dim=-1)
        return mean, log_var


class _UpdateNet(nn.Module):
    """The controls of a fast-weight update: ``[k~, v~, b~]`` per head from ``(x, z)``."""

    def __init__(self, input_dim: int, latent_dim: int, num_heads: int, squash_z: bool) -> None:
        super().__init__()
        self.num_heads, self.squash_z = num_heads, squash_z
        self.head_dim = latent_dim // num_heads
        self.input_proj = nn.Linear(input_dim, latent_dim)
        self.input_norm = nn.LayerNorm(latent_dim)
        self.merge = nn.Linear(2 * latent_dim, latent_dim)
        self.kvb = nn.Linear(latent_dim, num_heads * (2 * self.head_dim + 1))

    def embed(self, x: Tensor) -> Tensor:
        """``u = LN(P x + p)``, ``(N, S+A) -> (N, L)``: constant over a gap."""
        return self.input_norm(self.input_proj(x))

    def controls(self, u: Tensor, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(N, L), (N, L) -> k~, v~ (N, H, d), beta (N, H, 1)``."""
        z = torch.tanh(z) if self.squash_z else z
        out = self.kvb(self.merge(torch.cat([u, z], -1)))
        k, v, b = out.view(-1, self.num_heads, 2 * self.head_dim + 1).split(
            [self.head_dim, self.head_dim, 1], -1)
        return k, v, torch.sigmoid(b)


class _ReadOut(nn.Module):
    """``z~ = y + FF(LN(y))``, ``y = O concat_h W_h softmax(Q LN(R x + r))_h``."""

    def __init__(self, input_dim: int, latent_dim: int, num_heads: int, ff_dim: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.input_proj = nn.Linear(input_dim, latent_dim)
        self.input_norm = nn.LayerNorm(latent_dim)
        self.query = nn.Linear(latent_dim, latent_dim)
        self.out = nn.Linear(latent_dim, latent_dim)
        self.ff_norm = nn.LayerNorm(latent_dim)
        self.ff_in = nn.Linear(latent_dim, ff_dim)
        self.ff_out = nn.Linear(ff_dim, latent_dim)

    def forward(self, x: Tensor, W: Tensor) -> Tensor:
        q = self.query(self.input_norm(self.input_proj(x)))
        q = torch.softmax(q.view(-1, self.num_heads, W.shape[-1]), -1)
        y = self.out((W @ q.unsqueeze(-1)).flatten(1))
        return y + self.ff_out(torch.relu(self.ff_in(self.ff_norm(y))))


class _JointField(nn.Module):
    """``d(z, W)/dt = (f(z), dW(W, controls(u, z)))`` on ``[z, vec W]`` for ``latent-ode-cfwp``."""

    def __init__(self, field: _Field, update: _UpdateNet, rule: str) -> None:
        super().__init__()
        self.update = update
        self.field_of_z = [field]  # the model's own field, shared, not a second copy
        self.rule = RULE_UPDATES[rule][0]
        self.u: Optional[Tensor] = None

    def forward(self, *time_and_state: Tensor) -> Tensor:
        """Called as ``(t, state)`` by torchdiffeq and as ``(state,)`` by :func:`flow`."""
        state = time_and_state[-1]
        latent_dim = self.update.merge.out_features
        d = self.update.head_dim
        z, w = state[:, :latent_dim], state[:, latent_dim:]
        W = w.view(-1, self.update.num_heads, d, d)
        k, v, beta = self.update.controls(self.u, z)
        return torch.cat([self.field_of_z[0].net(z), self.rule(W, k, v, beta).flatten(1)], -1)


# ------------------------------------------------------------------------ the model
Latent = tuple[Tensor, ...]


class WorldModel(nn.Module):
    """A latent ODE world model over semi-MDP trajectories (see the module docstring).

    The latent is a tuple: ``(z,)`` with ``z (N, L)`` for ``latent-ode``, ``(z, W)`` with
    ``W (N, H, d, d)`` for the fast-weight models.
    """

    def __init__(self, name: str, config: WorldModelConfig) -> None:
        super().__init__()
        if name not in WORLD_MODELS:
            raise ValueError(f"world model: expected one of {', '.join(WORLD_MODELS)}, "
                             f"got {name!r}")
        self.name, self.config, self.record = name, config, WORLD_MODELS[name]
        c = config
        x_dim = c.state_dim + c.action_dim
        self.encoder = _Encoder(x_dim, c.latent_dim, c.encoder_width)
        self.field = _Field(c.latent_dim, c.ode_dim)
        # the same layers as an MLPField, whose buffers the planner's solves reuse
        self._field_mlp = mlp_field([m for m in self.field.net if isinstance(m, nn.Linear)])
        self.decoder = nn.Linear(c.latent_dim, c.state_dim)
        self.timer = _mlp([x_dim + c.latent_dim, 20, c.gap_classes])
        if not self.record.fast_weight:
            self.jump = nn.Linear(x_dim + c.latent_dim, c.latent_dim)
            return
        if c.latent_dim % c.num_heads:
            raise ValueError(f"latent_dim {c.latent_dim} is not divisible by num_heads "
                             f"{c.num_heads}")
        squash = RULE_UPDATES[c.rule][1]
        self.update = _UpdateNet(x_dim, c.latent_dim, c.num_heads, squash)
        self.read = _ReadOut(x_dim, c.latent_dim, c.num_heads, c.ff_dim)
        if self.record.continuous_rule:
            self.drift = _JointField(self.field, _UpdateNet(x_dim, c.latent_dim, c.num_heads,
                                                            squash), c.rule)

    # ------------------------------------------------------------------ latents
    def initial_latent(self, batch: int, z: Optional[Tensor] = None,
                       generator: Optional[torch.Generator] = None) -> Latent:
        """The prior latent: ``z ~ N(0, I)`` (or the given ``z (batch, L)``) and ``W = 0``."""
        p = self.decoder.weight
        if z is None:
            z = torch.randn(batch, self.config.latent_dim, generator=generator).to(p)
        if not self.record.fast_weight:
            return (z,)
        d = self.config.head_dim
        return (z, z.new_zeros(batch, self.config.num_heads, d, d))

    def decode(self, latent: Latent) -> Tensor:
        """``s_hat = D z + o_d``: ``(N, L) -> (N, S)``."""
        return self.decoder(latent[0])

    def timer_logits(self, x: Tensor, latent: Latent) -> Tensor:
        """Logits of the gap classes ``(N, max_gap - min_gap + 1)`` from ``x (N, S+A)``."""
        return self.timer(torch.cat([x, latent[0]], -1))

    def predict_gap(self, x: Tensor, latent: Latent) -> Tensor:
        """The planner's gap ``min_gap + argmax`` of the timer's logits, ``(N,)`` float."""
        return (self.timer_logits(x, latent).argmax(-1) + self.config.min_gap).to(x.dtype)

    # ------------------------------------------------------------------ one step
    def _solve(self, field: nn.Module, state: Tensor, grid: Tensor) -> Tensor:
        c = self.config
        if c.adjoint and torch.is_grad_enabled():  # without gradients the adjoint is odeint
            params = {id(p): p for p in (*field.parameters(), *self.field.parameters())}
            return torchdiffeq.odeint_adjoint(field, state, grid, method=c.method, rtol=c.rtol,
                                              atol=c.atol, adjoint_params=tuple(params.values()))
        if field is self.field:  # the MLP as an MLPField: buffered products when planning
            field = self._field_mlp
        return flow(field, state, grid, method=c.method, rtol=c.rtol, atol=c.atol,
                    step_size=c.step_size)

    def _flow(self, field: nn.Module, state: Tensor, gaps: Tensor) -> Tensor:
        grid, index = torch.unique(gaps, return_inverse=True)
        if grid[0] != 0:
            grid = torch.cat([grid.new_zeros(1), grid])
            index = index + 1
        path = self._solve(field, state, grid.to(state.dtype))
        return path[index, torch.arange(state.shape[0], device=state.device)]

    def step(self, x: Tensor, latent: Latent, gaps: Tensor) -> Latent:
        """One decision: jump on ``x (N, S+A)``, flow over ``gaps (N,)``; the next latent."""
        if not bool((gaps != 0).any()):
            return latent
        z = latent[0]
        if not self.record.fast_weight:
            return (self._flow(self.field, self.jump(torch.cat([x, z], -1)), gaps),)
        W = latent[1]
        u = self.update.embed(x)
        W = W + RULE_UPDATES[self.config.rule][0](W, *self.update.controls(u, z))
        z = self.read(x, W)
        if not self.record.continuous_rule:
            return (self._flow(self.field, z, gaps), W)
        self.drift.u = self.drift.update.embed(x)
        state = self._flow(self.drift, torch.cat([z, W.flatten(1)], -1), gaps)
        L = self.config.latent_dim
        return (state[:, :L], state[:, L:].view_as(W))


# ---------------------------------------------------------------- sequence pass
class SequenceResult(NamedTuple):
    """A pass over chunks: ``predictions (N, T, S)``, ``latents (N, T, L)`` (before each
    step, ``z_0`` first), the posterior ``mean, std (N, L)`` (None in eval mode) and
    ``losses`` {total, mse, dt[, kl]}."""

    predictions: Tensor
    latents: Tensor
    mean: Optional[Tensor]
    std: Optional[Tensor]
    losses: dict[str, Tensor]


def _check_chunks(model: WorldModel, states: Tensor, actions: Tensor, times: Tensor,
                  lengths: Tensor) -> None:
    c = model.config
    n, t1 = states.shape[0], states.shape[1] if states.dim() == 3 else 0
    expected = {"states": (n, t1, c.state_dim), "actions": (n, t1 - 1, c.action_dim),
                "times": (n, t1), "lengths": (n,)}
    for name, tensor in (("states", states), ("actions", actions), ("times", times),
                         ("lengths", lengths)):
        if tuple(tensor.shape) != expected[name] or t1 < 2:
            raise ValueError(f"{name}: expected shape {expected[name]} (batch, steps + 1 >= 2, ...), "
                             f"got {tuple(tensor.shape)}")
    if bool((lengths < 1).any()) or bool((lengths > t1 - 1).any()):
        raise ValueError(f"lengths: expected values in 1..{t1 - 1}, got {lengths.tolist()}")


def sequence_losses(model: WorldModel, states: Tensor, actions: Tensor, times: Tensor,
                    lengths: Tensor, *, train: bool = True, noise: Optional[Tensor] = None,
                    z0: Optional[Tensor] = None, dt_weight: float = 0.01, kl_weight: float = 1.0
                    ) -> SequenceResult:
    """The world model's pass over chunks of ``T`` decisions and its losses.

    Args:
        states: ``(N, T+1, S)`` normalised states (zeros after a chunk's end).
        actions: ``(N, T, A)``. times: ``(N, T+1)`` absolute times (repeated after the end,
            so padded gaps are 0). lengths: ``(N,)`` valid decisions, ``1..T``.
        train: the VAE pass (``z0 = mean + std * noise`` from the encoder, every step fed
            the true state) or the test pass (``z0`` from the prior, open loop: step 0 fed
            the true ``s_0``, later steps the model's own prediction).
        noise: the reparametrisation noise ``(N, L)``; default ``N(0, I)`` from torch's RNG.
        z0: the test pass's prior sample ``(N, L)``; default ``N(0, I)`` from torch's RNG.

    The losses, over the valid steps (mask ``i < l_n``)::

        mse = mean_(n, i valid, s) (s_hat_(n,i+1) - pred_(n,i+1))^2
        dt  = mean_(n, i valid) CE(timer([s_hat_(n,i); a_(n,i); z_(n,i)]), g_(n,i) - min_gap)
        kl  = mean_(n, l) KL(N(mean, std^2) || N(0, 1))             (train only)
        total = mse + dt_weight dt (+ kl_weight kl)

    The timer reads the true states in both passes.
    """
    _check_chunks(model, states, actions, times, lengths)
    steps = times.shape[1] - 1
    current, following = states[:, :-1], states[:, 1:]
    if train:
        mean, log_var = model.encoder(torch.cat([current, actions], -1), lengths)
        std = torch.exp(0.5 * log_var)
        noise = torch.randn_like(std) if noise is None else noise
        latent = model.initial_latent(states.shape[0], z=mean + noise * std)
    else:
        mean = std = None
        latent = model.initial_latent(states.shape[0], z=z0)
    gaps = times[:, 1:] - times[:, :-1]
    predictions, latents = [], [latent[0]]
    for i in range(steps):
        fed = current[:, i] if train or i == 0 else predictions[-1]
        latent = model.step(torch.cat([fed, actions[:, i]], -1), latent, gaps[:, i])
        latents.append(latent[0])
        predictions.append(model.decode(latent))
    pred = torch.stack(predictions, 1)
    zs = torch.stack(latents[:-1], 1)
    mask = torch.arange(steps, device=lengths.device) < lengths.unsqueeze(1)
    mse = ((following - pred)[mask] ** 2).mean()
    logits = model.timer(torch.cat([current, actions, zs], -1))
    target = (gaps - model.config.min_gap).round().long()
    dt = nn.functional.cross_entropy(logits[mask], target[mask])
    losses = {"mse": mse, "dt": dt}
    if train:
        kl = (-torch.log(std) + 0.5 * (std ** 2 + mean ** 2) - 0.5).mean()
        losses["kl"] = kl
        losses["total"] = mse + dt_weight * dt + kl_weight * kl
    else:
        losses["total"] = mse + dt_weight * dt
    return SequenceResult(pred, zs, mean, std, losses)


# ----------------------------------------------------------------------- building
def build_world_model(name: str, state_dim: int, action_dim: int, **options) -> WorldModel:
    """A world model by name (:data:`WORLD_MODELS`) with :class:`WorldModelConfig` options."""
    return WorldModel(name, WorldModelConfig(state_dim=state_dim, action_dim=action_dim,
                                             **options))


#: Official parameter prefixes (``appendix_mujoco/model.py``) of fwplab's names.
_OFFICIAL_PREFIXES = (
    ("encoder.gru.", "encoder_z0.rnn."),
    ("encoder.to_posterior.", "encoder_z0.hidden_to_z0."),
    ("field.net.", "diffeq_solver.ode_func.net."),
    ("decoder.", "decoder.decoder."),
    ("timer.", "timer.net."),
    ("jump.", "aug_layer."),
    ("update.input_norm.", "update_layer.input_layer_norm."),
    ("update.merge.", "update_layer.merge_layer."),
    ("update.kvb.", "update_layer.kvb_net."),
    ("update.input_proj.", "update_layer.input_proj."),
    ("read.input_proj.", "input_proj."),
    ("read.input_norm.", "input_layer_norm."),
    ("read.query.", "query_net."),
    ("read.out.", "out_proj."),
    ("read.ff_norm.", "ff_block.layer_norm."),
    ("read.ff_in.", "ff_block.ff_layers.0."),
    ("read.ff_out.", "ff_block.ff_layers.3."),
)


def official_parameter_name(name: str) -> str:
    """The official code's name of one of fwplab's parameters (``latent-ode``, ``-rfwp``)."""
    for ours, theirs in _OFFICIAL_PREFIXES:
        if name.startswith(ours):
            return theirs + name[len(ours):]
    raise ValueError(f"{name}: has no counterpart in the official world models")


def load_official_world_model(model: WorldModel, state_dict: dict[str, Tensor]) -> None:
    """Load a ``state_dict`` of the official ``LatentODE`` / ``RFWPLatentVAEModel``, or the
    checkpoint its early stopping writes (a dict with ``model_state_dict``).

    Raises:
        ValueError: one line naming missing, unexpected or mis-shaped parameters.
    """
    if model.record.continuous_rule:
        raise ValueError("latent-ode-cfwp is fwplab's own model; the official code has no "
                         "weights for it")
    if "model_state_dict" in state_dict:
        state_dict = state_dict["model_state_dict"]
    ours = model.state_dict()
    wanted = {official_parameter_name(name): name for name in ours}
    missing = sorted(set(wanted) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(wanted))
    if missing or unexpected:
        raise ValueError(f"official state_dict for {model.name}: missing {missing[:4]}, "
                         f"unexpected {unexpected[:4]}")
    converted = {}
    for theirs, name in wanted.items():
        value = state_dict[theirs]
        if value.shape != ours[name].shape:
            raise ValueError(f"{theirs}: expected shape {tuple(ours[name].shape)}, "
                             f"got {tuple(value.shape)}")
        converted[name] = value
    model.load_state_dict(converted)
