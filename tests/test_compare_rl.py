"""``fwplab compare --envs``: the RL grid (world models x environments x seeds) with a fake
``fwplab rl`` that writes realistic ``metrics.json`` files (the tables, mean +- std, the
plot, reuse, resume, failures, refusals) and one real cell end to end."""

import csv
import json
import statistics
from pathlib import Path

import pytest

from fwplab.cli import build_parser, main
from fwplab.data import DATASET_NAMES
from fwplab.models import MODELS
from fwplab.compare import RL_RESULT_FIELDS, run
from test_train import one_thread  # noqa: F401 (autouse fixture)

_MODELS = ("latent-ode", "latent-ode-rfwp", "latent-ode-cfwp")


def _write_run(folder: Path, env: str, model: str, seed: int, epochs: int, done: int) -> None:
    """A ``metrics.json`` shaped like fwplab rl's after ``done`` of ``epochs`` epochs: model
    ``k`` of :data:`_MODELS` returns ``seed (k + 1) + epoch``, its world-model test MSE is
    ``1 / (seed + epoch + k)``; epoch e took ``e + 1`` seconds."""
    k = _MODELS.index(model)
    returns = [float(seed * (k + 1) + epoch) for epoch in range(done + 1)]
    mse = [1.0 / (seed + epoch + k) for epoch in range(1, done + 1)]
    history = [{"epoch": epoch, "eval_return": returns[epoch], "seconds": epoch + 1.0,
                "decisions": 600 + 200 * epoch} for epoch in range(done + 1)]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "checkpoint.pt").write_bytes(b"fake")
    (folder / "metrics.json").write_text(json.dumps({
        "kind": "rl", "env": env, "model": model, "seed": seed,
        "config": {"env": env, "model": model, "seed": seed, "epochs": epochs},
        "epochs_done": done, "decisions": 600 + 200 * done, "episodes": 3 + done,
        "parameters": 1000 * (k + 1), "eval_return_curve": returns,
        "world_model_test_mse_curve": mse, "history": history}))


class FakeRL:
    """Stands for :func:`fwplab.cli.main` on ``rl`` argv: finishes the run in one call (or
    returns ``statuses[seed]`` and writes nothing); records every argv."""

    def __init__(self, statuses=None):
        self.calls: list[list[str]] = []
        self.statuses = statuses or {}

    def __call__(self, argv: list[str]) -> int:
        self.calls.append(argv)
        args = build_parser().parse_args(argv)  # a valid fwplab rl command line
        assert args.command == "rl" and args.no_progress
        if args.resume:
            config = json.loads((Path(args.resume) / "metrics.json").read_text())["config"]
            folder, env, model, seed, epochs = (Path(args.resume), config["env"],
                                                config["model"], config["seed"],
                                                config["epochs"])
        else:
            folder, env, model, seed, epochs = (Path(args.out), args.env, args.model,
                                                args.seed, args.epochs or 6)
        if seed in self.statuses:
            return self.statuses[seed]
        _write_run(folder, env, model, seed, epochs, epochs)
        print("fwplab rl: a line the grid's bar hides")
        return 0


def _grid(out: Path, fake: FakeRL, *flags: str, models="latent-ode,latent-ode-rfwp",
          envs="swimmer,hopper", seeds="1,2,3") -> int:
    args = build_parser().parse_args(["compare", "--models", models, "--envs", envs,
                                      "--seeds", seeds, "--out", str(out), "--no-progress",
                                      *flags])
    return run(args, fake, DATASET_NAMES, list(MODELS))


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv") as handle:
        return list(csv.DictReader(handle))


def test_every_cell_runs_once_with_the_rl_flags_and_the_tables_hold_mean_and_std(
        tmp_path, capsys):
    out, fake = tmp_path / "cmp", FakeRL()
    assert _grid(out, fake, "--epochs", "2", "--corrected", "--rl-preset", "small",
                 "--device", "cpu") == 0
    assert len(fake.calls) == 12
    folder = out / "runs" / "swimmer-latent-ode-seed1"
    assert fake.calls[0] == ["rl", "--preset", "small", "--env", "swimmer", "--model",
                             "latent-ode", "--seed", "1", "--out", str(folder),
                             "--no-progress", "--epochs", "2", "--corrected", "--device", "cpu"]
    rows = _rows(out)
    assert list(rows[0]) == list(RL_RESULT_FIELDS)
    assert {(r["env"], r["model"], r["seed"]) for r in rows} == {
        (e, m, s) for e in ("swimmer", "hopper") for m in _MODELS[:2] for s in "123"}
    first = rows[0]
    assert (first["final_eval_return"], first["best_eval_return"], first["epochs"],
            first["decisions"], first["seconds"], first["parameters"]) == (
        "3.0", "3.0", "2", "1000", "6.0", "1000")  # seed 1 + 2 epochs; 1 + 2 + 3 seconds
    assert float(first["final_world_model_test_mse"]) == pytest.approx(1 / 3)
    table = (out / "results.md").read_text().splitlines()
    assert table[0] == ("| env | model | final evaluation return (mean +- std) | final "
                        "world-model test MSE (mean +- std) | parameters | seeds |")
    assert len(table) == 2 + 4
    # latent-ode: final returns 3, 4, 5 over seeds 1-3; MSE 1/3, 1/4, 1/5
    mse = [1 / 3, 1 / 4, 1 / 5]
    assert table[2] == (f"| swimmer | latent-ode | 4.00 +- 1.00 | {statistics.fmean(mse):.4g} "
                        f"+- {statistics.stdev(mse):.4g} | 1,000 | 3 |")
    assert table[3].startswith("| swimmer | latent-ode-rfwp | 6.00 +- 2.00 |")  # 4, 6, 8
    assert table[4].startswith("| hopper | latent-ode | ")
    assert (out / "results.png").stat().st_size > 5000
    printed = capsys.readouterr().out
    assert "a line the grid's bar hides" not in printed
    assert printed.endswith(f"12 runs; wrote {out / 'results.csv'}, {out / 'results.md'}, "
                            f"{out / 'results.png'}\n")


def test_finished_cells_are_read_back_and_an_unfinished_one_is_resumed(tmp_path):
    out = tmp_path / "cmp"
    assert _grid(out, FakeRL(), "--epochs", "2", envs="swimmer", models="latent-ode") == 0
    finished = out / "runs" / "swimmer-latent-ode-seed1"
    stamp = (finished / "metrics.json").stat().st_mtime_ns
    interrupted = out / "runs" / "swimmer-latent-ode-seed3"
    _write_run(interrupted, "swimmer", "latent-ode", 3, epochs=2, done=1)  # after epoch 1
    fake = FakeRL()
    assert _grid(out, fake, "--epochs", "2", envs="swimmer", models="latent-ode") == 0
    assert fake.calls == [["rl", "--resume", str(interrupted), "--no-progress"]]
    assert (finished / "metrics.json").stat().st_mtime_ns == stamp
    assert [row["epochs"] for row in _rows(out)] == ["2", "2", "2"]


def test_a_failed_cell_is_one_line_and_the_others_are_tabulated(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert _grid(out, FakeRL({2: 1}), envs="swimmer", models="latent-ode") == 1
    printed = capsys.readouterr().out.splitlines()
    failed = [line for line in printed if line.startswith("fwplab compare: failed")]
    folder = out / "runs" / "swimmer-latent-ode-seed2"
    assert failed == [f"fwplab compare: failed: swimmer / latent-ode / seed 2: fwplab rl "
                      f"--preset small --env swimmer --model latent-ode --seed 2 --out {folder} "
                      f"--no-progress ended with status 1"]
    assert [row["seed"] for row in _rows(out)] == ["1", "3"]
    assert "| swimmer | latent-ode | 8.00 +- 1.41 |" in "\n".join(printed)  # 1 + 6, 3 + 6


def test_an_interrupted_cell_stops_the_grid(tmp_path, capsys):
    fake = FakeRL({2: 130})
    assert _grid(tmp_path / "cmp", fake, envs="swimmer", models="latent-ode") == 130
    assert [call[call.index("--seed") + 1] for call in fake.calls] == ["1", "2"]
    printed = capsys.readouterr()
    assert printed.err == ("fwplab compare: stopped by SIGINT with 1 of 3 cells finished (kept); "
                           "run the same command again to finish the grid\n")
    assert not (tmp_path / "cmp" / "results.csv").exists()


def test_a_cell_trained_with_other_settings_is_refused_or_retrained(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert _grid(out, FakeRL(), "--epochs", "2", envs="swimmer", models="latent-ode",
                 seeds="1") == 0
    fake = FakeRL()
    with pytest.raises(ValueError) as refused:
        _grid(out, fake, "--epochs", "3", "--corrected", envs="swimmer", models="latent-ode",
              seeds="1")
    folder = out / "runs" / "swimmer-latent-ode-seed1"
    assert fake.calls == []
    assert str(refused.value) == (
        f"{folder} was trained with other settings than asked: --epochs 2 (asked 3); "
        "--corrected not given (asked on); pass --retrain-mismatched to delete and retrain "
        "such cells, or choose another --out")
    assert _grid(out, fake, "--epochs", "3", "--corrected", "--retrain-mismatched",
                 envs="swimmer", models="latent-ode", seeds="1") == 0
    assert [row["epochs"] for row in _rows(out)] == ["3"]
    assert fake.calls[0][-3:] == ["--epochs", "3", "--corrected"]


@pytest.mark.parametrize("flags, message", [
    (dict(seeds="1,2,1"), "--seeds: 1 named more than once (1,2,1); name each once"),
    (dict(models="latent-ode,latent-ode"), "--models: latent-ode named more than once"),
])
def test_repeated_seeds_or_models_are_refused(tmp_path, flags, message):
    fake = FakeRL()
    with pytest.raises(ValueError) as refused:
        _grid(tmp_path / "cmp", fake, **flags)
    assert message in str(refused.value) and "\n" not in str(refused.value)
    assert fake.calls == [] and not (tmp_path / "cmp").exists()


def test_a_corrupt_metrics_file_is_one_failure_and_the_grid_goes_on(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert _grid(out, FakeRL(), envs="swimmer", models="latent-ode") == 0
    corrupt = out / "runs" / "swimmer-latent-ode-seed2" / "metrics.json"
    corrupt.write_text('{"kind": "rl", "epochs_do')
    capsys.readouterr()
    fake = FakeRL()
    assert _grid(out, fake, envs="swimmer", models="latent-ode") == 1
    assert fake.calls == []
    failed = [line for line in capsys.readouterr().out.splitlines() if "failed" in line]
    assert len(failed) == 1 and failed[0].startswith(
        f"fwplab compare: failed: swimmer / latent-ode / seed 2: {corrupt}: unreadable metrics")
    assert [row["seed"] for row in _rows(out)] == ["1", "3"]


@pytest.mark.parametrize("argv, message", [
    (["--models", "latent-ode"], "expected exactly one of --data"),
    (["--models", "latent-ode", "--envs", "swimmer", "--data", "spirals"],
     "expected exactly one of --data"),
    (["--models", "gru,latent-ode,nope", "--envs", "swimmer"],
     "--models: with --envs expected world models (latent-ode, latent-ode-rfwp, "
     "latent-ode-cfwp), got gru, nope"),
    (["--models", "latent-ode", "--envs", "swimmer,windy_grid,pong"],
     "--envs: expected continuous-action environments (hopper, swimmer, half_cheetah), got "
     "windy_grid, pong"),
    (["--models", "latent-ode", "--envs", "swimmer,swimmer"],
     "--envs: swimmer named more than once (swimmer,swimmer)"),
    (["--models", "latent-ode", "--envs", "swimmer", "--epochs", "0"],
     "--epochs: expected a positive integer, got '0'"),
    (["--models", "latent-ode", "--envs", "swimmer", "--missing-rate", "0.5"],
     "--missing-rate: only for the --data grid"),
    (["--models", "gru", "--data", "spirals", "--rl-preset", "small", "--corrected"],
     "--rl-preset, --corrected: only for the --envs grid"),
])
def test_bad_arguments_are_one_line_and_write_nothing(tmp_path, capsys, argv, message):
    out = tmp_path / "x"
    assert main(["compare", *argv, "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("fwplab compare: error:") and message in err and "\n" not in err
    assert not out.exists()


def test_a_real_cell_end_to_end(tmp_path, capsys):
    """``fwplab rl`` itself through fwplab.cli.main (about 20 s on 2 cores)."""
    out = tmp_path / "cmp"
    argv = ["compare", "--models", "latent-ode", "--envs", "swimmer", "--seeds", "1",
            "--rl-preset", "small", "--epochs", "1", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    [row] = _rows(out)
    metrics = json.loads((Path(row["folder"]) / "metrics.json").read_text())
    assert (metrics["env"], metrics["model"], metrics["seed"]) == ("swimmer", "latent-ode", 1)
    assert metrics["epochs_done"] == metrics["config"]["epochs"] == int(row["epochs"]) == 1
    assert float(row["final_eval_return"]) == pytest.approx(metrics["eval_return_curve"][-1])
    assert float(row["final_world_model_test_mse"]) == pytest.approx(
        metrics["world_model_test_mse_curve"][-1])
    assert int(row["decisions"]) == metrics["decisions"] > 0
    assert (out / "results.png").stat().st_size > 5000
    capsys.readouterr()
    assert main(argv) == 0  # read back, not rerun
    assert "fwplab compare: 1 runs; wrote" in capsys.readouterr().out
