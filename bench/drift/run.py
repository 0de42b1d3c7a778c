"""Drift detection on Fashion-MNIST with the int8 reference interpreter (= the device's telemetry).

    .venv/bin/python bench/drift/run.py [--run runs/fm] [--out runs/fm-drift] [--seeds 10]
                                        [--shift-at 2000] [--length 3000] [--sweep-seeds 5]
                                        [--alpha A] [--orders 5000] [--json bench/drift/results.json]

If RUN does not exist it is trained first (`mcuprune train --dataset fashion-mnist --arch cnn
--epochs 10 --out RUN`). The script quantizes the run (compiler.quantize_run), trains the monitor
QSAE on 5,000 training images and fits the detectors on 5,000 other training images
(drift_offline.prepare / build_detector), then measures:
  - false alarms over the 10,000 unshifted test images: one pass per seed, each in its own order,
    and the probability that one pass raises a false alarm, over ORDERS more random orderings;
  - for each scenario of scenarios.SCENARIOS and each seed, a stream of LENGTH test images shifted
    from SHIFT_AT on: detection delay, false alarms before the shift, accuracy before/after;
  - the same for a sweep of milder severities (fewer seeds), to show where detection stops.
It writes OUT/qsae (the int8 monitor QSAE, ir.save_quant_model), OUT/monitor.json (the fitted
monitor's state) and the JSON report, and prints the Markdown tables of bench/drift/README.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from mcuprune.controller.drift_offline import (
    DetectorSpec,
    build_detector,
    evaluate_false_alarms,
    evaluate_scenario,
    prepare,
)
from mcuprune.controller.scenarios import SCENARIOS, Scenario
from mcuprune.model.ir import save_quant_model
from mcuprune.target.compile import quantize_run
from mcuprune.train.datasets import load_dataset

SWEEP = (
    Scenario("contrast 0.7", "brightness_contrast", {"contrast": 0.7}),
    Scenario("brightness +15", "brightness_contrast", {"brightness": 15.0}),
    Scenario("brightness -30", "brightness_contrast", {"brightness": -30.0}),
    Scenario("noise sigma 10", "gaussian_noise", {"sigma": 10.0}),
    Scenario("noise sigma 15", "gaussian_noise", {"sigma": 15.0}),
    Scenario("rotation 5 deg", "rotation", {"degrees": 5.0}),
    Scenario("rotation 10 deg", "rotation", {"degrees": 10.0}),
    Scenario("prior 80% on 0,2,4,6", "class_prior", {"classes": (0, 2, 4, 6), "weight": 0.8}),
    Scenario("prior 50% on 1", "class_prior", {"classes": (1,), "weight": 0.5}),
    Scenario("prior 50% on 3", "class_prior", {"classes": (3,), "weight": 0.5}),
    Scenario("prior 30% on 8", "class_prior", {"classes": (8,), "weight": 0.3}),
)


def ensure_run(run: Path) -> None:
    if (run / "checkpoint.pt").exists():
        return
    cmd = [sys.executable, "-m", "mcuprune", "train", "--dataset", "fashion-mnist", "--arch", "cnn",
           "--epochs", "10", "--out", str(run)]
    print("training:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def _delays(values: list) -> str:
    return " ".join("–" if d is None else str(d) for d in values)


def _params(scenario: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in scenario["params"].items())


DETECTOR_TITLES = {"recon_error": "PH(recon err) alone", "histogram": "hist test alone", "top1": "class test alone"}


def scenario_table(rows: list[dict]) -> str:
    names = list(rows[0]["detector_delays"])
    lines = ["| scenario | params | delay per seed (samples) | max | ≤ 300 | "
             + " | ".join(DETECTOR_TITLES.get(n, n) for n in names)
             + " | FA before shift | acc before → after | recon err before → after |",
             "|---|---|---|---:|---:|" + "---|" * len(names) + "---:|---|---|"]
    for r in rows:
        det = r["detector_delays"]
        lines.append(
            f"| {r['scenario']['name']} | {_params(r['scenario'])} | {_delays(r['delays'])} | "
            f"{'–' if r['max_delay'] is None else r['max_delay']} | {r['detected_within_budget']}/{len(r['seeds'])} | "
            + " | ".join(_delays(det[n]) for n in names)
            + f" | {r['false_alarms_before_shift']} | {r['accuracy_before']:.3f} → {r['accuracy_after']:.3f} | "
            f"{r['recon_error_mean_before']:.0f} → {r['recon_error_mean_after']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=Path("runs/fm"))
    ap.add_argument("--out", type=Path, default=Path("runs/fm-drift"))
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--sweep-seeds", type=int, default=5, help="0 skips the severity sweep")
    ap.add_argument("--alpha", type=float, default=None,
                    help="false alarms expected per 10,000 samples for each window test (default: DetectorSpec's)")
    ap.add_argument("--orders", type=int, default=5000, help="random orderings for the false-alarm probability")
    ap.add_argument("--shift-at", type=int, default=2000)
    ap.add_argument("--length", type=int, default=3000)
    ap.add_argument("--json", type=Path, default=Path("bench/drift/results.json"))
    args = ap.parse_args()

    t0 = time.time()
    ensure_run(args.run)
    model = quantize_run(args.run)
    dataset = load_dataset(model.meta["dataset"])
    setup = prepare(model, dataset)
    spec = DetectorSpec()
    if args.alpha is not None:
        spec = replace(spec, window=replace(spec.window, alpha=args.alpha),
                       predicted_class=replace(spec.predicted_class, alpha=args.alpha))
    monitor = build_detector(setup.reference, model.num_classes, spec)
    args.out.mkdir(parents=True, exist_ok=True)
    save_quant_model(setup.qsae_model, args.out / "qsae")
    (args.out / "monitor.json").write_text(json.dumps(monitor.state()) + "\n")
    print(f"setup: {time.time() - t0:.0f} s; thresholds {monitor.event()['thresholds']}", flush=True)

    seeds = list(range(args.seeds))
    fa = evaluate_false_alarms(setup, monitor, dataset, seeds, orders=args.orders)
    print(f"false alarms on {fa['samples']} unshifted test images, per pass: {fa['false_alarms']} "
          f"(peak statistic / threshold {fa['peak_statistic_over_threshold']}); "
          f"probability per pass: {fa.get('probability_per_pass')}", flush=True)
    main_rows = []
    for scenario in SCENARIOS.values():
        main_rows.append(evaluate_scenario(setup, monitor, dataset, scenario, args.shift_at, args.length, seeds))
        print(f"{scenario.name}: delays {main_rows[-1]['delays']} ({time.time() - t0:.0f} s)", flush=True)
    sweep_rows = []
    for scenario in SWEEP if args.sweep_seeds else ():
        sweep_rows.append(evaluate_scenario(setup, monitor, dataset, scenario, args.shift_at, args.length,
                                            list(range(args.sweep_seeds))))
        print(f"{scenario.name}: delays {sweep_rows[-1]['delays']} ({time.time() - t0:.0f} s)", flush=True)

    report = {
        "run": str(args.run),
        "model": model.name,
        "qsae": {"hidden": setup.qsae_model.layers[0].out_shape[0], **setup.qsae_model.meta},
        "monitor_spec": spec.to_dict(),
        "thresholds": monitor.event()["thresholds"],
        "false_alarms": fa,
        "scenarios": main_rows,
        "sweep": sweep_rows,
        "seconds": round(time.time() - t0),
        "command": " ".join(["python", "bench/drift/run.py", *sys.argv[1:]]),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print()
    print(scenario_table(main_rows))
    if sweep_rows:
        print()
        print(scenario_table(sweep_rows))
    print(f"\n{report['seconds']} s")


if __name__ == "__main__":
    main()
