"""RMS norm on the GPU: layer norm's kernels without centering."""
from . import layer_norm


def forward(x, p):
    return layer_norm.forward(x, p, center=False)


def backward(dy, cache):
    return layer_norm.backward(dy, cache, center=False)
