"""Build the benchmark harness (bench.c, startup.c, link.ld here) into an ELF and run it in QEMU.

Shared by bench/kernels/run.py and bench/sparse/run.py, which generate bench_data.h: the layers,
their inputs and, per case, a wrapper calling its kernel (``case_c``). The ELF prints a
calibration line and one line per case (SysTick ticks, output checksum); ``run_all`` runs the
ELFs under ``qemu-system-arm -icount shift=0`` and parses them. One tick is 40 instructions
(25 MHz core clock, 1 ns per instruction), so counts are +-40 per kernel call;
``Run.calibration_error`` checks that ratio against a loop of known length.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HARNESS = Path(__file__).resolve().parent
ROOT = HARNESS.parents[1]
sys.path.insert(0, str(ROOT))

from mcuprune.model.ops import kernel_sources  # noqa: E402
from mcuprune.resources import INCLUDE_DIR  # noqa: E402

CFLAGS = ["-O2", "-std=c11", "-Wall", "-Wextra", "-Werror", "-ffunction-sections", "-fdata-sections"]
QEMU_FLAGS = ["-icount", "shift=0", "-semihosting-config", "enable=on,target=native", "-nographic",
              "-monitor", "none", "-serial", "none"]  # fmt: skip
INSTRUCTIONS_PER_TICK = 40  # 25 MHz core clock, 1 ns per instruction under icount shift=0
SENTINEL = "MCUP-BENCH-DONE"
M4 = ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16")
M3 = ("-mcpu=cortex-m3", "-mthumb", "-mfloat-abi=soft")


@dataclass(frozen=True)
class Target:
    """A core, its QEMU machine and compiler flags, and the kernel variant built for it."""

    core: str
    variant: str
    machine: str
    cpu_flags: tuple[str, ...]


@dataclass(frozen=True)
class Run:
    """What one ELF printed: the calibration and, per case name, (instructions, output checksum).
    0 instructions: the SysTick counter wrapped (a call longer than 2^24 ticks)."""

    calib_instructions: int
    calib_ticks: int
    empty_ticks: int  # a measurement around an empty wrapper: 0 when nothing skews the counts
    cases: dict[str, tuple[int, int]]

    @property
    def instructions_per_tick(self) -> float:
        return self.calib_instructions / self.calib_ticks

    def calibration_error(self) -> str | None:
        """Why the counts cannot be trusted, or None."""
        if abs(self.instructions_per_tick - INSTRUCTIONS_PER_TICK) > 0.5 or self.empty_ticks != 0:
            return (f"calibration {self.calib_instructions} instructions = {self.calib_ticks} ticks, empty call "
                    f"{self.empty_ticks} ticks: expected {INSTRUCTIONS_PER_TICK} instructions/tick and 0; "
                    "is icount off?")  # fmt: skip
        return None


def require_tools() -> None:
    for tool in ("arm-none-eabi-gcc", "qemu-system-arm"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found on PATH")


def fnv1a(data: np.ndarray) -> int:
    """The harness's output checksum (32-bit FNV-1a over the bytes)."""
    h = 2166136261
    for b in np.asarray(data, dtype=np.int8).ravel().view(np.uint8):
        h = ((h ^ int(b)) * 16777619) & 0xFFFFFFFF
    return h


def c_array(ctype: str, name: str, values: np.ndarray, lead: int = 0) -> str:
    """A static const, 4-byte aligned C array, after `lead` padding elements (data at name + lead).

    >>> c_array("int8_t", "w", np.array([1, -2]))
    'static const int8_t w[2] __attribute__((aligned(4))) = {\\n    1, -2,\\n};\\n'
    """
    flat = ["0"] * lead + [str(int(v)) for v in np.asarray(values).ravel()]
    rows = [", ".join(flat[i : i + 24]) + "," for i in range(0, len(flat), 24)]
    body = "\n".join("    " + row for row in rows)
    return f"static const {ctype} {name}[{len(flat)}] __attribute__((aligned(4))) = {{\n{body}\n}};\n"


def case_c(name: str, function: str, params: str, input_: str, out_size: int, expected_scratch: int,
           out_lead: int = 0, scratch: bool = True) -> tuple[str, str]:
    """One case: the C wrappers that call `function` on `params` and `input_` (and its
    _get_buffer_size), and its bench_cases[] entry. scratch=False: a kernel without scratch
    (max-pool). The output goes to bench_output + out_lead."""
    out = f"bench_output + {out_lead}"
    if scratch:
        call = f"{function}(&{params}, {input_}, {out}, s);"
        size = f"return {function}_get_buffer_size(&{params});"
    else:
        call = f"(void)s; {function}(&{params}, {input_}, {out});"
        size = "return 0;"
    wrappers = (f"static void {name}_run(void *s) {{ {call} }}\n"
                f"static int32_t {name}_scratch(void) {{ {size} }}\n")  # fmt: skip
    return wrappers, f'{{"{name}", {name}_run, {name}_scratch, {expected_scratch}, {out_lead}, {out_size}}}'


def bench_data(generator: str, definitions: Iterable[str], entries: Iterable[str]) -> str:
    """The text of bench_data.h: the definitions, then bench_cases[]."""
    return (f"/* Generated by {generator}: do not edit. */\n" + "\n".join(definitions) + "\n"
            "static const bench_case bench_cases[] = {\n    " + ",\n    ".join(entries) + ",\n};\n")  # fmt: skip


def build(out: Path, target: Target, data: str, kernels: Iterable[tuple], max_out: int,
          scratch_bytes: int, extra_sources: Iterable[Path] = (), includes: Iterable[Path] = ()) -> Path:
    """bench.elf in `out` for `target`: the harness, bench_data.h = `data`, the variant's kernels
    ((op, format[, weight bits]) tuples, ops.kernel_sources), and `extra_sources` compiled with the
    `includes` too (another library's kernels, to compare with). max_out and scratch_bytes: the
    largest output and scratch over the cases."""
    require_tools()
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_data.h").write_text(data)
    sources = [HARNESS / "startup.c", HARNESS / "bench.c", *kernel_sources(target.variant, kernels), *extra_sources]
    elf = out / "bench.elf"
    cmd = [
        "arm-none-eabi-gcc", *target.cpu_flags, *CFLAGS, f"-DBENCH_MAX_OUT={max_out}",
        f"-DBENCH_SCRATCH_BYTES={scratch_bytes}", f"-I{out}", f"-I{HARNESS}", f"-I{INCLUDE_DIR}",
        *(f"-I{i}" for i in includes),
        *map(str, sources), "-nostartfiles", "-Wl,--gc-sections", f"-T{HARNESS / 'link.ld'}", "-o", str(elf),
    ]  # fmt: skip
    subprocess.run(cmd, check=True)
    return elf


LINE = re.compile(r"case (\w+) ticks=(\d+) checksum=0x([0-9a-f]{8})")
CALIB = re.compile(r"calib instructions=(\d+) ticks=(\d+) empty_ticks=(\d+)")


def run_qemu(elf: Path, machine: str) -> Run:
    cmd = ["qemu-system-arm", "-M", machine, *QEMU_FLAGS, "-kernel", str(elf)]
    # Semihosting console output goes to QEMU's stderr when no chardev is given: merge the two.
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    if result.returncode != 0 or SENTINEL not in result.stdout:
        raise SystemExit(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}")
    instructions, ticks, empty = map(int, CALIB.search(result.stdout).groups())
    cases = {name: (int(t) * INSTRUCTIONS_PER_TICK, int(h, 16)) for name, t, h in LINE.findall(result.stdout)}
    return Run(instructions, ticks, empty, cases)


def run_all(elfs: dict[str, tuple[Path, str]]) -> dict[str, Run]:
    """Run each (elf, machine) at once (QEMU is single-threaded); the Runs by the same keys."""
    with ThreadPoolExecutor(max_workers=len(elfs)) as pool:
        runs = pool.map(lambda job: run_qemu(*job), elfs.values())
        return dict(zip(elfs, runs, strict=True))

