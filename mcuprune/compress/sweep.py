"""Accuracy vs model flash: prune a run at several flash budgets with several methods, compile and
evaluate every result, and write a table (markdown + JSON) and a plot.

Each point is measured, not predicted: the caller passes ``measure``, which compiles a run and
evaluates it on a device (the CLI passes ``device.evaluate.CompileAndEvaluate``: ``model_flash_bytes``
is what the ELF holds, ``device_accuracy`` comes from running the firmware in QEMU). The sweep
itself only prunes, so this stage imports nothing from the later ones. The pruning report's own
prediction is kept beside it
(``planned_bytes``: the final weights counted as the code generator emits them for a DSP board)
so a gap between report and ELF is visible. The unpruned run is the first row.

    OUT/sweep.json   every row
    OUT/sweep.md     the same as a markdown table
    OUT/sweep.png    device accuracy vs model flash bytes and vs instructions per inference, one line
                     per method and weight width
    OUT/<method>[-<weights>]-<budget>/run, fw   the pruned run and its firmware

Weight widths (`weights`): "int8" and "int4" apply to every method; "mixed" lets the QSAE plan pick
int8 or int4 per layer, and the magnitude baselines then take the widths the QSAE run at the same
budget picked (prune.pruned_widths), so both are compared at the same bytes and the same widths.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path

from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure state

from mcuprune.compress.prune import (
    DEFAULT_FINETUNE_EPOCHS,
    METHODS,
    WEIGHT_CHOICES,
    original_fp32_bytes,
    prune_run,
    pruned_widths,
)
from mcuprune.errors import UserError

COLUMNS = (
    ("method", "method"), ("weights", "weights"), ("budget", "budget B"), ("model_flash_bytes", "ELF model B"),
    ("planned_bytes", "planned B"), ("ratio_vs_fp32", "× vs fp32"), ("float_accuracy", "float acc"),
    ("reference_accuracy", "int8 ref acc"), ("device_accuracy", "device acc"), ("mismatches", "mismatches"),
    ("instructions_per_inference", "instr/inference"), ("prune_seconds", "prune s"),
)


Measure = Callable[[Path, Path], dict]  # (run directory, firmware directory to create) -> the row's measured fields


def sweep_run(run_dir: Path, budgets: Sequence[int], methods: Sequence[str], out_dir: Path, measure: Measure,
              finetune_epochs: int = DEFAULT_FINETUNE_EPOCHS, seed: int = 0, weights: Sequence[str] = ("int8",),
              **prune_options) -> list[dict]:
    """Prune `run_dir` at every budget with every method and weight width and `measure` each result;
    returns the rows."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise UserError(f"unknown pruning method '{unknown[0]}': choose from {', '.join(METHODS)}")
    unknown = [w for w in weights if w not in WEIGHT_CHOICES]
    if unknown:
        raise UserError(f"unknown weights '{unknown[0]}': choose from {', '.join(WEIGHT_CHOICES)}")
    if "mixed" in weights and "qsae" not in methods:
        raise UserError("mixed widths come from the QSAE plan (the baselines take its widths): add method qsae")
    if not budgets:
        raise UserError("give at least one flash budget")
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    fp32_bytes = original_fp32_bytes(run_dir)
    base = measure(run_dir, out_dir / "unpruned" / "fw")
    rows = [dict(method="unpruned", weights="int8", budget=None, planned_bytes=None, prune_seconds=0.0, **base)]
    methods = sorted(methods, key=lambda m: m != "qsae")  # a mixed-width baseline needs the QSAE run's widths
    for budget in sorted(budgets, reverse=True):
        for width in weights:
            for method in methods:
                work = out_dir / (f"{method}-{budget}" if width == "int8" else f"{method}-{width}-{budget}")
                options = dict(prune_options, weights=width)
                if width == "mixed" and method != "qsae":
                    qsae_run = out_dir / f"qsae-{width}-{budget}" / "run"
                    if not (qsae_run / "run.json").exists():
                        rows.append({"method": method, "weights": width, "budget": budget,
                                     "error": "no QSAE run at this budget to take the widths from"})
                        continue
                    options.update(weights="int8", layer_bits=pruned_widths(qsae_run))
                t0 = time.time()
                try:
                    report = prune_run(run_dir, method, budget, None, finetune_epochs, work / "run", seed, **options)
                except UserError as exc:
                    rows.append({"method": method, "weights": width, "budget": budget, "error": str(exc)})
                    continue
                row = {"method": method, "weights": width, "budget": budget, "planned_bytes": report["model_bytes"],
                       "prune_seconds": round(time.time() - t0, 1)}
                row.update(measure(work / "run", work / "fw"))
                rows.append(row)
    for row in rows:
        if row.get("model_flash_bytes"):
            row["ratio_vs_fp32"] = round(fp32_bytes / row["model_flash_bytes"], 2)
    measured = asdict(measure) if is_dataclass(measure) else {"measure": repr(measure)}
    meta = {"run": str(run_dir), **measured, "finetune_epochs": finetune_epochs, "seed": seed,
            "weights": list(weights), "fp32_bytes": fp32_bytes, "prune_options": prune_options}
    (out_dir / "sweep.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    (out_dir / "sweep.md").write_text(markdown_table(rows) + "\n")
    title = f"{run_dir.name} on {measured['board']}" if "board" in measured else run_dir.name
    plot(rows, out_dir / "sweep.png", title=title, fp32_bytes=fp32_bytes)
    return rows


def _cell(key: str, value) -> str:
    if value is None:
        return "-"
    if key.endswith("accuracy"):
        return f"{100 * value:.2f} %"
    if isinstance(value, int) and key != "mismatches":
        return f"{value:,}"
    return str(value)


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['method']} | {row['weights']} | {row['budget']:,} | {row['error']} |"
                         + " |" * (len(COLUMNS) - 4))
            continue
        lines.append("| " + " | ".join(_cell(key, row.get(key)) for key, _ in COLUMNS) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, title: str = "", fp32_bytes: int | None = None) -> None:
    """Device accuracy (%) against ELF model flash bytes (log scale) and against measured instructions
    per inference, one line per method and weight width; with `fp32_bytes`, guides at 16x and 40x
    smaller than fp32 and at the unpruned float accuracy − 0.5 pp."""
    fig = Figure(figsize=(12, 4.5))
    by_bytes, by_instructions = fig.subplots(1, 2, sharey=True)
    series = [s for s in dict.fromkeys((r["method"], r.get("weights", "int8")) for r in rows) if s[0] != "unpruned"]
    for method, width in series:
        done = [r for r in rows if (r["method"], r.get("weights", "int8")) == (method, width) and "error" not in r]
        for ax, key in ((by_bytes, "model_flash_bytes"), (by_instructions, "instructions_per_inference")):
            pts = sorted((r[key], 100 * r["device_accuracy"]) for r in done)
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=f"{method} {width}",
                        ls="-" if method == "qsae" else "--")
    for r in rows:
        if r["method"] != "unpruned":
            continue
        for ax, key in ((by_bytes, "model_flash_bytes"), (by_instructions, "instructions_per_inference")):
            ax.scatter([r[key]], [100 * r["device_accuracy"]], marker="*", s=150, color="k", label="unpruned int8",
                       zorder=3)
            if fp32_bytes:
                ax.axhline(100 * r["float_accuracy"] - 0.5, color="grey", ls="--", lw=1, label="fp32 acc − 0.5 pp")
    if fp32_bytes:
        by_bytes.axvline(fp32_bytes / 16, color="grey", ls=":", lw=1, label="16× smaller than fp32")
        by_bytes.axvline(fp32_bytes / 40, color="grey", ls="-.", lw=1, label="40× smaller than fp32")
    by_bytes.set_xscale("log")
    by_bytes.set_xlabel("model flash bytes (ELF, parameters)")
    by_instructions.set_xlabel("instructions per inference (QEMU -icount)")
    by_bytes.set_ylabel("device accuracy (%)")
    for ax in (by_bytes, by_instructions):
        ax.grid(True, which="both", alpha=0.3)
    by_bytes.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
