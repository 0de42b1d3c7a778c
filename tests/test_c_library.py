"""`mcuprune export FWDIR --format c-library`: the model as a C library for someone else's firmware.

The firmware directories come from the digits CNN of conftest.py in four shapes: dense, pruned
into packed sparse formats, int4 weights, and blob mode. The sparse and int4 variants are made
from the dense int8 model's integers directly (weights zeroed or narrowed in numpy): they need not
be good models, only models the library and the int8 reference must agree on.

The on-target test builds a firmware written here (vector table, reset, linker script, output
through semihosting; nothing from mcuprune's firmware/) with CMake and the exported toolchain
file, links the library, runs it in QEMU on a Cortex-M4 and a Cortex-M3 board and compares every
output with the reference. The host test builds the same library with gcc and clang.
"""

from __future__ import annotations

import configparser
import doctest
import json
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from host_c import require

import mcuprune.target.library
from mcuprune.codegen.blob import pack_blob
from mcuprune.errors import UserError
from mcuprune.model.interpreter import run_s8
from mcuprune.model.ir import QuantModel
from mcuprune.model.reference import dequantize_output, quantize_input
from mcuprune.resources import KERNEL_DIR
from mcuprune.target.board import load_board
from mcuprune.target.compile import FirmwareDir, compile_model, load_firmware_dir, quantize_run
from mcuprune.target.library import MANIFEST, write_c_library
from mcuprune.train.datasets import to_int8

STRICT = ["-std=c99", "-Wall", "-Wextra", "-Werror"]
QEMU_BOARDS = {  # board -> the core flags the test firmware is built with
    "mps2-an386": "-mcpu=cortex-m4 -mthumb -mfloat-abi=hard -mfpu=fpv4-sp-d16",
    "mps2-an385": "-mcpu=cortex-m3 -mthumb -mfloat-abi=soft",
}


# --- the firmware directories --------------------------------------------------------------------


def _zero_smallest(model: QuantModel, quantile: float) -> QuantModel:
    """The model with the smallest weights of every layer zeroed and masked (the mask is what makes
    compile consider the sparse formats)."""
    layers = []
    for layer in model.layers:
        if layer.has_weights:
            w = np.asarray(layer.weights)
            keep = np.abs(w.astype(np.int16)) > np.quantile(np.abs(w.astype(np.int16)), quantile)
            layer = replace(layer, weights=np.where(keep, w, 0).astype(w.dtype), mask=keep)
        layers.append(layer)
    return replace(model, layers=tuple(layers))


def _int4(model: QuantModel) -> QuantModel:
    """Every weighted layer but the classifier with int4 weights (the int8 ones divided by 18)."""
    weighted = [layer.name for layer in model.layers if layer.has_weights]

    def narrow(layer):
        w4 = np.clip(np.round(layer.weights / 18), -7, 7).astype(np.int8)
        return replace(layer, weights=w4, weight_bits=4, mask=None if layer.mask is None else w4 != 0)

    return replace(model, layers=tuple(narrow(la) if la.name in weighted[:-1] else la for la in model.layers))


@pytest.fixture(scope="module")
def firmware(digits_run, tmp_path_factory: pytest.TempPathFactory) -> dict[str, FirmwareDir]:
    """kind -> compiled firmware directory: dense (reference and dsp kernels), sparse, int4, blob."""
    require("arm-none-eabi-gcc")
    from mcuprune.controller.drift_qsae import build_monitor_qsae

    run_dir, dataset = digits_run
    dense = quantize_run(run_dir)
    root = tmp_path_factory.mktemp("c-library-fw")
    m3, m4 = load_board("mps2-an385"), load_board("mps2-an386")
    monitor = build_monitor_qsae(dense, dataset.x_train[:800], steps=300, seed=0).model
    specs = {
        "dense": (dense, m3, "reference", "fastest", {}),
        "dense-dsp": (dense, m4, "dsp", "fastest", {}),
        "sparse": (_zero_smallest(dense, 0.85), m3, "reference", "smallest", {}),
        "int4": (_int4(_zero_smallest(dense, 0.5)), m3, "reference", "smallest", {}),
        "blob": (dense, m3, "reference", "fastest", {"params": "blob", "monitor": monitor}),
    }
    for kind, (model, board, variant, objective, extra) in specs.items():
        compile_model(model, board, root / kind, variant, objective=objective, **extra)
    fws = {kind: load_firmware_dir(root / kind) for kind in specs}
    assert any(fmt != "dense" for fmt in fws["sparse"].formats.values()), fws["sparse"].formats
    assert {layer.weight_bits for layer in fws["int4"].model.layers if layer.has_weights} == {4, 8}
    return fws


@pytest.fixture(scope="module")
def libraries(firmware: dict[str, FirmwareDir], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("c-library")
    for kind, fw in firmware.items():
        summary = write_c_library(fw, root / kind)
        assert summary["kernels"] == fw.variant and summary["params"] == fw.params
    return {kind: root / kind for kind in firmware}


@pytest.fixture(scope="module")
def inputs(digits_run) -> np.ndarray:
    """Every digits test image (359 >= 200), int8 as the model takes it."""
    _, dataset = digits_run
    return to_int8(dataset.x_test)


def _run(cmd: list[str], cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


# --- what the folder holds -----------------------------------------------------------------------


def test_doctests() -> None:
    assert doctest.testmod(mcuprune.target.library).failed == 0



def test_library_holds_the_model_and_no_firmware(libraries: dict[str, Path], firmware: dict[str, FirmwareDir]) -> None:
    for kind, lib in libraries.items():
        src = {p.name for p in (lib / "src").iterdir()}
        assert all(name.startswith("mcup_") for name in src), src
        # no main, startup, UART, frame protocol, slots or SysTick driver
        assert not src & {"mcup_main.c", "mcup_startup.c", "mcup_uart.h", "mcup_protocol.c", "mcup_slots.c",
                          "mcup_cobs.c", "mcup_ticks.c", "mcup_semihost.c"}, src
        assert not list(lib.rglob("*.ld"))
        kernel_files = {p.name for p in (KERNEL_DIR / "reference").glob("*.c")}
        ran = {p.name for p in (firmware[kind].path / "src").iterdir()} & kernel_files
        assert {name.removeprefix("mcup_") for name in src} & kernel_files == ran  # exactly the firmware's kernels
        manifest = json.loads((lib / MANIFEST).read_text())
        assert sorted(manifest["files"]) == sorted(str(p.relative_to(lib)) for p in lib.rglob("*") if p.is_file())
        for text in (p.read_text() for p in (lib / "src").glob("*.[ch]")):
            assert "0xE000E01" not in text and "mcup_ticks_init" not in text  # no SysTick register, no driver
            assert "malloc" not in text
        header = (lib / "src" / "mcup_model.h").read_text()
        assert 'extern "C"' in header and "mcup_init_with_arena" in header
        assert ("int mcup_bind(const void *blob, size_t size);" in header) == (kind == "blob")
    sparse = (libraries["sparse"] / "src")
    assert any(sparse.glob("mcup_*_csr*.c")) or any(sparse.glob("mcup_*_bitmask.c"))
    assert any((libraries["int4"] / "src").glob("mcup_*_s4_*.c"))
    assert any((libraries["dense-dsp"] / "src").glob("mcup_dsp.h"))


def test_ecosystem_files_are_well_formed(libraries: dict[str, Path]) -> None:
    """Zephyr, PlatformIO and Arduino cannot be installed here: their files are checked against the
    formats those tools document, and every file they name must exist."""
    import yaml

    for lib in libraries.values():
        sources = sorted(p.name for p in (lib / "src").glob("*.c"))
        cmake = (lib / "CMakeLists.txt").read_text()
        assert sorted(re.findall(r"/src/(\S+\.c)", cmake)) == sources
        assert "add_library(mcup_model STATIC" in cmake
        # Zephyr: module.yml names the CMake folder and Kconfig file; the CMake lists every source
        module = yaml.safe_load((lib / "zephyr" / "module.yml").read_text())
        assert re.fullmatch(r"[A-Za-z0-9_]+", module["name"])
        assert (lib / module["build"]["cmake"] / "CMakeLists.txt").is_file()
        kconfig = (lib / module["build"]["kconfig"]).read_text()
        assert re.search(r"^config MCUP_MODEL\n\tbool ", kconfig, re.MULTILINE)
        assert re.search(r"^config MCUP_LAYER_TIMING\n\tbool .*\n\tdepends on MCUP_MODEL$", kconfig, re.MULTILINE)
        zephyr_cmake = (lib / "zephyr" / "CMakeLists.txt").read_text()
        assert sorted(re.findall(r"\$\{MCUP_SRC\}/(\S+\.c)", zephyr_cmake)) == sources
        assert "if(CONFIG_MCUP_MODEL)" in zephyr_cmake and "zephyr_include_directories(${MCUP_SRC})" in zephyr_cmake
        # PlatformIO library.json
        pio = json.loads((lib / "library.json").read_text())
        assert re.fullmatch(r"\d+\.\d+\.\d+", pio["version"]) and pio["name"]
        assert (lib / pio["build"]["srcDir"]).is_dir() and (lib / pio["build"]["includeDir"]).is_dir()
        assert all((lib / pio["build"]["includeDir"] / h).is_file() for h in pio["headers"])
        # Arduino library.properties (1.5 format: the sources under src/)
        parser = configparser.ConfigParser(delimiters=("=",), interpolation=None)
        parser.optionxform = str
        parser.read_string("[library]\n" + (lib / "library.properties").read_text())
        props = dict(parser["library"])
        assert {"name", "version", "author", "maintainer", "sentence", "paragraph", "category", "url",
                "architectures"} <= set(props)
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9 _.\-]*", props["name"])
        assert props["category"] in ("Display", "Communication", "Signal Input/Output", "Sensors", "Device Control",
                                     "Timing", "Data Storage", "Data Processing", "Other")
        assert all((lib / "src" / h.strip()).is_file() for h in props["includes"].split(","))
        readme = (lib / "README.md").read_text()
        assert "```c" in readme and "mcup_run(" in readme and "MCUP_WORKSPACE_BYTES" in readme


# --- the host: gcc and clang ----------------------------------------------------------------------

HOST_HARNESS = r"""
/* Host harness: argv = inputs.bin count floats.bin nfloats out_logits.bin out_q.bin out_deq.bin [blob...].
 * Exit status 0, or the number of the first check that failed. Prints mcup_bind's result per blob. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mcup_model.h"

#ifdef MCUP_LAYER_TIMING
static uint32_t fake_clock;
uint32_t mcup_ticks_now(void)
{
    fake_clock += 7u;
    return fake_clock;
}
#endif

static int32_t workspace[MCUP_WORKSPACE_BYTES / 4 + 2];

static void *read_file(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        exit(90);
    }
    fseek(f, 0, SEEK_END);
    *size = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    void *buf = malloc(*size + 4); /* malloc is 4-aligned; the harness may, the library does not */
    if (buf == NULL || fread(buf, 1, *size, f) != *size) {
        exit(91);
    }
    fclose(f);
    return buf;
}

static void write_file(const char *path, const void *data, size_t size)
{
    FILE *f = fopen(path, "wb");
    if (f == NULL || fwrite(data, 1, size, f) != size) {
        exit(92);
    }
    fclose(f);
}

int main(int argc, char **argv)
{
    size_t size;
    int8_t probe[MCUP_INPUT_SIZE] = {0};
    int8_t logits[MCUP_OUTPUT_SIZE];
    if (argc < 8) {
        return 99;
    }
    if (mcup_run(probe, logits) != MCUP_ERR_NOT_INITIALIZED) {
        return 1;
    }
    if (mcup_init_with_arena((char *)workspace + 1, MCUP_WORKSPACE_BYTES) != MCUP_ERR_ARENA_ALIGN) {
        return 2;
    }
    if (MCUP_WORKSPACE_BYTES > 0 &&
        mcup_init_with_arena(workspace, MCUP_WORKSPACE_BYTES - 1) != MCUP_ERR_ARENA_TOO_SMALL) {
        return 3;
    }
    if (mcup_init_with_arena(workspace, sizeof workspace) != MCUP_OK) {
        return 4;
    }
#ifdef MCUP_PARAMS_BLOB
    if (mcup_run(probe, logits) != MCUP_ERR_NO_BLOB) {
        return 5;
    }
    for (int i = 8; i < argc; i++) {
        void *blob = read_file(argv[i], &size);
        printf("%d\n", mcup_bind(blob, size)); /* a bound blob stays allocated */
    }
#endif
    const int8_t *x = read_file(argv[1], &size);
    const long count = atol(argv[2]);
    int8_t *out = malloc((size_t)count * MCUP_OUTPUT_SIZE);
    for (long i = 0; i < count; i++) {
        if (mcup_run(x + i * MCUP_INPUT_SIZE, out + i * MCUP_OUTPUT_SIZE) != MCUP_OK) {
            return 6;
        }
#ifdef MCUP_LAYER_TIMING
        for (int k = 0; k < MCUP_NUM_LAYERS; k++) {
            if (mcup_layer_ticks[k] != 7u) {
                return 7;
            }
        }
#endif
    }
    write_file(argv[5], out, (size_t)count * MCUP_OUTPUT_SIZE);
    if (mcup_argmax(out) < 0 || mcup_argmax(out) >= MCUP_OUTPUT_SIZE || strlen(mcup_strerror(-11)) < 5) {
        return 8;
    }

    /* float helpers over whole chunks of the input/output size */
    const float *f = read_file(argv[3], &size);
    const long nf = atol(argv[4]);
    int8_t *q = calloc((size_t)nf, 1);
    float *deq = calloc((size_t)nf, sizeof(float));
    for (long i = 0; i + MCUP_INPUT_SIZE <= nf; i += MCUP_INPUT_SIZE) {
        mcup_quantize_input(f + i, q + i);
    }
    for (long i = 0; i + MCUP_OUTPUT_SIZE <= nf; i += MCUP_OUTPUT_SIZE) {
        mcup_dequantize_output(q + i, deq + i);
    }
    write_file(argv[6], q, (size_t)nf);
    write_file(argv[7], deq, (size_t)nf * sizeof(float));
    return 0;
}
"""

CXX_CHECK = """
#include "mcup_model.h"
int main() { static int8_t in[MCUP_INPUT_SIZE], out[MCUP_OUTPUT_SIZE]; return mcup_init() | mcup_run(in, out); }
"""


def _bad_blobs(fw: FirmwareDir, blob: bytes) -> list[tuple[bytes, str]]:
    """Blobs mcup_bind must refuse, each with the error it must name."""
    from mcuprune.codegen.emit import blob_arrays

    arrays = blob_arrays(fw.model, fw.formats, fw.monitor)
    short = [a[: max(a.size - 1, 0)] if i == 1 else a for i, a in enumerate(arrays)]
    corrupt = bytearray(blob)
    corrupt[-1] ^= 0x40
    return [(blob[:100], "MCUP_ERR_BLOB_HEADER"),  # shorter than its length field
            (pack_blob(arrays, fw.arch_hash ^ 1), "MCUP_ERR_BLOB_ARCH"),
            (bytes(corrupt), "MCUP_ERR_BLOB_CRC"),
            (pack_blob(short, fw.arch_hash), "MCUP_ERR_BLOB_CONTENT")]


@pytest.mark.parametrize("compiler", ["gcc", "clang"])
@pytest.mark.parametrize("kind", ["dense", "sparse", "int4", "blob"])
def test_library_on_the_host_is_bit_exact(libraries: dict[str, Path], firmware: dict[str, FirmwareDir],
                                          inputs: np.ndarray, tmp_path: Path, compiler: str, kind: str) -> None:
    cc = require(compiler)
    lib, fw = libraries[kind], firmware[kind]
    src = lib / "src"
    exe = tmp_path / "harness"
    (tmp_path / "harness.c").write_text(HOST_HARNESS)
    timing = ["-DMCUP_LAYER_TIMING"] if compiler == "clang" else []  # the opt-in hook, once per model
    _run([cc, *STRICT, "-O1", *timing, f"-I{src}", *map(str, sorted(src.glob("*.c"))), str(tmp_path / "harness.c"),
          "-o", str(exe)])
    (tmp_path / "x.bin").write_bytes(inputs.tobytes())
    rng = np.random.default_rng(11)
    scale = np.float32(fw.model.input_q.scale)
    floats = np.concatenate([  # halves exactly (ties), values beyond the int8 range, and plain noise
        (np.arange(-300, 300, dtype=np.float32) + np.float32(0.5)) * scale,
        rng.normal(0.0, 200.0, 3000).astype(np.float32) * scale, rng.uniform(-1, 2, 3000).astype(np.float32)])
    floats = floats[: len(floats) // (fw.model.input_size * 10) * fw.model.input_size * 10]  # whole chunks
    (tmp_path / "f.bin").write_bytes(floats.tobytes())
    blobs = []
    if kind == "blob":
        factory = fw.blob_path.read_bytes()
        bad = _bad_blobs(fw, factory)
        blobs = [factory, *(b for b, _ in bad)]  # the factory one stays bound through the refusals
        for i, b in enumerate(blobs):
            (tmp_path / f"blob{i}.bin").write_bytes(b)
    proc = subprocess.run([str(exe), str(tmp_path / "x.bin"), str(len(inputs)), str(tmp_path / "f.bin"),
                           str(len(floats)), str(tmp_path / "y.bin"), str(tmp_path / "q.bin"), str(tmp_path / "d.bin"),
                           *(str(tmp_path / f"blob{i}.bin") for i in range(len(blobs)))],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc
    got = np.frombuffer((tmp_path / "y.bin").read_bytes(), dtype=np.int8).reshape(len(inputs), -1)
    np.testing.assert_array_equal(got, run_s8(fw.model, inputs))
    q = np.frombuffer((tmp_path / "q.bin").read_bytes(), dtype=np.int8)
    np.testing.assert_array_equal(q, quantize_input(floats, fw.model.input_q))
    deq = np.frombuffer((tmp_path / "d.bin").read_bytes(), dtype=np.float32)
    np.testing.assert_array_equal(deq, dequantize_output(q, fw.model.output_q))
    if kind == "blob":
        header = (src / "mcup_model.h").read_text()
        codes = {name: int(v) for name, v in re.findall(r"#define (MCUP_ERR_\w+|MCUP_OK)\s+\(?(-?\d+)\)?", header)}
        assert [int(line) for line in proc.stdout.split()] == [codes["MCUP_OK"], *(codes[e] for _, e in bad)]


def test_header_compiles_as_cpp(libraries: dict[str, Path], tmp_path: Path) -> None:
    gxx = require("g++")
    (tmp_path / "check.cpp").write_text(CXX_CHECK)
    for lib in (libraries["dense"], libraries["blob"]):
        _run([gxx, "-std=c++11", "-Wall", "-Wextra", "-Werror", f"-I{lib / 'src'}", "-c", str(tmp_path / "check.cpp"),
              "-o", str(tmp_path / "check.o")])


# --- in QEMU: a firmware of our own links the library through CMake -----------------------------------

TEST_STARTUP = r"""
/* The smallest start an Armv7-M core needs: stack pointer and reset vector, .data and .bss,
 * the FPU when the build uses it; every fault exits QEMU with status 3. */
#include <stdint.h>

extern uint32_t __data_load[], __data_start[], __data_end[], __bss_start[], __bss_end[], __stack_top[];
int main(void);
void test_exit(int code);
void reset_handler(void);
void fault_handler(void);

__attribute__((section(".vectors"), used)) const uintptr_t vectors[16] = {
    (uintptr_t)__stack_top, (uintptr_t)reset_handler, (uintptr_t)fault_handler, (uintptr_t)fault_handler,
    (uintptr_t)fault_handler, (uintptr_t)fault_handler, (uintptr_t)fault_handler,
};

void fault_handler(void)
{
    test_exit(3);
}

void reset_handler(void)
{
#if defined(__ARM_FP)
    *(volatile uint32_t *)0xE000ED88u |= 0xFu << 20; /* CPACR: CP10 and CP11 full access */
    __asm__ volatile("dsb\n\tisb" ::: "memory");
#endif
    for (uint32_t *s = __data_load, *d = __data_start; d < __data_end;) {
        *d++ = *s++;
    }
    for (uint32_t *d = __bss_start; d < __bss_end;) {
        *d++ = 0u;
    }
    test_exit(main());
}
"""

TEST_MAIN = r"""
/* Runs every compiled-in input through the library and writes the outputs to a host file. */
#include <stdint.h>

#include "mcup_model.h"

#include "inputs.h" /* N_INPUTS, OUT_PATH, test_inputs: written by the test */

static uint32_t semihost(uint32_t op, const void *args)
{
    register uint32_t r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = args;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

void test_exit(int code)
{
    const uint32_t args[2] = {0x20026u, (uint32_t)code}; /* ADP_Stopped_ApplicationExit, status */
    semihost(0x20u, args);                               /* SYS_EXIT_EXTENDED */
    for (;;) {
    }
}

#ifdef CALLER_ARENA
static int32_t workspace[MCUP_WORKSPACE_BYTES / 4 + 1];
#endif
static int8_t outputs[N_INPUTS][MCUP_OUTPUT_SIZE];

int main(void)
{
#ifdef CALLER_ARENA
    if (mcup_init_with_arena(workspace, sizeof workspace) != MCUP_OK) {
        return 10;
    }
#else
    if (mcup_init() != MCUP_OK) {
        return 11;
    }
#endif
#ifdef MCUP_PARAMS_BLOB
    if (mcup_bind(MCUP_FACTORY_BLOB, MCUP_FACTORY_BLOB_BYTES) != MCUP_OK) {
        return 12;
    }
#endif
    for (uint32_t i = 0; i < N_INPUTS; i++) {
        if (mcup_run(test_inputs[i], outputs[i]) != MCUP_OK) {
            return 13;
        }
    }
    const uint32_t open_args[3] = {(uint32_t)(uintptr_t)OUT_PATH, 5u, sizeof OUT_PATH - 1u}; /* mode 5: "wb" */
    const uint32_t handle = semihost(0x01u, open_args);                                      /* SYS_OPEN */
    if (handle == 0xFFFFFFFFu) {
        return 14;
    }
    const uint32_t write_args[3] = {handle, (uint32_t)(uintptr_t)outputs, sizeof outputs};
    if (semihost(0x05u, write_args) != 0u) { /* SYS_WRITE returns the bytes not written */
        return 15;
    }
    semihost(0x02u, &handle); /* SYS_CLOSE */
    return 0;
}
"""

TEST_LINKER_SCRIPT = """
/* mps2-an385/an386: 4 MB of code memory at 0 (the vector table first), 4 MB of RAM at 0x20000000. */
MEMORY
{
    FLASH (rx) : ORIGIN = 0x00000000, LENGTH = 4M
    RAM (rwx)  : ORIGIN = 0x20000000, LENGTH = 4M
}
ENTRY(reset_handler)
SECTIONS
{
    .text : { KEEP(*(.vectors)) *(.text .text.*) *(.rodata .rodata.*) . = ALIGN(4); } > FLASH
    .ARM.exidx : { *(.ARM.exidx*) } > FLASH
    .data : { . = ALIGN(4); __data_start = .; *(.data .data.*) . = ALIGN(4); __data_end = .; } > RAM AT > FLASH
    __data_load = LOADADDR(.data);
    .bss (NOLOAD) : { . = ALIGN(4); __bss_start = .; *(.bss .bss.* COMMON) . = ALIGN(4); __bss_end = .; } > RAM
    __stack_top = ORIGIN(RAM) + LENGTH(RAM);
}
"""

TEST_CMAKE = """
cmake_minimum_required(VERSION 3.13)
project(mcup_library_test C)
add_compile_options(-Wall -Wextra -Werror)  # the library's sources too
add_subdirectory(${MCUP_LIBRARY} mcup_model)
add_executable(test_fw.elf startup.c main.c)
target_compile_definitions(test_fw.elf PRIVATE ${TEST_DEFINES})
target_link_libraries(test_fw.elf PRIVATE mcup_model)
target_link_options(test_fw.elf PRIVATE -nostartfiles -T${CMAKE_CURRENT_SOURCE_DIR}/link.ld)
"""


def _inputs_header(x: np.ndarray, out_path: Path) -> str:
    rows = ",\n".join("    {" + ", ".join(str(int(v)) for v in row) + "}" for row in x.reshape(len(x), -1))
    return (f'#define N_INPUTS {len(x)}u\n#define OUT_PATH "{out_path}"\n'
            f"static const int8_t test_inputs[N_INPUTS][MCUP_INPUT_SIZE] = {{\n{rows}\n}};\n")


@pytest.mark.qemu
@pytest.mark.parametrize("kind, board", [
    ("dense", "mps2-an386"), ("dense", "mps2-an385"), ("dense-dsp", "mps2-an386"), ("sparse", "mps2-an386"),
    ("sparse", "mps2-an385"), ("int4", "mps2-an385"), ("blob", "mps2-an386"), ("blob", "mps2-an385"),
])  # fmt: skip
def test_own_firmware_links_the_library_with_cmake_and_matches_in_qemu(
        libraries: dict[str, Path], firmware: dict[str, FirmwareDir], inputs: np.ndarray, tmp_path: Path,
        kind: str, board: str) -> None:
    cmake, qemu = require("cmake"), require("qemu-system-arm")
    lib = libraries[kind]
    app = tmp_path / "app"
    app.mkdir()
    out = tmp_path / "outputs.bin"
    for name, text in {"startup.c": TEST_STARTUP, "main.c": TEST_MAIN, "link.ld": TEST_LINKER_SCRIPT,
                       "CMakeLists.txt": TEST_CMAKE, "inputs.h": _inputs_header(inputs, out)}.items():
        (app / name).write_text(text)
    defines = "CALLER_ARENA" if board == "mps2-an386" else "STATIC_ARENA"  # both ways to give the workspace
    build = tmp_path / "build"
    _run([cmake, "-S", str(app), "-B", str(build), f"-DCMAKE_TOOLCHAIN_FILE={lib / 'cmake' / 'arm-none-eabi.cmake'}",
          f"-DMCUP_CPU_FLAGS={QEMU_BOARDS[board]}", f"-DMCUP_LIBRARY={lib}", f"-DTEST_DEFINES={defines}",
          "-DCMAKE_BUILD_TYPE=Release"])
    _run([cmake, "--build", str(build), "-j2"])
    _run([qemu, "-M", board, "-display", "none", "-monitor", "none", "-serial", "null",
          "-semihosting-config", "enable=on,target=native", "-kernel", str(build / "test_fw.elf")], timeout=120)
    got = np.frombuffer(out.read_bytes(), dtype=np.int8).reshape(len(inputs), -1)
    np.testing.assert_array_equal(got, run_s8(firmware[kind].model, inputs))


# --- the command line ----------------------------------------------------------------------------------


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mcuprune", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, check=False)


def _assert_one_line_error(proc: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mcuprune: error:") and fragment in lines[0], proc.stderr
    assert proc.stdout == ""


def test_cli_exports_once_as_json_and_refuses_bad_outputs(firmware: dict[str, FirmwareDir], tmp_path: Path) -> None:
    fw = str(firmware["sparse"].path)
    proc = _cli("export", fw, "--format", "c-library", "--out", "lib", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)  # exactly one object, nothing else on stdout
    assert summary["format"] == "c-library" and summary["formats"] == firmware["sparse"].formats
    assert summary["library_flash_bytes"] > summary["param_bytes"] > 0
    (tmp_path / "taken").write_text("mine")
    for args, fragment in [(("--format", "c-library", "--out", "taken"), "is a file"),
                           (("--format", "c-header", "--out", "new"), "unknown export format 'c-header'")]:
        _assert_one_line_error(_cli("export", fw, *args, cwd=tmp_path), fragment)
    assert (tmp_path / "taken").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lib", "taken"]  # nothing left behind


def test_export_replaces_only_its_own_folder(firmware: dict[str, FirmwareDir], tmp_path: Path) -> None:
    fw = firmware["dense"]
    (tmp_path / "lib").mkdir()  # an empty folder may be used
    write_c_library(fw, tmp_path / "lib")
    (tmp_path / "lib" / "src" / "stale.c").write_text("left by hand")
    write_c_library(fw, tmp_path / "lib")  # an earlier export is replaced as a whole
    assert not (tmp_path / "lib" / "src" / "stale.c").exists()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="did not write"):
        write_c_library(fw, tmp_path / "other")
    assert [p.name for p in (tmp_path / "other").iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lib", "other"]


def test_a_failed_export_leaves_nothing(firmware: dict[str, FirmwareDir], tmp_path: Path) -> None:
    damaged = tmp_path / "fw"
    shutil.copytree(firmware["dense"].path, damaged)
    model_c = damaged / "src" / "model.c"
    original = model_c.read_text()
    # generated code export does not recognise: refused before anything is written
    model_c.write_text(original.replace("static int8_t mcup_arena[", "static int8_t mcup_arena_[", 1))
    with pytest.raises(UserError, match="compile it again"):
        write_c_library(load_firmware_dir(damaged), tmp_path / "lib")
    # a library that does not compile for the core: found once the folder is being built
    model_c.write_text(original)
    kernel = damaged / "src" / "fc_s8_dense.c"
    kernel.write_text("#error broken on purpose\n" + kernel.read_text())
    with pytest.raises(UserError, match="does not compile for cortex-m3"):
        write_c_library(load_firmware_dir(damaged), tmp_path / "deep" / "lib")
    (damaged / "src" / "mcup_nn.h").unlink()
    with pytest.raises(UserError, match="mcup_nn.h is missing"):
        write_c_library(load_firmware_dir(damaged), tmp_path / "lib")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fw"]  # no library, no temporary, not even "deep"


def test_readme_carries_measured_instructions(firmware: dict[str, FirmwareDir], tmp_path: Path) -> None:
    from mcuprune.target.library import load_evaluation

    fw = firmware["dense"]
    doc = {"board": fw.board.name, "kernels": fw.info["kernels"], "instructions_per_inference": 123456.4,
           "layer_instructions": {layer.name: 1000.0 for layer in fw.model.layers}, "samples": 359,
           "model_flash_bytes": fw.info["model_flash_bytes"]}
    (tmp_path / "eval.json").write_text(json.dumps(doc))
    summary = write_c_library(fw, tmp_path / "lib", load_evaluation(tmp_path / "eval.json", fw))
    assert summary["instructions_per_inference"] == 123456.4
    assert "123,456 per inference on mps2-an385" in (tmp_path / "lib" / "README.md").read_text()
    (tmp_path / "eval.json").write_text(json.dumps({**doc, "board": "mps2-an386"}))
    with pytest.raises(UserError, match="measured on other firmware"):
        load_evaluation(tmp_path / "eval.json", fw)
