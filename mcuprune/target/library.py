"""A compiled firmware's model as a drop-in C library (``mcuprune export FWDIR --format c-library``).

The library is the model part of the firmware directory and nothing else: the generated model
code and parameter arrays, the kernels the model calls and the headers they include, plus a
fixed API layer (``firmware/library/``) and build files for CMake, Zephyr, PlatformIO and
Arduino. No ``main``, startup, UART, frame protocol, slots or linker script.

The C comes from the firmware directory itself (``FWDIR/src``), not from a second run of the code
generator: the library runs exactly the code that was built and checked against the reference in
that firmware, with the weight formats compile chose. Three mechanical edits adapt it:

* every file name gets the ``mcup_`` prefix (``model.h`` becomes ``mcup_graph.h``, ``model.c``
  ``mcup_graph.c``, ``model_data.c`` ``mcup_params.c``) and the includes follow, so nothing
  clashes with an application's own ``model.h`` or ``crc32.h``;
* the generated ``mcup_init``/``mcup_run``/``mcup_bind`` become ``mcup_graph_*``: the public
  functions of those names (``mcup_model.c``) check the workspace, the arguments and, in blob
  mode, the whole blob before calling them;
* the static arena and scratch arrays of ``model.c`` become pointers into a workspace the
  application may give (``mcup_init_with_arena``), and the SysTick driver is replaced by an
  opt-in timing hook (``mcup_ticks.h``).

Each edit must match the generated text exactly, or the export stops with one line asking to
compile the firmware again. The output is built in a hidden folder next to ``out`` and renamed
into place, so a failure leaves nothing half-written.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import jinja2
import numpy as np

from mcuprune import __version__
from mcuprune.errors import UserError
from mcuprune.model.ir import Op, QuantModel
from mcuprune.model.ops import kernel_sources, spec_of
from mcuprune.resources import FIRMWARE_DIR, TARGET_TEMPLATES_DIR
from mcuprune.target.compile import FirmwareDir

LIBRARY_FORMAT = "c-library"
MANIFEST = "mcuprune-library.json"  # what export wrote; its presence lets a later export replace the folder
LIBRARY_C_DIR = FIRMWARE_DIR / "library"  # the fixed API layer
TEMPLATES_DIR = TARGET_TEMPLATES_DIR / "library"
API_HEADER = "mcup_model.h"
# The library's own files, copied as they are.
STATIC_FILES = ("mcup_model.c", "mcup_workspace.c", "mcup_ticks.h")
# Runtime sources a blob-mode model needs: mcup_bind's checks (bind_check.c), the header and data
# CRC checks (blob.c, crc32.c) and mcup_monitor (telemetry.c). The slots are the application's.
BLOB_SOURCES = ("bind_check.c", "blob.c", "crc32.c", "telemetry.c")
# File names in the library of the firmware files whose name does not follow "mcup_" + name.
_RENAMED = {"model.h": "mcup_graph.h", "model.c": "mcup_graph.c", "model_data.c": "mcup_params.c",
            "ticks.h": "mcup_ticks.h"}
# Generated functions the API layer wraps: the public name stays free for the checked version.
_WRAPPED = ("mcup_init", "mcup_run", "mcup_bind")
_GENERATED = ("model.h", "model.c", "model_data.c")  # what the code generator wrote into FWDIR/src
_INCLUDE_RE = re.compile(r'^(\s*#\s*include\s+")([^"]+)(")', re.MULTILINE)
_ARENA_RE = re.compile(r"^static int8_t mcup_arena\[[^\n]*;\n", re.MULTILINE)
_SCRATCH_RE = re.compile(r"^static int32_t mcup_scratch\[[^\n]*;\n", re.MULTILINE)
_SCRATCH_SIZE_RE = re.compile(r"\(int32_t\)sizeof\(mcup_scratch\)")
_WORKSPACE_DECL = """\
/* In the C library the arena and the scratch are in the workspace given to mcup_init_with_arena()
 * (mcup_model.c): the arena first, then the scratch, each rounded up to 4 bytes. */
int8_t *mcup_arena;
int32_t *mcup_scratch;
"""
_ADAPTED_NOTE = ("/* Adapted by mcuprune export --format c-library: files named mcup_*, mcup_init/run/bind renamed "
                 "mcup_graph_* (mcup_model.c wraps them), arena and scratch in the caller's workspace. */\n")


def library_file_name(name: str) -> str:
    """The name a firmware file has in the library.

    >>> library_file_name("model.c"), library_file_name("crc32.h"), library_file_name("mcup_nn.h")
    ('mcup_graph.c', 'mcup_crc32.h', 'mcup_nn.h')
    """
    return _RENAMED.get(name) or (name if name.startswith("mcup_") else f"mcup_{name}")


def rename_includes(text: str) -> str:
    """Point every quoted #include at the library's file name (system includes stay).

    >>> rename_includes('#include <string.h>\\n#include "model.h"\\n#  include "mcup_nn.h"\\n')
    '#include <string.h>\\n#include "mcup_graph.h"\\n#  include "mcup_nn.h"\\n'
    """
    return _INCLUDE_RE.sub(lambda m: m.group(1) + library_file_name(m.group(2)) + m.group(3), text)


def quoted_includes(text: str) -> list[str]:
    return [m.group(2) for m in _INCLUDE_RE.finditer(text)]


def c_float(value: float) -> str:
    """A float32 as a C float literal that reads back as the same float32 (9 significant digits).

    >>> c_float(1 / 255), c_float(0.5)
    ('0.00392156886f', '0.5f')
    """
    text = f"{float(np.float32(value)):.9g}"
    assert np.float32(float(text)) == np.float32(value)
    if not any(c in text for c in ".e"):
        text += ".0"  # "1.0f" is a float literal, "1f" is not
    return text + "f"


def c_identifier(name: str) -> str:
    """A model name as an identifier for project names (CMake, PlatformIO, Arduino, Zephyr).

    >>> c_identifier("digits-cnn v2")
    'digits_cnn_v2'
    """
    ident = re.sub(r"[^A-Za-z0-9_]", "_", name).strip("_") or "model"
    return ident if ident[0].isalpha() else f"m_{ident}"


def _damaged(fw: FirmwareDir, what: str) -> UserError:
    return UserError(f"{fw.path} cannot be exported as a C library ({what}): compile it again with this "
                     f"mcuprune ({__version__})")


def _sub_once(pattern: re.Pattern[str], repl: str, text: str, fw: FirmwareDir, what: str) -> str:
    new, count = pattern.subn(lambda _m: repl, text)
    if count != 1:
        raise _damaged(fw, f"src/model.c has {count} {what}, expected 1")
    return new


def adapt_graph_source(name: str, text: str, fw: FirmwareDir) -> str:
    """model.c / model.h / model_data.c of the firmware, edited for the library (module docstring)."""
    for function in _WRAPPED:
        if re.search(rf"\b{function.replace('mcup_', 'mcup_graph_')}\b", text):
            raise _damaged(fw, f"src/{name} already uses the name {function.replace('mcup_', 'mcup_graph_')}")
        text = re.sub(rf"\b{function}\b", function.replace("mcup_", "mcup_graph_"), text)
    if name == "model.c":
        for function in ("mcup_graph_init(void)", "mcup_graph_run("):
            if f"int {function}" not in text:
                raise _damaged(fw, f"src/model.c defines no {function.replace('mcup_graph_', 'mcup_')}")
        text = _sub_once(_ARENA_RE, _WORKSPACE_DECL, text, fw, "static arena declarations")
        text = _sub_once(_SCRATCH_RE, "", text, fw, "static scratch declarations")
        text = _SCRATCH_SIZE_RE.sub("(int32_t)(((uint32_t)MCUP_SCRATCH_BYTES + 3u) / 4u * 4u)", text)
        if re.search(r"\bsizeof\s*\(?\s*mcup_(arena|scratch)\b", text):
            raise _damaged(fw, "src/model.c takes the size of the arena or scratch in a way export does not know")
    first, _, rest = rename_includes(text).partition("\n")
    return f"{first}\n{_ADAPTED_NOTE}{rest}"


def kernel_file_names(model: QuantModel, formats: dict[str, str], variant: str, params: str) -> list[str]:
    """File names of the kernels the model calls, as the firmware build copied them (one per op,
    weight format and width; blob firmware also runs the monitor QSAE's dense layers)."""
    keys: set = {(layer.op, formats.get(layer.name, "dense"), layer.weight_bits)
                 for layer in model.layers if layer.has_weights}
    if params == "blob":
        keys.add((Op.DENSE, "dense", 8))  # the monitor QSAE, as codegen.GeneratedModel.kernel_sources
    keys |= {(layer.op, None) for layer in model.layers if not layer.has_weights and spec_of(layer.op).kernel}
    try:
        return [path.name for path in kernel_sources(variant, keys)]
    except ValueError as exc:
        raise UserError(f"the firmware's kernels are not known to this mcuprune ({exc}): compile it again") from None


def load_evaluation(path: Path, fw: FirmwareDir) -> dict:
    """The measured figures of `mcuprune evaluate FWDIR --json` saved in `path`, checked to be of this firmware."""
    try:
        doc = json.loads(Path(path).read_text())
        figures = {"board": str(doc["board"]), "kernels": str(doc["kernels"]),
                   "instructions_per_inference": float(doc["instructions_per_inference"]),
                   "layer_instructions": {str(k): float(v) for k, v in doc["layer_instructions"].items()},
                   "samples": int(doc["samples"]), "model_flash_bytes": int(doc["model_flash_bytes"])}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"{path} is not the output of `mcuprune evaluate FWDIR --json` ({exc})") from None
    mine = (fw.board.name, str(fw.info["kernels"]), int(fw.info["model_flash_bytes"]))
    if (figures["board"], figures["kernels"], figures["model_flash_bytes"]) != mine:
        raise UserError(f"{path} was measured on other firmware ({figures['board']}, {figures['kernels']} kernels, "
                        f"{figures['model_flash_bytes']} B of parameters), not {fw.path} ({mine[0]}, {mine[1]} "
                        f"kernels, {mine[2]} B)")
    return figures


def _library_sources(fw: FirmwareDir) -> dict[str, str]:
    """Library file name -> text of every file under src/ but the rendered API header: the API
    layer, the firmware's generated model files, kernels and (blob mode) runtime sources, and every
    header they include, transitively."""
    src = fw.path / "src"
    files = {name: (LIBRARY_C_DIR / name).read_text() for name in STATIC_FILES}
    pending = ["model.h", "model.c", "model_data.c",
               *kernel_file_names(fw.model, fw.formats, fw.variant, fw.params),
               *(BLOB_SOURCES if fw.params == "blob" else ())]
    while pending:
        name = pending.pop(0)
        lib_name = library_file_name(name)
        if lib_name in files or lib_name == API_HEADER:  # done, or the library's own (ticks.h)
            continue
        try:
            text = (src / name).read_text()
        except OSError:
            raise _damaged(fw, f"src/{name} is missing") from None
        pending += quoted_includes(text)
        files[lib_name] = adapt_graph_source(name, text, fw) if name in _GENERATED else rename_includes(text)
    return files


def _measure(src: Path, sources: list[str], fw: FirmwareDir) -> dict | None:
    """Flash and RAM of the library's objects compiled for the board's core (arm-none-eabi-gcc -O2,
    before a linker drops unused sections); None without the toolchain."""
    gcc, size = shutil.which("arm-none-eabi-gcc"), shutil.which("arm-none-eabi-size")
    nm = shutil.which("arm-none-eabi-nm")
    if gcc is None or size is None or nm is None:
        return None
    with tempfile.TemporaryDirectory(prefix="mcuprune-library-") as tmp:
        objects = []
        for name in sources:
            obj = Path(tmp) / f"{Path(name).stem}.o"
            objects.append(str(obj))
            proc = subprocess.run([gcc, *fw.board.cflags, "-std=c99", "-O2", "-ffunction-sections", "-fdata-sections",
                                   f"-I{src}", "-c", str(src / name), "-o", str(obj)],
                                  capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                lines = [line for line in proc.stderr.splitlines() if "error" in line] or ["no output"]
                raise UserError(f"the exported library does not compile for {fw.board.core}: {lines[0].strip()}")
        rows = subprocess.run([size, "-B", "-d", *objects], capture_output=True, text=True, check=True).stdout
        text = data = bss = 0
        for line in rows.splitlines()[1:]:  # Berkeley format: text data bss dec hex filename
            t, d, b = (int(v) for v in line.split()[:3])
            text, data, bss = text + t, data + d, bss + b
        symbols = subprocess.run([nm, "-S", "-t", "d", *objects], capture_output=True, text=True, check=True).stdout
        params = sum(int(parts[1]) for parts in (line.split() for line in symbols.splitlines())
                     if len(parts) == 4 and parts[3].startswith("mcup_param_"))
    return {"flash_bytes": text + data, "code_bytes": text + data - params, "param_bytes": params,
            "ram_bytes": data + bss, "compiler": "arm-none-eabi-gcc", "cflags": [*fw.board.cflags, "-O2"]}


def _render(env: jinja2.Environment, template: str, **context: object) -> str:
    return env.get_template(template).render(version=__version__, **context)


def _platformio_json(context: dict) -> str:
    doc = {
        "name": f"mcup_model_{context['c_name']}",
        "version": __version__,
        "description": f"The int8 model {context['model'].name} as a C library, generated by mcuprune "
                       f"({context['variant']} kernels)",
        "keywords": ["tinyml", "int8", "neural network", "mcuprune"],
        "frameworks": "*",
        "platforms": "*",
        "headers": [API_HEADER],
        "build": {"srcDir": "src", "includeDir": "src"},
    }
    return json.dumps(doc, indent=2) + "\n"


def _arduino_properties(context: dict) -> str:
    # author, maintainer and url are the publisher's to fill in before a Library Manager submission.
    lines = {
        "name": f"mcup_model_{context['c_name']}",
        "version": __version__,
        "author": "generated by mcuprune",
        "maintainer": "generated by mcuprune",
        "sentence": f"The int8 model {context['model'].name} as a C library (mcup_init, mcup_run).",
        "paragraph": f"Generated by mcuprune from a compiled firmware ({context['variant']} kernels"
                     f"{context['dsp_note']}). No dynamic allocation.",
        "category": "Data Processing",
        "url": "",
        "architectures": "*",
        "includes": API_HEADER,
    }
    return "".join(f"{key}={value}\n" for key, value in lines.items())


def _zephyr_module_yml(context: dict) -> str:
    return (f"# Generated by mcuprune {__version__}. Do not edit.\n"
            f"name: mcup_model_{context['c_name']}\n"
            "build:\n"
            "  cmake: zephyr\n"
            "  kconfig: zephyr/Kconfig\n")


def _context(fw: FirmwareDir, sources: list[str], measured: dict | None, evaluation: dict | None) -> dict:
    model = fw.model
    in_shape = [int(d) for d in model.input_shape]
    out_shape = [int(d) for d in model.layers[-1].out_shape]
    arena, scratch = int(fw.info["arena_bytes"]), int(fw.info["scratch_bytes"])
    workspace = -(-arena // 4) * 4 + -(-scratch // 4) * 4
    weighted = [layer for layer in model.layers if layer.has_weights]
    return {
        "source": str(fw.path.resolve()),
        "model": model,
        "c_name": c_identifier(model.name),
        "variant": fw.variant,
        "dsp_note": "; needs a core with the DSP extension: Cortex-M4, M7, M33 or M55" if fw.variant == "dsp" else "",
        "board": fw.board,
        "blob": fw.params == "blob",
        "sources": sources,
        "input_dims": len(in_shape),
        "input_shape": in_shape,
        "input_layout": "HWC" if len(in_shape) == 3 else "flat",
        "input_named_dims": list(zip(("HEIGHT", "WIDTH", "CHANNELS"), in_shape, strict=True))
        if len(in_shape) == 3 else [],
        "input_scale": c_float(model.input_q.scale),
        "input_scale_text": f"{float(np.float32(model.input_q.scale)):.9g}",
        "output_scale_text": f"{float(np.float32(model.output_q.scale)):.9g}",
        "input_zero_point": int(model.input_q.zero_point),
        "output_dims": len(out_shape),
        "output_shape": out_shape,
        "output_scale": c_float(model.output_q.scale),
        "output_zero_point": int(model.output_q.zero_point),
        "num_classes": int(model.num_classes),
        "param_bytes": int(fw.info["param_bytes"]),
        "arena_bytes": arena,
        "scratch_bytes": scratch,
        "workspace_bytes": workspace,
        "layers": [{"name": layer.name, "op": layer.op.value, "format": fw.formats.get(layer.name, "dense")
                    if layer.has_weights else "", "bits": layer.weight_bits if layer.has_weights else ""}
                   for layer in model.layers],
        "weighted_layers": len(weighted),
        "sparse_layers": sum(1 for layer in weighted if fw.formats.get(layer.name, "dense") != "dense"),
        "int4_layers": sum(1 for layer in weighted if layer.weight_bits == 4),
        "measured": measured,
        "evaluation": evaluation,
    }


def _summary(fw: FirmwareDir, out: Path, context: dict, files: list[str]) -> dict:
    measured, evaluation = context["measured"], context["evaluation"]
    return {
        "format": LIBRARY_FORMAT,
        "out": str(out),
        "firmware": str(fw.path),
        "model": fw.model.name,
        "board": fw.board.name,
        "core": fw.board.core,
        "kernels": fw.variant,
        "params": fw.params,
        "formats": dict(fw.formats),
        "input": {"shape": context["input_shape"], "scale": float(fw.model.input_q.scale),
                  "zero_point": context["input_zero_point"]},
        "output": {"shape": context["output_shape"], "scale": float(fw.model.output_q.scale),
                   "zero_point": context["output_zero_point"]},
        "num_classes": context["num_classes"],
        "param_bytes": context["param_bytes"],
        "arena_bytes": context["arena_bytes"],
        "scratch_bytes": context["scratch_bytes"],
        "workspace_bytes": context["workspace_bytes"],
        "library_flash_bytes": None if measured is None else measured["flash_bytes"],
        "library_code_bytes": None if measured is None else measured["code_bytes"],
        "library_ram_bytes": None if measured is None else measured["ram_bytes"],
        "instructions_per_inference": None if evaluation is None else evaluation["instructions_per_inference"],
        "sources": context["sources"],
        "files": files,
        "mcuprune_version": __version__,
    }


def _check_out(out: Path) -> None:
    if out.is_file() or (out.exists() and not out.is_dir()):
        raise UserError(f"{out} is a file: give a directory name for the C library, such as {out.stem}-lib")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise UserError(f"{out} is a non-empty directory that mcuprune export did not write: give a new directory")


@contextmanager
def _replaced_atomically(out: Path) -> Iterator[Path]:
    """A fresh folder next to `out` to build in; renamed to `out` (replacing an earlier export) only
    when the block completes. On an exception nothing is left behind, parents created included."""
    missing = [p for p in reversed(out.absolute().parents) if not p.exists()]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed export of this process id
    try:
        tmp.mkdir()
        yield tmp
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        if out.exists():
            os.replace(out, old)
        try:
            os.replace(tmp, out)
        except OSError:
            if old.exists():
                os.replace(old, out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for parent in reversed(missing):
            try:
                parent.rmdir()
            except OSError:
                break
        raise


def write_c_library(fw: FirmwareDir, out: Path, evaluation: dict | None = None) -> dict:
    """Write the firmware's model as a C library into the folder `out` (see the module docstring);
    returns what was written and the model's figures (the `--json` object of the export command).

    `evaluation`: ``load_evaluation`` of an `evaluate --json` of this firmware, for the instruction
    counts in the README. `out` must be new, empty or an earlier export (which is replaced).
    """
    if fw.info.get("kernels") == "tvm":
        raise UserError(f"{fw.path} runs TVM-generated kernels, which export --format c-library does not take: "
                        "compile the run with --kernels reference or dsp")
    out = Path(out)
    _check_out(out)
    sources_text = _library_sources(fw)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES_DIR), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True, autoescape=False)
    sources = sorted(name for name in sources_text if name.endswith(".c"))
    with _replaced_atomically(out) as tmp:
        src = tmp / "src"
        src.mkdir()
        for name, text in sources_text.items():
            (src / name).write_text(text)
        context = _context(fw, sources, None, evaluation)
        (src / API_HEADER).write_text(_render(env, "mcup_model.h.j2", **context))
        context["measured"] = _measure(src, sources, fw)  # also proves the library compiles for the core
        generated = {
            "CMakeLists.txt": _render(env, "CMakeLists.txt.j2", **context),
            "cmake/arm-none-eabi.cmake": _render(env, "arm-none-eabi.cmake.j2", **context),
            "zephyr/module.yml": _zephyr_module_yml(context),
            "zephyr/CMakeLists.txt": _render(env, "zephyr_CMakeLists.txt.j2", **context),
            "zephyr/Kconfig": _render(env, "Kconfig.j2", **context),
            "library.json": _platformio_json(context),
            "library.properties": _arduino_properties(context),
            "README.md": _render(env, "README.md.j2", **context),
        }
        for rel, text in generated.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_text(text)
        files = sorted([f"src/{name}" for name in (*sources_text, API_HEADER)] + [*generated, MANIFEST])
        summary = _summary(fw, out, context, files)
        (tmp / MANIFEST).write_text(json.dumps(summary, indent=2) + "\n")
    return summary
