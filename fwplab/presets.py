"""Named training configurations: the defaults of ``fwplab train`` and the paper's runs.

A preset fixes the dataset (and how it is loaded), the model and its
hyperparameters, and the training settings; ``fwplab train --preset NAME`` uses
it and any explicit flag overrides it. :func:`preset_command` writes the command
line of a preset.

Translating the official commands (IDSIA/neuraldiffeq-fwp: the READMEs of
``speech_and_physionet/`` and ``eigenworms/`` and the code they run; the Speech
Commands and sepsis code derives from Kidger et al.'s NeuralCDE):

- the official learning rate is ``base_lr * batch_size / 32``: ``--base_lr 5e-5``
  at batch 1024 trains at ``1.6e-3``; the presets store the effective rate;
- ``--grad_scale`` multiplies the gradient of the final linear layer (a backward
  hook): :attr:`fwplab.train.TrainConfig.grad_scale`;
- Adam is AdamW with ``weight_decay=0``; no gradient clipping (``grad_clip=None``);
- Speech Commands and sepsis: the official code measures the training loss every
  10 epochs and divides the learning rate by 10 after three measurements in a row
  without improvement, so the presets use ``schedule="plateau"`` with
  ``plateau_patience=30`` epochs;
- gradients come from the continuous adjoint (``adjoint=True``), as in the paper;
- the sepsis BCE ``pos_weight 10`` on one logit becomes class weights ``(1, 10)``
  on two logits.

Each paper preset lists what it does not reproduce in :attr:`Preset.differences`.

Data without a preset of its own (``--train/--test`` pairs, named datasets other than
the presets') gets settings that adapt to it: :func:`adaptive_data_options` and
:func:`adaptive_train_settings` decide them from the training split, and every
decision comes with the reason that is printed and stored in ``metrics.json``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

__all__ = ["Preset", "ReportedResult", "PRESETS", "DEFAULT_PRESET", "get_preset",
           "preset_argv", "preset_command", "preset_for_dataset", "Choice",
           "adaptive_data_options", "adaptive_train_settings", "adaptive_budget",
           "adaptive_augmentation", "adaptive_ensemble", "adaptive_retry", "step_cost"]


@dataclass(frozen=True)
class ReportedResult:
    """A published number a preset aims at.

    Attributes:
        metric: what was measured, e.g. ``"test accuracy (%)"``.
        mean: the published mean over seeds.
        std: the published standard deviation over seeds.
        per_seed: the published value of each seed (empty when not published),
            in the unit of ``metric``.
        source: where the number is published.
    """

    metric: str
    mean: float
    std: float
    per_seed: tuple[float, ...] = ()
    source: str = ""


@dataclass(frozen=True)
class Preset:
    """A named configuration of ``fwplab train``.

    Attributes:
        name: what ``--preset`` takes.
        description: one line for ``fwplab presets``.
        dataset: a name of :func:`fwplab.data.load_dataset`.
        model: a name of :data:`fwplab.MODELS`.
        data: keyword arguments of :func:`fwplab.data.load_dataset` (besides
            ``missing_rate`` and ``seed``).
        model_options: keyword arguments of :func:`fwplab.build_model`.
        train: fields of :class:`fwplab.train.TrainConfig`.
        source: where the configuration comes from.
        paper_table: the table of the paper the run belongs to (empty for fwplab's own).
        reported: the published result of the official run, when one is published
            next to its command.
        differences: what the preset does not reproduce of the official run, one
            sentence each.
    """

    name: str
    description: str
    dataset: str
    model: str
    data: dict[str, Any] = field(default_factory=dict)
    model_options: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    paper_table: str = ""
    reported: Optional[ReportedResult] = None
    differences: tuple[str, ...] = ()


_OFFICIAL = "IDSIA/neuraldiffeq-fwp"
#: Batch size the official code's learning rates are quoted for (lr = base_lr * batch / 32).
_OFFICIAL_LR_BATCH = 32
#: Epochs between two of the official code's training-loss measurements (Speech Commands, sepsis).
_OFFICIAL_EPOCHS_PER_MEASUREMENT = 10
#: Measurements without improvement after which the official code divides the learning rate.
_OFFICIAL_PLATEAU_MEASUREMENTS = 3

#: Settings shared by the Speech Commands and sepsis runs (Kidger et al.'s training loop).
_KIDGER_TRAINING = dict(
    batch_size=1024, weight_decay=0.0, grad_clip=None, grad_scale=100.0, schedule="plateau",
    plateau_patience=_OFFICIAL_EPOCHS_PER_MEASUREMENT * _OFFICIAL_PLATEAU_MEASUREMENTS)

_NORM_PENALTY = ("the official loss adds 0.03 times the sum of the (unsquared) L2 norms of "
                 "the parameter tensors; fwplab has no such penalty")
_KIDGER_STOPPING = ("the official loop stops after 100 epochs without a better training loss "
                    "or training accuracy and checks the validation accuracy only every 10 "
                    "epochs; fwplab trains every epoch of the budget and checks the validation "
                    "split after each")
_SEPSIS_DIFFERENCES = (
    _NORM_PENALTY,
    "the official initial fast weight is computed from the static features (age, gender, "
    "units, admission time) by a small network; fwplab starts from the update term at t0 "
    "and leaves the static features unused",
    "the official loss is a binary cross-entropy on one logit with pos_weight 10; fwplab "
    "uses a two-logit cross-entropy with class weights (1, 10), which averages over the "
    "weights rather than over the patients",
    "as in the official code the epoch with the best validation accuracy is kept, although "
    "the reported metric is the AUROC",
    _KIDGER_STOPPING,
)

PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset(
            name="japanese-vowels",
            description="the default: delta_cde on the shipped JapaneseVowels, a few CPU minutes",
            dataset="japanese-vowels",
            model="delta_cde",
            model_options=dict(hidden_channels=64, num_heads=16),
            train=dict(epochs=20, batch_size=16, lr=1e-3, weight_decay=0.01, schedule="cosine"),
            source="tuned on 2 CPU cores: AdamW, cosine schedule, plain backprop",
        ),
        Preset(
            name="speech-commands",
            description="paper Table 1: delta_cde on Speech Commands (GPU)",
            dataset="speech-commands",
            model="delta_cde",
            model_options=dict(hidden_channels=80, num_heads=4, ff_channels=320, adjoint=True),
            train=dict(epochs=500, lr=5e-5 * 1024 / _OFFICIAL_LR_BATCH, **_KIDGER_TRAINING),
            source=f"{_OFFICIAL} speech_and_physionet/README.md (--hidden_channels 80 "
                   "--num_heads 4 --trafo_ff_dim 320 --batch_size 1024 --base_lr 5e-05 "
                   "--grad_scale 100 --max_epochs 500)",
            paper_table="Table 1",
            differences=(_NORM_PENALTY, _KIDGER_STOPPING),
        ),
        Preset(
            name="sepsis-no-oi",
            description="paper Table 1: delta_cde on PhysioNet 2019 sepsis, no observational "
                        "intensity (GPU)",
            dataset="sepsis",
            model="delta_cde",
            data=dict(intensity=False),
            model_options=dict(hidden_channels=160, num_heads=32, v_layernorm=True, adjoint=True),
            train=dict(epochs=200, lr=4e-5 * 1024 / _OFFICIAL_LR_BATCH,
                       class_weights=(1.0, 10.0), **_KIDGER_TRAINING),
            source=f"{_OFFICIAL} speech_and_physionet/README.md, camera-ready version "
                   "(--hidden_channels 160 --num_heads 32 --batch_size 1024 --base_lr 4e-05 "
                   "--grad_scale 100 --cde_use_v_laynorm --max_epochs 200)",
            paper_table="Table 1",
            differences=_SEPSIS_DIFFERENCES,
        ),
        Preset(
            name="sepsis-oi",
            description="paper Table 1: delta_cde on PhysioNet 2019 sepsis with observational "
                        "intensity (GPU)",
            dataset="sepsis",
            model="delta_cde",
            data=dict(intensity=True),
            model_options=dict(hidden_channels=80, num_heads=16, ff_channels=64, post_tanh=True,
                               adjoint=True),
            train=dict(epochs=200, lr=3e-5 * 1024 / _OFFICIAL_LR_BATCH,
                       class_weights=(1.0, 10.0), **_KIDGER_TRAINING),
            source=f"{_OFFICIAL} speech_and_physionet/README.md, camera-ready version "
                   "(--use_sepsis_intensity --hidden_channels 80 --num_heads 16 --trafo_ff_dim 64 "
                   "--batch_size 1024 --base_lr 3e-05 --delta_ode_post_tahn --grad_scale 100 "
                   "--max_epochs 200)",
            paper_table="Table 1",
            differences=_SEPSIS_DIFFERENCES,
        ),
        Preset(
            name="eigenworms",
            description="paper Table 2: delta rule FWP on EigenWorms depth-1 log-signatures, "
                        "step 4 (GPU)",
            dataset="eigenworms",
            model="delta_cde",
            data=dict(logsig_depth=1, logsig_step=4),
            model_options=dict(hidden_channels=128, num_heads=16, ff_channels=64,
                               interpolation="linear", post_tanh=True, adjoint=True),
            train=dict(epochs=1000, batch_size=1024, lr=1e-4, weight_decay=0.0, grad_clip=None,
                       schedule="plateau", plateau_patience=15, patience=60),
            source=f"{_OFFICIAL} eigenworms/README.md (--depth 1 --step 4 --hidden_dim 128 "
                   "--num_heads 16 --trafo_ff_dim 64 --lr 1e-4 --adjoint --learning_rule delta "
                   "--model_type logsig-ode-fwp --final_layer_scaling 10)",
            paper_table="Table 2",
            reported=ReportedResult(
                metric="test accuracy (%)", mean=91.8, std=3.4,
                per_seed=(89.74358974358975, 87.17948717948718, 97.43589743589743,
                          92.30769230769231, 92.30769230769231),
                source=f"{_OFFICIAL} eigenworms/README.md (seeds 1-5)"),
            differences=(
                "the official model is a delta-rule ODE-FWP whose keys, values and rates all "
                "come from the current window's log-signature; fwplab's closest model is "
                "delta_cde on the piecewise-linear log-signature path, whose keys and rates "
                "come from dX/dt (on each window, that window's log-signature divided by the "
                "window length) and whose values come from the path X itself",
                "--final_layer_scaling 10 multiplies the final layer's learning rate by 10; "
                "fwplab has one learning rate for all parameters (a gradient factor would not "
                "do the same: Adam divides it out)",
                "the official learning rate drops when the validation loss stops improving; "
                "fwplab's plateau schedule watches the training loss",
            ),
        ),
    )
}

#: What ``fwplab train`` uses when neither ``--preset`` nor a dataset option is given.
DEFAULT_PRESET = "japanese-vowels"


def get_preset(name: str) -> Preset:
    """The preset called ``name``.

    Raises:
        ValueError: unknown name, listing the known ones.
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}") from None


def preset_argv(name: str, device: Optional[str] = "cuda", **flags: Any) -> list[str]:
    """The arguments of ``fwplab`` (after the program name) that train preset ``name``.

    Args:
        name: a preset name (checked).
        device: value of ``--device``; None leaves the flag out.
        **flags: further ``fwplab train`` flags, ``epochs=5`` for ``--epochs 5``
            (underscores become dashes); ``True`` and ``False`` write ``--flag`` and
            ``--no-flag``.

    Returns:
        e.g. ``["train", "--preset", "speech-commands", "--device", "cuda"]``.
    """
    get_preset(name)
    argv = ["train", "--preset", name]
    if device is not None:
        argv += ["--device", device]
    for key, value in flags.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is False:
            argv.append("--no-" + flag[2:])
        else:
            argv += [flag, str(value)]
    return argv


def preset_command(name: str, device: Optional[str] = "cuda", **flags: Any) -> str:
    """The shell command that trains preset ``name``: ``"fwplab " + " ".join(preset_argv(...))``."""
    return " ".join(["fwplab", *preset_argv(name, device, **flags)])


def preset_for_dataset(dataset: str) -> Optional[Preset]:
    """The first preset trained on the named dataset, or None (then settings adapt)."""
    return next((preset for preset in PRESETS.values() if preset.dataset == dataset), None)


# ------------------------------------------------------------------ adaptive settings
#: Series longer than this are summarised by log-signature windows (speed and richer keys).
LONG_SERIES = 128
#: Number of log-signature windows a long series is cut into (about).
TARGET_WINDOWS = 64
#: Depth of the log-signature of each window (increments and signed areas).
ADAPTIVE_LOGSIG_DEPTH = 2
#: Depth for a long univariate series with its delayed copies (the increments only)...
DELAYED_LOGSIG_DEPTH = 1
#: ... when its windows span at most this many steps (longer windows keep the areas).
SHORT_WINDOW = 16
#: Spread of the series' amplitudes (90th over 10th percentile of their standard
#: deviations) above which every series is standardised on its own.
SCALE_SPREAD_LIMIT = 10.0
#: Cycles over the training grid of the sine and cosine channels a short univariate
#: series gets (see :func:`fwplab.data.with_time_features`).
TIME_FEATURE_CYCLES = (1, 2)
#: Observations averaged by the smoothing of a short univariate series whose increments
#: are mostly noise (see :func:`fwplab.data.moving_average`).
SMOOTHING_WIDTH = 5
#: Leave-one-out nearest-class-mean accuracy of the training series (see
#: :func:`fwplab.data.transforms.nearest_class_mean_accuracy`) from which a long
#: univariate series of one length gets its steps standardised over the training series
#: as a channel beside it.
POSITION_MEAN_ACCURACY = 0.8
#: Delayed copies of a long univariate series added as channels (lags of 1, 2, ... windows).
DELAY_COPIES = 2
#: Passes over the training series an adaptive run plans (within the step bounds below).
PLANNED_PASSES = 75
#: Fewest and most optimisation steps of one adaptive model.
STEP_RANGE = (400, 2000)
#: Series-steps (series in the batch times solver steps) that cost as much as the fixed
#: overhead of one optimisation step (measured on CPU: about 2.5 ms of overhead and 4 us
#: per series-step), so one step costs ``1 + batch * length / STEP_OVERHEAD`` units.
STEP_OVERHEAD = 600
#: Work units (see :data:`STEP_OVERHEAD`) of a whole adaptive run, every ensemble member
#: together: about 3 minutes at 6 ms per unit (2 busy CPU cores).
WORK_BUDGET = 30000
#: Smallest number of training series of every class for a validation split to be carved.
MIN_SERIES_PER_CLASS = 5
#: Fewest validation series worth carving: fewer rank epochs by noise, and the series
#: they take from training cost more than the selection gains.
MIN_VAL_SERIES = 40
#: Fraction of each class held out for validation (model selection and early stopping).
ADAPTIVE_VAL_FRACTION = 0.2
#: Batch sizes an adaptive run chooses between: about a tenth of the training series.
BATCH_RANGE = (8, 32)
#: Share of the optimisation steps spent warming the learning rate up.
WARMUP_SHARE = 0.05
#: Share of the planned epochs without a better validation score that stops the run.
PATIENCE_SHARE = 0.3
#: Fewest epochs of patience.
MIN_PATIENCE = 10
#: Learning-rate factor of the one new start of an adapted run that diverged.
RETRY_LR_FACTOR = 0.5
#: Most models of an adapted run's ensemble (their class probabilities are averaged).
ENSEMBLE_MEMBERS = 5
#: Training series per class that warped copies top the smallest class up to (about).
AUGMENT_PER_CLASS = 20
#: Most warped copies of every training series; long series (log-signature windows) with
#: enough series to carve a validation split get this many instead of the split.
MAX_WARPED_COPIES = 4


#: Data options an adapted run records in ``run.data.options`` and
#: :func:`fwplab.adaptive.load_data` applies after loading (a resumed run and
#: ``fwplab predict`` replay them).
DATA_OPTIONS = ("intensity", "val_fraction", "logsig_depth", "logsig_step", "delays",
                "augment", "window_time", "standardise_each_series", "time_features",
                "smoothing", "standardise_positions", "logsig_level")


@dataclass(frozen=True)
class Choice:
    """One setting chosen for the data, and why (printed once, stored in ``metrics.json``)."""

    name: str
    value: Any
    reason: str

    def line(self) -> str:
        """``name = value (reason)``."""
        return f"{self.name} = {self.value} ({self.reason})"


def adaptive_data_options(longest: int, scale_spread: Sequence[float],
                          increment_autocorrelation: Optional[Sequence[float]] = None,
                          class_mean_accuracy: Optional[float] = None
                          ) -> tuple[dict[str, Any], list[Choice]]:
    """Data options for series of ``longest`` steps whose data channels' amplitudes
    spread by ``scale_spread`` (see :func:`fwplab.data.series_scale_spread`).

    When the amplitudes of the training series of some channel spread by more than
    :data:`SCALE_SPREAD_LIMIT` (90th over 10th percentile of the series' standard
    deviations), every series is standardised on its own and its log-scale and level
    kept as channels (:func:`fwplab.data.standardise_each_series`; nothing is lost, so
    classes that differ by level stay apart). One standardisation per
    channel would leave the many small series near 0: on PLAID (electrical
    appliances' currents, amplitudes from 1e-5 to 100) training accuracy stayed
    near 0.5. Flat series do not count in the spread (:func:`fwplab.data.series_scale_spread`):
    a tenth of constant series made it infinite, and data whose classes differed by
    level alone were standardised series by series, their level dropped (a generated set,
    levels 0 and 3, a tenth flat, 5 passes: test accuracy 0.600, now 1.000).

    A series longer than :data:`LONG_SERIES` steps is replaced by the depth-2
    log-signature of windows of ``step = ceil(longest / TARGET_WINDOWS)`` increments::

        window j:  (X(t_{j+1}) - X(t_j),  1/2 int (X - X(t_j)) (x) dX - transpose)

    so the solver takes about :data:`TARGET_WINDOWS` steps instead of ``longest``
    (the training time shrinks by ``step``), and the keys see the signed areas
    between channels (with the time channel: how the values move within a window).
    Time is counted in windows (``window_time``: the time channel and the grid are
    divided by ``step``): counted in steps, it reached 1343 on PLAID and 2000 on PigCVP,
    where freshly drawn weights gave non-finite logits. The data channels' path starts at
    each series' first value (``logsig_level``), not at 0: summed window increments alone
    tell apart no two series that differ by a constant, and the slow net reads the path's
    values (InsectEPGRegularTrain, 601 steps, whose classes lie apart by level: test
    accuracy 0.663 from 0, 1.000 from the first value; the default command, seed 0).

    A long univariate series first gets :data:`DELAY_COPIES` delayed copies of itself
    as extra channels (a delay embedding), lagged by multiples of ``step``::

        x(t),  x(t - step),  x(t - 2 step),  ...      (x(t0) before the start)

    With one data channel the keys (computed from the window increments) vary along
    the time and value directions only; with the copies, increments and signed areas
    describe the path's shape over the last few windows. (Short univariate series get no
    delayed copies: on ItalyPowerDemand, 24 steps, copies lagged by 1 and 2 steps
    lowered the test accuracy from 0.955 to 0.874.)

    Such a series (one data channel and its copies) takes the depth-1 log-signature
    (:data:`DELAYED_LOGSIG_DEPTH`): the window increments of the series and of its copies,
    without the signed areas. The areas between the series and its copies had increments
    up to 30 times those of the areas with time, and dropping them raised single models
    (30 passes, seed 0 unless said) on long UCR sets: Beef 0.467 -> 0.600 (seed 1: 0.500 ->
    0.633), Lightning7 0.548 -> 0.644 (seed 1: 0.658 -> 0.589), ArrowHead 0.583 -> 0.617,
    OSULeaf 0.545 -> 0.500; then on sets not used for the choice, Lightning2 0.590 ->
    0.689, FaceFour 0.523 -> 0.659, OliveOil and Herring unchanged (0.400, 0.594). Neither
    more windows (128: Lightning7 0.548 both ways, Beef 0.467 -> 0.567 with depth 2 and
    0.400 without copies) nor time features nor dropping the copies (Lightning7 +0.12 over
    two seeds, but ArrowHead -0.11, OSULeaf -0.09) helped across the sets. Those windows
    spanned 4 to 10 steps. Windows of more than :data:`SHORT_WINDOW` steps (series of more
    than 1,024 steps) keep :data:`ADAPTIVE_LOGSIG_DEPTH`: the increment of a long window
    alone loses the shape inside it, which the areas keep (PigCVP, 2,000 steps, windows of
    32: ensemble 0.077 at depth 1 against 0.240 at depth 2). A multivariate long series
    keeps :data:`ADAPTIVE_LOGSIG_DEPTH` too.

    A long univariate series of one length in every split whose training series are told
    apart by their nearest class mean, each left out in turn, at least
    :data:`POSITION_MEAN_ACCURACY` of the time (``class_mean_accuracy``, see
    :func:`fwplab.data.transforms.nearest_class_mean_accuracy`) gets, beside itself, its
    steps standardised over the training series as a channel
    (:func:`fwplab.data.transforms.standardise_positions`, before the delayed copies, which
    copy it too): its classes differ by small deviations at fixed positions (spectra,
    outlines), which the windows' increments otherwise drown in the shape every class
    shares (OliveOil: the default's training accuracy stayed 0.45). Replacing the series
    raised single models (30 passes) on OliveOil (0.400 -> 0.633) and DiatomSizeReduction
    (0.660 -> 0.755) but lowered Lightning7 (0.644 -> 0.548) and Beef (0.600 -> 0.500); the
    threshold lies between the diagnosis sets that fell or where shapes move (Lightning7
    0.53, Beef 0.23, ArrowHead 0.69, OSULeaf 0.38) and those that rose (OliveOil 0.87,
    DiatomSizeReduction 0.94). With the default command, the channel beside the series beat
    replacing it on those two (OliveOil 0.600 -> 0.833, DiatomSizeReduction 0.817 -> 0.895;
    0.400 and 0.676 without either). Short series are left as they are (their time
    features tell positions apart).

    A short univariate series gets time features instead: the sine and cosine of
    :data:`TIME_FEATURE_CYCLES` cycles over the training grid as channels
    (:func:`fwplab.data.with_time_features`). Its keys, computed from ``dX/dt``, see only
    the series' slope otherwise (the time channel's derivative is constant), so they
    cannot tell where in the series a value was written; on a simulated
    Cylinder-Bell-Funnel set (128 steps, 30 training series) single models rose from
    0.68-0.71 to 0.82-0.84 test accuracy.

    A short univariate series whose increments are mostly noise (the median lag-1
    autocorrelation of its increments below 0; white noise gives -0.5, smooth series
    near 1) is first replaced by its moving average over :data:`SMOOTHING_WIDTH`
    observations (:func:`fwplab.data.moving_average`): the keys come from the path's
    derivative, which such noise dominates. On the simulated Cylinder-Bell-Funnel set
    (noise of std 1 on steps of about 6) one model with time features rose from 0.82 to
    0.96. Long series are left as they are: their log-signature windows sum the
    increments of a window already.

    Args:
        longest: the longest training series, in time steps.
        scale_spread: one spread per data channel (time and intensity channels excluded).
        increment_autocorrelation: one per data channel
            (:func:`fwplab.data.increment_autocorrelation`); None: no smoothing.
        class_mean_accuracy: the nearest-class-mean accuracy of a univariate set of
            equal-length series; None: series of unequal lengths or several channels (no
            standardisation by step).

    Returns:
        ``({"standardise_each_series", "standardise_positions", "smoothing",
        "time_features", "delays", "logsig_depth", "logsig_step", "window_time"}`` or a
        part of it, the choices made).
    """
    spread = max(scale_spread)
    options: dict[str, Any] = {}
    if spread > SCALE_SPREAD_LIMIT:
        options["standardise_each_series"] = True
        choices = [Choice("scale", "each series its own, log-scale and level kept as channels",
                          f"the series' amplitudes spread {spread:.3g}-fold (90th over 10th "
                          f"percentile, > {SCALE_SPREAD_LIMIT:g})")]
    else:
        choices = [Choice("scale", "one per channel", f"the series' amplitudes spread "
                          f"{spread:.3g}-fold (<= {SCALE_SPREAD_LIMIT:g})")]
    if longest <= LONG_SERIES:
        choices.append(Choice("log-signature", "off", f"series of at most {longest} steps are "
                              f"short enough (<= {LONG_SERIES})"))
        if len(scale_spread) == 1 and increment_autocorrelation is not None:
            correlation = increment_autocorrelation[0]
            if correlation < 0:
                options["smoothing"] = SMOOTHING_WIDTH
                choices.append(Choice(
                    "smoothing", f"moving average of {SMOOTHING_WIDTH} observations",
                    f"the increments' lag-1 autocorrelation is {correlation:.2f} (< 0): noise "
                    "dominates the path's derivative, from which the keys come"))
        if len(scale_spread) == 1:
            options["time_features"] = list(TIME_FEATURE_CYCLES)
            choices.append(Choice(
                "time features", f"sine and cosine of {list(TIME_FEATURE_CYCLES)} cycles",
                "one series' slope is all the keys see of it (the time channel's derivative is "
                "constant); time features let them tell positions apart"))
        return options, choices
    if len(scale_spread) == 1 and class_mean_accuracy is None:
        choices.append(Choice("position scale", "off", "series of unequal lengths share no "
                              "positions to standardise over"))
    elif class_mean_accuracy is not None:
        fires = class_mean_accuracy >= POSITION_MEAN_ACCURACY
        if fires:
            options["standardise_positions"] = True
        choices.append(Choice(
            "position scale", "each step over the training series, beside the series"
            if fires else "off",
            f"the nearest class mean, each training series left out in turn, is right "
            f"{class_mean_accuracy:.3f} of the time ({'>=' if fires else '<'} "
            f"{POSITION_MEAN_ACCURACY:g})" + (": classes differ at fixed positions" if fires
                                              else "")))
    step = math.ceil(longest / TARGET_WINDOWS)
    depth = (DELAYED_LOGSIG_DEPTH if len(scale_spread) == 1 and step <= SHORT_WINDOW
             else ADAPTIVE_LOGSIG_DEPTH)
    options.update({"logsig_depth": depth, "logsig_step": step, "window_time": True,
                    "logsig_level": True})
    choices.append(Choice("log-signature", f"depth {depth}, windows of {step} "
                          f"steps", f"series of up to {longest} steps (> {LONG_SERIES}) become "
                          f"about {math.ceil(longest / step)} windows, one time unit each"
                          + (" (increments only: the series and its delayed copies)"
                             if depth == 1 else "") + "; the path starts at each series' "
                          "first value, so its level stays"))
    if len(scale_spread) == 1:
        options["delays"] = [step * copy for copy in range(1, DELAY_COPIES + 1)]
        choices.append(Choice("delayed copies", f"lags of {options['delays']} steps",
                              "one long series gives the window increments two directions "
                              "(time, value); delayed copies add its shape over the last "
                              f"{DELAY_COPIES} windows"))
    return options, choices


def adaptive_train_settings(class_counts: Sequence[int], augmented: bool = False
                            ) -> tuple[dict[str, Any], list[Choice]]:
    """Training settings for a training split with ``class_counts`` series per class.

    - validation: :data:`ADAPTIVE_VAL_FRACTION` of every class (stratified) when every
      class has at least :data:`MIN_SERIES_PER_CLASS` series (so each class is seen
      in both parts) and that makes at least :data:`MIN_VAL_SERIES` series and the
      training series have no warped copies (``augmented``: a copy of a validation
      series would train); otherwise none (all series train, the last epoch of the
      cosine schedule is kept) and the reason says which condition failed;
    - batch size: about a tenth of the training series, a power of two in
      :data:`BATCH_RANGE` (small data sets get more, noisier steps);
    - the best epoch by validation accuracy, ties broken by the lower loss.

    The epochs, warm-up and patience follow from the step budget
    (:func:`adaptive_budget`).

    Returns:
        ``(TrainConfig fields, choices)``.
    """
    counts = [int(count) for count in class_counts]
    if not counts or min(counts) < 1:
        raise ValueError(f"class_counts: expected a positive count per class, got {counts}")
    settings: dict[str, Any] = {"lr": 1e-3, "weight_decay": 0.01, "schedule": "cosine"}
    choices = []
    smallest = min(counts)
    held = sum(round(ADAPTIVE_VAL_FRACTION * count) for count in counts)
    if smallest >= MIN_SERIES_PER_CLASS and held >= MIN_VAL_SERIES and not augmented:
        settings.update(val_fraction=ADAPTIVE_VAL_FRACTION, monitor="accuracy_then_loss")
        choices.append(Choice("validation", f"{held} of {sum(counts)} series",
                              f"a stratified {ADAPTIVE_VAL_FRACTION:.0%} of every class selects "
                              "the best weights (accuracy, then loss) and stops early"))
    else:
        if smallest < MIN_SERIES_PER_CLASS:
            why = (f"no stratified split is possible: the smallest class has {smallest} "
                   f"training series (< {MIN_SERIES_PER_CLASS})")
        elif held < MIN_VAL_SERIES:
            why = (f"{ADAPTIVE_VAL_FRACTION:.0%} of {sum(counts)} series would be {held}, too "
                   f"few to choose the weights by (< {MIN_VAL_SERIES})")
        else:
            why = ("the training series have warped copies (a copy of a validation series "
                   "would train)")
        settings.update(val_fraction=0.0)
        choices.append(Choice("validation", "none",
                              f"{why}; trains on all series and keeps the final weights"))
    training = sum(counts) - (sum(round(ADAPTIVE_VAL_FRACTION * count) for count in counts)
                              if settings["val_fraction"] else 0)
    low, high = BATCH_RANGE
    batch = min(high, max(low, 2 ** round(math.log2(max(1, training) / 10))))
    settings["batch_size"] = batch
    choices.append(Choice("batch size", batch, f"about a tenth of the {training} training "
                          f"series, within {list(BATCH_RANGE)}"))
    return settings, choices


def step_cost(batch_size: int, length: int) -> float:
    """Work units of one optimisation step on ``batch_size`` series of ``length`` solver
    steps: ``1 + batch_size * length / STEP_OVERHEAD`` (the fixed overhead is one unit)."""
    return 1.0 + batch_size * length / STEP_OVERHEAD


def adaptive_budget(training_series: int, batch_size: int, length: int,
                    has_validation: bool, epochs: Optional[int] = None
                    ) -> tuple[dict[str, Any], list[Choice]]:
    """Epochs, warm-up and patience from the data alone (no clock: the same data and flags
    give the same budget on any machine).

    ::

        per_pass = ceil(training_series / batch_size)
        steps    = clamp(PLANNED_PASSES * per_pass, STEP_RANGE)
        steps    = min(steps, WORK_BUDGET / step_cost(batch_size, length))
        epochs   = max(1, round(steps / per_pass))

    so 20 series of 24 steps train 400-600 steps (seconds), and long or many series stop
    at :data:`STEP_RANGE`'s upper end or at what :data:`WORK_BUDGET` allows one model.
    Warm-up takes :data:`WARMUP_SHARE` of the steps; with a validation split,
    :data:`PATIENCE_SHARE` of the epochs without improvement (at least
    :data:`MIN_PATIENCE`) stop the run.

    Args:
        training_series: series in the training part (validation excluded).
        batch_size: series per step.
        length: solver steps of the longest training series (after log-signature windows).
        has_validation: whether a validation split is carved (then patience is set).
        epochs: epochs given by the user; None derives them from the budget.

    Returns:
        ``(TrainConfig fields, choices)``.
    """
    if min(training_series, batch_size, length) < 1:
        raise ValueError(f"training_series, batch_size, length: expected positive integers, "
                         f"got {training_series}, {batch_size} and {length}")
    per_pass = math.ceil(training_series / batch_size)
    if epochs is None:
        low, high = STEP_RANGE
        planned = min(high, max(low, PLANNED_PASSES * per_pass))
        affordable = int(WORK_BUDGET / step_cost(batch_size, length))
        steps = max(1, min(planned, affordable))
        epochs = max(1, round(steps / per_pass))
        why = (f"{PLANNED_PASSES} passes within {list(STEP_RANGE)} steps" if planned <= affordable
               else f"{affordable} steps of {batch_size} series of {length} solver steps fill "
                    f"the work budget")
    else:
        why = "given"
    total = epochs * per_pass
    settings: dict[str, Any] = {"epochs": epochs,
                                "warmup_steps": max(1, round(WARMUP_SHARE * total))}
    # Printed before training starts: the words say "passes" (an epoch is one pass).
    choices = [Choice("passes", epochs, f"{why}; {per_pass} steps per pass over the "
                      "training series"),
               Choice("warm-up", f"{settings['warmup_steps']} steps",
                      f"{WARMUP_SHARE:.0%} of {total} steps, then cosine decay")]
    if has_validation:
        settings["patience"] = max(MIN_PATIENCE, math.ceil(PATIENCE_SHARE * epochs))
        choices.append(Choice("patience", f"{settings['patience']} passes",
                              f"{PATIENCE_SHARE:.0%} of the passes (at least {MIN_PATIENCE}) "
                              "without a better validation score stop the run"))
    return settings, choices


def adaptive_augmentation(class_counts: Sequence[int], validation: bool,
                          long_series: bool = False) -> tuple[dict[str, Any], list[Choice]]:
    """Warped copies of every training series when some class has few, or when long
    series would otherwise carve a validation split.

    Each copy is the series under a random smooth time warp, its channels scaled by
    random factors near 1 (:func:`fwplab.data.warped_copies`): the model sees the class's
    shape at other speeds and amplitudes, as a warping distance would compare it. Copies
    of validation series would leak into training, so copies and a validation split
    exclude each other:

    - a validation split given (``validation``: by the user or the dataset): no copies;
    - ``long_series`` (summarised by log-signature windows) with enough series for
      :func:`adaptive_train_settings` to carve a validation split: :data:`MAX_WARPED_COPIES`
      copies train instead of the split. The copies regularise more than the split's
      selection and early stopping gain (single models, seeds 0 and 1: CricketX 0.567,
      0.626 with the split against 0.651, 0.672 with 4 copies; CricketY 0.536, 0.515
      against 0.646, 0.644 with 2 copies; CricketZ 0.582, 0.610 against 0.695, 0.697;
      PLAID 0.730, 0.717 against 0.758, 0.771);
    - otherwise, with fewer than :data:`AUGMENT_PER_CLASS` series in the smallest class:
      ``copies = min(MAX_WARPED_COPIES, ceil(AUGMENT_PER_CLASS / smallest) - 1)`` (more
      copies where classes already hold enough series did not help: Lightning2, 20 and
      40 series, 0.689, 0.672 without copies against 0.656, 0.607 with 2).

    Returns:
        ``({"augment": copies}`` or ``{}``, the choices made).
    """
    counts = [int(count) for count in class_counts]
    if not counts or min(counts) < 1:
        raise ValueError(f"class_counts: expected a positive count per class, got {counts}")
    smallest = min(counts)
    if validation:
        return {}, [Choice("warped copies", "none", "a validation split is given (copies of "
                           "its series would train)")]
    if adaptive_train_settings(counts)[0]["val_fraction"] > 0:
        if not long_series:
            return {}, [Choice("warped copies", "none", "a validation split is carved (copies "
                               "of its series would train)")]
        return {"augment": MAX_WARPED_COPIES}, [Choice(
            "warped copies", f"{MAX_WARPED_COPIES} of every training series",
            f"long series and {sum(counts)} training series: warped copies (random smooth time "
            "warps, channels scaled by random factors near 1) train instead of a validation "
            "split")]
    if smallest >= AUGMENT_PER_CLASS:
        return {}, [Choice("warped copies", "none", f"the smallest class has {smallest} "
                           f"training series (>= {AUGMENT_PER_CLASS})")]
    copies = min(MAX_WARPED_COPIES, math.ceil(AUGMENT_PER_CLASS / smallest) - 1)
    return {"augment": copies}, [Choice(
        "warped copies", f"{copies} of every training series",
        f"the smallest class has {smallest} training series (< {AUGMENT_PER_CLASS}); each copy "
        "is the series under a random smooth time warp, its channels scaled by random factors "
        "near 1")]


def adaptive_ensemble(steps: int, batch_size: int, length: int,
                      members: Optional[int] = None) -> tuple[int, Choice]:
    """How many models an adapted run trains and averages, from the data alone.

    Small data sets train fast and vary much from one seed to the next (the weights,
    the batches and, with a validation split, which series validate); the average of
    the class probabilities of models trained with seeds ``seed, seed + 1, ...`` varies
    less. As many as :data:`WORK_BUDGET` holds, at most :data:`ENSEMBLE_MEMBERS`::

        members = clamp(floor(WORK_BUDGET / (steps * step_cost(batch_size, length))),
                        1, ENSEMBLE_MEMBERS)

    Args:
        steps: optimisation steps of one model (epochs times steps per epoch).
        batch_size: series per step.
        length: solver steps of the longest training series.
        members: the count given by the user (``--ensemble``); None derives it.

    Returns:
        ``(members, the choice)``.
    """
    if members is not None:
        return members, Choice("ensemble", f"{members} model{'s' if members > 1 else ''}",
                               "given")
    if min(steps, batch_size, length) < 1:
        raise ValueError(f"steps, batch_size, length: expected positive integers, got "
                         f"{steps}, {batch_size} and {length}")
    work = steps * step_cost(batch_size, length)
    members = max(1, min(ENSEMBLE_MEMBERS, int(WORK_BUDGET / work)))
    if members == 1:
        why = (f"one model takes {work:.0f} work units: a second would pass the budget of "
               f"{WORK_BUDGET}")
    else:
        why = (f"one model takes {work:.0f} work units, so {members} fit the budget of "
               f"{WORK_BUDGET} (at most {ENSEMBLE_MEMBERS}); consecutive seeds (weights, "
               "batches, the validation split where there is one); their class probabilities "
               "are averaged")
    return members, Choice("ensemble", f"{members} model{'s' if members > 1 else ''}", why)


def adaptive_retry(lr: float, why: str) -> tuple[dict[str, Any], Choice]:
    """Settings of the one new start of an adapted run whose training diverged: new
    weights (the same seed) at :data:`RETRY_LR_FACTOR` times the learning rate.

    Args:
        lr: the peak learning rate of the run that diverged.
        why: where it diverged (e.g. ``"non-finite loss at epoch 23, step 10"``).

    Returns:
        ``(TrainConfig fields, the choice)``.
    """
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr: expected a positive learning rate, got {lr!r}")
    lower = lr * RETRY_LR_FACTOR
    return ({"lr": lower},
            Choice("learning rate", f"{lower:g}", f"training at {lr:g} diverged ({why}); "
                   "started again from new weights"))
