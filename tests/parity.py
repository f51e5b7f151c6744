"""Shared test helpers: the tolerances of every parity test and the parity helper itself.

Import them with ``from parity import ...`` (pytest puts this folder on ``sys.path``).
They live here rather than in a ``tests/conftest.py``: a second module named
``conftest`` would shadow the repository's root ``conftest.py``, which
``test_notebook_hygiene`` imports. The fixture :func:`clean_registry` is used by
importing it (``from parity import clean_registry``).
"""

import pytest
import torch

import fwplab
from fwplab.rules import RULES, unregister_rule

#: Fast forms (stepwise, fast, kernel) vs torchdiffeq: float32 logits, max abs.
LOGITS_ATOL = 1e-5
#: Parameter gradients of two solvers: max abs difference over the largest entry.
GRAD_RTOL = 1e-4
#: Logits of the official code's weights vs the recorded official logits (float32 round-off).
OFFICIAL_ATOL = 1e-5
#: A user re-implementation of a built-in rule vs the built-in rule's model.
USER_RULE_ATOL = 1e-5
#: The smallest model sizes the tests build.
TINY = dict(hidden_channels=8, num_heads=2, ff_channels=16)


def series(batch=3, length=9, channels=4, seed=0, dtype=torch.float32):
    """Random observations ``(batch, length, channels)`` with the time in channel 0."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, channels, generator=generator, dtype=dtype)
    x[..., 0] = torch.arange(length, dtype=dtype)
    return x


def logits_and_grads(model, x, lengths=None, times=None):
    """Logits of ``model`` and the gradients of ``sum(logits^2)`` by parameter name."""
    model.zero_grad()
    logits = model(x, times=times, lengths=lengths)
    logits.square().sum().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                             if p.grad is not None}


def assert_same_logits_and_gradients(model, reference, x, lengths=None, times=None,
                                     atol=LOGITS_ATOL, grad_rtol=GRAD_RTOL, what=""):
    """``model`` (with ``reference``'s weights loaded) gives its logits and gradients.

    Logits within ``atol`` (max abs), each parameter's gradient within ``grad_rtol`` of
    the largest entry of the reference's.
    """
    model.load_state_dict(reference.state_dict())
    ref_logits, ref_grads = logits_and_grads(reference, x, lengths, times)
    logits, grads = logits_and_grads(model, x, lengths, times)
    torch.testing.assert_close(logits, ref_logits, atol=atol, rtol=0)
    assert grads.keys() == ref_grads.keys(), what
    for key, grad in ref_grads.items():
        scale = grad.abs().max().clamp(min=1e-6)
        assert (grads[key] - grad).abs().max() / scale < grad_rtol, (what, key)


@pytest.fixture
def clean_registry():
    """Remove the rules a test registers, and their models, when it ends."""
    before = set(RULES)
    yield RULES
    added = set(RULES) - before
    for name in added:
        unregister_rule(name)
    assert not {f"{name}_{driver}" for name in added for driver in ("cde", "ode")} \
        & set(fwplab.MODELS)
