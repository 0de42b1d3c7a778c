"""The compile stage: run directory -> quantized model -> firmware project -> ELF.

A firmware directory (FWDIR) is self-contained: the generated C project (buildable by hand with
`make`), the ELF, the quantized model the device runs (model.json + model.npz, which the reference
interpreter reads) and firmware.json describing how it was made.

Firmware built with params "blob" (codegen's module docstring) also keeps what the host needs to
make update blobs for it later: ``monitor/`` (the monitor QSAE's QuantModel, model.json +
model.npz), ``blob.bin`` (the factory blob compiled in), and in firmware.json the params mode,
kernel variant, weight formats and architecture hash. ``FirmwareDir.update_blob`` uses them.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from mcuprune import __version__
from mcuprune.codegen import emit as codegen
from mcuprune.codegen.blob import parse_header
from mcuprune.codegen.signing import Signer, load_signer, sign_blob
from mcuprune.codegen.tvm_backend import tvm_kernel_sources
from mcuprune.errors import UserError
from mcuprune.model import fixedpoint
from mcuprune.model.costs import OBJECTIVES
from mcuprune.model.ir import QuantModel, load_quant_model, save_quant_model
from mcuprune.quantize import calibration_subset, quantize_image_model, quantize_model
from mcuprune.resources import CRYPTO_SOURCES, crypto_dir
from mcuprune.target import build
from mcuprune.target.board import Board, check_fits, list_boards, load_board
from mcuprune.target.renode import write_renode_files
from mcuprune.train.datasets import Dataset, load_dataset, load_inputs_npz
from mcuprune.train.runs import check_new_output, write_atomically
from mcuprune.train.training import load_run_model

KERNEL_CHOICES = ("auto", "reference", "dsp", "tvm")
FIRMWARE_FORMAT_VERSION = 1
PARAMS_CHOICES = codegen.PARAMS_MODES
OBJECTIVE_CHOICES = ("auto", *OBJECTIVES)
MONITOR_DIR = "monitor"  # blob firmware: the monitor QSAE's QuantModel, inside the firmware directory
BLOB_FILE = "blob.bin"  # blob firmware: the factory blob


def choose_variant(board: Board, requested: str) -> str:
    """Kernel variant for a board: DSP dual-MAC kernels only on cores with the DSP extension."""
    if requested not in KERNEL_CHOICES:
        raise UserError(f"unknown kernels '{requested}': choose one of {', '.join(KERNEL_CHOICES)}")
    if requested == "auto":
        return "dsp" if board.dsp else "reference"

    if requested == "dsp" and not board.dsp:
        raise UserError(f"board {board.name} ({board.core}) has no DSP extension: use --kernels reference")
    return requested


def quantize_run(run_dir: Path, calibration: Path | None = None) -> QuantModel:
    """A run's int8 model: an imported int8 model as it is, a float one quantized with calibration
    inputs (`calibration`: an .npz holding x, else a calibration subset of the run's dataset)."""
    return _quantize_run(run_dir, calibration)[0]


def _quantize_run(run_dir: Path, calibration: Path | None = None) -> tuple[QuantModel, Dataset | None]:
    model, meta = load_run_model(run_dir)
    run_meta = {"run_dir": str(Path(run_dir).resolve()), "run_kind": meta["kind"],
                **{k: meta[k] for k in ("dataset", "arch", "float_test_accuracy", "source") if k in meta}}
    if "pruning" in meta and meta["pruning"].get("flash_budget") is not None:
        run_meta["flash_budget"] = int(meta["pruning"]["flash_budget"])
    if isinstance(model, QuantModel):
        if calibration is not None:
            raise UserError(f"{run_dir} holds an int8 model taken as is from a .tflite: --calibration applies to "
                            "float runs only")
        return replace(model, meta={**model.meta, **run_meta}), None
    run_meta["fp32_params"] = int(meta.get("fp32_params") or sum(  # the model the user started from
        int(layer.weights.size + layer.bias.size) for layer in model.layers if layer.weights is not None))
    if calibration is not None:
        x = load_inputs_npz(calibration, model.input_shape)
        if not np.issubdtype(x.dtype, np.floating):
            raise UserError(f"{calibration}: calibration inputs must be float (the float model's input units), "
                            f"not {x.dtype}")
        return quantize_model(model, calibration_subset(x.astype(np.float32)), run_meta), None
    if "dataset" not in meta:
        raise UserError(f"{run_dir} has no dataset to calibrate with: give --calibration NPZ holding x with shape "
                        f"(N, {', '.join(map(str, model.input_shape))})")
    dataset = load_dataset(meta["dataset"])
    if dataset.input_shape != tuple(model.input_shape):
        raise UserError(f"dataset {meta['dataset']} now has images {dataset.input_shape}, the run takes "
                        f"{tuple(model.input_shape)}")
    return quantize_image_model(model, dataset.x_train, run_meta), dataset


def check_blob_target(board: Board, variant: str) -> None:
    """--params blob needs a board with a [slots] region and kernels whose parameters are not compiled in."""
    if board.slots is None:
        with_slots = ", ".join(b.name for b in list_boards() if b.slots is not None) or "none"
        raise UserError(f"board {board.name} has no [slots] region for model blobs, so it cannot run --params blob "
                        f"firmware (boards with slots: {with_slots})")
    if variant == "tvm":
        raise UserError("--params blob does not work with --kernels tvm (TVM compiles the parameters into its "
                        "kernels): use --kernels reference or dsp")


def check_blob_accumulators(model: QuantModel, formats: dict[str, str], monitor: QuantModel) -> None:
    """UserError for a layer whose biases exceed fixedpoint.bias_limit: the device's mcup_bind
    (bind_check.c) would refuse the blob, so it is refused here, with the layer's name, first.
    A layer's terms per output as the device counts them: its columns, or its longest row of csr
    entries (fillers included) or block4 blocks (4 weights each)."""
    weighted = [(layer, formats.get(layer.name, "dense")) for layer in model.layers if layer.has_weights]
    for layer, fmt in weighted + [(layer, "dense") for layer in monitor.layers]:
        fields = codegen.BLOB_WEIGHT_FIELDS[fmt]
        if "row_ptr" in fields:
            row_ptr = codegen.layer_blob_arrays(layer, fmt)[fields.index("row_ptr")].astype(np.int64)
            terms = int(np.diff(row_ptr).max(initial=0)) * (4 if fmt == "block4" else 1)
        else:
            terms = int(np.prod(layer.weights.shape[1:]))
        limit = fixedpoint.bias_limit(terms, layer.weight_bits)
        biggest = 0 if layer.bias is None or not layer.bias.size else int(np.abs(layer.bias.astype(np.int64)).max())
        if biggest > limit:
            raise UserError(f"layer {layer.name}: a bias of magnitude {biggest:,} with {terms:,} products per output "
                            f"could overflow the int32 accumulator (at most {max(limit, 0):,} fits), so blob "
                            "firmware would refuse this model: quantize it again, or use --params static")


# Blob firmware runs a monitor model next to the network (controller/drift_qsae.py builds it from the
# quantized model and the training images); the caller passes the builder in, so this stage does not
# depend on the controller.
MonitorBuilder = Callable[[QuantModel, np.ndarray], QuantModel]


@dataclass(frozen=True)
class CompileResult:
    fw_dir: Path
    board: Board
    variant: str
    build: build.BuildResult
    generated: codegen.GeneratedModel


def compile_model(model: QuantModel, board: Board, fw_dir: Path, variant: str,
                  objective: str = "auto", params: str = "static",
                  monitor: QuantModel | None = None, signer: Signer | None = None) -> CompileResult:
    """Generate, build and describe the firmware for an already-quantized model.

    objective "auto": the fastest formats whose parameter bytes fit the flash budget the model was
    pruned to (model.meta["flash_budget"]; costs.fit_byte_budget), and "smallest" should they still
    not fit (the count pruning planned with); without a budget, "fastest".
    `params` "blob" needs `monitor` (the monitor QSAE's QuantModel, drift_qsae.build_monitor_model) and a board
    with a [slots] region; the firmware directory then also holds monitor/ and blob.bin.
    `signer` (blob firmware only): the owner's key (codegen/signing.py). The firmware then holds its
    public key, takes only blobs it signed, and wants its authorization for UPDATE_BEGIN, ROLLBACK,
    EXIT and INFER_FILE; the factory blob is signed. Without it the firmware is a development build.
    """
    if objective not in OBJECTIVE_CHOICES:
        raise UserError(f"unknown objective '{objective}': choose one of {', '.join(OBJECTIVE_CHOICES)}")
    if params not in PARAMS_CHOICES:
        raise UserError(f"unknown params mode '{params}': choose one of {', '.join(PARAMS_CHOICES)}")
    blob_mode = params == "blob"
    if signer is not None and not blob_mode:
        raise UserError("--signing-key protects model updates: it needs --params blob (static firmware takes no "
                        "updates)")
    if signer is not None:
        missing = [name for name in CRYPTO_SOURCES if not (crypto_dir() / name).is_file()]
        if missing:
            raise UserError(f"signed firmware verifies with Monocypher, not found in {crypto_dir()} "
                            f"({', '.join(missing)} missing): run `bash scripts/fetch_crypto.sh` "
                            "(scripts/setup.sh does)")
    if blob_mode:
        check_blob_target(board, variant)
        if monitor is None:
            raise UserError("--params blob needs the monitor QSAE: pass monitor=drift_qsae.build_monitor_model(model, "
                            "training images)")
    # Everything is built in a temporary folder beside fw_dir that replaces it only once the build has
    # succeeded: a compile that fails half-way leaves a previous firmware directory as it was.
    fw_dir = Path(fw_dir)
    built: list[CompileResult] = []
    write_atomically(fw_dir, lambda tmp: built.append(
        _compile_into(model, board, tmp, variant, objective, params, monitor, signer)))
    result = built[0]
    elf = fw_dir / result.build.elf.relative_to(result.fw_dir)
    return replace(result, fw_dir=fw_dir, build=replace(result.build, elf=elf))


def _compile_into(model: QuantModel, board: Board, fw_dir: Path, variant: str, objective: str, params: str,
                  monitor: QuantModel | None, signer: Signer | None) -> CompileResult:
    """compile_model's work, in the (empty) folder fw_dir."""
    blob_mode = params == "blob"
    save_quant_model(model, fw_dir)
    src = fw_dir / "src"
    # TVM generates the layer kernels; the model glue is the same as for the reference kernels.
    glue_variant = "reference" if variant == "tvm" else variant

    budget = model.meta.get("flash_budget")

    def generate(goal: str) -> codegen.GeneratedModel:
        return codegen.generate_model_sources(model, glue_variant, src, source=model.meta.get("run_dir", model.name),
                                              objective=goal, core=board.core, params=params,
                                              monitor=monitor if blob_mode else None,
                                              byte_budget=budget if objective == "auto" else None,
                                              finish_blob=None if signer is None else lambda b: sign_blob(b, signer))

    goal = "fastest" if objective == "auto" else objective
    generated = generate(goal)
    if objective == "auto" and budget is not None and generated.param_bytes > budget:
        goal, generated = "smallest", generate("smallest")  # the budget the user gave prune holds
    check_fits(board, generated.param_bytes,
               generated.arena.size + generated.scratch_bytes + generated.monitor_bytes + board.stack_size,
               what=f"model {model.name}")
    if blob_mode:
        check_blob_accumulators(model, generated.formats, monitor)
    if blob_mode and len(generated.blob) > board.slots.capacity:
        raise UserError(f"the model blob of {model.name} is {len(generated.blob):,} B but a slot of board {board.name} "
                        f"holds {board.slots.capacity:,} B: use a smaller model")
    _write_blob_files(fw_dir, generated, monitor if blob_mode else None)
    if variant == "tvm":
        sources = tvm_kernel_sources(model, fw_dir / "tvm", formats=generated.formats)
    else:
        sources = generated.kernel_sources(model, variant)
    build.prepare_project(fw_dir, board, sources, params=params)
    if blob_mode:
        _write_security(fw_dir / "src", signer)
    result = build.build_project(fw_dir, board)  # also checks the linked sizes against the board
    doc = {
        "format_version": FIRMWARE_FORMAT_VERSION,
        "mcuprune_version": __version__,
        "board": board.name,
        "kernels": variant,
        "elf": str(result.elf.relative_to(fw_dir)),
        "arch_hash": f"0x{generated.arch_hash:08x}",
        "objective": goal,
        **({} if budget is None else {"flash_budget": budget}),
        "formats": generated.formats,
        "param_bytes": generated.param_bytes,
        "arena_bytes": generated.arena.size,
        "scratch_bytes": generated.scratch_bytes,
        "model_flash_bytes": result.model_flash_bytes,
        "firmware_flash_bytes": result.flash_bytes,
        "ram_bytes": result.ram_bytes,
        "params": params,
    }
    if blob_mode:
        header = parse_header(generated.blob)
        doc["blob"] = {"file": BLOB_FILE, "bytes": header.length, "blob_id": f"0x{header.blob_id:08x}",
                       "arrays": header.n_arrays}
        doc["monitor"] = MONITOR_DIR
        doc["slots"] = {"base": f"0x{board.slots.base:08x}", "size": board.slots.size,
                        "capacity": board.slots.capacity, "persistence": board.slots.persistence}
        doc["security"] = ({"signed": False} if signer is None else
                           {"signed": True, "key_id": signer.key_id.hex(), "public_key": signer.public.hex(),
                            "factory_counter": signer.counter})
    (fw_dir / "firmware.json").write_text(json.dumps(doc, indent=2) + "\n")
    return CompileResult(fw_dir, board, variant, result, generated)


def _c_bytes(data: bytes) -> str:
    return "{" + ", ".join(f"0x{b:02x}u" for b in data) + "}"


def _write_security(src: Path, signer: Signer | None) -> None:
    """src/mcup_security.h (firmware/runtime/security.h) and, for a signed build, the verifier's
    third-party sources in src/third_party/ (compiled through runtime/signature.c)."""
    lines = [f"/* Generated by mcuprune {__version__}: who may change this firmware (runtime/security.h). */",
             "#ifndef MCUP_SECURITY_CONFIG_H", "#define MCUP_SECURITY_CONFIG_H"]
    if signer is None:
        lines += ["/* development build (--unsigned-updates): unsigned updates, no authorization */",
                  "#define MCUP_SIGNED_UPDATES 0"]
    else:
        lines += ["#define MCUP_SIGNED_UPDATES 1",
                  f"#define MCUP_UPDATE_PUBLIC_KEY {_c_bytes(signer.public)} /* Ed25519, raw */",
                  f"#define MCUP_UPDATE_KEY_ID {_c_bytes(signer.key_id)} /* SHA-512(public key)[:8] */",
                  f'#define MCUP_UPDATE_KEY_ID_HEX "{signer.key_id.hex()}"']
        third = src / "third_party"
        third.mkdir(exist_ok=True)
        for name in CRYPTO_SOURCES:
            shutil.copyfile(crypto_dir() / name, third / name)
    (src / "mcup_security.h").write_text("\n".join([*lines, "#endif", ""]))


def _write_blob_files(fw_dir: Path, generated: codegen.GeneratedModel, monitor: QuantModel | None) -> None:
    """Blob firmware: the factory blob and the monitor; static firmware: remove stale ones."""
    if monitor is None:
        (fw_dir / BLOB_FILE).unlink(missing_ok=True)
        if (fw_dir / MONITOR_DIR / "model.json").is_file():
            shutil.rmtree(fw_dir / MONITOR_DIR)
        return
    (fw_dir / BLOB_FILE).write_bytes(generated.blob)
    save_quant_model(monitor, fw_dir / MONITOR_DIR)


def compile_run(run_dir: Path, board_name: str, fw_dir: Path, kernels_choice: str = "auto",
                objective: str = "auto", renode: bool = False, params: str = "static",
                monitor_builder: MonitorBuilder | None = None, calibration: Path | None = None,
                signing_key: Path | None = None) -> CompileResult:
    """Quantize a run and compile it. `params` "blob" needs `monitor_builder`
    (controller.drift_qsae.build_monitor_model), called with the quantized model and the training images."""
    check_new_output(fw_dir)  # before the minutes of quantizing: --out must not name a file
    signer = None if signing_key is None else load_signer(signing_key)
    if signer is not None and params != "blob":
        raise UserError("--signing-key protects model updates: it needs --params blob (static firmware takes no "
                        "updates)")
    board = load_board(board_name)
    variant = choose_variant(board, kernels_choice)
    if renode and board.renode is None:  # checked first: the Renode files are written after the build
        raise UserError(f"board {board.name} has no [renode] platform: Renode files cannot be generated for it")
    if params not in PARAMS_CHOICES:
        raise UserError(f"unknown params mode '{params}': choose one of {', '.join(PARAMS_CHOICES)}")
    monitor = None
    if params == "blob":
        check_blob_target(board, variant)  # before the minutes of quantizing and training
        if monitor_builder is None:
            raise UserError("--params blob needs a monitor builder: pass monitor_builder="
                            "drift_qsae.build_monitor_model")
        model, dataset = _quantize_run(run_dir, calibration)
        if dataset is None:
            raise UserError("--params blob trains its monitor on the run's dataset: this run has none, use "
                            "--params static")
        monitor = monitor_builder(model, dataset.x_train)
    else:
        model = quantize_run(run_dir, calibration)
    result = compile_model(model, board, fw_dir, variant, objective, params=params, monitor=monitor, signer=signer)
    if renode:
        write_renode_files(fw_dir, board)  # in the final folder: the files name the ELF's absolute path
    return result


@dataclass(frozen=True)
class FirmwareDir:
    path: Path
    info: dict
    model: QuantModel
    board: Board
    params: str = "static"  # "blob": parameters in a model blob (the fields below matter)
    variant: str = ""  # kernel variant the model code was generated for
    formats: dict[str, str] = field(default_factory=dict)  # weighted layer -> weight format
    arch_hash: int = 0  # MCUP_ARCH_HASH of the firmware
    monitor: QuantModel | None = None  # blob firmware: the monitor QSAE built with it

    @property
    def elf(self) -> Path:
        return self.path / self.info["elf"]

    @property
    def blob_path(self) -> Path | None:
        """The factory blob (blob firmware), None for static firmware."""
        return self.path / self.info["blob"]["file"] if self.params == "blob" else None

    @property
    def signed(self) -> bool:
        """Built with a signing key: takes only blobs signed with it (docs/protocol.md)."""
        return bool(self.info.get("security", {}).get("signed"))

    def update_blob(self, model: QuantModel, monitor: QuantModel, blob_id: int | None = None,
                    signer: Signer | None = None) -> bytes:
        """A model blob this firmware can bind: `model` (same architecture, any parameters) with
        `monitor`, the monitor QSAE built for it (its penultimate quantization may have changed);
        signed by `signer` if given (a signed firmware takes nothing else)."""
        if self.params != "blob":
            raise UserError(f"{self.path} is --params static firmware: it takes a new model only by re-flashing")
        arch = codegen.architecture_hash(model, self.variant, self.formats, params="blob", monitor=monitor)
        if arch != self.arch_hash:
            raise UserError(f"model {model.name} and its monitor do not have the architecture of {self.path} "
                            f"(hash 0x{arch:08x}, firmware 0x{self.arch_hash:08x}): re-flash instead of updating")
        check_blob_accumulators(model, self.formats, monitor)
        blob = codegen.build_blob(model, self.formats, monitor, self.variant, blob_id)
        return blob if signer is None else sign_blob(blob, signer)


def load_firmware_dir(fw_dir: Path) -> FirmwareDir:
    info_path = fw_dir / "firmware.json"
    if not info_path.exists():
        raise UserError(f"{fw_dir} is not a firmware directory (no firmware.json): create it with "
                        "`mcuprune compile RUN --board BOARD --out FWDIR`")
    try:
        info = json.loads(info_path.read_text())
        model = load_quant_model(fw_dir)
        params = info.get("params", "static")  # firmware.json from before blob mode: static
        monitor = load_quant_model(fw_dir / info["monitor"]) if params == "blob" else None
        variant = "reference" if info["kernels"] == "tvm" else info["kernels"]  # the glue's variant
        extra = {"params": params, "variant": variant, "formats": dict(info.get("formats", {})),
                 "arch_hash": int(info["arch_hash"], 16), "monitor": monitor}
        if params == "blob" and not (fw_dir / info["blob"]["file"]).is_file():
            raise OSError(f"{info['blob']['file']} is missing")
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"{fw_dir} is damaged ({exc}): compile it again") from None
    fw = FirmwareDir(fw_dir, info, model, load_board(info["board"]), **extra)
    if not fw.elf.exists():
        raise UserError(f"{fw.elf} is missing: compile it again")
    return fw
