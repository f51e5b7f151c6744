"""Notebook 4's short JapaneseVowels grid over seeds, with and without the time channel
(benchmarks/results/nb4_seed_grid_cpu.json).

    python benchmarks/nb4_seed_grid.py                         # seeds 0-4, both variants
    python benchmarks/nb4_seed_grid.py --seeds 0 --time-channel on --out /tmp/x.json

Every run is notebook 4's: hidden size 32 (4 heads for the FWPs), 4 epochs, batches of
64, learning rate 1e-2, on one thread. Seed ``s`` seeds what the notebook's ``SEED`` does:
which observations are dropped, the initial weights (``torch.manual_seed``) and ``fit``.
Results depend only on the settings and seeds, not on the machine's speed; seconds are
recorded for information.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

MODELS = ("delta_cde", "hebb_cde", "oja_cde", "ncde")
RATES = (0.0, 0.3, 0.5, 0.7)
SETTINGS = dict(hidden_channels=32, num_heads=4, epochs=4, batch_size=64, lr=1e-2)


def run_cell(seed: int, time_channel: bool) -> list[dict]:
    """The notebook's 16 runs (four rates, four models) for one seed and time-channel choice."""
    import torch

    from fwplab import build_model
    from fwplab.data import load_dataset
    from fwplab.train import fit

    torch.set_num_threads(1)
    runs = []
    for rate in RATES:
        dataset = load_dataset("japanese-vowels", missing_rate=rate, seed=seed,
                               time_channel=time_channel)
        for name in MODELS:
            torch.manual_seed(seed)
            options = {"hidden_channels": SETTINGS["hidden_channels"]}
            if name != "ncde":
                options["num_heads"] = SETTINGS["num_heads"]
            model = build_model(name, dataset.input_channels, dataset.num_classes, **options)
            start = time.perf_counter()
            history = fit(model, dataset, epochs=SETTINGS["epochs"],
                          batch_size=SETTINGS["batch_size"], lr=SETTINGS["lr"], seed=seed,
                          progress=False)
            runs.append({"model": name, "missing_rate": rate, "seed": seed,
                         "time_channel": time_channel,
                         "test_accuracy": history.test["accuracy"],
                         "wall_seconds": time.perf_counter() - start})
    return runs


def _run(cell: tuple[int, bool]) -> list[dict]:
    return run_cell(*cell)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--time-channel", default="on,off")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" /
                                             "nb4_seed_grid_cpu.json"))
    args = parser.parse_args()
    cells = [(int(seed), choice == "on") for choice in args.time_channel.split(",")
             for seed in args.seeds.split(",")]
    with ProcessPoolExecutor(args.jobs) as pool:
        runs = [run for cell_runs in pool.map(_run, cells) for run in cell_runs]
    for run in runs:
        print(f"time channel {'on ' if run['time_channel'] else 'off'} seed {run['seed']} "
              f"{run['missing_rate']:.0%} {run['model']:>9}: {run['test_accuracy']:.3f}")
    document = {"settings": SETTINGS, "rates": list(RATES), "models": list(MODELS),
                "machine": platform.processor() or platform.machine(), "runs": runs}
    Path(args.out).write_text(json.dumps(document, indent=1) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
