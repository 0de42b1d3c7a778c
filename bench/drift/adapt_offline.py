"""Offline adaptation after drift (mcuprune.controller.adapt) on Fashion-MNIST, int8 reference interpreter, no QEMU.

    .venv/bin/python bench/drift/adapt_offline.py [--run runs/prune-compare/qsae-26000-e3-s0]
        [--objective fastest] [--captured 500 1000] [--seeds 0 1 2] [--out bench/drift/results/adapt_offline]

RUN is a pruned Fashion-MNIST CNN run (its `pruned_from` parent is the re-pruning source). The
deployed model is compiler.quantize_run(RUN) with the weight formats `mcuprune compile` picks for a
DSP board (sparse.choose_formats, --objective). For each scenario (none, scenarios.SCENARIOS and two
extra brightness/contrast severities) and each seed, a stream of shifted test images is drawn
(scenarios.stream_indices, shifted from the first sample on; 10,000 images, 3,500 for the class-prior
change so that no image repeats). Its first max(--captured) images are the capture: adaptation
sees the first N of them, unlabeled. Accuracy is measured on the rest of the stream, and images
whose test index also occurs in the capture are dropped from it, so no adapted-on image is scored.

Per stream: int8 top-1 accuracy of the deployed model (static) and of the model adapted with each
step alone and with the step combinations; the adapt() wall time; and the alarms per 1,000 samples
that the drift monitor raises on the rest of the stream, for the deployed monitor (fitted on clean
training telemetry, as bench/drift/run.py does) and for each refitted monitor ("monitor" step).
Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from mcuprune.controller.adapt import DEFAULT_STEPS, STEPS, adapt
from mcuprune.controller.drift_offline import build_detector, clone, detector_alarms, prepare
from mcuprune.controller.drift_qsae import device_telemetry
from mcuprune.controller.scenarios import SCENARIOS, Scenario, stream_indices
from mcuprune.model.costs import choose_formats
from mcuprune.model.interpreter import run_s8
from mcuprune.target.compile import quantize_run
from mcuprune.train.datasets import load_dataset, to_int8

# name -> steps; the ones with "monitor" also give the refitted monitor's alarms
VARIANTS = {
    "input": ("input",),
    "calibrate": ("calibrate",),
    "reprune": ("reprune",),
    "input+calibrate": tuple(s for s in DEFAULT_STEPS if s != "monitor"),
    "default": DEFAULT_STEPS,
    "all": STEPS,
}
EXTRA = (
    Scenario("brightness -30", "brightness_contrast", {"brightness": -30.0}),
    Scenario("contrast 0.6", "brightness_contrast", {"contrast": 0.6}),
)
CLASS_PRIOR_LENGTH = 3500  # 80 % of it fits the 3,000 test images of the favoured classes


def stream(dataset, scenario: Scenario, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images, labels, test indices) of a stream shifted from its first sample."""
    length = CLASS_PRIOR_LENGTH if scenario.kind == "class_prior" else len(dataset.y_test)
    order = stream_indices(dataset.y_test, dataset.num_classes, scenario, 0, length, seed)
    x = scenario.transform(dataset.x_test[order], seed=seed + 1)
    return x, dataset.y_test[order], order


def accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    return float((run_s8(model, to_int8(x)).argmax(axis=1) == y).mean())


def alarms_per_1000(monitor, model, qsae_model, x: np.ndarray) -> tuple[float, dict]:
    mon = clone(monitor)
    alarms = detector_alarms(mon, device_telemetry(model, qsae_model, x))
    return round(1000.0 * len(alarms) / len(x), 3), dict(mon.detector_alarms)


def run_stream(args, dataset, deployed, formats, static_setup, static_monitor, scenario: Scenario, seed: int) -> dict:
    x, y, order = stream(dataset, scenario, seed)
    cap = max(args.captured)
    keep = ~np.isin(order, order[:cap])
    keep[:cap] = False
    x_eval, y_eval = x[keep], y[keep]
    static_alarms, static_detectors = alarms_per_1000(static_monitor, deployed, static_setup.qsae_model, x_eval)
    row = {"scenario": scenario.to_dict(), "seed": seed, "eval_samples": int(len(y_eval)),
           "static": round(accuracy(deployed, x_eval, y_eval), 4),
           "static_monitor_alarms_per_1000": static_alarms, "static_monitor_detector_alarms": static_detectors,
           "captured": {}}
    for n in args.captured:
        per_n: dict = {"accuracy": {}, "seconds": {}, "alarms_per_1000": {}, "detector_alarms": {}, "reports": {}}
        for name, steps in VARIANTS.items():
            result = adapt(args.run, deployed, formats, x[:n], steps=steps, seed=seed,
                           train_images=dataset.x_train, train_labels=dataset.y_train)
            per_n["seconds"][name] = result.report["seconds"]["total"]
            if name != "default":  # same model as input+calibrate (the monitor does not change it)
                per_n["accuracy"][name] = round(accuracy(result.model, x_eval, y_eval), 4)
            if "monitor" in steps:
                rate, detectors = alarms_per_1000(result.monitor, result.model, result.monitor_qsae.model, x_eval)
                per_n["alarms_per_1000"][name], per_n["detector_alarms"][name] = rate, detectors
            per_n["reports"][name] = {k: v for k, v in result.report.items() if k in ("input", "reprune", "layers",
                                                                                     "bytes_before", "bytes_after",
                                                                                     "seconds", "monitor")}
        row["captured"][str(n)] = per_n
        print(f"  {scenario.name} seed {seed} N={n}: static {row['static']:.4f} "
              + " ".join(f"{k} {v:.4f}" for k, v in per_n["accuracy"].items())
              + f" | alarms/1000 {per_n['alarms_per_1000']} | s {per_n['seconds']}", flush=True)
    return row


def summarize(rows: list[dict], captured: list[int]) -> list[dict]:
    out = []
    names = list(dict.fromkeys(r["scenario"]["name"] for r in rows))
    for name in names:
        rs = [r for r in rows if r["scenario"]["name"] == name]
        for n in captured:
            per = [r["captured"][str(n)] for r in rs]
            variants = list(per[0]["seconds"])
            acc = {"static": [r["static"] for r in rs]}
            for v in per[0]["accuracy"]:
                acc[v] = [p["accuracy"][v] for p in per]
            out.append({
                "scenario": rs[0]["scenario"], "captured": n, "seeds": [r["seed"] for r in rs],
                "eval_samples": [r["eval_samples"] for r in rs],
                "accuracy_mean": {k: round(float(np.mean(v)), 4) for k, v in acc.items()},
                "accuracy_min_max": {k: [min(v), max(v)] for k, v in acc.items()},
                "seconds_mean": {k: round(float(np.mean([p["seconds"][k] for p in per])), 1) for k in variants},
                "seconds_max": {k: round(float(max(p["seconds"][k] for p in per)), 1) for k in variants},
                "static_monitor_alarms_per_1000": round(float(np.mean([r["static_monitor_alarms_per_1000"]
                                                                       for r in rs])), 3),
                "refit_alarms_per_1000": {k: round(float(np.mean([p["alarms_per_1000"][k] for p in per])), 3)
                                          for k in per[0]["alarms_per_1000"]},
                "refit_alarms_per_1000_max": {k: max(p["alarms_per_1000"][k] for p in per)
                                              for k in per[0]["alarms_per_1000"]},
                "input_gain_offset_zp": [[p["reports"]["input"]["input"][k] for k in ("gain", "offset", "zero_point")]
                                         for p in per],
            })
    return out


def _params(scenario: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in scenario["params"].items()) or "–"


def markdown(summary: list[dict], meta: dict) -> str:
    cols = ["static", "input", "calibrate", "reprune", "input+calibrate", "all"]
    lines = [
        f"Deployed: `{meta['run']}` quantized, formats {meta['formats']} ({meta['bytes']} parameter bytes). "
        f"Seeds {meta['seeds']}; accuracy is the mean over seeds of the int8 top-1 on the rest of each stream "
        "(min–max in the JSON). `default` = " + "+".join(DEFAULT_STEPS) + "; `all` = " + "+".join(STEPS) + ".",
        "",
        "| scenario | params | N | " + " | ".join(cols) + " | s default (max) | s all (max) |",
        "|---|---|---:|" + "---:|" * len(cols) + "---:|---:|",
    ]
    for s in summary:
        acc = s["accuracy_mean"]
        best = max(acc[c] for c in cols)
        cells = [f"**{acc[c]:.4f}**" if acc[c] == best else f"{acc[c]:.4f}" for c in cols]
        lines.append(f"| {s['scenario']['name']} | {_params(s['scenario'])} | {s['captured']} | " + " | ".join(cells)
                     + f" | {s['seconds_mean']['default']} ({s['seconds_max']['default']})"
                     + f" | {s['seconds_mean']['all']} ({s['seconds_max']['all']}) |")
    lines += [
        "",
        "Alarms per 1,000 samples on the rest of the stream (mean over seeds, max in brackets): the deployed "
        "monitor (fitted on clean training telemetry) vs the monitor refitted by `adapt` on the capture.",
        "",
        "| scenario | N | deployed monitor | refit (default) | refit (all) | input correction gain, offset, zero point "
        "(per seed) |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for s in summary:
        refit, mx = s["refit_alarms_per_1000"], s["refit_alarms_per_1000_max"]
        corr = "; ".join(f"{g:.3f}, {o:+.1f}, {z}" for g, o, z in s["input_gain_offset_zp"])
        lines.append(f"| {s['scenario']['name']} | {s['captured']} | {s['static_monitor_alarms_per_1000']} | "
                     f"{refit['default']} ({mx['default']}) | {refit['all']} ({mx['all']}) | {corr} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=Path("runs/prune-compare/qsae-26000-e3-s0"))
    ap.add_argument("--objective", default="fastest", choices=("fastest", "smallest"))
    ap.add_argument("--captured", type=int, nargs="+", default=[500, 1000])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--scenarios", nargs="*", default=None, help="names to run (default: all)")
    ap.add_argument("--out", type=Path, default=Path("bench/drift/results/adapt_offline"))
    args = ap.parse_args()
    if not (args.run / "run.json").exists():
        sys.exit(f"{args.run} is not a run: train and prune one (`mcuprune train --dataset fashion-mnist --arch cnn "
                 f"--epochs 10 --out runs/fm`, `mcuprune prune runs/fm --method qsae --flash-budget 26000 "
                 f"--finetune-epochs 3 --out {args.run}`)")

    t0 = time.time()
    deployed = quantize_run(args.run)
    dataset = load_dataset(deployed.meta["dataset"])
    formats = choose_formats(deployed.layers, "dsp", args.objective)
    from mcuprune.model.formats import layer_bytes

    model_bytes = sum(layer_bytes(ql, formats[ql.name]) for ql in deployed.layers if ql.has_weights)
    static_setup = prepare(deployed, dataset)
    static_monitor = build_detector(static_setup.reference, deployed.num_classes)
    print(f"deployed {args.run}: formats {formats}, {model_bytes} B; setup {time.time() - t0:.0f} s", flush=True)

    scenarios = [Scenario("none", "none"), *SCENARIOS.values(), *EXTRA]
    if args.scenarios:
        scenarios = [s for s in scenarios if s.name in args.scenarios]
    rows = []
    for scenario in scenarios:
        for seed in args.seeds:
            rows.append(run_stream(args, dataset, deployed, formats, static_setup, static_monitor, scenario, seed))
    meta = {"run": str(args.run), "objective": args.objective, "formats": formats, "bytes": model_bytes,
            "seeds": args.seeds, "captured": args.captured, "variants": {k: list(v) for k, v in VARIANTS.items()},
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "command": " ".join(["python", "bench/drift/adapt_offline.py", *sys.argv[1:]])}
    summary = summarize(rows, args.captured)
    meta["seconds"] = round(time.time() - t0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "summary": summary, "streams": rows},
                                                        indent=1, default=str) + "\n")
    table = markdown(summary, meta)
    args.out.with_suffix(".md").write_text(table)
    print()
    print(table)
    print(f"{meta['seconds']} s")


if __name__ == "__main__":
    main()
