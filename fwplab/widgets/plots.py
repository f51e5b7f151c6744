"""Plotting functions for fast weight trajectories, shared by notebooks 3 and 5 and the explorer.

Every function draws into axes it is given (or a new :class:`matplotlib.figure.Figure`)
and takes tensors on any device and dtype; nothing here imports pyplot, so the
figures render with any backend (the inline backend, ipympl or a PNG file).

The quantities drawn, for a fast weight ``W(t)`` of shape ``(d, d)``::

    heatmap:          W(t)_ij, colour scale symmetric around 0
    norm:             ||W(t)||_F = sqrt(sum_ij W(t)_ij^2)
    singular values:  s_1(t) >= ... >= s_d(t)  (W(t) = U diag(s) V^T)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.lines import Line2D
from torch import Tensor

__all__ = [
    "HEATMAP_COLORMAP",
    "weight_heatmap",
    "symmetric_limit",
    "draw_weight_snapshots",
    "draw_norm_curve",
    "draw_singular_value_curves",
    "mark_time_points",
    "draw_control_path",
    "draw_parameter_scaling",
    "draw_learning_curves",
    "draw_accuracy_by_missing_rate",
]

#: Diverging colour map of every fast weight heatmap (blue negative, red positive).
HEATMAP_COLORMAP = "RdBu_r"


def _numpy(tensor: Tensor):
    return tensor.detach().cpu().double().numpy()


def symmetric_limit(weights: Tensor) -> float:
    """Colour limit ``max |W|`` over all of ``weights`` (any shape); 1 when they are all 0."""
    limit = float(weights.detach().abs().max())
    return limit if limit > 0 else 1.0


def weight_heatmap(ax: Axes, weight: Tensor, limit: float) -> AxesImage:
    """Draw one fast weight ``(d_v, d_k)`` as a heatmap with colour range ``[-limit, limit]``.

    Rows are value components, columns key components (``W`` maps keys to values).

    Args:
        ax: the axes to draw into.
        weight: ``(d_v, d_k)``.
        limit: the colour range's half width, ``> 0``.

    Returns:
        The image artist; update it with ``image.set_data(new_weight)``.
    """
    if weight.dim() != 2:
        raise ValueError(f"weight: expected shape (d_v, d_k), got {tuple(weight.shape)}")
    image = ax.imshow(
        _numpy(weight), cmap=HEATMAP_COLORMAP, vmin=-limit, vmax=limit, interpolation="nearest"
    )
    ax.set_xlabel("key component")
    ax.set_ylabel("value component")
    return image


def draw_weight_snapshots(
    rows: Mapping[str, Tensor],
    times: Tensor,
    indices: Sequence[int],
    figure: Figure | None = None,
) -> Figure:
    """Heatmaps of fast weights at chosen observation times, one row per trajectory.

    All heatmaps of a row share one colour scale, so growth over time is visible.

    Args:
        rows: row label -> one head's trajectory ``(time, d_v, d_k)``.
        times: observation times ``(time,)``.
        indices: observation indices to show, one column each.
        figure: a figure to draw into (cleared first); a new one when ``None``.

    Returns:
        The figure.
    """
    if not rows or not indices:
        raise ValueError("rows and indices: expected at least one trajectory and one index")
    for label, weights in rows.items():
        if weights.dim() != 3 or weights.shape[0] != times.shape[0]:
            raise ValueError(
                f"rows[{label!r}]: expected shape ({times.shape[0]}, d_v, d_k), "
                f"got {tuple(weights.shape)}"
            )
    if figure is None:
        figure = Figure(figsize=(2.3 * len(indices) + 1, 2.4 * len(rows)), layout="constrained")
    figure.clear()
    grid = figure.subplots(len(rows), len(indices), squeeze=False)
    for axes_row, (label, weights) in zip(grid, rows.items(), strict=True):
        limit = symmetric_limit(weights)
        for ax, index in zip(axes_row, indices, strict=True):
            image = weight_heatmap(ax, weights[index], limit)
            ax.set_title(f"t = {float(times[index]):.2f}", fontsize="medium")
            ax.set(xticks=[], yticks=[], xlabel="", ylabel="")
        axes_row[0].set_ylabel(label)
        figure.colorbar(image, ax=list(axes_row), shrink=0.8)
    return figure


def draw_norm_curve(ax: Axes, times: Tensor, norms: Tensor, label: str | None = None) -> Line2D:
    """Plot ``||W(t)||_F`` against time.

    Args:
        ax: the axes to draw into.
        times: ``(time,)``.
        norms: ``(time,)``.
        label: legend label.

    Returns:
        The line.
    """
    (line,) = ax.plot(_numpy(times), _numpy(norms), label=label)
    ax.set_xlabel("time t")
    ax.set_ylabel("$\\|W(t)\\|_F$")
    return line


def draw_singular_value_curves(
    ax: Axes, times: Tensor, singular_values: Tensor
) -> list[Line2D]:
    """Plot every singular value ``s_i(t)`` against time, largest darkest.

    Args:
        ax: the axes to draw into.
        times: ``(time,)``.
        singular_values: ``(time, d)``, sorted in decreasing order along ``d``.

    Returns:
        One line per singular value.
    """
    if singular_values.dim() != 2 or singular_values.shape[0] != times.shape[0]:
        raise ValueError(
            f"singular_values: expected shape ({times.shape[0]}, d), "
            f"got {tuple(singular_values.shape)}"
        )
    count = singular_values.shape[1]
    x = _numpy(times)
    values = _numpy(singular_values)
    lines = []
    for i in range(count):
        shade = 0.15 + 0.7 * i / max(count - 1, 1)
        (line,) = ax.plot(x, values[:, i], color=(shade, shade, 0.85 - 0.5 * shade), lw=1.2)
        lines.append(line)
    ax.set_xlabel("time t")
    ax.set_ylabel("singular values of W(t)")
    return lines


def mark_time_points(ax: Axes, times: Tensor, heights: Tensor, observed: Tensor) -> list[Line2D]:
    """Mark a series' time points on a curve: filled where observed, hollow where dropped.

    Args:
        ax: the axes holding the curve.
        times: the time points ``(n,)``.
        heights: the curve's value at each time point ``(n,)``.
        observed: ``(n,)`` booleans, True where the time point carries data.

    Returns:
        The markers: one line of observed points, then one of dropped points if any
        (labelled "observed" and "dropped" for a legend).
    """
    if not times.shape == heights.shape == observed.shape or times.dim() != 1:
        raise ValueError(f"times, heights, observed: expected three equal shapes (n,), got "
                         f"{tuple(times.shape)}, {tuple(heights.shape)}, {tuple(observed.shape)}")
    x, y, kept = _numpy(times), _numpy(heights), observed.detach().cpu().numpy().astype(bool)
    (marks,) = ax.plot(x[kept], y[kept], "o", color="k", ms=3.5, label="observed")
    lines = [marks]
    if not kept.all():
        (dropped,) = ax.plot(x[~kept], y[~kept], "o", mfc="none", mec="0.45", ms=4.5,
                             label="dropped")
        lines.append(dropped)
    return lines


def draw_control_path(
    times: Tensor,
    observations: Tensor,
    fine_times: Tensor,
    path_values: Tensor,
    path_derivatives: Tensor,
    channel_names: Sequence[str],
    figure: Figure | None = None,
) -> Figure:
    """Observations, the interpolated path ``X(t)`` and its derivative ``dX/dt``, per channel.

    Args:
        times: observation times ``(time,)``.
        observations: ``(time, channels)``, NaN where missing.
        fine_times: evaluation times of the path ``(points,)``.
        path_values: ``X(fine_times)`` of shape ``(points, channels)``.
        path_derivatives: ``dX/dt(fine_times)`` of shape ``(points, channels)``.
        channel_names: one name per channel.
        figure: a figure to draw into (cleared first); a new one when ``None``.

    Returns:
        The figure: top row path and observations, bottom row the derivative.
    """
    channels = observations.shape[-1]
    if len(channel_names) != channels:
        raise ValueError(
            f"channel_names: expected {channels} names, got {len(channel_names)}"
        )
    if figure is None:
        figure = Figure(figsize=(3.6 * channels, 4.6), layout="constrained")
    figure.clear()
    grid = figure.subplots(2, channels, squeeze=False, sharex=True)
    t, fine = _numpy(times), _numpy(fine_times)
    for c, name in enumerate(channel_names):
        top, bottom = grid[0, c], grid[1, c]
        top.plot(fine, _numpy(path_values[:, c]), color="tab:blue", label="path X(t)")
        top.plot(t, _numpy(observations[:, c]), "o", color="k", ms=3, label="observations")
        top.set_title(name)
        bottom.plot(fine, _numpy(path_derivatives[:, c]), color="tab:red")
        bottom.set_xlabel("time t")
    grid[0, 0].legend(fontsize="small")
    grid[0, 0].set_ylabel("X(t)")
    grid[1, 0].set_ylabel("dX/dt(t)")
    return figure


def draw_parameter_scaling(
    sizes: Mapping[str, Tensor],
    parameters: Mapping[str, Tensor],
    xlabel: str,
    ax: Axes | None = None,
) -> Axes:
    """Log-log plot of parameter counts against a size, one line per model.

    Args:
        sizes: model label -> sizes ``(n,)``.
        parameters: model label -> parameter counts ``(n,)``.
        xlabel: what the size is.
        ax: axes to draw into; a new figure's when ``None``.

    Returns:
        The axes.
    """
    if ax is None:
        ax = Figure(figsize=(5, 4), layout="constrained").subplots()
    for label, size in sizes.items():
        ax.loglog(_numpy(size), _numpy(parameters[label]), "o-", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("trainable parameters")
    ax.legend(fontsize="small")
    return ax


def draw_learning_curves(
    curves: Mapping[str, Sequence[float]],
    ylabel: str,
    ax: Axes | None = None,
) -> Axes:
    """Plot one value per epoch (e.g. ``History.curve("train_loss")``), one line per model.

    Epochs are numbered from 1, as in :class:`fwplab.train.EpochRecord`.

    Args:
        curves: model label -> one finite value per epoch (at least one epoch).
        ylabel: what the values are.
        ax: axes to draw into; a new figure's when ``None``.

    Returns:
        The axes.
    """
    if not curves:
        raise ValueError("curves: expected at least one model's curve, got none")
    for label, values in curves.items():
        if len(values) == 0 or any(value is None for value in values):
            raise ValueError(f"curves[{label!r}]: expected one number per epoch, got {list(values)}")
    if ax is None:
        ax = Figure(figsize=(5, 4), layout="constrained").subplots()
    for label, values in curves.items():
        ax.plot(range(1, len(values) + 1), [float(value) for value in values], "o-", ms=3,
                label=label)
    ax.xaxis.get_major_locator().set_params(integer=True)  # whole epochs only
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize="small")
    return ax


def draw_accuracy_by_missing_rate(
    missing_rates: Sequence[float],
    accuracies: Mapping[str, Sequence[float]],
    chance: float | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Test accuracy against the fraction of dropped observations, one line per model.

    Args:
        missing_rates: fractions in ``[0, 1)`` of observations dropped, ``(n,)``.
        accuracies: model label -> accuracy at each missing rate, ``(n,)``.
        chance: accuracy of guessing (``1 / classes``), drawn as a dashed line; None draws none.
        ax: axes to draw into; a new figure's when ``None``.

    Returns:
        The axes (x axis in percent).
    """
    if not accuracies:
        raise ValueError("accuracies: expected at least one model's accuracies, got none")
    for label, values in accuracies.items():
        if len(values) != len(missing_rates):
            raise ValueError(f"accuracies[{label!r}]: expected {len(missing_rates)} values (one "
                             f"per missing rate), got {len(values)}")
    if ax is None:
        ax = Figure(figsize=(5, 4), layout="constrained").subplots()
    percent = [100 * float(rate) for rate in missing_rates]
    for label, values in accuracies.items():
        ax.plot(percent, [float(value) for value in values], "o-", label=label)
    if chance is not None:
        ax.axhline(chance, color="gray", ls="--", lw=1, label="chance")
    ax.set_xlabel("observations dropped (%)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize="small")
    return ax
