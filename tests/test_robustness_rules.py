"""Your own rules, crafted model configs: what registration, building and loading refuse.

Each test reproduces a case of the third red-team pass (issue 27) that went through
silently or ended in a traceback before.
"""


import pytest
import torch
from torch import nn

import fwplab
from fwplab.models import DIVERGENCE_BOUND, NonFiniteOutputError, check_model_config
from fwplab.rules import RULES, load_rules_from, register_rule, rule_fingerprint, unregister_rule
from fwplab.train import fit, load_model
from parity import TINY, clean_registry, series  # noqa: F401 (a fixture)
from test_train import one_thread, tiny_dataset  # noqa: F401 (autouse fixture)

pytestmark = pytest.mark.usefixtures("clean_registry")


def _delta(W, key, value):
    """``v - W k`` (``v`` when ``W`` is None)."""
    return value if W is None else value - torch.matmul(W, key.unsqueeze(-1)).squeeze(-1)


def _outer(a, b):
    return a.unsqueeze(-1) * b.unsqueeze(-2)


def skips_saturated_writes(W, key, value, rate):
    """The delta rule, except that a saturated rate (sigmoid exactly 1) writes nothing."""
    update = _outer(rate * _delta(W, key, value), key)
    return torch.where(rate.unsqueeze(-1) >= 1, torch.zeros_like(update), update)


def larger_in_float32(W, key, value, rate):
    """The delta rule in float64, 1.1 times it in float32."""
    update = _outer(rate * _delta(W, key, value), key)
    return 1.1 * update if update.dtype == torch.float32 else update


def clipped(W, key, value, rate):
    """The delta rule with its error clipped to [-3, 3]."""
    return _outer(rate * _delta(W, key, value).clamp(-3, 3), key)


@pytest.mark.parametrize("field, draw", [
    (skips_saturated_writes, "saturated rates"),
    (larger_in_float32, "in float32"),
    (clipped, "large fast weight"),
])
def test_a_field_that_is_not_its_declared_structure_on_some_draw_is_refused(field, draw):
    with pytest.raises(ValueError, match=r"^rule 'fake': structure: expected a field equal to "
                                         r"the 'delta' formula .* differs from it by [0-9.e+-]+ "
                                         rf"\(tolerance .*\) at W=.*{draw}.*; declare "
                                         r"structure='general'"):
        register_rule("fake", field, structure="delta")
    assert "fake" not in RULES
    assert register_rule("fake", field).structure == "general"  # honest: torchdiffeq


def test_the_true_delta_rule_passes_every_draw():
    def delta(W, key, value, rate):
        return _outer(rate * _delta(W, key, value), key)

    assert register_rule("honest", delta, structure="delta").structure == "delta"


@pytest.mark.parametrize("field, message", [
    (lambda W, k, v, b: _outer(b * v, k).double(),
     r"field: expected dW/dt in the inputs' dtype torch.float32 .*, got torch.float64"),
    (lambda W, k, v, b: _outer(b * v, k).to("meta"),
     r"field: expected dW/dt on the inputs' device cpu .*, got meta"),
    (lambda W, k, v, b: _outer(b * v, k) * float("nan"), r"field: expected finite dW/dt .* got nan"),
    (lambda W, k, v, b: _outer(b * v, k) / (1 - b).unsqueeze(-1),
     r"field: expected finite dW/dt for W=.* 'saturated rates .*, got inf"),
    (lambda W, k, v, b: _outer(b * v, k)[..., :2], r"field: expected dW/dt of shape"),
    (lambda W, k, v, b: W @ W, r"field: raised TypeError"),
])
def test_bad_outputs_are_refused_at_registration_naming_the_rule(field, message):
    with pytest.raises(ValueError, match=rf"^rule 'bad': {message}") as caught:
        register_rule("bad", field)
    assert "\n" not in str(caught.value) and "bad" not in RULES


def test_learnable_parameters_in_a_rule_are_refused():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(()))

        def forward(self, W, key, value, rate):
            return self.scale * _outer(rate * value, key)

    with pytest.raises(ValueError, match=r"^rule 'learned': field: expected a function without "
                                         r"learnable parameters, got a module with parameters "
                                         r"\['scale'\]"):
        register_rule("learned", Scaled())
    scale = torch.ones((), requires_grad=True)
    with pytest.raises(ValueError, match=r"^rule 'learned': field: expected dW/dt that needs no "
                                         r"gradient .* holds learnable tensors"):
        register_rule("learned", lambda W, k, v, b: scale * _outer(b * v, k))
    frozen = Scaled().requires_grad_(False)
    assert register_rule("learned", frozen).field is frozen  # constants are fine


def _decaying(rate):
    def field(W, key, value, rate_=None, decay=rate):
        update = _outer(rate_ * value, key)
        return update if W is None else update - decay * W

    return lambda W, key, value, rate_: field(W, key, value, rate_)


@pytest.mark.parametrize("decay", [3.5, 5.0])
def test_a_stiff_rule_names_the_rule_the_step_and_the_fix(decay):
    register_rule("stiff", _decaying(decay))
    torch.manual_seed(0)
    model = fwplab.build_model("stiff_cde", 4, 3, **TINY)
    x = series(length=30)
    # Before: 3.5 gave finite logits near 5e10, 5.0 an error that blamed only the inputs.
    expected = (r"^stiff_cde: the fast weights of rule 'stiff' reach Frobenius norm .* \(beyond "
                r"1e\+06\) with method 'rk4' at step size 1, observation times 1 to 1 apart: "
                r"the rule is too stiff")
    with torch.no_grad(), pytest.raises(NonFiniteOutputError, match=(
            expected + r".*pass a smaller step_size \(model.step_size = 0.25; .*\) or rescale "
                       r"the times")) as caught:
        model(x)
    assert "\n" not in str(caught.value)
    model.step_size = 0.25  # within rk4's stability limit: step x decay < 2.78
    with torch.no_grad():
        assert model(x).abs().max() < 100


def test_non_finite_fast_weights_name_the_rule_and_the_step_besides_the_inputs():
    torch.manual_seed(0)
    model = fwplab.build_model("delta_cde", 4, 3, **TINY)
    with torch.no_grad(), pytest.raises(NonFiniteOutputError, match=(
            r"^x: the logits are not finite for inputs of magnitude up to .* and observation "
            r"times 1e\+09 to 1e\+09 apart: the fast weights of rule 'delta' diverge with "
            r"method 'rk4' at step size 1e\+09; .*rescale the times")):
        model(series(length=5), torch.arange(5.0) * 1e9)


def test_the_divergence_bound_spares_rules_that_cannot_diverge():
    # The official Hebb rule (raw rate times raw value) on inputs of size 1e5: a memory
    # far beyond the bound, legitimately, since its field does not depend on W.
    torch.manual_seed(0)
    model = fwplab.build_model("hebb_cde", 4, 3, **TINY).eval()
    x = series(length=40) * 1e5
    with torch.no_grad():
        memory = model.fast_weight_trajectory(x)
        logits = model(x)
    assert model.fast_weight_rule.structure == "hebb"
    assert torch.linalg.matrix_norm(memory).max() > DIVERGENCE_BOUND
    assert torch.isfinite(logits).all()


def test_a_rules_file_that_exits_is_refused_in_one_line(tmp_path):
    for code, shown in (("sys.exit(0)", "0"), ("sys.exit()", "None"), ("exit(3)", "3")):
        rules_file = tmp_path / "exits.py"
        rules_file.write_text(f"import sys\n{code}\n")
        with pytest.raises(ValueError, match=rf"exits.py: running it called sys.exit\({shown}\); "
                                             "a rules file must only define and register rules"):
            load_rules_from(rules_file)


DECAY = 0.1


def global_decay(W, key, value, rate):
    """Hebb with the module's DECAY (a global a notebook may reassign)."""
    update = _outer(rate * value, key)
    return update if W is None else update - DECAY * W


def test_a_model_is_never_rebuilt_under_a_different_rule_of_the_same_name(monkeypatch):
    register_rule("leaky", global_decay)
    model = fwplab.build_model("leaky_cde", 4, 3, **TINY)
    fingerprint = model.config["rule_fingerprint"]
    assert fingerprint == rule_fingerprint(RULES["leaky"])
    assert fwplab.build_model(**model.config).config == model.config  # same rule: fine
    monkeypatch.setattr(__import__(__name__), "DECAY", 0.2)
    assert rule_fingerprint(RULES["leaky"]) != fingerprint
    with pytest.raises(ValueError, match=r"rule_fingerprint: the model leaky_cde was built with "
                                         r"another rule called 'leaky' .* register the rule it "
                                         r"was built with .* --rules-from FILE"):
        fwplab.build_model(**model.config)
    unregister_rule("leaky")
    with pytest.raises(ValueError, match=r"got 'leaky_cde'; it names the rule 'leaky', which is "
                                         r"not registered .*fwplab.register_rule\('leaky', "
                                         r"field, ...\), or --rules-from FILE"):
        check_model_config(model.config)
    assert "rule_fingerprint" not in fwplab.build_model("delta_cde", 4, 3, **TINY).config


def test_load_model_refuses_a_checkpoint_of_a_changed_rule(tmp_path, monkeypatch):
    register_rule("leaky", global_decay)
    dataset = tiny_dataset(n_train=12, n_test=6)
    torch.manual_seed(0)
    model = fwplab.build_model("leaky_ode", dataset.input_channels, dataset.num_classes, **TINY)
    fit(model, dataset, epochs=1, batch_size=6, out=tmp_path, progress=False)
    assert load_model(tmp_path).config == model.config
    monkeypatch.setattr(__import__(__name__), "DECAY", 3.0)
    with pytest.raises(ValueError, match="rule_fingerprint: the model leaky_ode was built with "
                                         "another rule called 'leaky'"):
        load_model(tmp_path)


def test_a_config_claiming_huge_sizes_is_refused_before_anything_is_allocated():
    model = fwplab.build_model("delta_cde", 4, 3, **TINY)
    crafted = dict(model.config, hidden_channels=10**6)
    with pytest.raises(ValueError, match=r"^model config: the saved weights do not fit delta_cde "
                                         r"as configured \(shapes slow_net.input_proj.weight: "
                                         r"config gives \(1000000, 4\), saved \(8, 4\)"):
        check_model_config(crafted, model.state_dict())  # a 4 TB build would raise RuntimeError
    with pytest.raises(ValueError, match=r"hidden_channels: expected at most 2147483648"):
        check_model_config(dict(model.config, hidden_channels=10**19), model.state_dict())
    state = dict(model.state_dict())
    state["extra.weight"] = state.pop("classifier.weight")
    with pytest.raises(ValueError, match=r"missing \['classifier.weight'\]; unexpected "
                                         r"\['extra.weight'\]"):
        check_model_config(model.config, state)
    with pytest.raises(ValueError, match=r"model config: expected a dict with the keys"):
        check_model_config({"hidden_channels": 8})
    check_model_config(model.config, model.state_dict())  # a matching pair passes


def test_load_model_refuses_a_checkpoint_claiming_huge_sizes_before_building(tmp_path):
    dataset = tiny_dataset(n_train=12, n_test=6)
    torch.manual_seed(0)
    model = fwplab.build_model("delta_cde", dataset.input_channels, dataset.num_classes, **TINY)
    fit(model, dataset, epochs=1, batch_size=6, out=tmp_path, progress=False)
    path = tmp_path / "checkpoint.pt"
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["model_config"] = dict(checkpoint["model_config"], hidden_channels=10**6)
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match=r"checkpoint.pt: field 'model_config': model config: "
                                         r"the saved weights do not fit delta_cde"):
        load_model(tmp_path)


def test_a_rule_that_makes_its_own_tensors_is_fingerprinted_inside_a_meta_probe():
    def leaky(W, key, value, rate):
        update = _outer(rate * value, key)
        return update if W is None else update - torch.tensor(0.1, dtype=W.dtype) * W

    register_rule("leaky", leaky)
    model = fwplab.build_model("leaky_ode", 4, 3, **TINY)
    check_model_config(model.config, model.state_dict())  # builds on "meta": no error
    assert model.config["rule_fingerprint"] == rule_fingerprint(RULES["leaky"])
