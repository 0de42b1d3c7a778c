"""Accuracy vs model flash for QSAE+KL pruning and the magnitude baselines, measured in QEMU.

    .venv/bin/python bench/prune/sweep.py --run runs/fm [--budgets 40000,26000,20000,14000,10000]
        [--methods qsae,magnitude,magnitude-oneshot] [--weights int8,mixed] [--epochs 3] [--limit N]
        [--out bench/prune/results/fm]

Prunes the run at every budget with every method (mcuprune.compress.prune.prune_run), compiles each result for
mps2-an386 with compile's default objective (`auto`: the fewest instructions within the budget) and
evaluates it on the test set in QEMU (semihosting transport). Writes sweep.json, sweep.md and sweep.png
to --out (mcuprune.compress.sweep). The pruned runs and firmware go to --work (default: runs/prune-sweep,
not committed).
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from mcuprune.compress.prune import METHODS
from mcuprune.compress.sweep import sweep_run
from mcuprune.device.evaluate import CompileAndEvaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/fm")
    parser.add_argument("--budgets", default="40000,26000,20000,14000,10000")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--weights", default="int8", help="weight widths, comma-separated: int8, int4, mixed")
    parser.add_argument("--epochs", type=int, default=3, help="fine-tune epochs (same for every method)")
    parser.add_argument("--limit", type=int, default=None, help="first N test images on the device (default all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default="runs/prune-sweep")
    parser.add_argument("--out", default="bench/prune/results/fm")
    args = parser.parse_args()
    t0 = time.time()
    work, out = Path(args.work), Path(args.out)
    rows = sweep_run(Path(args.run), [int(b) for b in args.budgets.split(",")], args.methods.split(","), work,
                     CompileAndEvaluate(limit=args.limit), finetune_epochs=args.epochs, seed=args.seed,
                     weights=args.weights.split(","))
    out.mkdir(parents=True, exist_ok=True)
    for name in ("sweep.json", "sweep.md", "sweep.png"):
        shutil.copy(work / name, out / name)
    print((out / "sweep.md").read_text())
    print(f"{len(rows)} rows in {time.time() - t0:.0f} s -> {out}")


if __name__ == "__main__":
    main()
