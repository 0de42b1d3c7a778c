"""Command-line interface: a thin layer over the stage functions.

User errors (UserError) print one line to stderr and exit with status 2; no traceback.

Each command imports the stages it runs inside its own function, on purpose: most stages import
torch (about 1.5 s), and `mcuprune boards`, `--help` or a mistyped option should answer at once.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from mcuprune import __version__
from mcuprune.controller import ADAPT_STEPS, CONTROLLER_STEPS, FIRST_CAPTURE, REFINE_CAPTURE
from mcuprune.errors import UserError

DEFAULT_EPOCHS = {"fashion-mnist": 10, "digits": 40}


def _print_json(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


def cmd_train(args: argparse.Namespace) -> None:
    from mcuprune.train.datasets import load_dataset
    from mcuprune.train.runs import check_new_output
    from mcuprune.train.training import train_run

    check_new_output(Path(args.out))  # before loading and training, not after
    dataset = load_dataset(args.dataset)
    spec = str(Path(args.dataset).resolve()) if args.dataset.endswith(".npz") else args.dataset
    # `is None`, not `or`: --epochs 0 is an error (main's numeric checks), never "the default"
    epochs = args.epochs if args.epochs is not None else DEFAULT_EPOCHS.get(args.dataset, 10)
    meta = train_run(dataset, spec, args.arch, epochs, Path(args.out), seed=args.seed)
    print(f"trained {meta['name']}: {meta['param_count']} parameters, float test accuracy "
          f"{meta['float_test_accuracy']:.4f} in {meta['train_seconds']} s -> {args.out}")


def cmd_compile(args: argparse.Namespace) -> None:
    from mcuprune.controller.drift_qsae import build_monitor_model
    from mcuprune.target.compile import compile_run

    if args.signing_key and args.unsigned_updates:
        raise UserError("--signing-key and --unsigned-updates exclude each other: a firmware is signed or a "
                        "development build")
    result = compile_run(Path(args.run), args.board, Path(args.out), args.kernels, args.objective, args.renode,
                         params=args.params, monitor_builder=build_monitor_model if args.params == "blob" else None,
                         calibration=Path(args.calibration) if args.calibration else None,
                         signing_key=Path(args.signing_key) if args.signing_key else None)
    b = result.build
    sparse = {name: fmt for name, fmt in result.generated.formats.items() if fmt != "dense"}
    formats = f", sparse layers: {', '.join(f'{k}={v}' for k, v in sparse.items())}" if sparse else ""
    blob = f", parameters in a {len(result.generated.blob)} B model blob" if result.generated.blob else ""
    print(f"built {b.elf} for {result.board.name} ({result.variant} kernels{formats}{blob}): flash {b.flash_bytes} B "
          f"(model parameters {b.model_flash_bytes} B), RAM {b.ram_bytes} B")
    if args.params == "blob":
        security = json.loads((Path(args.out) / "firmware.json").read_text())["security"]
        print(f"updates signed with key {security['key_id']}" if security["signed"] else
              "development build: updates unsigned, commands unauthenticated (--signing-key KEY for a signed one)")


def cmd_keys(args: argparse.Namespace) -> None:
    from mcuprune.codegen.signing import PRIVATE_KEY_FILE, generate_keys

    made = generate_keys(Path(args.out))  # the private key is written, never shown
    if args.json:
        _print_json(made)
        return
    print(f"wrote {Path(args.out) / PRIVATE_KEY_FILE} (owner-only) and its public key; key id {made['key_id']}, "
          f"security counter {made['security_counter']}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from mcuprune.device.evaluate import evaluate_firmware

    if args.emulator == "renode":
        from mcuprune.target.compile import load_firmware_dir
        from mcuprune.target.renode import run_renode

        fw = load_firmware_dir(Path(args.fwdir))
        result = run_renode(fw.path, fw.board)
        print(f"renode-test {result.robot} passed: the firmware booted and printed its banner")
        return
    ev = evaluate_firmware(Path(args.fwdir), limit=args.limit, progress=not args.json, transport=args.transport,
                           inputs=Path(args.inputs) if args.inputs else None,
                           outputs=Path(args.outputs) if args.outputs else None, oracle=args.oracle, seed=args.seed)
    if args.json:
        _print_json(ev.to_dict())
        return
    _print_evaluations([ev])


def _print_evaluations(evs: list) -> None:
    header = ("board", "kernels", "samples", "float acc", "int8 ref acc", "device acc", "mismatches",
              "model B", "fp32 B", "flash B", "RAM B", "instr/inference")
    def acc(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    rows = [(e.board, e.kernels, str(e.samples), acc(e.float_accuracy), acc(e.reference_accuracy),
             acc(e.device_accuracy), str(e.mismatches), str(e.model_flash_bytes), str(e.fp32_model_bytes),
             str(e.firmware_flash_bytes), str(e.ram_bytes), f"{e.instructions_per_inference:,.0f}") for e in evs]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    for line in (header, *rows):
        print("  ".join(cell.rjust(w) for cell, w in zip(line, widths, strict=True)))


def cmd_import(args: argparse.Namespace) -> None:
    from mcuprune.frontend.files import import_model_file
    from mcuprune.train.runs import write_imported_run

    path = Path(args.model)
    model, meta = import_model_file(path)
    doc = write_imported_run(Path(args.out), model, {**meta, "source_file": str(path.resolve()),
                                                     **({"dataset": args.dataset} if args.dataset else {})})
    summary = {"run": args.out, "kind": doc["kind"], "name": model.name, "layers": len(model.layers),
               "input_shape": list(model.input_shape), "outputs": model.num_classes,
               "ops": sorted({layer.op.value for layer in model.layers})}
    if args.json:
        _print_json(summary)
        return
    print(f"imported {path.name} as a {doc['kind']} run: {len(model.layers)} layers ({', '.join(summary['ops'])}), "
          f"input {tuple(model.input_shape)}, {model.num_classes} outputs -> {args.out}")


EXPORT_FORMATS = ("tflite", "c-library")  # c-library: mcuprune.target.library.LIBRARY_FORMAT


def cmd_export(args: argparse.Namespace) -> None:
    if args.format not in EXPORT_FORMATS:
        raise UserError(f"unknown export format '{args.format}': choose one of {', '.join(EXPORT_FORMATS)}")
    from mcuprune.frontend.tflite import export_tflite
    from mcuprune.target.compile import load_firmware_dir
    from mcuprune.target.library import LIBRARY_FORMAT, load_evaluation, write_c_library

    fw = load_firmware_dir(Path(args.fwdir))
    out = Path(args.out)
    if args.format == LIBRARY_FORMAT:
        evaluation = load_evaluation(Path(args.evaluation), fw) if args.evaluation else None
        summary = write_c_library(fw, out, evaluation)
        if args.json:
            _print_json(summary)
            return
        flash = summary["library_flash_bytes"]
        sizes = f"flash {flash:,} B, " if flash is not None else ""
        print(f"wrote {out}: the model of {fw.path} as a C library ({summary['kernels']} kernels, {sizes}"
              f"workspace {summary['workspace_bytes']:,} B), see {out / 'README.md'}")
        return
    if args.evaluation:
        raise UserError("--evaluation applies to --format c-library only")
    if out.is_dir():
        raise UserError(f"{out} is a directory: give a file name such as model.tflite")
    data = export_tflite(fw.model)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(out)
    if args.json:
        _print_json({"format": "tflite", "out": str(out), "bytes": len(data), "firmware": str(fw.path)})
        return
    print(f"wrote {out} ({len(data):,} B): the int8 model of {fw.path} for TFLite Micro")


def cmd_prune(args: argparse.Namespace) -> None:
    from mcuprune.compress.prune import prune_run, pruned_widths
    from mcuprune.target.board import load_board

    run = Path(args.run)
    out = Path(args.out) if args.out else run.with_name(f"{run.name}-{args.method}")
    board = load_board(args.board)
    layer_bits = pruned_widths(Path(args.widths_from)) if args.widths_from else None
    report = prune_run(run, args.method, args.flash_budget, args.kl_budget, args.finetune_epochs, out, seed=args.seed,
                       weights=args.weights, layer_bits=layer_bits, instr_budget=args.instr_budget, stages=args.stages,
                       block=args.block,
                       variant="dsp" if board.dsp else "reference", core=board.core)
    if args.json:
        _print_json(report)
        return
    for layer in report["layers"]:
        print(f"{layer['name']:10} int{layer['weight_bits']} sparsity {layer['sparsity']:.3f}  {layer['format']:7} "
              f"{layer['bytes']:>8} B  "
              f"tau {layer['tau']:.4g}  KL {layer['kl']:.4g}")
    print(f"model {report['model_bytes']} B, fp32 {report['fp32_bytes']} B, {report['ratio_vs_fp32']:.1f}x smaller, "
          f"{report['predicted_instructions']:,} instructions per inference predicted on {args.board} -> {out}")


def cmd_sweep(args: argparse.Namespace) -> None:
    from mcuprune.compress.prune import original_fp32_bytes
    from mcuprune.compress.sweep import sweep_run
    from mcuprune.device.evaluate import CompileAndEvaluate

    run = Path(args.run)
    if args.budgets:
        budgets = args.budgets
    else:  # fractions of the fp32 model: 8x .. 24x smaller
        fp32 = original_fp32_bytes(run)
        budgets = [fp32 // k for k in (8, 12, 16, 20, 24)]
    out = Path(args.out) if args.out else run.with_name(f"{run.name}-sweep")
    measure = CompileAndEvaluate(board=args.board, limit=args.limit)
    sweep_run(run, budgets, args.methods, out, measure, finetune_epochs=args.finetune_epochs, seed=args.seed,
              weights=args.weights)
    print((out / "sweep.md").read_text())
    print(f"table: {out / 'sweep.md'}, plot: {out / 'sweep.png'}")


def cmd_boards(args: argparse.Namespace) -> None:
    from mcuprune.target.board import list_boards

    for board in list_boards():
        qemu = board.qemu_machine or "-"
        print(f"{board.name:16} {board.core:12} dsp={'yes' if board.dsp else 'no ':3} qemu={qemu:14} "
              f"{board.description}")


def cmd_demo(args: argparse.Namespace) -> None:
    from mcuprune.compress.prune import prune_run
    from mcuprune.device.evaluate import evaluate_firmware, plot_tradeoff
    from mcuprune.target.board import load_board
    from mcuprune.target.compile import compile_run
    from mcuprune.train.datasets import load_dataset
    from mcuprune.train.training import train_run

    work = Path(args.workdir)
    run_dir, pruned = work / "run", work / "run-qsae"
    board = load_board(args.board)
    t0 = time.time()
    dataset = load_dataset("fashion-mnist")
    if (run_dir / "run.json").exists() and not args.retrain:
        print(f"[demo] reusing trained run {run_dir} (--retrain to train again)")
    else:
        print(f"[demo] training the CNN on Fashion-MNIST for {args.epochs} epochs")
        train_run(dataset, "fashion-mnist", "cnn", args.epochs, run_dir)
    if (pruned / "run.json").exists() and not args.retrain:
        print(f"[demo] reusing pruned run {pruned}")
    else:
        print(f"[demo] QSAE pruning to {DEMO_FLASH_BUDGET:,} B and {DEMO_INSTR_BUDGET:,} instructions per inference "
              f"on {board.name}, {DEMO_WEIGHTS} weights, {DEMO_FINETUNE_EPOCHS} fine-tune epochs")
        prune_run(run_dir, "qsae", DEMO_FLASH_BUDGET, None, DEMO_FINETUNE_EPOCHS, pruned, weights=DEMO_WEIGHTS,
                  instr_budget=DEMO_INSTR_BUDGET, variant="dsp" if board.dsp else "reference", core=board.core)
    rows = []
    for label, run in (("dense int8", run_dir), ("QSAE-pruned", pruned)):
        fw = work / f"fw-{run.name}-{board.name}"
        print(f"[demo] compiling {label} for {board.name}")
        compile_run(run, board.name, fw)
        print(f"[demo] evaluating {label} on {board.name} in QEMU (all {len(dataset.x_test):,} test images)")
        rows.append((label, evaluate_firmware(fw, progress=False, transport="semihosting")))
    print()
    _print_demo_table(rows)
    plot_path = work / "demo.png"
    plot_tradeoff(rows, plot_path, title=f"Fashion-MNIST CNN on {board.name} (QEMU, full test set)")
    print(f"\n[demo] plot {plot_path}; total {time.time() - t0:.0f} s; instructions are SysTick ticks under QEMU "
          "-icount shift=0 (QEMU has no cycle counter)")
    bad = [(label, e) for label, e in rows if e.mismatches]
    if bad:
        raise UserError(f"device output differs from the int8 reference for the {bad[0][0]} model: "
                        f"{bad[0][1].mismatches} mismatching samples")


def _print_demo_table(rows: list) -> None:
    header = ("model", "float acc", "device acc", "mismatches", "model B", "x fp32", "instr/inference", "RAM B")
    lines = [(label, f"{100 * e.float_accuracy:.2f} %", f"{100 * e.device_accuracy:.2f} %",
              f"{e.mismatches}/{e.samples}", f"{e.model_flash_bytes:,}",
              f"{e.fp32_model_bytes / e.model_flash_bytes:.1f}", f"{e.instructions_per_inference:,.0f}",
              f"{e.ram_bytes:,}") for label, e in rows]
    widths = [max(len(h), *(len(r[i]) for r in lines)) for i, h in enumerate(header)]
    for line in (header, *lines):
        print("  ".join(cell.rjust(w) for cell, w in zip(line, widths, strict=True)))


# The demo's pruning: the balanced point of bench/RESULTS.md (16x smaller than fp32, within 0.5 pp of
# its accuracy, under a third of CMSIS-NN's dense instructions). int8 rather than mixed widths: at
# this size int4 buys nothing the budget needs, and quantization-aware fine-tuning costs 3x the time.
DEMO_FLASH_BUDGET = 26_000
DEMO_INSTR_BUDGET = 1_150_000
DEMO_WEIGHTS = "int8"
DEMO_FINETUNE_EPOCHS = 15


DEFAULT_PRUNE_BUDGET = 26_000  # bytes: the QSAE acceptance point of issue 3 (bench/RESULTS.md)


def _blob_firmware(args: argparse.Namespace) -> tuple[Path, Path]:
    """(firmware dir, training run): --firmware as given, else the default pipeline in --workdir
    (Fashion-MNIST CNN as `demo` trains it, QSAE-pruned to 26,000 B, compiled with --params blob),
    each stage reused when its directory already exists."""
    from mcuprune.controller.monitor import resolve_firmware

    if args.firmware:
        fw, run_dir = resolve_firmware(Path(args.firmware), None)
        return fw.path, run_dir
    from mcuprune.compress.prune import prune_run
    from mcuprune.controller.drift_qsae import build_monitor_model
    from mcuprune.target.compile import compile_run
    from mcuprune.train.datasets import load_dataset
    from mcuprune.train.training import train_run

    work = Path(args.workdir)
    run_dir, pruned, fw_dir = work / "run", work / "run-qsae", work / f"fw-blob-{args.board}"
    if not (run_dir / "run.json").exists():
        print(f"[setup] training the CNN on Fashion-MNIST for {DEFAULT_EPOCHS['fashion-mnist']} epochs -> {run_dir}",
              file=sys.stderr)  # progress: stdout carries --json's one object
        train_run(load_dataset("fashion-mnist"), "fashion-mnist", "cnn", DEFAULT_EPOCHS["fashion-mnist"], run_dir)
    if not (pruned / "run.json").exists():
        print(f"[setup] QSAE pruning to {DEFAULT_PRUNE_BUDGET} B -> {pruned}", file=sys.stderr)
        prune_run(run_dir, "qsae", DEFAULT_PRUNE_BUDGET, None, 3, pruned)
    if not (fw_dir / "firmware.json").exists():
        print(f"[setup] compiling blob firmware for {args.board} -> {fw_dir}", file=sys.stderr)
        compile_run(pruned, args.board, fw_dir, params="blob", monitor_builder=build_monitor_model)
    return fw_dir, pruned


def cmd_monitor(args: argparse.Namespace) -> None:
    from mcuprune.controller.monitor import MonitorConfig, resolve_firmware, run_monitor

    fw, run_dir = resolve_firmware(Path(args.run), Path(args.firmware) if args.firmware else None)
    cfg = MonitorConfig(update=args.update, scenario=args.scenario, shift_at=args.shift_at, samples=args.samples,
                        capture_samples=args.capture, refine_samples=args.refine, feed=args.feed, seed=args.seed,
                        adapt_steps=tuple(args.adapt_steps), labels=args.labels)
    log = Path(args.log) if args.log else fw.path / "monitor.jsonl"
    summary = run_monitor(args.port, fw, run_dir, cfg, log, signer=_signer(args))
    if args.json:
        _print_json(summary)
        return
    print(f"{summary['samples']} samples, accuracy {100 * summary['accuracy']:.2f} %, alarms at "
          f"{summary['alarms'] or 'none'}, {len(summary['updates'])} update(s), mismatches {summary['mismatches']}, "
          f"serving {summary['serving']} ({summary['blob_id']}); log {log}")


def cmd_drift_demo(args: argparse.Namespace) -> None:
    from mcuprune.controller.drift_demo import NONE, DemoConfig, run_drift_demo
    from mcuprune.controller.scenarios import SCENARIOS
    from mcuprune.target.compile import load_firmware_dir
    from mcuprune.train.datasets import load_dataset

    unknown = [s for s in args.scenarios if s != "none" and s not in SCENARIOS]
    if unknown:
        raise UserError(f"unknown scenario(s) {', '.join(unknown)}: choose from none, {', '.join(SCENARIOS)}")
    fw_dir, run_dir = _blob_firmware(args)
    fw = load_firmware_dir(fw_dir)
    cfg = DemoConfig(shift_at=args.shift_at, length=args.length, false_alarm_samples=args.false_alarm_samples,
                     capture_samples=args.capture, refine_samples=args.refine, labels=args.labels, feed=args.feed,
                     update=args.update, seed=args.seed, adapt_steps=tuple(args.adapt_steps))
    out = Path(args.out) if args.out else Path(args.workdir) / "drift-demo"
    quiet = (lambda _msg: None) if args.json else print
    results = run_drift_demo(run_dir, fw_dir, load_dataset(fw.model.meta.get("dataset", "fashion-mnist")), cfg, out,
                             [NONE if s == "none" else SCENARIOS[s] for s in args.scenarios], progress=quiet,
                             signer=_signer(args))
    if args.json:
        _print_json(results)
        return
    print((out / "drift_demo.md").read_text())
    print(f"timeline {out / 'drift_demo.png'}, events {out / 'events.jsonl'}")
    bad = [s["name"] for s in results["scenarios"] if s["mismatches"]]
    if bad:
        raise UserError(f"device output differed from the int8 reference in scenario(s) {', '.join(bad)}")


def _signer(args: argparse.Namespace):
    """The owner's key from --signing-key (a signed firmware's updates and commands need it), or None."""
    from mcuprune.codegen.signing import load_signer

    return load_signer(Path(args.signing_key)) if getattr(args, "signing_key", None) else None


def cmd_powercut_test(args: argparse.Namespace) -> None:
    from mcuprune.device.powercut import run_powercut_trials

    if args.trials < 1:
        raise UserError("--trials must be at least 1")
    fw_dir, _ = _blob_firmware(args)
    result = run_powercut_trials(fw_dir, args.trials, seed=args.seed,
                                 progress=None if args.json else print, signer=_signer(args))
    if args.json:
        _print_json(result)
        return
    print(f"{result['recovered']}/{result['trials']} trials recovered")
    if result["recovered"] != result["trials"]:
        raise UserError(f"{result['trials'] - result['recovered']} power-cut trial(s) did not recover")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mcuprune", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mcuprune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a network and write a run directory")
    p.add_argument("--dataset", required=True, help="fashion-mnist, digits or PATH.npz (x, y)")
    p.add_argument("--arch", choices=("mlp", "cnn", "resnet8", "dscnn"), default="cnn",
                   help="mlp, cnn: mcuprune's own small networks; resnet8, dscnn: the MLPerf Tiny shapes for the "
                   "dataset's input size (PyTorch modules entering through the PyTorch importer)")
    p.add_argument("--epochs", type=int, default=None, help="default: 10 for fashion-mnist, 40 for digits")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="run directory to create")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("compile", help="quantize a run, generate C for a board and build the ELF")
    p.add_argument("run")
    p.add_argument("--board", default="mps2-an386")
    p.add_argument("--kernels", choices=("auto", "reference", "dsp", "tvm"), default="auto",
                   help="auto: DSP dual-MAC kernels where the core has them; tvm: kernels generated by Apache TVM "
                   "(pip install mcuprune[tvm])")
    p.add_argument("--renode", action="store_true", help="also write a Renode .resc script and .robot test")
    p.add_argument("--objective", choices=("auto", "fastest", "smallest"), default="auto",
                   help="weight format per pruned layer: the smallest that is no slower than dense (fastest) or "
                   "the smallest regardless of speed; auto (default): fastest, unless that exceeds the flash "
                   "budget the run was pruned to")
    p.add_argument("--params", choices=("static", "blob"), default="static",
                   help="static: parameters compiled in (default); blob: parameters in an updatable model blob "
                   "with on-device telemetry (boards with a [slots] region)")
    p.add_argument("--calibration", default=None, metavar="NPZ",
                   help="float run: calibration inputs (.npz holding x, the float model's input units); default: a "
                   "subset of the run's dataset")
    p.add_argument("--signing-key", default=None, metavar="KEY",
                   help="--params blob: a key folder from `mcuprune keys generate` (or its signing_key.pem); the "
                   "firmware takes only blobs signed with it and wants its authorization for updates, rollback, "
                   "exit and file reads")
    p.add_argument("--unsigned-updates", action="store_true",
                   help="a development build (the default without --signing-key): updates unsigned, commands "
                   "unauthenticated; the boot banner and INFO say so")
    p.add_argument("--out", required=True, help="firmware directory to create")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("keys", help="the owner's Ed25519 key for signed model updates")
    keys = p.add_subparsers(dest="keys_command", required=True)
    k = keys.add_parser("generate", help="write a new key folder: signing_key.pem (owner-only), signing_key.pub, "
                        "security_counter")
    k.add_argument("--out", required=True, help="key folder to create")
    k.add_argument("--json", action="store_true", help="print one JSON object (public key and key id)")
    k.set_defaults(func=cmd_keys)

    p = sub.add_parser("import", help="bring your own model: an int8 .tflite or a torch.export .pt2 becomes a run")
    p.add_argument("model", help="MODEL.tflite (fully integer-quantized, taken as is) or MODEL.pt2 "
                   "(torch.export.save; quantized by compile)")
    p.add_argument("--dataset", default=None, help="dataset the model's inputs come from (fashion-mnist, digits, "
                   "PATH.npz), for calibration and evaluation")
    p.add_argument("--out", required=True, help="run directory to create")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("export", help="write a firmware's int8 model as a .tflite that TFLite Micro runs, or as a C "
                       "library for your own firmware")
    p.add_argument("fwdir")
    # Checked in cmd_export rather than with choices=, so a wrong format is one line like every user error.
    p.add_argument("--format", default="tflite", metavar="{" + ",".join(EXPORT_FORMATS) + "}",
                   help="tflite (default): a .tflite file; c-library: a folder with the model's C sources, API header "
                   "and CMake, Zephyr, PlatformIO and Arduino build files")
    p.add_argument("--out", required=True, help="MODEL.tflite, or the library folder to create")
    p.add_argument("--evaluation", default=None, metavar="JSON",
                   help="c-library: `mcuprune evaluate FWDIR --json` output, for the instruction counts in its README")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("evaluate", help="run a firmware in QEMU and compare with the int8 reference")
    p.add_argument("fwdir")
    p.add_argument("--limit", type=int, default=None, help="first N test images (default: all)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--emulator", choices=("qemu", "renode"), default="qemu",
                   help="renode: run the generated Robot Framework test (needs renode-test on PATH)")
    p.add_argument("--inputs", default=None, metavar="NPZ", help="inputs instead of the test set: x with shape "
                   "(N, *model input shape); int8 as the device takes them, or float (quantized with the model's "
                   "input scale and zero point)")
    p.add_argument("--outputs", default=None, metavar="NPZ", help="write the device's int8 outputs as y (N, outputs)")
    p.add_argument("--oracle", choices=("none", "tflm"), default="none",
                   help="tflm: also run every input through TFLite Micro's interpreter (tflm_mismatches)")
    p.add_argument("--seed", type=int, default=0, help="seed of the inputs of a model without a dataset")
    p.add_argument("--transport", choices=("uart", "semihosting"), default="uart",
                   help="how inputs reach the device: over the UART (default), or read from a host file through "
                   "semihosting (emulator only, ~20x faster under QEMU)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("prune", help="prune a run (QSAE-guided or magnitude) and fine-tune it into a new run")
    p.add_argument("run")
    p.add_argument("--method", choices=("qsae", "magnitude", "magnitude-oneshot"), default="qsae")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--flash-budget", type=int, metavar="BYTES",
                        help="packed model size to reach (weights, indices, biases, requantization constants)")
    budget.add_argument("--kl-budget", type=float, metavar="EPS",
                        help="largest KL divergence allowed per layer output (largest threshold within it)")
    p.add_argument("--instr-budget", type=int, metavar="N",
                   help="instructions per inference on --board to reach by removing channels (predicted by the "
                   "measured cost models; verify with `evaluate`), alone or with a flash or KL budget")
    p.add_argument("--board", default="mps2-an386", help="board the instruction budget is for (its core and kernels)")
    p.add_argument("--weights", choices=("int8", "int4", "mixed"), default="int8",
                   help="weight width of each pruned layer: int8 (default), int4 (two per byte), or mixed: the "
                   "budget's knapsack picks int8 or int4 per layer by KL (method qsae), quantization-aware fine-tune")
    p.add_argument("--block", type=int, default=1, choices=(1, 4),
                   help="4: prune whole 1x4 blocks (4 consecutive inputs of one output), the structure the block4 "
                   "kernels skip at 10 instructions a block (method qsae); 1 (default): single weights")
    p.add_argument("--widths-from", metavar="PRUNED_RUN",
                   help="give each layer the weight width it has in another pruned run (a magnitude baseline at the "
                   "widths a mixed-precision QSAE plan picked)")
    p.add_argument("--finetune-epochs", type=int, default=3)
    p.add_argument("--stages", type=int, default=1,
                   help="qsae with a flash budget: plan and fine-tune this many times, the budget tightening "
                   "geometrically to the one given (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="pruned run directory (default: RUN-METHOD next to RUN)")
    p.add_argument("--json", action="store_true", help="print the pruning report as one JSON object")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("sweep", help="prune at several budgets with each method; table and plot of device "
                       "accuracy vs model flash")
    p.add_argument("run")
    p.add_argument("--budgets", type=int, nargs="+", metavar="BYTES", help="default: fp32 size / 8, 12, 16, 20, 24")
    p.add_argument("--methods", nargs="+", default=["qsae", "magnitude"],
                   choices=("qsae", "magnitude", "magnitude-oneshot"))
    p.add_argument("--weights", nargs="+", default=["int8"], choices=("int8", "int4", "mixed"),
                   help="weight widths to sweep (mixed: the QSAE plan picks per layer, the baselines take its widths)")
    p.add_argument("--finetune-epochs", type=int, default=3)
    p.add_argument("--board", default="mps2-an386")
    p.add_argument("--limit", type=int, default=None, help="test images per evaluation (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output directory (default: RUN-sweep next to RUN)")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("boards", help="list known boards")
    p.set_defaults(func=cmd_boards)

    p = sub.add_parser("demo", help="Fashion-MNIST CNN end to end on the default board")
    p.add_argument("--workdir", default="runs/demo")
    p.add_argument("--board", default="mps2-an386")
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS["fashion-mnist"])
    p.add_argument("--retrain", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("monitor", help="host controller: feed a device, watch its telemetry, adapt and update on drift")
    p.add_argument("--port", required=True, help="pyserial URL or device: /dev/ttyACM0, socket://HOST:PORT, rfc2217://...")
    p.add_argument("--run", required=True, help="the blob firmware directory (or a training run, with --firmware)")
    p.add_argument("--firmware", default=None, help="blob firmware directory the device runs (default: --run)")
    p.add_argument("--update", choices=("stream", "reflash", "none"), default="stream",
                   help="on drift: stream the new blob into the spare slot (default), re-flash, or only report")
    p.add_argument("--scenario", default="none", help="drift applied to the fed test images: none (default), "
                   "brightness_contrast, gaussian_noise, rotation, class_prior")
    p.add_argument("--shift-at", type=int, default=1000)
    p.add_argument("--samples", type=int, default=4000)
    p.add_argument("--capture", type=int, default=FIRST_CAPTURE,
                   help=f"inputs captured after an alarm for the first update (default {FIRST_CAPTURE})")
    p.add_argument("--refine", type=int, default=REFINE_CAPTURE,
                   help=f"more inputs captured after it for a refined update, 0 for none (default {REFINE_CAPTURE})")
    p.add_argument("--labels", default=None, metavar="FILE|-",
                   help="labels the field returns: lines 'SAMPLE CLASS' (SAMPLE: 0-based index in the fed stream), "
                   "from a file or, with -, from stdin as they come")
    p.add_argument("--feed", choices=("uart", "semihosting"), default="uart",
                   help="how inputs reach the device (semihosting: emulators only)")
    p.add_argument("--log", default=None, help="JSONL event log (default: FWDIR/monitor.jsonl)")
    p.add_argument("--signing-key", default=None, metavar="KEY",
                   help="signed firmware: the owner's key folder, to sign the update blobs and authorise commands")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_monitor)

    adapt_help = (f"adaptation steps on drift, from {' '.join(ADAPT_STEPS)} (default: {' '.join(CONTROLLER_STEPS)}; "
                  "see mcuprune/controller/adapt.py)")
    p.add_argument("--adapt-steps", nargs="+", choices=ADAPT_STEPS, default=list(CONTROLLER_STEPS), help=adapt_help)

    for name, helptext in (("drift-demo", "drift scenarios against the blob firmware in QEMU: static vs dynamic"),
                           ("powercut-test", "kill QEMU at random points of streamed updates, check recovery")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--firmware", default=None, help="blob firmware directory (default: build the Fashion-MNIST "
                       "pipeline in --workdir)")
        p.add_argument("--workdir", default="runs/demo")
        p.add_argument("--board", default="mps2-an386")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--json", action="store_true", help="print one JSON object")
        p.add_argument("--signing-key", default=None, metavar="KEY",
                       help="signed firmware: the owner's key folder, to sign the update blobs and authorise them")
    p.add_argument("--trials", type=int, default=20)
    p.set_defaults(func=cmd_powercut_test)
    p = sub.choices["drift-demo"]
    p.add_argument("--scenarios", nargs="+", default=["brightness_contrast", "gaussian_noise", "rotation",
                                                      "class_prior", "class_prior_shirts", "none"])
    p.add_argument("--update", choices=("stream", "reflash"), default="stream")
    p.add_argument("--shift-at", type=int, default=1000)
    p.add_argument("--length", type=int, default=4000, help="samples per shifted stream")
    p.add_argument("--false-alarm-samples", type=int, default=10_000, help="samples of the unshifted stream")
    p.add_argument("--capture", type=int, default=FIRST_CAPTURE,
                   help=f"inputs captured after an alarm for the first update (default {FIRST_CAPTURE})")
    p.add_argument("--refine", type=int, default=REFINE_CAPTURE,
                   help=f"more inputs captured after it for a refined update, 0 for none (default {REFINE_CAPTURE})")
    p.add_argument("--labels", type=int, default=0, metavar="K",
                   help="labels the field returns per capture: the true classes of its first K inputs (default 0)")
    p.add_argument("--feed", choices=("uart", "semihosting"), default="semihosting",
                   help="how inputs reach the device (default semihosting: QEMU's UART input is slow)")
    p.add_argument("--out", default=None, help="output directory (default: WORKDIR/drift-demo)")
    p.add_argument("--adapt-steps", nargs="+", choices=ADAPT_STEPS, default=list(CONTROLLER_STEPS), help=adapt_help)
    p.set_defaults(func=cmd_drift_demo)
    return parser


# Numeric options of every command (argparse dest -> smallest sensible value). argparse only checks
# that they are numbers; main checks the range before any command runs, so `--epochs 0` or
# `--limit -1` is one line and exit 2 instead of a silent default or a traceback minutes later.
MINIMUM = {
    "epochs": 1, "limit": 1, "trials": 1, "finetune_epochs": 0, "stages": 1, "flash_budget": 1, "instr_budget": 1,
    "budgets": 1, "samples": 1, "shift_at": 0, "capture": 1, "refine": 0, "labels": 0, "length": 1,
    "false_alarm_samples": 0, "seed": 0,
}  # fmt: skip


def check_numbers(args: argparse.Namespace) -> None:
    """UserError for a numeric option below its MINIMUM, or a KL budget that is not a positive number."""
    for dest, minimum in MINIMUM.items():
        value = getattr(args, dest, None)
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, int | float) and v < minimum:  # monitor's --labels is a path
                raise UserError(f"--{dest.replace('_', '-')} must be at least {minimum}, got {v}")
    kl = getattr(args, "kl_budget", None)
    if kl is not None and not (math.isfinite(kl) and kl > 0):
        raise UserError(f"--kl-budget must be a positive number, got {kl}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_numbers(args)
        args.func(args)
    except UserError as exc:
        print(f"mcuprune: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("mcuprune: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
