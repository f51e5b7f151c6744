"""Time the fast-weight explorer: one slider move (redraw only) and one new selection.

Builds the explorer of notebook 5 (a ``delta_cde`` with 4 heads of size 8 on the
shipped JapaneseVowels test split; weights do not change drawing costs, so the model
is untrained), warms it up, then moves the time slider over every point of the
series' dense time grid ``--rounds`` times and prints the median and 90th percentile
per move. A move is what the kernel does when the slider in the browser moves: map
the time to a grid point, update the artists, blit, encode the PNG. Sending the image to the browser is not
timed. Target: under 100 ms per move on 2 CPU cores.

    python benchmarks/widget_redraw.py [--rounds 5] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import fwplab
from fwplab.data import load_dataset
from fwplab.widgets.explorer import FastWeightExplorer


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="passes over the series")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's own choice)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    dataset = load_dataset("japanese-vowels")
    torch.manual_seed(0)
    model = fwplab.build_model("delta_cde", dataset.input_channels, dataset.num_classes,
                               hidden_channels=32, num_heads=4)
    test = dataset.test
    start = time.perf_counter()
    explorer = FastWeightExplorer(model, test.x, test.times, test.lengths, test.y,
                                  dataset.class_names)
    opened = time.perf_counter() - start
    times = explorer.trace.times.tolist()
    explorer.time_slider.value = times[1]  # warm-up: first blit captures the background

    moves = []
    for _ in range(args.rounds):
        for t in times[::-1] + times[1:]:
            start = time.perf_counter()
            explorer.time_slider.value = t
            moves.append(time.perf_counter() - start)

    selections = {}
    for name, selector, value in (("rule (new)", explorer.rule_selector, "hebb"),
                                  ("rule (cached)", explorer.rule_selector, "delta"),
                                  ("series (new)", explorer.series_selector, 1),
                                  ("missing rate (new)", explorer.missing_selector, 0.5),
                                  ("head", explorer.head_selector, 2)):
        start = time.perf_counter()
        selector.value = value
        selections[name] = time.perf_counter() - start

    print(f"torch threads: {torch.get_num_threads()}, {int(test.lengths[0])} time points, "
          f"{len(times)} dense grid points, "
          f"image {len(explorer.image.value) / 1024:.0f} KiB")
    print(f"open explorer (first trace + full draw): {opened * 1e3:.0f} ms")
    print(f"slider move: median {statistics.median(moves) * 1e3:.1f} ms, "
          f"p90 {percentile(moves, 0.9) * 1e3:.1f} ms over {len(moves)} moves "
          f"(target < 100 ms)")
    for name, seconds in selections.items():
        print(f"select {name}: {seconds * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
