"""What the match step recognises in 200-image captures of each drift scenario, and in shifts of other
strengths (checked after the features and MATCH_RATIO were fixed): Fashion-MNIST, no QEMU.

    .venv/bin/python bench/drift/shift_match_check.py --firmware FWDIR [--seeds 0 1 2] [--captured 200]

Prints one Markdown row per scenario and seed: what was recognised, the ratio of its distance to the
better of "none" and "affine" (taken below shift_match.MATCH_RATIO), and those two baselines.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mcuprune.controller.adapt import dequantize_model
from mcuprune.controller.scenarios import SCENARIOS, Scenario, make_stream
from mcuprune.controller.shift_match import identify_shift
from mcuprune.target.compile import load_firmware_dir
from mcuprune.train.datasets import load_dataset

OTHER_STRENGTHS = (
    Scenario("noise sigma 10", "gaussian_noise", {"sigma": 10.0}),
    Scenario("rotation -8", "rotation", {"degrees": -8.0}),
    Scenario("darker by 20", "brightness_contrast", {"brightness": -20.0}),
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--firmware", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--captured", type=int, default=200)
    args = ap.parse_args()
    model = dequantize_model(load_firmware_dir(Path(args.firmware)).model)
    ds = load_dataset("fashion-mnist")
    print("| shift | seed | recognised | ratio | none | affine |\n|---|---:|---|---:|---:|---:|")
    for scenario in (Scenario("none", "none"), *SCENARIOS.values(), *OTHER_STRENGTHS):
        for seed in args.seeds:
            x, _, _ = make_stream(ds, scenario, 0, args.captured, seed)
            _, report = identify_shift(model, x, ds.x_train, seed)
            found = report["recognised"]
            name = "—" if found is None else f"{found['family']} {found['strength']:g}"
            print(f"| {scenario.name} | {seed} | {name} | {report['ratio']:.3f} | {report['baselines']['none']:.4f} | "
                  f"{report['baselines']['affine']:.4f} |", flush=True)


if __name__ == "__main__":
    main()
