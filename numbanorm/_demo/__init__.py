"""``python -m numbanorm demo``: Figure 1 of the Batch Normalization paper, on handwritten digits.

Ioffe & Szegedy (2015), Figure 1: the same sigmoid network trained with and
without batch normalization; with it the test accuracy rises sooner and higher,
and the input of a sigmoid keeps a steady distribution instead of drifting.
This module replays that in plain NumPy on scikit-learn's digits (1797 images of
8 x 8 pixels, shipped with scikit-learn: nothing is downloaded):

1. a sigmoid MLP 64-100-100-100-10, plain and with ``BatchNorm1d`` before each
   sigmoid, both trained by SGD at one learning rate (1.0) on the same batches;
2. a small convolutional net (two 3 x 3 convolutions, ReLU), with no
   normalization, with ``BatchNorm2d`` and with ``GroupNorm``.

The normalization layers are :mod:`numbanorm.layers` on the chosen backend; the
rest (linear, convolution, activations, loss, SGD) is the demo's own NumPy code
in :mod:`numbanorm._demo.nn`. It prints the test accuracy after every epoch,
draws the curves (and the sigmoid input percentiles of Figure 1 (b, c)) to a
PNG, and ends with a short table of the kernels' speed from ``_bench``.
Seeds are fixed: a run on the cpu backend gives the same numbers every time.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from argparse import Namespace
from dataclasses import dataclass, field

import numpy as np

from .nn import Conv2d, Flatten, Linear, ReLU, Sequential, SGD, Sigmoid, softmax_cross_entropy

SEED = 0
BATCH = 60               # Figure 1's batch size
TEST_SIZE = 450          # of the 1797 images; the other 1347 train
MLP_LR, MLP_EPOCHS = 1.0, 100
CONV_LR, CONV_EPOCHS = 0.2, 15
GROUPS = 4               # GroupNorm's groups
PERCENTILES = (15, 50, 85)
QUICK = dict(epochs=15, conv_epochs=3, bench_ops=["batch_norm/NCHW"], repeat=3)
FULL = dict(epochs=MLP_EPOCHS, conv_epochs=CONV_EPOCHS,
            bench_ops=["batch_norm/NCHW", "group_norm/NCHW", "layer_norm"], repeat=5)


# ----------------------------------------------------------------------------- data and models

def load_data(limit=None, seed=SEED):
    """scikit-learn's digits as float32 in [0, 1]: ``(x_train, y_train, x_test, y_test)``, x of shape (n, 64).

    A fixed random split puts ``TEST_SIZE`` images in the test set; ``limit`` keeps at
    most that many images of each set (for quick runs).
    """
    from sklearn.datasets import load_digits
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    test, train = order[:TEST_SIZE], order[TEST_SIZE:]
    if limit:
        test, train = test[:limit], train[:limit]
    return x[train], y[train], x[test], y[test]


def mlp(norm, rng, backend):
    """Figure 1's network: 3 hidden layers of 100 sigmoids; ``BatchNorm1d`` before each when ``norm``.

    With batch norm the linear layers have no bias (the norm's own bias replaces it).
    """
    from .. import layers
    stack, width = [], 64
    for _ in range(3):
        stack.append(Linear(width, 100, rng, bias=not norm))
        if norm:
            stack.append(layers.BatchNorm1d(100, backend=backend))
        stack.append(Sigmoid())
        width = 100
    stack.append(Linear(width, 10, rng))
    return Sequential(*stack)


def convnet(norm, rng, backend):
    """conv 3x3 (16) - norm - ReLU - conv 3x3 stride 2 (32) - norm - ReLU - linear, on 1 x 8 x 8 images.

    ``norm``: None, ``"batch"`` (BatchNorm2d) or ``"group"`` (GroupNorm with ``GROUPS`` groups).
    """
    from .. import layers

    def normalize(channels):
        if norm == "batch":
            return [layers.BatchNorm2d(channels, backend=backend)]
        if norm == "group":
            return [layers.GroupNorm(GROUPS, channels, backend=backend)]
        return []

    bias = norm is None
    return Sequential(Conv2d(1, 16, 3, rng, pad=1, bias=bias), *normalize(16), ReLU(),
                      Conv2d(16, 32, 3, rng, stride=2, pad=1, bias=bias), *normalize(32), ReLU(),
                      Flatten(), Linear(32 * 4 * 4, 10, rng))


@dataclass
class Model:
    """A network in an experiment and what it measured after each epoch."""

    name: str
    net: Sequential
    shape: tuple = (64,)            # the shape of one input
    seed: int = SEED
    probe: object = None            # a layer whose input's first unit is tracked (Figure 1 b, c)
    accuracy: list = field(default_factory=list)
    percentiles: list = field(default_factory=list)

    def __post_init__(self):
        self.order = np.random.default_rng(self.seed + 1)   # the batch order: the same for every model


def train_epoch(model, x, y, lr):
    """One pass of SGD over ``x`` in shuffled batches of ``BATCH`` (the last, partial one is dropped)."""
    net, sgd = model.net, SGD(model.net.layers, lr)
    net.train()
    order = model.order.permutation(len(x))
    for start in range(0, len(x) - BATCH + 1, BATCH):
        batch = order[start:start + BATCH]
        net.zero_grad()
        _, dlogits = softmax_cross_entropy(net(x[batch].reshape(-1, *model.shape)), y[batch])
        net.backward(dlogits)
        sgd.step()
    return len(x) // BATCH


def evaluate(model, x, y):
    """Test accuracy in eval mode (running statistics), and the probe's input percentiles."""
    model.net.eval()
    h = x.reshape(-1, *model.shape)
    for layer in model.net.layers:
        if layer is model.probe:
            model.percentiles.append(np.percentile(h[:, 0], PERCENTILES))
        h = layer(h)
    model.accuracy.append(float(np.mean(np.argmax(h, axis=1) == y)))
    return model.accuracy[-1]


# ----------------------------------------------------------------------------- running and reporting

class _Progress:
    """The bench's progress bar, drawn only on a terminal (elsewhere the epoch lines are the log)."""

    def __init__(self, total):
        from .._bench import Progress
        self.bar = Progress(total)

    def step(self, label):
        self.bar.done += 1
        self.show(label)

    def show(self, label):
        if self.bar.tty:
            self.bar.show(label)

    def print(self, line, out, label=""):
        """Print ``line`` above the bar."""
        self.bar.close()
        print(line, file=out, flush=True)
        self.show(label)

    def close(self):
        self.bar.close()


def run_experiment(models, data, epochs, lr, out):
    """Train ``models`` side by side for ``epochs``; print a line of test accuracies per epoch.

    Returns the number of SGD steps in an epoch.
    """
    x_train, y_train, x_test, y_test = data
    widths = [max(len(m.name), 6) for m in models]
    print("epoch   step  " + "  ".join(m.name.rjust(w) for m, w in zip(models, widths)), file=out)
    for model in models:
        evaluate(model, x_test, y_test)                  # before training: chance, about 0.1
    print(f"{0:5d} {0:6d}  " + "  ".join(f"{m.accuracy[-1]:{w}.3f}" for m, w in zip(models, widths)), file=out)
    progress = _Progress(epochs * len(models))
    steps = 0
    try:
        for epoch in range(1, epochs + 1):
            for model in models:
                progress.show(f"epoch {epoch}/{epochs}: {model.name}")
                steps = train_epoch(model, x_train, y_train, lr)
                evaluate(model, x_test, y_test)
                progress.step(f"epoch {epoch}/{epochs}: {model.name}")
            cells = "  ".join(f"{m.accuracy[-1]:{w}.3f}" for m, w in zip(models, widths))
            progress.print(f"{epoch:5d} {epoch * steps:6d}  {cells}", out)
    finally:
        progress.close()
    return steps


def steps_to(model, steps_per_epoch, target=0.9):
    """The first step count (at an epoch's end) with test accuracy >= ``target``, or None."""
    for epoch, accuracy in enumerate(model.accuracy):
        if accuracy >= target:
            return epoch * steps_per_epoch
    return None


def plot(path, mlps, convs, mlp_steps, conv_steps, title):
    """Figure 1 (a, b, c) from the MLPs, and the conv nets' accuracy as (d), to a PNG at ``path``."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(12, 8.5), layout="constrained")
    axes = fig.subplots(2, 2)
    fig.suptitle(title)

    ax = axes[0, 0]
    for model, style in zip(mlps, ("--", "-")):
        steps = mlp_steps * np.arange(len(model.accuracy))
        ax.plot(steps, model.accuracy, style, label=model.name)
    ax.set(title="(a) sigmoid MLP 64-100-100-100-10, same learning rate", xlabel="training steps",
           ylabel="test accuracy", ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend(loc="best")

    spread = [np.array(m.percentiles) for m in mlps]
    low = min(float(s.min()) for s in spread)
    high = max(float(s.max()) for s in spread)
    for ax, model, values, letter in zip((axes[0, 1], axes[1, 0]), mlps, spread, "bc"):
        steps = mlp_steps * np.arange(len(values))
        ax.plot(steps, values[:, 1], color="C0", lw=2, label=f"{PERCENTILES[1]}th percentile")
        ax.plot(steps, values[:, 0], color="C7", lw=1, label=f"{PERCENTILES[0]}th and {PERCENTILES[2]}th")
        ax.plot(steps, values[:, 2], color="C7", lw=1)
        ax.set(title=f"({letter}) {model.name}: the input of a sigmoid", xlabel="training steps",
               ylabel="unit 0 of the last hidden layer, on the test set", ylim=(low - 0.3, high + 1.2))
        ax.grid(alpha=0.3)
        ax.legend(loc="upper center", ncol=2, fontsize="small")

    ax = axes[1, 1]
    for model in convs:
        steps = conv_steps * np.arange(len(model.accuracy))
        ax.plot(steps, model.accuracy, marker="o", ms=3, label=model.name)
    ax.set(title="(d) small convolutional net (ReLU), same learning rate", xlabel="training steps",
           ylabel="test accuracy", ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.savefig(path, dpi=100)


def kernel_table(backend, ops, repeat, out):
    """The bench table (``python -m numbanorm bench``) for ``ops`` at the small size, without torch."""
    from .. import _bench
    try:
        _bench.check_backend(backend)
    except NotImplementedError as exc:
        print(f"kernel speed: not measured ({exc})", file=out)
        return
    args = Namespace(backend=backend, size="small", dtype="float32", ops=ops, repeat=repeat,
                     no_numpy=False, no_torch=True)
    _bench.run_command(args, out=out)


def _blas_one_thread():
    """NumPy's BLAS on one thread while training, when threadpoolctl (a scikit-learn dependency) is there.

    On a machine with few cores, BLAS threads and Numba's threads, called in
    turn, spin-wait against each other: each matrix product then costs
    milliseconds instead of microseconds. These products are tiny; one thread is plenty.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext(), "NumPy's BLAS threads as they are (threadpoolctl not installed)"
    return threadpool_limits(1, user_api="blas"), "NumPy's BLAS on 1 thread"


def run(args, out=None):
    """Run the demo with parsed ``args``; returns ``{model name: final test accuracy}``."""
    out = out or sys.stdout
    start = time.perf_counter()
    import numba

    import numbanorm
    preset = QUICK if args.quick else FULL
    epochs = args.epochs or preset["epochs"]
    conv_epochs = preset["conv_epochs"] if args.conv_epochs is None else args.conv_epochs
    data = load_data(args.limit)
    limit_blas, blas_note = _blas_one_thread()
    print(f"numbanorm {numbanorm.__version__} demo: backend {args.backend}; numba {numba.__version__} "
          f"({numba.get_num_threads()} threads); {blas_note}", file=out)
    print(f"data: scikit-learn digits, {len(data[0])} training and {len(data[2])} test images of 8 x 8 "
          f"pixels; batches of {BATCH}; seed {SEED}", file=out)

    rng = np.random.default_rng(SEED)
    init = rng.bit_generator.state            # both nets of an experiment start from the same draws

    def fresh():
        rng.bit_generator.state = init
        return rng

    backend = args.backend
    plain, with_bn = mlp(False, fresh(), backend), mlp(True, fresh(), backend)
    mlps = [Model("without BN", plain, probe=[m for m in plain.layers if isinstance(m, Sigmoid)][-1]),
            Model("with BN", with_bn, probe=[m for m in with_bn.layers if isinstance(m, Sigmoid)][-1])]
    convs = [Model("no norm", convnet(None, fresh(), backend), shape=(1, 8, 8)),
             Model("BatchNorm2d", convnet("batch", fresh(), backend), shape=(1, 8, 8)),
             Model(f"GroupNorm({GROUPS})", convnet("group", fresh(), backend), shape=(1, 8, 8))]

    with limit_blas:
        print(f"\nFigure 1 of Ioffe & Szegedy (2015): a sigmoid MLP 64-100-100-100-10 {mlps[0].name} and "
              f"{mlps[1].name}\n(BatchNorm1d before each sigmoid), SGD at learning rate {args.lr}. "
              "Test accuracy after each epoch:", file=out)
        mlp_steps = run_experiment(mlps, data, epochs, args.lr, out)
        conv_steps = 0
        if conv_epochs:
            print("\nA small convnet: conv 3x3 (16) - norm - ReLU - conv 3x3 stride 2 (32) - norm - ReLU - "
                  f"linear,\nSGD at learning rate {args.conv_lr}. Test accuracy after each epoch:", file=out)
            conv_steps = run_experiment(convs, data, conv_epochs, args.conv_lr, out)
        else:
            convs = []

    finals = {f"MLP {m.name}": m.accuracy[-1] for m in mlps}
    finals.update({f"conv {m.name}": m.accuracy[-1] for m in convs})
    print("\nfinal test accuracy: " + ", ".join(f"{k} {v:.3f}" for k, v in finals.items()), file=out)
    reached = [steps_to(m, mlp_steps) for m in mlps]
    print("steps to 90% test accuracy: " + ", ".join(
        f"MLP {m.name} {'not within %d' % (epochs * mlp_steps) if s is None else s}"
        for m, s in zip(mlps, reached)), file=out)

    if args.plot:
        title = (f"numbanorm demo: Figure 1 of Ioffe & Szegedy (2015) on scikit-learn digits "
                 f"(backend {backend}, batches of {BATCH})")
        plot(args.plot, mlps, convs, mlp_steps, conv_steps, title)
        print(f"plot: {os.path.abspath(args.plot)}", file=out)
    seconds = time.perf_counter() - start

    if not args.no_bench:
        print(file=out)
        kernel_table(backend, preset["bench_ops"], preset["repeat"], out)
    print(f"\ndone in {time.perf_counter() - start:.1f} s (training and plot {seconds:.1f} s, "
          "Numba's compilation included)", file=out)
    return finals


def add_arguments(parser):
    """The options of ``python -m numbanorm demo``."""
    parser.add_argument("--backend", default="cpu", choices=("cpu", "cuda", "numpy"),
                        help="backend of the normalization layers (default cpu)")
    parser.add_argument("--quick", action="store_true",
                        help=f"a reduced run: {QUICK['epochs']} MLP epochs, {QUICK['conv_epochs']} conv epochs, "
                             "one op in the speed table (tests and CI use it)")
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"MLP epochs (default {MLP_EPOCHS}; {QUICK['epochs']} with --quick)")
    parser.add_argument("--conv-epochs", type=int, default=None,
                        help=f"conv net epochs, 0 to skip them (default {CONV_EPOCHS}; "
                             f"{QUICK['conv_epochs']} with --quick)")
    parser.add_argument("--lr", type=float, default=MLP_LR, help=f"MLP learning rate (default {MLP_LR})")
    parser.add_argument("--conv-lr", type=float, default=CONV_LR,
                        help=f"conv net learning rate (default {CONV_LR})")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="use at most N training and N test images (e.g. for the CUDA simulator)")
    parser.add_argument("--plot", default="numbanorm-demo.png", metavar="PATH",
                        help="where to write the PNG of the curves (default numbanorm-demo.png; '' for none)")
    parser.add_argument("--no-bench", action="store_true", help="skip the closing table of kernel speed")
    return parser


def run_command(args, out=None):
    """``python -m numbanorm demo``; returns an exit code."""
    missing = [name for name, module in (("scikit-learn", "sklearn"), ("matplotlib", "matplotlib"))
               if _missing(module) and (module != "matplotlib" or args.plot)]
    if missing:
        print(f"numbanorm demo needs {' and '.join(missing)}: pip install 'numbanorm[demo]' "
              "(or, in a checkout, pip install -e '.[demo]')", file=sys.stderr)
        return 2
    for name in ("epochs", "conv_epochs", "limit"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "conv_epochs" else 1):
            print(f"numbanorm demo: --{name.replace('_', '-')} must be at least "
                  f"{0 if name == 'conv_epochs' else 1}, got {value}", file=sys.stderr)
            return 2
    if args.limit is not None and args.limit < BATCH:
        print(f"numbanorm demo: --limit must be at least the batch size {BATCH}", file=sys.stderr)
        return 2
    import numbanorm
    if args.backend not in numbanorm.available_backends():
        print(f"numbanorm demo: backend {args.backend!r} is not available here (available: "
              f"{', '.join(numbanorm.available_backends())})", file=sys.stderr)
        return 2
    run(args, out)
    return 0


def _missing(module):
    import importlib.util
    return importlib.util.find_spec(module) is None
