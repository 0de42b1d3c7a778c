#!/usr/bin/env python3
"""Fit the instruction model of mcuprune.model.op_costs to the points bench/op_costs/measure.py made.

Per (op, kernel variant, core), instructions ~= sum(coef[name] * feature[name]) over the terms of
op_cost_features, recomputed from each point's geometry (so a change of terms needs a refit, not a
new measurement), by non-negative least squares on relative error: every layer counts the same
whatever its size. A layer's count below one SysTick tick (40 instructions: a RESHAPE, which runs
no kernel) is divided by 40 instead, so that a tick of timer noise is not an error of 100 %.
Prints per model the largest and mean relative error and the largest error when each case is
predicted by a fit without it (leave one case out: how the model does on a shape it has not
seen), and a markdown table with `--markdown`. Writes mcuprune/model/op_costs.json.

    .venv/bin/python bench/op_costs/fit.py [--points bench/op_costs/results/points.json]
        [--out mcuprune/model/op_costs.json] [--markdown]
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy.optimize import nnls

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from mcuprune.model.ir import Op, QParams, QuantLayer  # noqa: E402
from mcuprune.model.op_costs import COSTED_OPS, op_cost_features, op_cost_key  # noqa: E402
from mcuprune.resources import OP_COSTS_PATH  # noqa: E402

TICK = 40.0  # instructions per SysTick tick under -icount shift=0 at 25 MHz: the timer's resolution


def layer_from_geometry(name: str, geometry: dict) -> QuantLayer:
    """A QuantLayer with a point's shapes and geometry (and zero weights): all op_cost_features reads."""
    unit = QParams(1.0, 0)
    weights = np.zeros(geometry["weights_shape"], np.int8) if "weights_shape" in geometry else None
    return QuantLayer(name=name, op=Op(geometry["op"]), in_shape=tuple(geometry["in_shape"]),
                      out_shape=tuple(geometry["out_shape"]), input_q=unit, output_q=unit, weights=weights,
                      stride=tuple(geometry["stride"]), padding=tuple(geometry["padding"]),
                      dilation=tuple(geometry["dilation"]), window=tuple(geometry["window"]),
                      depth_multiplier=geometry["depth_multiplier"], act_min=geometry["act_min"],
                      act_max=geometry["act_max"])  # fmt: skip


def relative_errors(predicted: np.ndarray, measured: np.ndarray) -> np.ndarray:
    return np.abs(predicted - measured) / np.maximum(measured, TICK)


def fit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative coefficients minimising the summed squared relative error."""
    scale = 1.0 / np.maximum(y, TICK)
    coef, _ = nnls(x * scale[:, None], y * scale)
    return coef


def leave_one_case_out(x: np.ndarray, y: np.ndarray, cases: list[str]) -> float:
    """The largest relative error on a case's points when the fit has not seen that case."""
    worst = 0.0
    names = np.array(cases)
    for name in sorted(set(cases)):
        held = names == name
        coef = fit(x[~held], y[~held])
        worst = max(worst, float(relative_errors(x[held] @ coef, y[held]).max()))
    return worst


def fit_models(points: list[dict]) -> dict[str, dict]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for p in points:
        groups[op_cost_key(p["op"], p["variant"], p["core"])].append(p)
    models = {}
    for key in sorted(groups):
        group = groups[key]
        rows = [op_cost_features(layer_from_geometry(p["layer"], p["geometry"]), p["variant"]) for p in group]
        names = list(rows[0])
        x = np.array([[row[n] for n in names] for row in rows])
        y = np.array([p["instructions"] for p in group], dtype=np.float64)
        coef = fit(x, y)
        err = relative_errors(x @ coef, y)
        cases = [p["case"] for p in group]
        models[key] = {
            "features": names,
            "coefficients": {n: round(float(c), 4) for n, c in zip(names, coef, strict=True)},
            "max_relative_error": round(float(err.max()), 4),
            "mean_relative_error": round(float(err.mean()), 4),
            "leave_one_case_out_max_relative_error": round(leave_one_case_out(x, y, cases), 4),
            "points": len(group),
        }
    return models


def markdown(models: dict[str, dict]) -> str:
    lines = ["| op / variant / core | points | coefficients (instructions per unit of each term) | max rel. err | "
             "mean | leave-one-case-out max |", "|---|---:|---|---:|---:|---:|"]
    for key, m in models.items():
        coef = ", ".join(f"{n} {c:.3g}" for n, c in m["coefficients"].items() if c)
        lines.append(f"| {key} | {m['points']} | {coef} | {m['max_relative_error']:.1%} | "
                     f"{m['mean_relative_error']:.1%} | {m['leave_one_case_out_max_relative_error']:.1%} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=Path, default=ROOT / "bench" / "op_costs" / "results" / "points.json")
    parser.add_argument("--out", type=Path, default=OP_COSTS_PATH)
    parser.add_argument("--markdown", action="store_true", help="print the fit table as markdown")
    args = parser.parse_args()
    doc = json.loads(args.points.read_text())
    models = fit_models(doc["points"])
    missing = [op_cost_key(op, v, c) for op in COSTED_OPS for v, c in (("dsp", "cortex-m4"), ("reference", "cortex-m3"))
               if op_cost_key(op, v, c) not in models]  # fmt: skip
    for key, m in models.items():
        loo = m["leave_one_case_out_max_relative_error"]
        print(f"{key:40} {m['points']:4} points  max {m['max_relative_error']:6.1%}  mean "
              f"{m['mean_relative_error']:6.1%}  leave-one-case-out max {loo:6.1%}")
    if args.markdown:
        print(markdown(models))
    out = {
        "note": "Instruction-count model of the ops without weight formats (and the depthwise conv, int8 weights), "
                "per '<op>/<variant>/<core>': instructions ~= sum(coefficients[name] * "
                "mcuprune.model.op_costs.op_cost_features(layer, variant)[name]). Fitted by bench/op_costs/fit.py "
                "(non-negative least squares on relative error) to per-layer QEMU -icount counts of small models "
                "made by bench/op_costs/measure.py (bench/op_costs/results/points.json); counts include mcup_run's "
                "SysTick read around the call. Regenerate after changing a kernel.",
        "generated": datetime.date.today().isoformat(),
        "measured": doc.get("generated"),
        "toolchain": doc.get("toolchain", []),
        "models": models,
    }  # fmt: skip
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"{len(models)} models -> {args.out}")
    if missing:
        print(f"no points for: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
