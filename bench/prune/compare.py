"""Methods and variants at one flash budget over several seeds: int8 reference accuracy and bytes.

    .venv/bin/python bench/prune/compare.py --run runs/fm --budget 26000 [--seeds 0,1,2] [--epochs 3]
        [--methods qsae,magnitude,magnitude-oneshot] [--out bench/prune/results/fm-26000]

A method may carry prune_run options in brackets: ``qsae[qsae_tolerance=0.1]``,
``qsae[structured=0]``. The trained run is fixed; the seed changes the calibration subset, the
QSAE initialisation and the fine-tune data order. Accuracy is the numpy int8 reference
(mcuprune.model.reference.run_s8) on the full test set, which the device matches bit for bit
(bench/prune/sweep.py checks that in QEMU).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np

from mcuprune.compress.prune import METHODS, prune_run

_OPTION_TYPES = {"qsae_tolerance": float, "structured": lambda v: bool(int(v)), "qsae_steps": int,
                 "finetune_lr": float, "calibration": int}


def parse_variant(spec: str) -> tuple[str, dict]:
    """'qsae[qsae_tolerance=0.1,structured=0]' -> ('qsae', {'qsae_tolerance': 0.1, 'structured': False})."""
    m = re.fullmatch(r"([\w-]+)(?:\[(.*)\])?", spec)
    if m is None or m.group(1) not in METHODS:
        raise SystemExit(f"bad method spec {spec!r}")
    options = {}
    for item in filter(None, (m.group(2) or "").split(",")):
        key, value = item.split("=")
        options[key] = _OPTION_TYPES[key](value)
    return m.group(1), options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/fm")
    parser.add_argument("--budget", type=int, default=26000)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--methods", default=",".join(METHODS), help="';'-separated if a spec has options")
    parser.add_argument("--work", default="runs/prune-compare")
    parser.add_argument("--out", default="bench/prune/results/fm-26000")
    args = parser.parse_args()
    specs = args.methods.split(";") if ";" in args.methods or "[" in args.methods else args.methods.split(",")
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for spec in specs:
            method, options = parse_variant(spec)
            t0 = time.time()
            tag = re.sub(r"[^\w.=-]+", "_", spec)
            r = prune_run(Path(args.run), method, args.budget, None, args.epochs,
                          Path(args.work) / f"{tag}-{args.budget}-e{args.epochs}-s{seed}", seed, **options)
            rows.append({"method": spec, "seed": seed, "model_bytes": r["model_bytes"],
                         "smallest_bytes": sum(layer["smallest_bytes"] for layer in r["layers"]),
                         "ratio_vs_fp32": r["ratio_vs_fp32"],
                         "float_accuracy": r["float_test_accuracy"], "int8_accuracy": r["int8_reference_accuracy"],
                         "seconds": round(time.time() - t0, 1),
                         "layers": [{k: layer[k] for k in ("name", "shape", "sparsity", "format", "bytes")}
                                    for layer in r["layers"]]})
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "layers"}), flush=True)
    write_results(rows, specs, {"run": args.run, "budget": args.budget, "epochs": args.epochs}, Path(args.out))


def write_results(rows: list[dict], specs: list[str], meta: dict, out: Path) -> None:
    """compare.json (meta + every row) and compare.md (one line per method spec, over seeds)."""
    out.mkdir(parents=True, exist_ok=True)
    lines = ["| method | seeds | model B (max) | per-layer smallest B (max) | int8 ref acc mean ± sd | min | max "
             "| prune s |", "|---|---|---|---|---|---|---|---|"]
    for spec in specs:
        mine = [r for r in rows if r["method"] == spec]
        acc = np.array([r["int8_accuracy"] for r in mine]) * 100
        sd = acc.std(ddof=1) if len(acc) > 1 else 0.0
        lines.append(f"| {spec} | {len(mine)} | {max(r['model_bytes'] for r in mine):,} | "
                     f"{max(r['smallest_bytes'] for r in mine):,} | {acc.mean():.2f} ± {sd:.2f} % | "
                     f"{acc.min():.2f} % | {acc.max():.2f} % | {np.mean([r['seconds'] for r in mine]):.0f} |")
    (out / "compare.json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    (out / "compare.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
