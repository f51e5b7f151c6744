"""One record per learning rule: the registry, registering a rule, and the solvers it picks."""

import subprocess
import sys

import pytest
import torch

import fwplab
from fwplab import solvers
from fwplab.discrete import DISCRETE_UPDATES, fast_weight_attention, fast_weight_recurrent
from fwplab.rules import RULES, FastWeightRule, get_rule, load_rules_from, register_rule
from fwplab.rules import unregister_rule
from fwplab.rules.fast_weight import (
    delta_rule,
    hebb_rule,
    hebb_update,
    oja_rule,
    unsquashed_hebb_rule,
)
from fwplab.rules.record import structure_field
from parity import TINY, USER_RULE_ATOL, clean_registry, series  # noqa: F401 (a fixture)

#: Every test leaves the registry as it found it.
pytestmark = pytest.mark.usefixtures("clean_registry")

#: Records vs the readable reference functions on raw controls, float64.
RECORD_ATOL = 1e-12
BUILTINS = [name for name, record in RULES.items() if record.builtin]
#: The reference function of each built-in record, on raw controls.
REFERENCES = {"hebb": hebb_rule, "hebb_unsquashed": unsquashed_hebb_rule, "oja": oja_rule,
              "delta": delta_rule}


def _controls(batch=(2, 3), d=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    key, value = (torch.randn(*batch, d, generator=generator, dtype=torch.float64)
                  for _ in range(2))
    rate = torch.randn(*batch, 1, generator=generator, dtype=torch.float64)
    W = torch.randn(*batch, d, d, generator=generator, dtype=torch.float64)
    return W, key, value, rate


def user_delta(W, key, value, rate):
    """The delta rule written out by a student: b (v - W k) k^T."""
    if W is not None:
        value = value - torch.matmul(W, key.unsqueeze(-1)).squeeze(-1)
    return (rate * value).unsqueeze(-1) * key.unsqueeze(-2)


def decaying_hebb(W, key, value, rate):
    """Hebb with decay: b v k^T - 0.5 W (W-dependent but not rank one: general)."""
    update = (rate * value).unsqueeze(-1) * key.unsqueeze(-2)
    return update if W is None else update - 0.5 * W


def test_every_builtin_rule_is_a_record_matching_its_reference_function():
    assert set(BUILTINS) == set(REFERENCES)
    W, key, value, rate = _controls()
    for name in BUILTINS:
        record = RULES[name]
        assert isinstance(record, FastWeightRule) and get_rule(name) is record
        for weight in (W, None):
            torch.testing.assert_close(record(weight, key, value, rate),
                                       REFERENCES[name](weight, key, value, rate),
                                       atol=RECORD_ATOL, rtol=0)
    for weight in (W, None):
        torch.testing.assert_close(RULES["delta"](weight, key, value, rate, post_tanh=True),
                                   delta_rule(weight, key, value, rate, post_tanh=True),
                                   atol=RECORD_ATOL, rtol=0)


@pytest.mark.parametrize("name", list(RULES))
def test_each_record_is_the_structure_it_declares(name):
    records = [RULES[name], *RULES[name].options.values()]
    W, key, value, rate = _controls(seed=1)
    for record in records:
        if record.structure == "general":
            continue
        activated = record.activate(key, value, rate)
        for weight in (W, None):
            torch.testing.assert_close(
                record.field(weight, *activated),
                structure_field(record.structure, record.correction, weight, *activated),
                atol=RECORD_ATOL, rtol=0)


@pytest.mark.parametrize("structure", ["delta", "general"])
@pytest.mark.parametrize("driver", ["cde", "ode"])
def test_a_user_delta_rule_reproduces_the_builtin_models(structure, driver):
    register_rule("user_delta", user_delta, structure=structure)
    x, lengths = series(), torch.tensor([9, 5, 7])
    torch.manual_seed(0)
    builtin = fwplab.build_model(f"delta_{driver}", 4, 3, **TINY)
    user = fwplab.build_model(f"user_delta_{driver}", 4, 3, **TINY)
    assert user.state_dict().keys() == builtin.state_dict().keys()
    assert user.layout == builtin.layout
    user.load_state_dict(builtin.state_dict())
    expected = "reference" if structure == "general" else builtin.selected_solver()
    assert user.selected_solver() == expected
    with torch.no_grad():
        torch.testing.assert_close(user(x, lengths=lengths), builtin(x, lengths=lengths),
                                   atol=USER_RULE_ATOL, rtol=0)


def test_a_user_softmax_oja_rule_runs_the_oja_recurrence_and_matches_oja_cde():
    def softmax_oja(W, key, value, rate):
        if W is not None:
            key = key - torch.matmul(W.transpose(-1, -2), value.unsqueeze(-1)).squeeze(-1)
        return value.unsqueeze(-1) * (rate * torch.softmax(key, -1)).unsqueeze(-2)

    register_rule("user_oja", softmax_oja, key="identity", structure="oja",
                  correction="softmax")
    torch.manual_seed(0)
    builtin = fwplab.build_model("oja_cde", 4, 3, **TINY)
    user = fwplab.build_model("user_oja_cde", 4, 3, **TINY, layout=builtin.layout)
    user.load_state_dict(builtin.state_dict())
    assert user.selected_solver() == builtin.selected_solver() != "reference"
    with torch.no_grad():
        torch.testing.assert_close(user(series()), builtin(series()), atol=USER_RULE_ATOL,
                                   rtol=0)


def test_a_general_rule_runs_on_torchdiffeq_and_refuses_the_fixed_grid_solvers():
    register_rule("decaying_hebb", decaying_hebb)
    model = fwplab.build_model("decaying_hebb_cde", 4, 3, **TINY)
    assert not model.uses_fast_path() and model.selected_solver() == "reference"
    reference = fwplab.build_model("decaying_hebb_cde", 4, 3, **TINY, solver="reference")
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(series()), reference(series()), atol=0, rtol=0)
    for solver in solvers.FIXED_GRID_BACKENDS:
        with pytest.raises(ValueError, match=f"solver: expected 'auto' or 'reference' for rule "
                                             f"'decaying_hebb' .*, got '{solver}'"):
            fwplab.build_model("decaying_hebb_ode", 4, 3, **TINY, solver=solver)
    controls = solvers.StageControls(torch.zeros(7, 1, 1, 2), torch.zeros(7, 1, 1, 2),
                                     torch.zeros(7, 1, 1, 1))
    with pytest.raises(ValueError, match="rule: expected a rule of structure 'hebb', 'delta' "
                                         "or 'oja', got 'decaying_hebb'"):
        solvers.solve_fixed_grid("decaying_hebb", controls, torch.zeros(1, 1, 2, 2),
                                 torch.ones(2))


def test_the_decay_changes_the_fast_weights_as_the_ode_says():
    register_rule("decaying_hebb", decaying_hebb)
    torch.manual_seed(0)
    hebb = fwplab.build_model("hebb_ode", 4, 3, **TINY)
    decaying = fwplab.build_model("decaying_hebb_ode", 4, 3, **TINY)
    decaying.load_state_dict(hebb.state_dict())
    with torch.no_grad():
        plain = hebb.fast_weight_trajectory(series(length=3))
        decayed = decaying.fast_weight_trajectory(series(length=3))
    torch.testing.assert_close(decayed[:, 0], plain[:, 0], atol=0, rtol=0)  # same W(t0)
    assert decayed[:, -1].norm() < plain[:, -1].norm()


def test_registration_adds_and_removes_models_and_needs_replace():
    record = register_rule("user_delta", user_delta, structure="delta", label="mine")
    assert RULES["user_delta"] is record and record.label == "mine" and not record.builtin
    assert {"user_delta_cde", "user_delta_ode"} <= set(fwplab.MODELS)
    with pytest.raises(ValueError, match="name: expected a new rule name, got 'user_delta', "
                                         "registered already; pass replace=True"):
        register_rule("user_delta", user_delta)
    replaced = register_rule("user_delta", decaying_hebb, replace=True)
    model = fwplab.build_model("user_delta_ode", 4, 3, **TINY)
    assert model.fast_weight_rule is replaced and model.selected_solver() == "reference"
    unregister_rule("user_delta")
    assert "user_delta" not in RULES and "user_delta_cde" not in fwplab.MODELS
    with pytest.raises(ValueError, match="name: expected one of .*, got 'user_delta_cde'"):
        fwplab.build_model("user_delta_cde", 4, 3)


@pytest.mark.parametrize(
    "name, field, options, message",
    [
        ("delta", user_delta, {}, "name: expected a name other than the built-in rules"),
        ("two words", user_delta, {}, "name: expected a Python identifier, got 'two words'"),
        ("mine", "not callable", {}, "field: expected a function"),
        ("mine", user_delta, {"key": "relu"}, "key: expected one of .*, got 'relu'"),
        ("mine", user_delta, {"structure": "rank_one"}, "structure: expected one of"),
        ("mine", user_delta, {"correction": "relu"}, "correction: expected one of"),
        ("mine", decaying_hebb, {"structure": "hebb"},
         "rule 'mine': structure: expected a field equal to the 'hebb' formula .* declare "
         "structure='general'"),
        ("mine", user_delta, {"structure": "oja"},
         "rule 'mine': structure: expected a field equal to the 'oja' formula"),
        ("mine", lambda W, k, v, b: v, {},
         r"rule 'mine': field: expected dW/dt of shape \(2, 3, 4, 4\)"),
        ("mine", lambda W, k, v, b: W @ W, {}, "rule 'mine': field: raised TypeError"),
    ],
)
def test_bad_registrations_raise_one_clear_error(name, field, options, message):
    with pytest.raises(ValueError, match=message):
        register_rule(name, field, **options)
    assert name not in RULES or RULES[name].builtin


def test_builtin_and_unknown_rules_cannot_be_unregistered():
    for name in ("delta", "nope"):
        with pytest.raises(ValueError, match=f"name: expected a rule added with register_rule "
                                             f".*, got '{name}'"):
            unregister_rule(name)


def test_unknown_names_raise_one_clear_error_everywhere():
    with pytest.raises(ValueError, match="rule: expected one of .*, got 'hopfield'"):
        get_rule("hopfield")
    with pytest.raises(ValueError, match="rule: expected one of .*, got 'hopfield'"):
        fwplab.ContinuousFWP("hopfield", "cde", 4, 3, **TINY)
    keys = torch.randn(1, 3, 1, 2)
    with pytest.raises(ValueError, match="rule: expected one of .*, got 'hopfield'"):
        fast_weight_recurrent(keys, keys, keys, rule="hopfield")
    with pytest.raises(ValueError, match="activation: expected one of .*, got 'relu'"):
        solvers.activate("relu", keys)


def test_a_registered_discrete_update_runs_recurrently_but_has_no_attention_form():
    def half_hebb(W, key, value, rate):
        return 0.5 * hebb_update(W, key, value, rate)

    register_rule("half_hebb", user_delta, structure="delta", discrete=half_hebb)
    assert DISCRETE_UPDATES["half_hebb"] is half_hebb
    keys = torch.randn(1, 3, 1, 2)
    outputs = fast_weight_recurrent(keys, keys, keys, rule="half_hebb")
    torch.testing.assert_close(outputs, 0.5 * fast_weight_recurrent(keys, keys, keys))
    with pytest.raises(ValueError, match="rule: expected a rule whose discrete update has an "
                                         "attention form"):
        fast_weight_attention(keys, keys, keys, rule="half_hebb")


def test_load_rules_from_runs_a_file_that_registers_rules(tmp_path):
    rules_file = tmp_path / "my_rules.py"
    rules_file.write_text("import fwplab\n\n"
                          "def anti_hebb(W, key, value, rate):\n"
                          "    return -(rate * value).unsqueeze(-1) * key.unsqueeze(-2)\n\n"
                          "fwplab.register_rule('anti_hebb', anti_hebb, structure='general')\n")
    load_rules_from(rules_file)
    assert "anti_hebb_cde" in fwplab.MODELS
    with pytest.raises(ValueError, match="rules file: expected an existing .py file"):
        load_rules_from(tmp_path / "missing.py")
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('no')\n")
    with pytest.raises(ValueError, match="broken.py: running it failed with RuntimeError: no"):
        load_rules_from(broken)


def test_importing_the_models_does_not_load_the_trainer():
    code = "import sys, fwplab.models; print('fwplab.train' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "False"
    assert fwplab.TrainConfig.__module__ == "fwplab.train"
