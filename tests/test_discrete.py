"""Discrete fast weight programmers: recurrent form == attention form, exact recall, capacity."""

import pytest
import torch

from fwplab.discrete import (
    FEATURE_MAPS,
    FastWeightLayer,
    apply_feature_map,
    capacity_experiment,
    fast_weight_attention,
    fast_weight_recurrent,
    random_keys,
    retrieval_error,
    store_pairs,
)
from fwplab.rules.fast_weight import delta_update

RULES = ["hebb", "delta", "oja"]
#: Recurrent and attention forms, relative to the largest output, per dtype.
RTOL_FORMS = {torch.float64: 1e-10, torch.float32: 1e-4}
#: Round-off of a recall that is exact in exact arithmetic (float64, d <= 16).
EXACT_RECALL_FLOAT64 = 1e-24
#: Float64 round-off of two computations of the same quantity in a different order.
SAME_VALUE_FLOAT64 = 1e-12


def random_sequences(batch, time, heads, d_k, d_v, dtype, seed=0):
    """Keys, values, queries, rates in (0, 1) and an initial fast weight."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=dtype)

    keys, queries = randn(batch, time, heads, d_k), randn(batch, time, heads, d_k)
    values = randn(batch, time, heads, d_v)
    rates = torch.rand(batch, time, heads, generator=generator, dtype=dtype)
    initial_weight = 0.3 * randn(batch, heads, d_v, d_k)
    return keys, values, queries, rates, initial_weight


def assert_forms_agree(recurrent, attention, dtype):
    scale = recurrent.abs().max().item()
    tolerance = RTOL_FORMS[dtype] * max(scale, 1.0)
    torch.testing.assert_close(attention, recurrent, rtol=0.0, atol=tolerance)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("feature_map", sorted(FEATURE_MAPS))
@pytest.mark.parametrize("rule", RULES)
def test_recurrent_form_equals_attention_form(rule, feature_map, dtype):
    keys, values, queries, rates, w0 = random_sequences(2, 9, 3, 4, 5, dtype)
    kwargs = dict(rule=rule, feature_map=feature_map, initial_weight=w0)
    recurrent = fast_weight_recurrent(keys, values, queries, rates, **kwargs)
    attention = fast_weight_attention(keys, values, queries, rates, **kwargs)
    assert recurrent.shape == (2, 9, 3, 5) and recurrent.dtype == dtype
    assert_forms_agree(recurrent, attention, dtype)


@pytest.mark.parametrize("rule", RULES)
def test_batch_size_one_single_head_and_no_initial_weight(rule):
    keys, values, queries, rates, _ = random_sequences(1, 1, 1, 3, 2, torch.float64)
    recurrent = fast_weight_recurrent(keys, values, queries, rates, rule=rule)
    attention = fast_weight_attention(keys, values, queries, rates, rule=rule)
    assert recurrent.shape == (1, 1, 1, 2)
    assert_forms_agree(recurrent, attention, torch.float64)


def test_hebbian_form_is_unnormalised_causal_linear_attention():
    keys, values, queries, rates, _ = random_sequences(1, 6, 1, 3, 2, torch.float64)
    phi_k, phi_q = torch.softmax(keys[0, :, 0], -1), torch.softmax(queries[0, :, 0], -1)
    beta, v = rates[0, :, 0], values[0, :, 0]
    expected = torch.stack(
        [sum(beta[s] * v[s] * (phi_k[s] @ phi_q[t]) for s in range(t + 1)) for t in range(6)]
    )
    outputs = fast_weight_attention(keys, values, queries, rates, rule="hebb")
    torch.testing.assert_close(outputs[0, :, 0], expected, rtol=0.0, atol=SAME_VALUE_FLOAT64)


@pytest.mark.parametrize("rule", RULES)
def test_heads_are_independent_fast_weights(rule):
    keys, values, queries, rates, w0 = random_sequences(2, 5, 3, 4, 4, torch.float64)
    together = fast_weight_recurrent(keys, values, queries, rates, rule=rule, initial_weight=w0)
    for h in range(3):
        alone = fast_weight_recurrent(
            keys[:, :, h : h + 1],
            values[:, :, h : h + 1],
            queries[:, :, h : h + 1],
            rates[:, :, h : h + 1],
            rule=rule,
            initial_weight=w0[:, h : h + 1],
        )
        torch.testing.assert_close(together[:, :, h : h + 1], alone, rtol=0.0, atol=0.0)


@pytest.mark.parametrize("rule", RULES)
def test_final_weight_reads_out_the_last_output(rule):
    keys, values, queries, rates, _ = random_sequences(2, 4, 2, 3, 3, torch.float64)
    outputs, final = fast_weight_recurrent(
        keys, values, queries, rates, rule=rule, return_final_weight=True
    )
    assert final.shape == (2, 2, 3, 3)
    last_query = apply_feature_map(queries[:, -1], "softmax")
    readout = (final @ last_query.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(outputs[:, -1], readout, rtol=0.0, atol=SAME_VALUE_FLOAT64)


def test_rates_with_or_without_last_axis_and_default_one():
    keys, values, queries, rates, _ = random_sequences(2, 4, 2, 3, 3, torch.float64)
    with_axis = fast_weight_recurrent(keys, values, queries, rates.unsqueeze(-1), rule="delta")
    without = fast_weight_recurrent(keys, values, queries, rates, rule="delta")
    torch.testing.assert_close(with_axis, without, rtol=0.0, atol=0.0)
    default = fast_weight_recurrent(keys, values, queries, rule="delta")
    ones = fast_weight_recurrent(keys, values, queries, torch.ones_like(rates), rule="delta")
    torch.testing.assert_close(default, ones, rtol=0.0, atol=0.0)


@pytest.mark.parametrize("form", [fast_weight_recurrent, fast_weight_attention])
@pytest.mark.parametrize("rule", RULES)
def test_gradcheck_float64(form, rule):
    inputs = random_sequences(1, 3, 2, 2, 2, torch.float64, seed=1)
    inputs = tuple(x.clone().requires_grad_(True) for x in inputs)

    def run(keys, values, queries, rates, initial_weight):
        return form(keys, values, queries, rates, rule=rule, initial_weight=initial_weight)

    assert torch.autograd.gradcheck(run, inputs)


def orthonormal_pairs(num_pairs, dim, seed=0):
    generator = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    keys = basis.T[:num_pairs].unsqueeze(0)
    values = torch.randn(1, num_pairs, dim, generator=generator, dtype=torch.float64)
    return keys, values


@pytest.mark.parametrize("rule", ["hebb", "delta"])
@pytest.mark.parametrize("num_pairs", [1, 5, 8])
def test_orthonormal_keys_are_recalled_exactly(rule, num_pairs):
    keys, values = orthonormal_pairs(num_pairs, 8)
    weight = store_pairs(keys, values, rule, rate=1.0)
    assert retrieval_error(weight, keys, values).item() < EXACT_RECALL_FLOAT64


def test_delta_rule_overwrites_a_repeated_key_and_hebb_does_not():
    keys, values = orthonormal_pairs(4, 4)
    generator = torch.Generator().manual_seed(3)
    new_values = torch.randn(1, 4, 4, generator=generator, dtype=torch.float64)
    both_keys, both_values = torch.cat([keys, keys], 1), torch.cat([values, new_values], 1)
    delta = store_pairs(both_keys, both_values, "delta", rate=1.0)
    hebb = store_pairs(both_keys, both_values, "hebb", rate=1.0)
    assert retrieval_error(delta, keys, new_values).item() < EXACT_RECALL_FLOAT64
    hebb_recall = keys @ hebb.transpose(-1, -2)
    torch.testing.assert_close(hebb_recall, values + new_values, rtol=0.0, atol=SAME_VALUE_FLOAT64)


def test_hebb_cannot_store_more_pairs_than_dimensions():
    dim = 8
    keys, values = orthonormal_pairs(dim, dim)
    generator = torch.Generator().manual_seed(4)
    extra_keys = torch.randn(1, dim, dim, generator=generator, dtype=torch.float64)
    extra_values = torch.randn(1, dim, dim, generator=generator, dtype=torch.float64)
    keys = torch.cat([keys, torch.nn.functional.normalize(extra_keys, dim=-1)], 1)
    values = torch.cat([values, extra_values], 1)
    error = retrieval_error(store_pairs(keys, values, "hebb"), keys, values).item()
    # More keys than dimensions are linearly dependent: crosstalk cannot vanish.
    assert error > 0.5


def test_one_pass_with_unit_keys_hebb_interferes_and_delta_corrects_the_newest_pair():
    dim = 16
    result = capacity_experiment(dim, 2 * dim, trials=4)
    assert result.sweeps == 1 and result.delta_rate == 1.0 and result.key_features == "unit"
    hebb, delta, n = result.hebb_error, result.delta_error, result.num_pairs
    assert (hebb[n >= 5 * dim // 4] > 1.0).all(), "past N = d Hebb is worse than the empty memory"
    assert ((hebb - (n - 1) / dim).abs() < 0.25).all()
    assert (delta[1:] < hebb[1:]).all()
    # Later writes with overlapping keys disturb earlier pairs: not exact even for N = d / 4.
    assert delta[dim // 4 - 1] > 0.05
    # At rate 1 a unit key's own read-out is exact right after its write.
    keys, values = result.keys[:, :dim], result.values[:, :dim]
    weight = store_pairs(keys, values, "delta")
    newest = retrieval_error(weight, keys[:, -1:], values[:, -1:])
    assert (newest < EXACT_RECALL_FLOAT64).all()


def test_sweeps_below_rate_one_approach_least_squares():
    dim = 16
    result = capacity_experiment(dim, 2 * dim, trials=4, sweeps=10, delta_rate=0.5)
    delta, floor, n = result.delta_error, result.least_squares_error, result.num_pairs
    assert (delta < 1.0).all()
    assert (delta[: dim // 2] < 0.05).all()
    assert (floor[:dim] < SAME_VALUE_FLOAT64).all()
    assert (delta[-1] - floor[-1]).abs() < 0.15
    # The least-squares optimum leaves (N - d) / N of the values unexplained on average.
    beyond = n > dim
    assert ((floor[beyond] - (n[beyond] - dim) / n[beyond]).abs() < 0.1).all()


def test_softmax_keys_are_probability_vectors_shorter_than_one():
    keys = random_keys(3, 5, 8, "softmax", torch.Generator().manual_seed(0))
    assert (keys > 0).all()
    torch.testing.assert_close(keys.sum(-1), torch.ones(3, 5, dtype=torch.float64))
    assert (keys.norm(dim=-1) < 1.0).all()
    unit = random_keys(3, 5, 8, "unit", torch.Generator().manual_seed(0))
    torch.testing.assert_close(unit.norm(dim=-1), torch.ones(3, 5, dtype=torch.float64))


def test_a_delta_write_corrects_the_fraction_rate_times_squared_key_norm():
    generator = torch.Generator().manual_seed(2)
    key = random_keys(1, 1, 6, "softmax", generator)[0]
    value = torch.randn(1, 6, generator=generator, dtype=torch.float64)
    weight = torch.randn(1, 6, 6, generator=generator, dtype=torch.float64)
    rate = torch.tensor([[0.8]], dtype=torch.float64)
    before = (weight @ key.unsqueeze(-1)).squeeze(-1)
    after = ((weight + delta_update(weight, key, value, rate)) @ key.unsqueeze(-1)).squeeze(-1)
    fraction = 0.8 * key.pow(2).sum()
    torch.testing.assert_close(
        after - before, fraction * (value - before), rtol=0.0, atol=SAME_VALUE_FLOAT64
    )


def test_softmax_keys_one_pass_leaves_an_error_that_more_sweeps_reduce():
    dim = 8
    one_pass = capacity_experiment(dim, 2 * dim, trials=3, key_features="softmax")
    swept = capacity_experiment(dim, 2 * dim, trials=3, sweeps=20, key_features="softmax")
    torch.testing.assert_close(swept.keys, one_pass.keys, rtol=0.0, atol=0.0)
    assert (one_pass.delta_error > 0.5).all()
    assert (swept.delta_error < one_pass.delta_error).all()
    assert (one_pass.least_squares_error[:dim] < SAME_VALUE_FLOAT64).all()


@pytest.mark.parametrize("sweeps", [1, 3])
@pytest.mark.parametrize("key_features", ["unit", "softmax"])
def test_capacity_curves_equal_storing_each_n_on_its_own(key_features, sweeps):
    result = capacity_experiment(
        6, 10, trials=2, sweeps=sweeps, delta_rate=0.7, key_features=key_features, seed=5
    )
    for n in (1, 6, 10):
        keys, values = result.keys[:, :n], result.values[:, :n]
        hebb = store_pairs(keys, values, "hebb")
        delta = store_pairs(keys, values, "delta", rate=0.7, sweeps=sweeps)
        for weight, curve in ((hebb, result.hebb_error), (delta, result.delta_error)):
            error = retrieval_error(weight, keys, values).mean()
            torch.testing.assert_close(curve[n - 1], error, rtol=0.0, atol=SAME_VALUE_FLOAT64)


def _product(factors):
    result = torch.eye(factors[0].shape[-1], dtype=factors[0].dtype).expand_as(factors[0])
    for factor in factors:
        result = result @ factor
    return result


@pytest.mark.parametrize("rule", RULES)
def test_initial_weight_is_carried_through_each_rules_linear_factors(rule):
    # hebb:  W_T = W_0 + W_T(0)
    # delta: W_T = W_0 P_1 ... P_T + W_T(0),   P_s = I - beta_s phi(k_s) phi(k_s)^T
    # oja:   W_T = Q_T ... Q_1 W_0 + W_T(0),   Q_s = I - beta_s v_s v_s^T
    keys, values, queries, rates, w0 = random_sequences(2, 6, 3, 4, 5, torch.float64)
    _, with_w0 = fast_weight_recurrent(
        keys, values, queries, rates, rule=rule, initial_weight=w0, return_final_weight=True
    )
    _, without = fast_weight_recurrent(
        keys, values, queries, rates, rule=rule, return_final_weight=True
    )
    phi_k, beta = apply_feature_map(keys, "softmax"), rates.unsqueeze(-1).unsqueeze(-1)
    if rule == "hebb":
        carried = w0
    elif rule == "delta":
        outer = phi_k.unsqueeze(-1) * phi_k.unsqueeze(-2)
        factors = torch.eye(4, dtype=torch.float64) - beta * outer
        carried = w0 @ _product(factors.unbind(1))
    else:
        outer = values.unsqueeze(-1) * values.unsqueeze(-2)
        factors = torch.eye(5, dtype=torch.float64) - beta * outer
        carried = _product(factors.unbind(1)[::-1]) @ w0
    torch.testing.assert_close(with_w0 - without, carried, rtol=0.0, atol=SAME_VALUE_FLOAT64)


@pytest.mark.parametrize("rule", RULES)
def test_fast_weight_layer_forms_agree_and_train_slow_weights(rule):
    torch.manual_seed(0)
    layer = FastWeightLayer(5, num_heads=2, head_dim=3, rule=rule).double()
    x = torch.randn(1, 7, 5, dtype=torch.float64)
    recurrent, attention = layer(x), layer(x, form="attention")
    assert recurrent.shape == (1, 7, 5)
    assert_forms_agree(recurrent, attention, torch.float64)
    recurrent.pow(2).sum().backward()
    assert layer.slow.weight.grad.abs().sum() > 0


def test_shape_errors_are_clear():
    keys, values, queries, rates, w0 = random_sequences(2, 4, 3, 5, 6, torch.float64)
    with pytest.raises(ValueError, match=r"keys: expected shape \(batch, time, heads, dim\)"):
        fast_weight_recurrent(keys[0], values, queries)
    with pytest.raises(ValueError, match="queries: expected the shape of keys"):
        fast_weight_attention(keys, values, queries[..., :4])
    with pytest.raises(ValueError, match=r"values: expected shape \(2, 4, 3, d_v\)"):
        fast_weight_recurrent(keys, values[:, :3], queries)
    with pytest.raises(ValueError, match=r"rates: expected shape \(2, 4, 3\)"):
        fast_weight_recurrent(keys, values, queries, rates[:, :, :2])
    with pytest.raises(ValueError, match=r"initial_weight: expected shape .* \(2, 3, 6, 5\)"):
        fast_weight_attention(keys, values, queries, initial_weight=w0.transpose(-1, -2))
    with pytest.raises(TypeError, match="initial_weight: expected a torch.Tensor or None"):
        fast_weight_recurrent(keys, values, queries, initial_weight=w0.tolist())
    with pytest.raises(ValueError, match="at least one time step"):
        fast_weight_recurrent(keys[:, :0], values[:, :0], queries[:, :0])
    with pytest.raises(TypeError, match="values: expected a torch.Tensor"):
        fast_weight_recurrent(keys, values.tolist(), queries)
    with pytest.raises(ValueError, match="rule: expected one of"):
        fast_weight_recurrent(keys, values, queries, rule="hopfield")
    with pytest.raises(ValueError, match="feature_map: expected one of"):
        fast_weight_attention(keys, values, queries, feature_map="relu")


def test_memory_and_layer_errors_are_clear():
    keys, values = orthonormal_pairs(3, 4)
    with pytest.raises(ValueError, match="sweeps: expected an integer >= 1"):
        store_pairs(keys, values, "delta", sweeps=0)
    with pytest.raises(ValueError, match=r"rate: expected a number or shape \(1, 3\)"):
        store_pairs(keys, values, "delta", rate=torch.ones(3))
    with pytest.raises(ValueError, match=r"keys and values: expected shapes"):
        store_pairs(keys, values[:, :2], "hebb")
    with pytest.raises(ValueError, match=r"weight: expected shape \(batch, d_v, d_k\)"):
        retrieval_error(torch.zeros(1, 4, 3), keys, values)
    with pytest.raises(ValueError, match="delta_rate: expected a number in"):
        capacity_experiment(4, 8, delta_rate=2.0)
    with pytest.raises(ValueError, match="dim: expected an integer >= 1"):
        capacity_experiment(0, 8)
    with pytest.raises(ValueError, match="sweeps: expected an integer >= 1, got 0"):
        capacity_experiment(4, 8, sweeps=0)
    with pytest.raises(ValueError, match=r"key_features: expected one of \('unit', 'softmax'\)"):
        capacity_experiment(4, 8, key_features="gaussian")
    layer = FastWeightLayer(5, num_heads=2, head_dim=3)
    with pytest.raises(ValueError, match=r"x: expected shape \(batch, time, 5\)"):
        layer(torch.randn(2, 4, 4))
    with pytest.raises(ValueError, match="form: expected one of"):
        layer(torch.randn(2, 4, 5), form="chunked")
    with pytest.raises(ValueError, match="feature_map: expected one of"):
        FastWeightLayer(5, num_heads=2, head_dim=3, feature_map="relu")
