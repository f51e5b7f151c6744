"""The continuous FWPs and the Neural CDE: official parity, fast vs reference, gradients, lengths."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.func import functional_call

import fwplab
from parity import GRAD_RTOL, LOGITS_ATOL, OFFICIAL_ATOL, TINY, logits_and_grads
from fwplab.models import LAYOUTS, MODELS, ContinuousFWP, _FastWeightField
from fwplab.paths import control_path, interpolation_coeffs
from fwplab.rules.fast_weight import unsquashed_hebb_rule
from fwplab.widgets.explorer import with_rule

GOLDEN = Path(__file__).parent / "fixtures" / "official_fwp_logits.pt"
#: The official FastWeightCDE (hebb_cde, oja_cde): state_dicts and logits on GOLDEN's x.
GOLDEN_CDE = Path(__file__).parent / "fixtures" / "official_cde_variants.pt"
ADJOINT_RTOL = 1e-2  # continuous adjoint vs exact discrete gradients
FWP_MODELS = [name for name, spec in MODELS.items() if isinstance(spec, tuple)]
#: The models on an interpolated path: the continuous FWPs and the Neural CDE.
PATH_MODELS = [*FWP_MODELS, "ncde"]


def tiny(name):
    """TINY without ``num_heads`` for the Neural CDE (which refuses it)."""
    return {k: v for k, v in TINY.items() if not (name == "ncde" and k == "num_heads")}


def _series(batch=3, length=9, channels=4, seed=0):
    torch.manual_seed(seed)
    x = torch.randn(batch, length, channels)
    x[..., 0] = torch.arange(length, dtype=x.dtype)  # time channel
    return x


@pytest.fixture(scope="module")
def golden():
    return torch.load(GOLDEN, weights_only=True)


@pytest.fixture(scope="module")
def golden_cde():
    return torch.load(GOLDEN_CDE, weights_only=True)


@pytest.mark.parametrize("solver", ["reference", "fast"])
@pytest.mark.parametrize("name", ["delta_cde", "hebb_ode", "oja_ode", "delta_ode"])
def test_official_state_dicts_reproduce_official_logits(golden, name, solver):
    model = fwplab.build_model(name, **golden["config"], solver=solver).eval()
    fwplab.load_official_state_dict(model, golden[name]["state_dict"])
    with torch.no_grad():
        logits = model(golden["x"], golden["times"])
    torch.testing.assert_close(logits, golden[name]["logits"], atol=OFFICIAL_ATOL, rtol=0)


@pytest.mark.parametrize("solver", ["reference", "stepwise", "fast"])
@pytest.mark.parametrize("name", ["hebb_cde", "oja_cde"])
def test_official_fast_weight_cde_reproduces_official_logits(golden_cde, name, solver):
    """The official hebb_cde and oja_cde: keys from the path, values from its derivative."""
    model = fwplab.build_model(name, **golden_cde["config"], solver=solver).eval()
    assert model.layout == "keys_from_path"
    fwplab.load_official_state_dict(model, golden_cde[name]["state_dict"])
    with torch.no_grad():
        logits = model(golden_cde["x"], golden_cde["times"])
    torch.testing.assert_close(logits, golden_cde[name]["logits"], atol=OFFICIAL_ATOL, rtol=0)


def test_official_state_dicts_of_the_other_cde_layout_are_refused(golden, golden_cde):
    config = golden["config"]
    official_hebb = fwplab.build_model("hebb_cde", **config)
    with pytest.raises(ValueError, match=r"missing \['update_net.dx_dt_proj.weight', "
                                         r"'update_net.dx_dt_proj.bias'\]; unexpected "
                                         r"\['update_net.vs_proj.weight'"):
        fwplab.load_official_state_dict(official_hebb, golden["delta_cde"]["state_dict"])
    own_layout = fwplab.build_model("oja_cde", **config, layout="keys_from_derivative")
    with pytest.raises(ValueError, match=r"missing \['update_net.vs_proj.weight'"):
        fwplab.load_official_state_dict(own_layout, golden_cde["oja_cde"]["state_dict"])


def test_wrong_official_state_dict_names_every_problem(golden):
    model = fwplab.build_model("delta_cde", **golden["config"])
    state = dict(golden["delta_cde"]["state_dict"])
    del state["query_net.weight"]
    state["update_net.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"missing \['query_net.weight'\].*unexpected"):
        fwplab.load_official_state_dict(model, state)
    wrong_model = fwplab.build_model("delta_ode", **golden["config"])
    with pytest.raises(ValueError, match="update_net.kvb_net.weight"):
        fwplab.load_official_state_dict(wrong_model, golden["delta_cde"]["state_dict"])


def test_official_loading_lives_in_its_module_and_models_re_exports_it():
    """fwplab.official imported first (before fwplab.models) loads, and every old import works."""
    code = ("import fwplab.official as o, fwplab.models as m, fwplab; "
            "assert m.load_official_state_dict is o.load_official_state_dict "
            "is fwplab.load_official_state_dict; "
            "assert (m.OFFICIAL_NAMES, m.OFFICIAL_UNUSED) == (o.OFFICIAL_NAMES, o.OFFICIAL_UNUSED)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    with pytest.raises(ValueError, match="model: expected a continuous FWP, got NeuralCDE"):
        fwplab.load_official_state_dict(fwplab.build_model("ncde", 2, 2, hidden_channels=4), {})



@pytest.mark.parametrize("options", [{}, {"post_tanh": True}, {"v_layernorm": True}],
                         ids=["plain", "post_tanh", "v_layernorm"])
@pytest.mark.parametrize("name", FWP_MODELS)
def test_fast_path_equals_reference(name, options):
    if options.get("post_tanh") and not name.startswith("delta"):
        pytest.skip("post_tanh is a delta-rule option")
    if options.get("v_layernorm") and name.endswith("ode"):
        pytest.skip("v_layernorm is a CDE option")
    x, lengths = _series(), torch.tensor([9, 4, 6])
    torch.manual_seed(1)
    reference = fwplab.build_model(name, 4, 3, **TINY, **options, solver="reference")
    fast = fwplab.build_model(name, 4, 3, **TINY, **options, solver="fast")
    fast.load_state_dict(reference.state_dict())
    assert fast.uses_fast_path() and not reference.uses_fast_path()
    ref_logits, ref_grads = logits_and_grads(reference, x, lengths)
    fast_logits, fast_grads = logits_and_grads(fast, x, lengths)
    torch.testing.assert_close(fast_logits, ref_logits, atol=LOGITS_ATOL, rtol=0)
    assert ref_grads.keys() == fast_grads.keys()
    for key, grad in ref_grads.items():
        scale = grad.abs().max().clamp(min=1e-6)
        assert (fast_grads[key] - grad).abs().max() / scale < GRAD_RTOL, key


@pytest.mark.parametrize("method", ["euler", "midpoint", "heun2", "heun3"])
def test_fast_path_matches_torchdiffeq_for_every_fixed_grid_method(method):
    x = _series()
    times = torch.tensor([0.0, 0.5, 1.0, 2.0, 2.2, 3.0, 4.5, 5.0, 6.0])
    for name in ("delta_cde", "oja_ode", "hebb_cde"):
        torch.manual_seed(2)
        reference = fwplab.build_model(name, 4, 3, **TINY, method=method, solver="reference")
        fast = fwplab.build_model(name, 4, 3, **TINY, method=method, solver="fast")
        fast.load_state_dict(reference.state_dict())
        with torch.no_grad():
            torch.testing.assert_close(fast(x, times), reference(x, times),
                                       atol=LOGITS_ATOL, rtol=0)


@pytest.mark.parametrize("name", FWP_MODELS)
def test_vector_field_passes_float64_gradcheck(name):
    torch.manual_seed(3)
    model = fwplab.build_model(name, 4, 3, hidden_channels=4, num_heads=2).double()
    x = _series(batch=2, length=5).double()
    path = control_path(interpolation_coeffs(x), torch.arange(5.0, dtype=torch.float64))
    field = _FastWeightField(model.slow_net, model.fast_weight_rule, path)
    W = torch.randn(2, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    A = model.slow_net.input_proj.weight.detach().clone().requires_grad_()

    def dW_dt(W, A):
        return functional_call(field, {"slow_net.input_proj.weight": A}, (torch.tensor(1.3), W))

    assert torch.autograd.gradcheck(dW_dt, (W, A))


@pytest.mark.parametrize("name", ["delta_cde", "oja_ode"])
def test_adjoint_gradients_agree_with_backprop(name):
    x = _series(batch=2, length=6)
    torch.manual_seed(4)
    direct = fwplab.build_model(name, 4, 3, **TINY, step_size=0.25, solver="reference")
    adjoint = fwplab.build_model(name, 4, 3, **TINY, step_size=0.25, adjoint=True)
    adjoint.load_state_dict(direct.state_dict())
    _, direct_grads = logits_and_grads(direct, x, None)
    _, adjoint_grads = logits_and_grads(adjoint, x, None)
    for key, grad in direct_grads.items():
        assert adjoint_grads[key].abs().sum() > 0, f"adjoint gradient of {key} is zero"
        relative = (adjoint_grads[key] - grad).norm() / grad.norm().clamp(min=1e-8)
        assert relative < ADJOINT_RTOL, (key, relative)


def test_one_euler_step_is_one_discrete_delta_update():
    """delta_ode, Euler with step 1 on regular data: W(t1) = W0 + delta_update(W0, k, v, beta)."""
    x = _series(batch=2, length=4)
    model = fwplab.build_model("delta_ode", 4, 3, **TINY, method="euler")
    W = model.fast_weight_trajectory(x)
    key, value, rate = model.slow_net(x[:, 0], None)
    key, value, rate = torch.softmax(key, -1), torch.tanh(value), torch.sigmoid(rate)
    W0 = fwplab.delta_update(None, key, value, rate)
    torch.testing.assert_close(W[:, 0], W0)
    torch.testing.assert_close(W[:, 1], W0 + fwplab.delta_update(W0, key, value, rate))


@pytest.mark.parametrize("interpolation", ["natural_cubic", "hermite_cubic", "linear"])
@pytest.mark.parametrize("name", PATH_MODELS)
def test_each_series_is_read_out_at_its_own_end(name, interpolation):
    x, lengths = _series(), torch.tensor([9, 5, 7])
    model = fwplab.build_model(name, 4, 3, **tiny(name), interpolation=interpolation).eval()
    with torch.no_grad():
        logits = model(x, lengths=lengths)
        changed = x.clone()
        changed[1, 5:] = 99.0
        changed[2, 7:] = float("nan")
        assert torch.equal(model(changed, lengths=lengths), logits)
        alone = model(x[1:2, :5])  # batch size 1, the series truncated at its end
    torch.testing.assert_close(alone[0], logits[1], atol=LOGITS_ATOL, rtol=0)


def test_precomputed_coefficients_give_the_same_logits():
    x, lengths = _series(), torch.tensor([9, 5, 7])
    x[0, 3, 2] = float("nan")
    model = fwplab.build_model("delta_cde", 4, 3, **TINY).eval()
    coeffs = interpolation_coeffs(x, lengths=lengths)
    with torch.no_grad():
        assert torch.equal(model(x, lengths=lengths, coeffs=coeffs), model(x, lengths=lengths))


def test_adaptive_method_and_stream_output():
    x = _series(batch=2)
    model = fwplab.build_model("delta_cde", 4, 3, **TINY, method="dopri5", rtol=1e-5, atol=1e-6)
    assert not model.uses_fast_path()
    fixed = fwplab.build_model("delta_cde", 4, 3, **TINY, step_size=0.2)
    fixed.load_state_dict(model.state_dict())
    with torch.no_grad():
        logits = fixed(x)
        stream = fixed(x, stream=True)
        assert stream.shape == (2, 9, 3)
        torch.testing.assert_close(stream[:, -1], logits)
        torch.testing.assert_close(model(x), logits, atol=1e-4, rtol=0)


def test_unsquashed_hebb_rule_scales_raw_values_by_the_rate_logit():
    torch.manual_seed(6)
    key, value = torch.randn(2, 3), 3.0 * torch.randn(2, 3)
    rate = torch.tensor([[-0.5], [2.0]])
    expected = torch.stack([rate[n] * torch.outer(value[n], torch.softmax(key[n], 0))
                            for n in range(2)])
    torch.testing.assert_close(unsquashed_hebb_rule(None, key, value, rate), expected)
    assert unsquashed_hebb_rule(None, key, value, rate).abs().max() > 1  # no tanh, no sigmoid


@pytest.mark.parametrize("name", ["hebb_cde", "oja_cde"])
def test_keys_from_path_layout_from_first_principles(name):
    """Keys and rates from LN(A x + a), values D dx/dt + f, W(t0) the W-free update,
    read-out W^T q with q = softmax(Q LN(A x(T) + a))."""
    x = _series(batch=2, length=6)
    torch.manual_seed(7)
    model = fwplab.build_model(name, 4, 3, **TINY, v_layernorm=True).eval()
    net, heads, d = model.slow_net, model.num_heads, model.head_dim
    times = torch.arange(6.0)
    path = control_path(interpolation_coeffs(x), times)
    x0, dx0 = path.evaluate(times[0]), path.derivative(times[0])
    u = torch.nn.functional.layer_norm(x0 @ net.input_proj.weight.T + net.input_proj.bias, (8,),
                                       net.input_norm.weight, net.input_norm.bias)
    kb = (u @ net.kb_proj.weight.T + net.kb_proj.bias).reshape(2, heads, d + 1)
    key, rate = kb[..., :d], kb[..., d:]
    value = dx0 @ net.derivative_value_proj.weight.T + net.derivative_value_proj.bias
    value = net.value_net(net.value_norm(value)).reshape(2, heads, d)
    if name == "hebb_cde":
        W0 = (rate * value).unsqueeze(-1) * torch.softmax(key, -1).unsqueeze(-2)
    else:
        W0 = (torch.tanh(value).unsqueeze(-1)
              * (torch.sigmoid(rate) * torch.softmax(key, -1)).unsqueeze(-2))
    with torch.no_grad():
        W = model.fast_weight_trajectory(x)
        torch.testing.assert_close(W[:, 0], W0)
        q = torch.softmax(model.query_proj(net.features(path.evaluate(times[-1]), None))
                          .reshape(2, heads, d), -1)
        o = torch.einsum("bhvk,bhv->bhk", W[:, -1], q).flatten(-2)
        z = model.out_proj(o)
        expected = model.classifier(model.feed_forward(z))
        torch.testing.assert_close(model(x), expected)
        stream = model(x, stream=True)
    torch.testing.assert_close(stream[:, -1], expected)


def test_layouts_default_to_the_official_ones_and_are_recorded():
    layouts = {name: fwplab.build_model(name, 4, 3, **TINY).config.get("layout")
               for name in FWP_MODELS}
    assert layouts == {"delta_cde": "keys_from_derivative", "hebb_cde": "keys_from_path",
                       "oja_cde": "keys_from_path", "delta_ode": None, "hebb_ode": None,
                       "oja_ode": None}
    for layout in LAYOUTS:
        model = fwplab.build_model("hebb_cde", 4, 3, **TINY, layout=layout)
        rebuilt = fwplab.build_model(**model.config)
        rebuilt.load_state_dict(model.state_dict())
    assert fwplab.build_model("hebb_cde", 4, 3, layout="keys_from_derivative").slow_net \
        .value_proj.in_features == 4


def test_a_rule_swapped_onto_delta_cde_keeps_its_layout():
    """The explorer's with_rule builds Hebb and Oja on a delta_cde's slow net."""
    x = _series(batch=2)
    delta = fwplab.build_model("delta_cde", 4, 3, **TINY)
    for rule in ("hebb", "oja"):
        swapped = with_rule(delta, rule)
        assert swapped.layout == swapped.config["layout"] == "keys_from_derivative"
        rebuilt = fwplab.build_model(**swapped.config).eval()
        rebuilt.load_state_dict(swapped.state_dict())
        with torch.no_grad():
            torch.testing.assert_close(rebuilt(x), swapped(x))


def test_trajectory_shape_and_initial_state():
    x = _series(batch=1)
    model = fwplab.build_model("hebb_cde", 4, 3, **TINY)
    W = model.fast_weight_trajectory(x)
    assert W.shape == (1, 9, 2, 4, 4)
    assert isinstance(model, ContinuousFWP)


def test_neural_cde_parameter_count_grows_with_hidden_times_channels():
    small = fwplab.count_parameters(fwplab.build_model("ncde", 21, 10, hidden_channels=32))
    large = fwplab.build_model("ncde", 21, 10, hidden_channels=64)
    fwp = fwplab.build_model("delta_cde", 21, 10, hidden_channels=64, num_heads=4)
    assert fwplab.count_parameters(large) > 3 * small
    assert fwplab.count_parameters(large) > fwplab.count_parameters(fwp)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m: m(torch.randn(2, 5)), r"x: expected a tensor of shape \(batch, time, channels\)"),
        (lambda m: m(torch.randn(2, 5, 3)), "x: the model expects 4 input channels, got 3"),
        (lambda m: m(torch.randn(2, 5, 4), times=torch.tensor([0.0, 1, 1, 2, 3])),
         "times: must be strictly increasing"),
        (lambda m: m(torch.randn(2, 5, 4), times=torch.arange(4.0)), r"times: expected shape \(5,\)"),
        (lambda m: m(torch.randn(2, 5, 4), lengths=torch.tensor([5, 6])),
         r"lengths: every length must lie in \[2, 5\]"),
        (lambda m: m(torch.randn(2, 5, 4), lengths=torch.tensor([5, 1])), "lengths"),
        (lambda m: m(torch.full((1, 5, 4), float("nan"))), "series 0 has no observed value"),
        (lambda m: m(torch.randn(2, 5, 4), coeffs=torch.randn(2, 5, 4)), "coeffs: expected shape"),
    ],
)
def test_bad_input_raises_clear_errors(call, message):
    model = fwplab.build_model("delta_cde", 4, 3, **TINY)
    with pytest.raises(ValueError, match=message):
        call(model)


@pytest.mark.parametrize(
    "name, hparams, message",
    [
        ("delta_transformer", {}, "name: expected one of .*, got 'delta_transformer'"),
        ("delta_cde", {"hidden_channels": 10, "num_heads": 4},
         r"hidden_channels: expected a multiple of num_heads \(4\), got 10"),
        ("hebb_cde", {"post_tanh": True},
         r"post_tanh: expected a rule that has this option \(the delta rule\), got 'hebb'"),
        ("delta_ode", {"v_layernorm": True},
         "v_layernorm: expected False for the ODE-driven delta_ode, got True"),
        ("oja_ode", {"layout": "keys_from_path"},
         "layout: expected None for the ODE-driven oja_ode, got 'keys_from_path'"),
        ("ncde", {"num_heads": 4}, "ncde: .*unexpected keyword argument 'num_heads'"),
        ("delta_cde", {"ff_channels": 0}, "ff_channels: expected a positive integer or None, "
                                          "got 0"),
        ("ncde", {"ff_channels": 0}, "ff_channels: expected a positive integer or None, got 0"),
        ("delta_cde", {"rtol": -1.0}, "rtol: expected a non-negative number, got -1.0"),
        ("hebb_cde", {"layout": "keys_from_x"}, "layout: expected one of"),
        ("delta_cde", {"method": "rk5"}, "unknown torchdiffeq method 'rk5'"),
        ("delta_cde", {"step_size": -1.0}, "step_size: expected a positive number"),
        ("delta_cde", {"interpolation": "spline"}, "interpolation: expected one of"),
        ("delta_cde", {"hidden_size": 8}, "unexpected keyword argument 'hidden_size'"),
    ],
)
def test_bad_hyperparameters_raise_clear_errors(name, hparams, message):
    with pytest.raises(ValueError, match=message):
        fwplab.build_model(name, 4, 3, **hparams)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", PATH_MODELS)
def test_cuda_matches_cpu(name):
    x = _series()
    model = fwplab.build_model(name, 4, 3, **tiny(name)).eval()
    with torch.no_grad():
        cpu = model(x, lengths=torch.tensor([9, 5, 7]))
        gpu = model.cuda()(x.cuda(), lengths=torch.tensor([9, 5, 7]).cuda())
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=1e-4)
