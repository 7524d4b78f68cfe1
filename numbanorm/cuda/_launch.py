"""Hardware facts and launch choices: every number that decides a launch lives here.

Every kernel is declared with :func:`kernel`, which fixes the most threads a
block of it may have (``launch_bounds``): ptxas then keeps the kernel's
registers within ``REGISTERS_PER_BLOCK / max_threads``, so no launch made
through this module can fail for lack of registers, on any GPU from sm_70 to
sm_90 (``tests/test_gpu_static.py`` compiles every kernel with ptxas and checks
it, spills included). The configurations depend on the shapes only, never on
the GPU model, timing or scheduling, so every GPU computes the same bits (as
the CPU backend does for any thread count).

Under the CUDA simulator every thread is a Python thread, about a millisecond
each: the same kernels run with the geometry scaled down (a "warp" of 4 lanes,
blocks of 16 threads, at most 4 blocks), so that tests exercise every path -
warp per row, block per row, several blocks, grid-stride loops - in seconds.
"""
from __future__ import annotations

import functools
import math

from numba import config, cuda

SIM = bool(config.ENABLE_CUDASIM)

# ----------------------------------------------------------------------------- hardware facts (sm_70 - sm_90)
WARP = 32
MAX_THREADS = 1024             # threads of a block
REGISTERS_PER_BLOCK = 65536    # and per SM
SHARED_PER_BLOCK = 48 * 1024   # dynamic shared memory a block gets without opting in
MAX_THREADS_PER_SM = {(7, 0): 2048, (7, 5): 1024, (8, 0): 2048, (8, 6): 1536, (8, 9): 1536, (9, 0): 2048}
MAX_BLOCKS_PER_SM = {(7, 0): 32, (7, 5): 16, (8, 0): 32, (8, 6): 16, (8, 9): 24, (9, 0): 32}
REGISTER_GRANULE = 256         # registers are allocated per warp in units of this many
SUB_PARTITIONS = 4             # an SM's registers are split among its 4 schedulers, a warp's from one
SHARED_PER_SM = {(7, 0): 96, (7, 5): 64, (8, 0): 164, (8, 6): 100, (8, 9): 100, (9, 0): 228}   # KiB, at most
SHARED_GRANULE = {(7, 0): 256, (7, 5): 256, (8, 0): 128, (8, 6): 128, (8, 9): 128, (9, 0): 128}  # bytes
SHARED_RESERVED = {(7, 0): 0, (7, 5): 0, (8, 0): 1024, (8, 6): 1024, (8, 9): 1024, (9, 0): 1024}  # bytes a block

# ----------------------------------------------------------------------------- launch choices
if SIM:
    ROW_WARP = 4          # lanes of a row when a warp works on it
    BLOCK = 16            # threads of a block
    MAX_BLOCKS = 4        # grid-stride loops cover the rest
    LONG_ROW = 32         # longer rows get a block of lanes
    MAX_LANES = 16
else:
    ROW_WARP = WARP
    BLOCK = 256
    MAX_BLOCKS = 1 << 16
    LONG_ROW = 1024
    MAX_LANES = MAX_THREADS
ELEMENTS_PER_LANE = 8     # a block per row gets about this many elements per lane
# Row kernels keep their rows in registers: bytes of a row array each lane keeps,
# per kernel, the most that compiles without spilling at 64 registers a thread
# (ptxas -v for sm_70-sm_90, float16/32/64; tests/test_gpu_static.py checks it):
# 16 float32 values of x in the forward (rows of up to 16384 read once), 8 with a
# weight per segment, 4 of x and 4 of dy in the backward (rows of up to 4096), 8 of
# x in the backward that keeps dy in shared memory (rows of up to 8192: 32 KiB of dy;
# float32 only: float64's 4 values spill on sm_70). A dict: bytes by itemsize.
# Small in the simulator, so its tests take the long-row kernels too.
if SIM:
    ROW_REGISTER_BYTES = {"forward": 8, "forward_segments": 8, "backward": 4, "backward_dy_shared": {4: 8}}
else:
    ROW_REGISTER_BYTES = {"forward": 64, "forward_segments": 32, "backward": 16, "backward_dy_shared": {4: 32}}
# Partial rows of a two-stage reduction (dweight, dbias, channel sums): a fixed
# number for a shape, so the order of the additions, and so the bits, never
# depend on the GPU. 256 fills 132 SMs about twice and keeps LN's partials at
# 1/16 of x for 4096 rows.
PARTIAL_ROWS = 4 if SIM else 256
# Shared memory a row kernel may fill with its rows so that later passes do not
# re-read global memory. Small in the simulator, so its tests take both paths.
ROW_CACHE_BYTES = 1024 if SIM else SHARED_PER_BLOCK

# Channel statistics (channelwise.py).
# Channels-last: about this many threads, a (chunk of rows, fused column) each.
CHUNK_THREADS = 16 if SIM else 1 << 17
# Channels-last: chunks are no shorter than this many (fused) rows, so the partials
# (two values per chunk and column) stay small beside x.
MIN_CHUNK_ROWS = 2 if SIM else 32
# The merge of the partial moments spreads its channels over about this many blocks (the
# SMs of a large GPU) when it can, fewer channels a block than a warp's width if need be.
MERGE_BLOCKS = 2 if SIM else 128
# Channels-first: planes are cut in pieces no shorter than this when there are few of them.
MIN_PIECE = 16 if SIM else 1 << 14


def kernel(fn=None, *, max_threads=MAX_THREADS):
    """``cuda.jit`` for a kernel whose blocks never have more than ``max_threads`` threads.

    On a GPU the bound goes to ptxas as ``launch_bounds=(max_threads, 1)``, which
    caps the registers per thread at ``REGISTERS_PER_BLOCK // max_threads`` (64
    for 1024 threads: 50% occupancy at worst). The explicit minimum of one block
    an SM matters: without it ptxas aims at 32 registers for some kernels and
    spills (``ptxas -v``, sm_70 and sm_90). The simulator has no such option.
    The bounds are kept on the Python function (``launch_bounds``) for the
    launches and the static check to read.
    """
    def declare(f):
        f.launch_bounds = (max_threads, 1)
        if SIM:
            return cuda.jit(f)
        return cuda.jit(f, launch_bounds=f.launch_bounds)
    return declare if fn is None else declare(fn)


def max_threads(k):
    """The block-size bound a kernel was declared with."""
    return k.py_func.launch_bounds[0]


def pow2_at_least(n):
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


def cdiv(a, b):
    return -(-a // b)


@functools.lru_cache(maxsize=256)
def row_config(R, L, max_blocks=None):
    """``(grid, block)`` for a row kernel on ``(R, L)``: a warp per row, or a block per long row."""
    if L <= LONG_ROW:
        lanes, rows = ROW_WARP, max(1, BLOCK // ROW_WARP)
    else:
        lanes, rows = min(MAX_LANES, max(ROW_WARP, pow2_at_least(cdiv(L, ELEMENTS_PER_LANE)))), 1
    blocks = max(1, min(cdiv(R, rows), max_blocks or MAX_BLOCKS))
    return blocks, (lanes, rows)


@functools.lru_cache(maxsize=256)
def register_row_config(R, L, kind, itemsize, max_blocks=None):
    """``(grid, (lanes, rows), per)`` for the row kernel ``kind`` (a key of ROW_REGISTER_BYTES),
    whose lanes keep ``per`` values of each row array in registers; None when a row of ``L``
    values of ``itemsize`` bytes does not fit in a block that way.

    About ELEMENTS_PER_LANE values a lane (more for the longest rows); a warp per
    row for rows of up to ``8 * WARP``, several rows per block of BLOCK threads (no
    more than there are rows: the kernels' rows past the end read the last row again).
    """
    limit = ROW_REGISTER_BYTES[kind]
    per_max = (limit.get(itemsize, 0) if isinstance(limit, dict) else limit) // itemsize
    if per_max == 0:
        return None
    lanes = min(MAX_LANES, max(ROW_WARP, pow2_at_least(cdiv(L, min(ELEMENTS_PER_LANE, per_max)))))
    per = pow2_at_least(cdiv(L, lanes))
    if per > per_max:
        return None
    rows = max(1, min(BLOCK // lanes, R))
    return max(1, min(cdiv(R, rows), max_blocks or MAX_BLOCKS)), (lanes, rows), per


@functools.lru_cache(maxsize=256)
def grid_config(R, L):
    """``(grid, block)`` for an elementwise kernel on ``(R, L)``: x along rows, y across them."""
    tx = min(ROW_WARP, pow2_at_least(L))
    ty = max(1, BLOCK // tx)
    gx = min(cdiv(L, tx), MAX_BLOCKS)
    gy = max(1, min(cdiv(R, ty), MAX_BLOCKS // gx, 65535))
    return (gx, gy), (tx, ty)


@functools.lru_cache(maxsize=256)
def column_config(P, K):
    """``(grid, (columns, groups))`` for adding up ``P`` partial rows of ``K`` columns: a warp's
    width of columns a block, its threads' rows (groups) splitting the partial rows."""
    columns = ROW_WARP
    groups = max(1, min(BLOCK // columns, pow2_at_least(P)))
    return max(1, min(cdiv(K, columns), MAX_BLOCKS)), (columns, groups)


@functools.lru_cache(maxsize=256)
def flat_config(n):
    """``(grid, block)`` for a 1-D grid-stride kernel over ``n`` items."""
    threads = min(BLOCK, pow2_at_least(n))
    return max(1, min(cdiv(n, threads), MAX_BLOCKS)), threads


def partial_rows_limit():
    """How many blocks a kernel writing per-block partial sums gets: fixed, so results do not
    depend on the GPU (see PARTIAL_ROWS)."""
    return PARTIAL_ROWS


@functools.lru_cache(maxsize=256)
def channel_chunk_config(R, W):
    """``(per, K)``: the ``R`` rows of a ``(R, W)`` array cut in ``K`` pieces of ``per`` rows, so
    that about CHUNK_THREADS threads, one per (piece, column), share a column-wise reduction."""
    if R == 0:
        return 1, 0
    per = max(min(MIN_CHUNK_ROWS, R), cdiv(R, max(1, CHUNK_THREADS // max(W, 1))))
    return per, cdiv(R, per)


@functools.lru_cache(maxsize=256)
def channel_merge_config(C, P):
    """``(grid, (columns, groups))`` of :func:`_merge` for C channels of P partials each: a warp's
    width of channels a block when there are many, fewer when that leaves fewer than MERGE_BLOCKS
    blocks (the merge is latency-bound: what matters is how many SMs share it)."""
    columns = min(ROW_WARP, 1 << max(0, (C // MERGE_BLOCKS).bit_length() - 1))  # a power of two <= C / MERGE_BLOCKS
    groups = max(1, min(MAX_LANES // columns, pow2_at_least(P)))
    return max(1, min(cdiv(C, columns), MAX_BLOCKS)), (columns, groups)


@functools.lru_cache(maxsize=256)
def channel_piece_length(A, C, B):
    """Channels-first: planes of ``B`` values are cut in pieces of this length when there are
    too few planes (``A * C``) to keep the GPU busy."""
    pieces = max(1, min(cdiv(B, MIN_PIECE), partial_rows_limit() // (A * C)))
    return cdiv(B, pieces)


def occupancy(threads, registers, shared_bytes, cc=(9, 0)):
    """Theoretical occupancy (resident threads over the SM's maximum) of blocks of ``threads``
    threads using ``registers`` registers each and ``shared_bytes`` of shared memory (static and
    dynamic), as CUDA's occupancy calculator (``cuda_occupancy.h``) counts them; 0 for a block
    that cannot launch at all."""
    warps = cdiv(threads, WARP)
    per_warp = cdiv(max(registers, 1) * WARP, REGISTER_GRANULE) * REGISTER_GRANULE
    # The launch check: a block's warps rounded up to the sub-partitions, each getting per_warp.
    if threads > MAX_THREADS or per_warp * cdiv(warps, SUB_PARTITIONS) * SUB_PARTITIONS > REGISTERS_PER_BLOCK:
        return 0.0
    by_registers = REGISTERS_PER_BLOCK // SUB_PARTITIONS // per_warp * SUB_PARTITIONS // warps
    granule = SHARED_GRANULE[cc]
    per_block = cdiv(shared_bytes + SHARED_RESERVED[cc], granule) * granule
    by_shared = SHARED_PER_SM[cc] * 1024 // per_block if per_block else MAX_BLOCKS_PER_SM[cc]
    blocks = min(by_registers, by_shared, MAX_BLOCKS_PER_SM[cc], MAX_THREADS_PER_SM[cc] // (warps * WARP))
    return blocks * warps * WARP / MAX_THREADS_PER_SM[cc]
