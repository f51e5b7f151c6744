"""Memory capacity explorer: how many key/value pairs fit in a ``d x d`` fast weight.

:func:`fwplab.discrete.capacity_experiment` computes the retrieval errors of Hebb and
the delta rule for ``N = 1, ..., 2d`` pairs; :func:`draw_capacity` draws them with the
recall of the chosen ``N``; :func:`capacity_explorer` puts sliders for ``N`` and ``d`` on
top. Moving ``N`` only redraws; a new ``d`` computes its curves once and keeps them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from matplotlib.figure import Figure

from ..discrete import CAPACITY_KEYS, CapacityResult, capacity_experiment, store_pairs
from .still import figure_png, still_box

if TYPE_CHECKING:
    import ipywidgets

__all__ = ["draw_capacity", "capacity_explorer"]

HEBB_COLOR = "tab:orange"
DELTA_COLOR = "tab:blue"
FLOOR_COLOR = "0.35"


def draw_capacity(result: CapacityResult, num_pairs: int, figure: Figure | None = None) -> Figure:
    """Draw retrieval error against ``N`` and the recall of the first trial at ``N = num_pairs``.

    Left: the mean normalised error ``sum_i |W k_i - v_i|^2 / sum_i |v_i|^2`` of Hebb,
    the delta rule and the least-squares optimum against ``N``, with the empty memory's
    error 1 and ``N = d`` marked. Right: every component of the retrieved ``W k_i``
    against the stored ``v_i`` for the first ``num_pairs`` pairs of trial 0 (perfect recall
    lies on the diagonal).

    Args:
        result: the output of :func:`fwplab.discrete.capacity_experiment`.
        num_pairs: ``N`` to show, between 1 and ``len(result.num_pairs)``.
        figure: a matplotlib figure to draw into (cleared first); a new one when ``None``.

    Returns:
        The figure.
    """
    max_pairs = len(result.num_pairs)
    if not 1 <= num_pairs <= max_pairs:
        raise ValueError(f"num_pairs must be between 1 and {max_pairs}, got {num_pairs}")
    if figure is None:
        figure = Figure(figsize=(10, 3.8))
    figure.clear()
    # Fixed margins: a layout engine adds about a third to the drawing time of each move.
    figure.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.92, wspace=0.22)
    curve_axes, recall_axes = figure.subplots(1, 2)

    n = result.num_pairs.numpy()
    index = num_pairs - 1
    curve_axes.plot(n, result.hebb_error.numpy(), color=HEBB_COLOR, label="Hebb (1 pass)")
    passes = "1 pass" if result.sweeps == 1 else f"{result.sweeps} sweeps"
    curve_axes.plot(
        n,
        result.delta_error.numpy(),
        color=DELTA_COLOR,
        label=f"delta ({passes}, beta={result.delta_rate:g})",
    )
    curve_axes.plot(
        n, result.least_squares_error.numpy(), color=FLOOR_COLOR, ls=":", label="least squares"
    )
    curve_axes.axhline(1.0, color="0.6", lw=0.8, ls="--", label="empty memory W = 0")
    curve_axes.axvline(result.dim, color="0.6", lw=0.8)
    curve_axes.text(
        result.dim, 0.02, " N = d", color="0.4", transform=curve_axes.get_xaxis_transform()
    )
    for errors, color in ((result.hebb_error, HEBB_COLOR), (result.delta_error, DELTA_COLOR)):
        curve_axes.plot(num_pairs, errors[index].item(), "o", color=color)
    draws = result.keys.shape[0]
    curve_axes.set(
        xlabel="N (stored pairs)",
        ylabel="retrieval error",
        title=f"d = {result.dim}, {result.key_features} keys: mean over {draws} draws",
    )
    curve_axes.legend(fontsize="small", loc="upper left")

    keys = result.keys[:1, :num_pairs]
    values = result.values[:1, :num_pairs]
    hebb = store_pairs(keys, values, "hebb")
    delta = store_pairs(keys, values, "delta", rate=result.delta_rate, sweeps=result.sweeps)
    stored = values.flatten().numpy()
    for weight, color, name in ((hebb, HEBB_COLOR, "Hebb"), (delta, DELTA_COLOR, "delta")):
        retrieved = (keys @ weight.transpose(-1, -2)).flatten().numpy()
        recall_axes.plot(stored, retrieved, ".", ms=3, alpha=0.6, color=color, label=name)
    limit = 1.1 * abs(stored).max()
    recall_axes.plot([-limit, limit], [-limit, limit], color="0.3", lw=0.8)
    recall_axes.set(
        xlabel="stored value component",
        ylabel="retrieved component",
        title=f"recall of N = {num_pairs} pairs (one draw)",
        xlim=(-limit, limit),
        ylim=(-1.6 * limit, 1.6 * limit),
    )
    recall_axes.legend(fontsize="small", loc="upper left")
    return figure


def capacity_explorer(
    dim: int = 16,
    num_pairs: int = 24,
    max_dim: int = 48,
    trials: int = 4,
    sweeps: int = 1,
    delta_rate: float = 1.0,
    key_features: str = "unit",
    max_sweeps: int = 20,
    seed: int = 0,
) -> ipywidgets.VBox:
    """Controls for ``N``, ``d``, ``beta``, sweeps and the keys over :func:`draw_capacity`.

    The curves of each setting of ``(d, beta, sweeps, keys)`` are computed once (``2 d``
    pairs, ``trials`` draws) and cached; moving ``N`` only redraws.

    Args:
        dim: initial ``d``.
        num_pairs: initial ``N``, at most ``2 * dim``.
        max_dim: largest ``d`` on the slider.
        trials: random draws averaged in the curves.
        sweeps: initial passes of the delta rule over the pairs.
        delta_rate: initial rate ``beta`` of the delta rule, in ``(0, 2)``.
        key_features: initial keys, ``"unit"`` or ``"softmax"``.
        max_sweeps: largest number of sweeps on the slider.
        seed: seed of the random pairs.

    Returns:
        An ``ipywidgets.VBox``: a row of sliders for ``d`` and ``N``, a row for ``beta``,
        sweeps and the keys, then the figure (with a still of the figure for static
        pages: :mod:`fwplab.widgets.still`).
    """
    import ipywidgets as widgets
    from IPython.display import display

    if not 2 <= dim <= max_dim:
        raise ValueError(f"dim must be between 2 and max_dim = {max_dim}, got {dim}")
    if not 1 <= num_pairs <= 2 * dim:
        raise ValueError(f"num_pairs must be between 1 and 2 * dim = {2 * dim}, got {num_pairs}")
    if not 1 <= sweeps <= max_sweeps:
        raise ValueError(f"sweeps must be between 1 and max_sweeps = {max_sweeps}, got {sweeps}")
    if not 0.0 < delta_rate < 2.0:
        raise ValueError(f"delta_rate must be in (0, 2), got {delta_rate}")
    if key_features not in CAPACITY_KEYS:
        raise ValueError(f"key_features must be one of {CAPACITY_KEYS}, got {key_features!r}")
    results: dict[tuple[int, float, int, str], CapacityResult] = {}

    dim_slider = widgets.IntSlider(
        value=dim, min=2, max=max_dim, description="d", continuous_update=False
    )
    pairs_slider = widgets.IntSlider(
        value=num_pairs, min=1, max=2 * dim, description="N", continuous_update=False
    )
    rate_slider = widgets.FloatSlider(
        value=delta_rate,
        min=0.05,
        max=1.95,
        step=0.05,
        description="beta",
        continuous_update=False,
    )
    sweeps_slider = widgets.IntSlider(
        value=sweeps, min=1, max=max_sweeps, description="sweeps", continuous_update=False
    )
    keys_menu = widgets.Dropdown(options=CAPACITY_KEYS, value=key_features, description="keys")
    output = widgets.Output()

    def current_result() -> CapacityResult:
        setting = (dim_slider.value, rate_slider.value, sweeps_slider.value, keys_menu.value)
        if setting not in results:
            d, rate, passes, features = setting
            results[setting] = capacity_experiment(
                d,
                2 * d,
                trials=trials,
                sweeps=passes,
                delta_rate=rate,
                key_features=features,
                seed=seed,
            )
        return results[setting]

    shown = {}

    def redraw(change: dict | None = None) -> None:
        shown["figure"] = draw_capacity(current_result(), pairs_slider.value)
        with output:
            output.clear_output(wait=True)
            display(shown["figure"])

    def change_dim(change: dict) -> None:
        # A smaller maximum may clamp N, whose own observer then redraws.
        previous_pairs = pairs_slider.value
        pairs_slider.max = 2 * change["new"]
        if pairs_slider.value == previous_pairs:
            redraw()

    dim_slider.observe(change_dim, names="value")
    for control in (pairs_slider, rate_slider, sweeps_slider, keys_menu):
        control.observe(redraw, names="value")
    redraw()
    return still_box(
        [
            widgets.HBox([dim_slider, pairs_slider]),
            widgets.HBox([rate_slider, sweeps_slider, keys_menu]),
            output,
        ],
        lambda: figure_png(shown["figure"]),
    )
