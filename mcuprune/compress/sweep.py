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
    OUT/sweep.png    device accuracy vs model flash bytes, one line per method
    OUT/<method>-<budget>/run, fw   the pruned run and its firmware
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path

from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure state

from mcuprune.compress.prune import DEFAULT_FINETUNE_EPOCHS, METHODS, original_fp32_bytes, prune_run
from mcuprune.errors import UserError

COLUMNS = (
    ("method", "method"), ("budget", "budget B"), ("model_flash_bytes", "ELF model B"),
    ("planned_bytes", "planned B"), ("ratio_vs_fp32", "× vs fp32"), ("float_accuracy", "float acc"),
    ("reference_accuracy", "int8 ref acc"), ("device_accuracy", "device acc"), ("mismatches", "mismatches"),
    ("instructions_per_inference", "instr/inference"), ("prune_seconds", "prune s"),
)


Measure = Callable[[Path, Path], dict]  # (run directory, firmware directory to create) -> the row's measured fields


def sweep_run(run_dir: Path, budgets: Sequence[int], methods: Sequence[str], out_dir: Path, measure: Measure,
              finetune_epochs: int = DEFAULT_FINETUNE_EPOCHS, seed: int = 0, **prune_options) -> list[dict]:
    """Prune `run_dir` at every budget with every method and `measure` each result; returns the rows."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise UserError(f"unknown pruning method '{unknown[0]}': choose from {', '.join(METHODS)}")
    if not budgets:
        raise UserError("give at least one flash budget")
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    fp32_bytes = original_fp32_bytes(run_dir)
    base = measure(run_dir, out_dir / "unpruned" / "fw")
    rows = [dict(method="unpruned", budget=None, planned_bytes=None, prune_seconds=0.0, **base)]
    for budget in sorted(budgets, reverse=True):
        for method in methods:
            work = out_dir / f"{method}-{budget}"
            t0 = time.time()
            try:
                report = prune_run(run_dir, method, budget, None, finetune_epochs, work / "run", seed,
                                   **prune_options)
            except UserError as exc:
                rows.append({"method": method, "budget": budget, "error": str(exc)})
                continue
            row = {"method": method, "budget": budget, "planned_bytes": report["model_bytes"],
                   "prune_seconds": round(time.time() - t0, 1)}
            row.update(measure(work / "run", work / "fw"))
            rows.append(row)
    for row in rows:
        if row.get("model_flash_bytes"):
            row["ratio_vs_fp32"] = round(fp32_bytes / row["model_flash_bytes"], 2)
    measured = asdict(measure) if is_dataclass(measure) else {"measure": repr(measure)}
    meta = {"run": str(run_dir), **measured, "finetune_epochs": finetune_epochs, "seed": seed,
            "fp32_bytes": fp32_bytes, "prune_options": prune_options}
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
            lines.append(f"| {row['method']} | {row['budget']:,} | {row['error']} |" + " |" * (len(COLUMNS) - 3))
            continue
        lines.append("| " + " | ".join(_cell(key, row.get(key)) for key, _ in COLUMNS) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, title: str = "", fp32_bytes: int | None = None) -> None:
    """Device accuracy (%) vs ELF model flash bytes (log scale), one line per method; with `fp32_bytes`,
    guides at 16x smaller than fp32 and at the unpruned float accuracy − 0.5 pp."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    methods = [m for m in dict.fromkeys(r["method"] for r in rows) if m != "unpruned"]
    for method in methods:
        pts = sorted((r["model_flash_bytes"], 100 * r["device_accuracy"]) for r in rows
                     if r["method"] == method and "error" not in r)
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=method)
    for r in rows:
        if r["method"] == "unpruned":
            ax.scatter([r["model_flash_bytes"]], [100 * r["device_accuracy"]], marker="*", s=150, color="k",
                       label="unpruned int8", zorder=3)
            if fp32_bytes:
                ax.axhline(100 * r["float_accuracy"] - 0.5, color="grey", ls="--", lw=1, label="fp32 acc − 0.5 pp")
    if fp32_bytes:
        ax.axvline(fp32_bytes / 16, color="grey", ls=":", lw=1, label="16× smaller than fp32")
    ax.set_xscale("log")
    ax.set_xlabel("model flash bytes (ELF, parameters)")
    ax.set_ylabel("device accuracy (%)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
