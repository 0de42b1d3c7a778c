"""Each adaptation step on and off, with 0, 50 and 200 field labels: Fashion-MNIST, int8 reference
interpreter (which the device matches bit for bit), no QEMU.

    .venv/bin/python bench/drift/feedback_offline.py --firmware FWDIR --run RUN [--captured 200]
        [--labels 0 50 200] [--seed 0] [--out bench/drift/results/feedback_offline] [--scenarios ...] [--variants ...]

FWDIR is the blob firmware the drift demo runs (its model and weight formats are the deployed ones),
RUN the pruned run it was compiled from. Per scenario, a stream of test images shifted from its first
sample (scenarios.make_stream) is split: the first --captured images are the capture (the first K of
them labeled), the next 3,000 are scored. Per variant: the int8 accuracy of the adapted model, the
guard's decision and what the device would then serve (the adapted model if shipped, else the
deployed one). Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from mcuprune.controller import CONTROLLER_STEPS
from mcuprune.controller.adapt import adapt
from mcuprune.controller.scenarios import SCENARIOS, make_stream
from mcuprune.model.interpreter import run_s8
from mcuprune.target.compile import load_firmware_dir
from mcuprune.train.datasets import load_dataset, to_int8

SCORED = 3000
BASE = ("input", "calibrate")
VARIANTS = {  # name -> (steps, whether labels change what it does)
    "input+calibrate": (BASE, False),
    "+prior": (BASE + ("prior",), False),
    "+match": (BASE + ("match",), False),
    "+selftrain": (BASE + ("selftrain",), False),
    "+tune": (BASE + ("tune",), True),
    "+tune+selftrain": (BASE + ("tune", "selftrain"), True),
    "+reprune+tune": (BASE + ("reprune", "tune"), True),
    "controller default (guarded)": (CONTROLLER_STEPS, True),
}


def accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    pred = np.concatenate([run_s8(model, to_int8(x[s : s + 512])).argmax(axis=1) for s in range(0, len(x), 512)])
    return float(np.mean(pred == y))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--firmware", required=True)
    ap.add_argument("--run", required=True)
    ap.add_argument("--captured", type=int, default=200)
    ap.add_argument("--labels", type=int, nargs="+", default=[0, 50, 200])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/drift/results/feedback_offline")
    ap.add_argument("--scenarios", nargs="+", choices=list(SCENARIOS), default=list(SCENARIOS))
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    args = ap.parse_args()
    fw = load_firmware_dir(Path(args.firmware))
    ds = load_dataset("fashion-mnist")
    rows = []
    for name in args.scenarios:
        scenario = SCENARIOS[name]
        x, y, _ = make_stream(ds, scenario, 0, args.captured + SCORED, args.seed)
        xc, yc, xs, ys = x[: args.captured], y[: args.captured], x[args.captured :], y[args.captured :]
        static = accuracy(fw.model, xs, ys)
        for k in args.labels:
            labels = np.full(args.captured, -1)
            labels[:k] = yc[:k]
            for variant in args.variants:
                steps, uses_labels = VARIANTS[variant]
                if (k > 0) != uses_labels and variant != "controller default (guarded)":
                    continue  # without labels "tune" is a no-op; with them the unlabeled rows are the K = 0 ones
                t0 = time.monotonic()
                result = adapt(Path(args.run), fw.model, fw.formats, xc, labels=labels, steps=steps, seed=args.seed,
                               train_images=ds.x_train, train_labels=ds.y_train)
                adapted = accuracy(result.model, xs, ys)
                guard = result.report.get("guard")
                row = {"scenario": name, "labels": k, "variant": variant, "steps": list(steps), "static": static,
                       "adapted": adapted, "shipped": result.ship if guard else None,
                       "served": adapted if result.ship else static,
                       "prior_applied": result.report.get("prior", {}).get("applied"),
                       "guard": guard and guard["reason"], "seconds": round(time.monotonic() - t0, 1)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"firmware": args.firmware, "run": args.run,
                                                    "captured": args.captured, "scored": SCORED, "seed": args.seed,
                                                    "rows": rows}, indent=1) + "\n")
    lines = [f"Captured {args.captured} (the first K labeled), scored on the next {SCORED} shifted test images; "
             "accuracy of the int8 model. 'served' is what the device serves after the guard's decision.", "",
             "| scenario | K | variant | static | adapted | guard | served | s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        shipped = "—" if r["shipped"] is None else ("ship" if r["shipped"] else "no update")
        lines.append(f"| {r['scenario']} | {r['labels']} | {r['variant']} | {100 * r['static']:.2f} % | "
                     f"{100 * r['adapted']:.2f} % | {shipped} | {100 * r['served']:.2f} % | {r['seconds']} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
