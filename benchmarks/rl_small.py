"""The small RL preset for every world model and seed, faithful and corrected: the
learning curves notebook 9 plots (benchmarks/results/rl_small_cpu.json).

    python benchmarks/rl_small.py                      # 3 models x 3 seeds x 2 modes
    python benchmarks/rl_small.py --seeds 1 --modes faithful --out /tmp/x.json

Each run is ``fwplab.rl.train_agent(rl_preset("small", model=..., seed=...))`` on one
thread; runs go to ``--jobs`` processes at a time. Results depend only on the settings
and seeds, not on the machine's speed; seconds are recorded for information.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

MODELS = ("latent-ode", "latent-ode-rfwp", "latent-ode-cfwp")
CORRECTED = dict(keep_best_world_model=True, evaluate_planner=True, discount_at="start",
                 planning_reward="seconds")


def _run(cell: tuple[str, int, str]) -> dict:
    import torch

    from fwplab.rl import rl_preset, train_agent

    torch.set_num_threads(1)
    model, seed, mode = cell
    config = rl_preset("small", model=model, seed=seed,
                       **(CORRECTED if mode == "corrected" else {}))
    start = time.perf_counter()
    metrics = train_agent(config, progress=False)
    return {"model": model, "seed": seed, "mode": mode, "wall_seconds": time.perf_counter() - start,
            "parameters": metrics["parameters"], "decisions": metrics["decisions"],
            "eval_return": metrics["eval_return_curve"],
            "eval_return_planner": [r.get("eval_return_planner") for r in metrics["history"]],
            "world_model_test_mse": metrics["world_model_test_mse_curve"],
            "world_model_passes": [r["world_model"]["passes"] for r in metrics["history"]
                                   if "world_model" in r]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--modes", default="faithful,corrected")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" /
                                             "rl_small_cpu.json"))
    args = parser.parse_args()
    cells = [(m, int(s), mode) for mode in args.modes.split(",") for m in args.models.split(",")
             for s in args.seeds.split(",")]
    with ProcessPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(_run, cells))
    for run in runs:
        print(f"{run['mode']:>9} {run['model']:>16} seed {run['seed']}: final return "
              f"{run['eval_return'][-1]:8.2f}, world-model test MSE "
              f"{run['world_model_test_mse'][0]:.3f} -> {run['world_model_test_mse'][-1]:.3f}, "
              f"{run['wall_seconds']:.0f} s")
    document = {"preset": "small", "machine": platform.processor() or platform.machine(),
                "runs": runs}
    Path(args.out).write_text(json.dumps(document, indent=1) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
