"""[cuda] The one kernel the layers need: gradient accumulation on the device (imported lazily)."""
from numba import cuda


@cuda.jit
def add_into(acc, g):
    """``acc += g`` over flat arrays, grid-stride."""
    for i in range(cuda.grid(1), acc.size, cuda.gridsize(1)):
        acc[i] += g[i]
