"""The static GPU check (``numbanorm/cuda/_static.py``): every launch the package makes fits a real GPU.

CI has no GPU. The check dry-runs the public ops on large shapes in the
simulator with a GPU's launch choices, compiles every kernel launched with
ptxas for sm_70, sm_80 and sm_90, and fails on a launch that needs more
registers or shared memory than a block has, on spills, on float64 arithmetic
in float32/float16 kernels, and on bandwidth-bound kernels under 50%
theoretical occupancy on sm_90. ``python -m numbanorm gpu-report`` prints the
same table.

The parsers are tested on fixed ptxas and nvdisasm output; the compile
machinery on a synthetic kernel that needs more registers than a block of 1024
threads allows. Tests that compile are skipped where numba-cuda or the CUDA
toolkit's ptxas is missing (the ``cuda`` extra installs them).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import ptx_check

static = ptx_check.load_static()
ROOT = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------- parsers (no toolkit)

PTXAS_OUTPUT = """\
ptxas info    : 8 bytes gmem
ptxas info    : Function properties for helper
    16 bytes stack frame, 8 bytes spill stores, 8 bytes spill loads
ptxas info    : Compiling entry function '_Z6kernel' for 'sm_90'
ptxas info    : Function properties for _Z6kernel
    64 bytes stack frame, 76 bytes spill stores, 124 bytes spill loads
ptxas info    : Used 64 registers, used 1 barriers, 64 bytes cumulative stack size, 1024 bytes smem, 912 bytes cmem[0]
ptxas info    : Compile time = 215.782 ms
"""

# A kernel with an outer loop around an inner one, the branch to itself after EXIT, and a
# subroutine (with a loop of its own) after it, as nvdisasm -c prints them.
SASS = """\
        .type           kern,@function
kern:
.text.kern:
        /*0000*/                   LDC R1, c[0x0][0x28] ;
.L_x_0:
        /*0010*/                   IMAD R2, R3, R4, R5 ;
.L_x_1:
        /*0020*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
        /*0030*/                   LDG.E.128 R8, desc[UR4][R6.64] ;
        /*0040*/                   FADD R4, R4, R8 ;
        /*0050*/                   STG.E.128 desc[UR4][R2.64], R4 ;
        /*0060*/               @P0 BRA `(.L_x_1) ;
        /*0070*/                   NOP ;
        /*0080*/              @!P1 BRA `(.L_x_0) ;
        /*0090*/                   EXIT ;
.L_x_2:
        /*00a0*/                   BRA `(.L_x_2);
        .weak           $__internal_0_$__cuda_sm20_div_s64
        .type           $__internal_0_$__cuda_sm20_div_s64,@function
$__internal_0_$__cuda_sm20_div_s64:
.L_x_3:
        /*00b0*/                   IADD3 R1, R1, 0x1, RZ ;
        /*00c0*/                   IADD3 R1, R1, 0x1, RZ ;
        /*00d0*/                   IADD3 R1, R1, 0x1, RZ ;
        /*00e0*/                   IADD3 R1, R1, 0x1, RZ ;
        /*00f0*/                   IADD3 R1, R1, 0x1, RZ ;
        /*0100*/               @P0 BRA `(.L_x_3) ;
"""


def test_ptxas_output_is_parsed():
    res = static.parse_ptxas(PTXAS_OUTPUT)
    assert (res.registers, res.shared, res.stack) == (64, 1024, 64)
    assert (res.spill_stores, res.spill_loads) == (84, 132)   # the kernel's and its callee's


def test_hot_loop_is_the_largest_innermost_loop_of_the_kernel():
    assert static.loops(SASS) == [(0x10, 0x80), (0x20, 0x60)]   # not the subroutine's, not BRA-to-itself
    loop = static.hot_loop(SASS)
    assert loop.instructions == 5 and loop.calls == 0
    assert loop.memory == {"LDG": [16, 16], "STG": [16]}
    assert static.elements_per_trip(loop, 4) == 4     # float4 loads: 4 elements a trip
    assert static.elements_per_trip(loop, 16) == 1


def test_block_registers_are_counted_as_the_launch_check_does():
    assert static._registers_of_block(1024, 64) == 65536
    assert static._registers_of_block(1024, 65) > 65536          # 72 a thread, allocated per 8
    assert static._registers_of_block(96, 160) == 4 * 160 * 32   # 3 warps count as 4


# ----------------------------------------------------------------------------- with the toolkit

SYNTHETIC = r'''
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("static", sys.argv[1])
static = importlib.util.module_from_spec(spec); sys.modules["static"] = static; spec.loader.exec_module(static)
static.pretend_a_device((7, 0))
from numba import cuda, types

# 96 values live at once: about 128 registers unbounded.
N = 96
lines = ["def heavy(x, y):", "    i = cuda.grid(1)"]
lines += [f"    v{k} = x[i + {k * 1024}]" for k in range(N)]
lines += ["    s = v0 * v0"] + [f"    s += v{k} * v{k}" for k in range(1, N)]
lines += ["    t = v0 * s"] + [f"    t = t * s + v{k}" for k in range(1, N)]
lines += ["    y[i] = t"]


def make(bound):
    """A factory: its kernels are rebuilt from their factory_key, as numbanorm's are."""
    scope = {"cuda": cuda}
    exec("\n".join(lines), scope)
    kernel = cuda.jit(launch_bounds=(bound,))(scope["heavy"]) if bound else cuda.jit(scope["heavy"])
    kernel.py_func.factory_key = ("__main__", "make", (bound,))
    return kernel


@cuda.jit
def scale(x, y):
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        y[i] = x[i] * 0.1    # a float64 constant (inexact in float32): float64 arithmetic


vector = types.float32[::1]
jobs = [(static.kernel_identity(make(b).py_func), (vector, vector)) for b in (None, 1024, 256)]
jobs.append((static.kernel_identity(scale.py_func), (vector, vector)))
results = static.compile_all(jobs, [(7, 0), (9, 0)])
print(json.dumps([{"bound": r["bound"], "error": r["error"], "float64": r["float64"], "loop": r["loop"],
                   "cc": {f"{a}.{b}": v for (a, b), v in r["cc"].items()}} for r in results.values()]))
'''


def _python(args, timeout=600):
    env = dict(os.environ)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def toolkit():
    if static.tool("ptxas") is None:
        pytest.skip("no ptxas (pip install 'numbanorm[cuda]': nvidia-cuda-nvcc-cu12)")
    probe = _python(["-c", ptx_check_probe()])
    if probe.returncode != 0:
        pytest.skip("numba-cuda cannot compile PTX here (no CUDA toolkit libraries: "
                    "pip install 'numbanorm[cuda]'): " + (probe.stderr.strip().splitlines() or [""])[-1])


def ptx_check_probe():
    return (f"import sys; sys.path.insert(0, {str(ROOT / 'tests')!r}); import ptx_check\n"
            "ptx_check.pretend_a_device((9, 0))\n"
            "from numba import cuda\n"
            "def k(x):\n    x[0] = 1.0\n"
            "cuda.compile_ptx(k, 'void(float32[::1])', cc=(9, 0))\n")


def test_launch_bounds_cap_the_registers_ptxas_gives(toolkit):
    ran = _python(["-c", SYNTHETIC, static.__file__])
    assert ran.returncode == 0, ran.stderr[-3000:]
    unbounded, bound_1024, bound_256, scale = json.loads(ran.stdout.strip().splitlines()[-1])
    assert all(r["error"] is None for r in (unbounded, bound_1024, bound_256, scale))
    for cc in ("7.0", "9.0"):
        assert unbounded["cc"][cc]["registers"] > 64 and unbounded["cc"][cc]["spill_stores"] == 0
        assert bound_1024["cc"][cc]["registers"] <= 64                   # 65536 / 1024
        assert bound_1024["cc"][cc]["spill_stores"] > 0                  # so the rest spills
        assert bound_256["cc"][cc]["registers"] == unbounded["cc"][cc]["registers"]
    assert bound_1024["bound"] == [1024] and unbounded["bound"] is None
    assert not bound_1024["float64"] and scale["float64"]
    if static.tool("nvdisasm"):   # the grid-stride loop of scale: one load and one store per element
        loop = scale["loop"]
        assert loop["instructions"] > 0 and loop["loads_per_element"] == 1.0 and not loop["wide"]
        assert loop["elements"] in (1, 2, 4, 8) and loop["estimated"]


# The read counts CI checks: each row kernel at the lengths the read-once targets end at
# (the whole READ_CASES table takes about 3 minutes of one core; gpu-report counts it all).
CI_READ_CASES = [c for c in static.READ_CASES if c.dtype == "float32" and (
    (c.op, c.shape) in {("layer_norm", (1, 1024)), ("layer_norm", (1, 8192)), ("rms_norm", (1, 16384))}
    or c.op in ("group_norm", "instance_norm") and static.row_length(c) < 10000)]


def test_every_launch_fits_the_gpu(toolkit):
    """The launches of every op on the shape table: registers and shared memory of a block,
    spills, float64 arithmetic, occupancy of bandwidth-bound kernels on sm_90; and the global
    reads per element of the row kernels: x once in a forward of up to 16384 float32 values,
    x and dy once in a backward of up to 8192."""
    report = static.run(read_cases=CI_READ_CASES)
    print(static.format_report(report))   # shown when the test fails
    assert all(report.launches.values()), report.launches    # every case launched kernels
    assert max(row["threads"] for row in report.rows) >= 256, "the dry run used the simulator's small blocks"
    assert len(report.reads) == len(CI_READ_CASES) == 5
    assert not report.violations, "\n".join(report.violations)


def test_reads_are_counted_per_element_and_warp():
    """count_reads counts what the kernels read (a long row past what shared memory keeps is
    read again: more than once) and a row's first value once per warp, not once per lane."""
    ran = subprocess.run(
        [sys.executable, "-c", "import sys, ptx_check; static = ptx_check.load_static(); "
         "cases = [static.Case('layer_norm', (1, 32)), static.Case('layer_norm', (1, 20000))]; "
         "r = static.count_reads(cases); print(repr([r[c.label] for c in cases]))"],
        cwd=Path(__file__).parent, env=dict(os.environ, NUMBA_ENABLE_CUDASIM="1"), capture_output=True, text=True,
        timeout=600)
    assert ran.returncode == 0, ran.stderr
    short, long = eval(ran.stdout.strip().splitlines()[-1])
    assert short["forward"] == 1 + 1 / 32 and short["backward"] == (1, 1)   # one warp: its pivot read once more
    assert min(long["forward"], *long["backward"]) > 1.5   # past the 12288 / 6144 values kept
