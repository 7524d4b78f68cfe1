"""The reductions every CUDA kernel shares.

:func:`sum_lanes` is the one block-level reduction: it sums two values over the
lanes of a thread block that work on the same row. Threads are laid out as
``(lanes, rows)``: ``threadIdx.x`` is the lane, ``threadIdx.y`` the row of the
block it works on, ``blockDim.x`` a power of two. On a GPU the lanes of a row
are one warp (a warp per row) or several (a block per row) and the sum is a
warp-shuffle butterfly; under the CUDA simulator, which has no warp shuffles,
it is a tree in shared memory. Both are chosen here at import and have the
same interface, and both begin with a block barrier (``syncthreads``), so a
kernel that passes in the simulator does not race on a GPU. Every thread of
the block must call it.

Its scratch space is the start of the block's dynamic shared memory,
``scratch_bytes(block, dtype)`` given at launch; a kernel may ask for more and
keep its own data after the first :func:`scratch_slots` entries. (Dynamic, as
the simulator hands every thread of a block the same dynamic buffer, while its
static shared arrays are created racily, one per source line, when the first
threads reach them.)

:func:`column_sums` is the second stage of every two-stage reduction: kernels
write per-block partial sums as rows of a ``(P, K)`` array, and it adds them up
per column, in a fixed order, so results do not depend on scheduling.
"""
import numpy as np
from numba import config, cuda

from ._launch import WARP, column_config, kernel


def _warp_slots(lanes, rows):
    return max(1, lanes // WARP) * rows  # one per warp, for each of the two values


if config.ENABLE_CUDASIM:
    def _slots(lanes, rows):
        return lanes * rows  # one per thread, for each of the two values

    @cuda.jit(device=True)
    def scratch_slots():
        """Entries of the dynamic shared array :func:`sum_lanes` uses (the rest is the kernel's)."""
        return 2 * cuda.blockDim.x * cuda.blockDim.y

    @cuda.jit(device=True)
    def sum_lanes(a, b, scratch):
        """Sum ``a`` and ``b`` over the lanes of this thread's row; every lane gets both totals.

        ``scratch`` is the dynamic shared array, of the dtype of ``a`` and ``b``.
        """
        lane, lanes = cuda.threadIdx.x, cuda.blockDim.x
        slot = cuda.threadIdx.y * lanes + lane
        half = lanes * cuda.blockDim.y  # b's slots follow a's
        cuda.syncthreads()  # the lanes are done reading the previous sum
        scratch[slot] = a
        scratch[half + slot] = b
        cuda.syncthreads()
        step = lanes // 2
        while step > 0:  # lane i adds lane i + step, as a shuffle-down would
            if lane < step:
                scratch[slot] += scratch[slot + step]
                scratch[half + slot] += scratch[half + slot + step]
            cuda.syncthreads()
            step //= 2
        first = slot - lane
        return scratch[first], scratch[half + first]

else:
    FULL_MASK = 0xFFFFFFFF
    _slots = _warp_slots

    @cuda.jit(device=True)
    def scratch_slots():
        """Entries of the dynamic shared array :func:`sum_lanes` uses (the rest is the kernel's)."""
        return 2 * max(1, cuda.blockDim.x // WARP) * cuda.blockDim.y

    @cuda.jit(device=True)
    def _sum_warp(a, b):
        """Butterfly over the 32 lanes of a warp: afterwards every lane holds both totals."""
        offset = WARP // 2
        while offset > 0:
            a += cuda.shfl_xor_sync(FULL_MASK, a, offset)
            b += cuda.shfl_xor_sync(FULL_MASK, b, offset)
            offset //= 2
        return a, b

    @cuda.jit(device=True)
    def sum_lanes(a, b, scratch):
        """Sum ``a`` and ``b`` over the lanes of this thread's row; every lane gets both totals.

        ``scratch`` is the dynamic shared array, of the dtype of ``a`` and ``b``.
        """
        cuda.syncthreads()  # as the simulator's does: a kernel can rely on the same barrier on both
        a, b = _sum_warp(a, b)
        lanes = cuda.blockDim.x
        if lanes == WARP:  # a warp per row: done
            return a, b
        # A block per row: the warps' totals go through shared memory, then every
        # warp adds them up itself, so no further broadcast is needed.
        warps = lanes // WARP
        lane = cuda.threadIdx.x
        first = cuda.threadIdx.y * warps
        half = warps * cuda.blockDim.y  # b's slots follow a's
        if lane % WARP == 0:
            scratch[first + lane // WARP] = a
            scratch[half + first + lane // WARP] = b
        cuda.syncthreads()
        zero = scratch.dtype.type(0)
        k = lane % WARP
        a = scratch[first + k] if k < warps else zero
        b = scratch[half + first + k] if k < warps else zero
        return _sum_warp(a, b)


def scratch_bytes(block, dtype):
    """The dynamic shared memory :func:`sum_lanes` needs in a block of ``(lanes, rows)`` threads."""
    lanes, rows = block
    return 2 * _slots(lanes, rows) * np.dtype(dtype).itemsize


def gpu_scratch_bytes(block, dtype):
    """:func:`scratch_bytes` on a GPU (the warp-shuffle reduction's), in the simulator too."""
    lanes, rows = block
    return 2 * _warp_slots(lanes, rows) * np.dtype(dtype).itemsize


@kernel
def _column_sums(part_a, part_b, out_a, out_b):
    """``out_a[k] = sum(part_a[:, k])`` and the same for ``b``, in a fixed order.

    A block is ``(columns, groups)`` threads: thread ``(i, g)`` adds partial rows
    ``g, g + groups, ...`` of its column in order, then thread ``(i, 0)`` adds the
    groups' subtotals in order. Neighbouring threads read neighbouring columns.
    The partials are summed in their own dtype; the stores cast to the outputs'.
    """
    scratch = cuda.shared.array(0, part_a.dtype)  # a's subtotals, then b's; sized at launch
    zero = part_a.dtype.type(0)
    P, K = part_a.shape
    i, g = cuda.threadIdx.x, cuda.threadIdx.y
    columns, groups = cuda.blockDim.x, cuda.blockDim.y
    half = columns * groups
    for first in range(cuda.blockIdx.x * columns, K, cuda.gridDim.x * columns):  # the same trips for the block
        k = first + i
        a = zero
        b = zero
        if k < K:
            for p in range(g, P, groups):
                a += part_a[p, k]
                b += part_b[p, k]
        cuda.syncthreads()  # the previous columns' subtotals are read
        scratch[g * columns + i] = a
        scratch[half + g * columns + i] = b
        cuda.syncthreads()
        if g == 0 and k < K:
            for h in range(1, groups):
                a += scratch[h * columns + i]
                b += scratch[half + h * columns + i]
            out_a[k] = a
            out_b[k] = b


def column_sums(part_a, part_b, out_a, out_b):
    """Add up the ``(P, K)`` partial rows of two two-stage reductions per column into ``out_a``
    and ``out_b`` (shape ``(K,)``): in parallel over columns and partial rows, in a fixed order."""
    P, K = part_a.shape
    if K == 0:
        return
    grid, block = column_config(P, K)
    _column_sums[grid, block, 0, 2 * block[0] * block[1] * part_a.dtype.itemsize](part_a, part_b, out_a, out_b)
