"""The ``numbanorm`` command: each subcommand's --help, ``info``, the default command."""
import os
import subprocess
import sys
import types

import pytest

import numbanorm
from numbanorm import __main__ as command

HELP = {
    (): ["demo", "bench", "info", "--version"],
    ("demo",): ["--backend", "--quick", "--epochs", "--conv-epochs", "--lr", "--limit", "--plot", "--no-bench"],
    ("bench",): ["--backend", "--size", "--dtype", "--ops", "--repeat", "--no-numpy", "--no-torch"],
    ("info",): ["threading layer", "GPU", "cache"],
    ("warmup",): ["--ops", "--dtype", "--backend", "--jobs"],
}


@pytest.mark.parametrize("words", HELP.items(), ids=lambda w: " ".join(w[0]) or "numbanorm")
def test_help_exits_0_and_names_the_options(words, capsys):
    prefix, expected = words
    with pytest.raises(SystemExit) as exit_:
        command.main([*prefix, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: numbanorm {' '.join(prefix)}".rstrip())
    for word in expected:
        assert word in text, word


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        command.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"numbanorm {numbanorm.__version__}"


def test_unknown_option_is_an_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        command.main(["bench", "--no-such-option"])
    assert exit_.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_info(capsys):
    assert command.main(["info"]) == 0
    out = capsys.readouterr().out
    lines = dict(line.split(": ", 1) for line in out.splitlines()[1:] if ": " in line)
    assert out.startswith(f"numbanorm {numbanorm.__version__}")
    assert "numba " in out and "numpy " in out
    assert lines["backends available"].startswith("numpy, cpu")
    assert lines["GPU"]
    # the layer a parallel kernel actually ran on, not the one requested
    assert lines["threading layer"].split()[0] in ("omp", "tbb", "workqueue")
    assert lines["threads"].split()[0].isdigit()
    assert os.path.isabs(lines["cache"].split(" (")[0])


@pytest.fixture
def no_numba_cuda(monkeypatch):
    """As on a machine without numba-cuda (and outside the simulator)."""
    import numba
    monkeypatch.setattr(numba.config, "ENABLE_CUDASIM", 0)
    real = command._version
    monkeypatch.setattr(command, "_version", lambda name: None if name == "numba-cuda" else real(name))
    return numba


def test_info_without_numba_cuda_says_so(no_numba_cuda, monkeypatch):
    monkeypatch.delattr(no_numba_cuda, "cuda", raising=False)
    monkeypatch.setitem(sys.modules, "numba.cuda", None)     # import numba.cuda raises ImportError
    assert command.gpu_status() == "not looked for: numba-cuda is not installed (pip install 'numbanorm[cuda]')"


def test_info_without_a_gpu_says_so(no_numba_cuda, monkeypatch):
    fake = types.SimpleNamespace(is_available=lambda: False)
    monkeypatch.setattr(no_numba_cuda, "cuda", fake, raising=False)   # numba's own, deprecated numba.cuda
    status = command.gpu_status()
    assert status.startswith("none found (numba.cuda.is_available() is False")
    assert "numba-cuda is not installed" in status


def test_info_survives_a_broken_driver(no_numba_cuda, monkeypatch):
    def broken():
        raise RuntimeError("driver exploded")
    monkeypatch.setattr(no_numba_cuda, "cuda", types.SimpleNamespace(is_available=broken), raising=False)
    assert command.gpu_status() == "unknown (RuntimeError: driver exploded)"


def test_python_dash_m_numbanorm_help():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [
        os.path.dirname(os.path.dirname(numbanorm.__file__)), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-m", "numbanorm", "--help"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "{demo,bench,info,gpu-report,warmup}" in done.stdout


def test_bench_cuda_path_runs_in_the_simulator():
    """``bench --backend cuda`` at the tiny size in Numba's CUDA simulator: the device path (device
    arrays, the device-to-device copy reference, CUDA-event timing falling back to wall time) runs
    end to end and prints the usual table."""
    pytest.importorskip("numba_cuda", reason="numba-cuda is not installed")
    root = os.path.dirname(os.path.dirname(numbanorm.__file__))
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1",
               PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    env.pop("NUMBANORM_BACKEND", None)
    done = subprocess.run([sys.executable, "-m", "numbanorm", "bench", "--backend", "cuda", "--size", "tiny",
                           "--ops", "layer_norm", "batch_norm/NHWC", "--repeat", "1", "--no-numpy"],
                          capture_output=True, text=True, env=env, timeout=180)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("numbanorm ") and "backend cuda, size tiny" in lines[0]
    assert any(line.startswith("GPU: none: Numba's CUDA simulator") for line in lines)
    assert any(line.startswith("copy bandwidth:") and "device-to-device copy" in line for line in lines)
    head = next(i for i, line in enumerate(lines) if line.startswith("op "))
    assert lines[head].split() == ["op", "layout", "shape", "direction", "time", "GB/s", "of", "copy",
                                   "vs", "numpy", "/", "torch", "/", "hand"]
    rows = [line.split() for line in lines[head + 2:] if line.strip() and not line.startswith("time, ")]
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
        ("batch_norm", "NHWC", "2x4x4x8", "forward"), ("batch_norm", "NHWC", "2x4x4x8", "backward"),
        ("layer_norm", "rows", "8x32", "forward"), ("layer_norm", "rows", "8x32", "backward")]
    assert all(r[-2:] == ["-", "-"] for r in rows)         # no torch or hand-written NumPy comparison there
    assert "the CUDA simulator is on" in done.stderr


def test_bench_cpu_several_sizes_in_one_table(capsys):
    assert command.main(["bench", "--size", "tiny", "16x64", "--ops", "layer_norm", "--repeat", "1",
                         "--no-numpy", "--no-torch"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "backend cpu, size tiny, 16x64, float32" in lines[0]
    assert sum(line.startswith("copy bandwidth:") and "Numba prange copy" in line for line in lines) == 2
    head = next(i for i, line in enumerate(lines) if line.startswith("op "))
    rows = [line.split()[:4] for line in lines[head + 2:] if line.strip() and not line.startswith("time, ")]
    assert rows == [["layer_norm", "rows", "8x32", "forward"], ["layer_norm", "rows", "8x32", "backward"],
                    ["layer_norm", "rows", "16x64", "forward"], ["layer_norm", "rows", "16x64", "backward"]]


FIRST_CALL = """
import numpy as np, numbanorm
from numbanorm.cpu import rowwise
x = np.ones((4, 8), np.float32)
numbanorm.layer_norm_forward(x, weight=np.ones(8, np.float32), bias=np.zeros(8, np.float32))
stats = rowwise._forward.serial.stats
print(sum(stats.cache_hits.values()), sum(stats.cache_misses.values()))
"""


def test_warmup_fills_the_cache_that_a_new_process_then_loads_from(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-m", "numbanorm", "warmup", "--ops", "layer_norm", "--dtype", "float32",
                           "--jobs", "1"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "compiled 1 ops (float32) on cpu" in done.stdout
    assert list(tmp_path.rglob("*.nbi")), "nothing was written to the cache"
    first = subprocess.run([sys.executable, "-c", FIRST_CALL], env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    hits, misses = map(int, first.stdout.split())
    assert (hits, misses) == (1, 0), "the first call of a new process compiled its kernel instead of loading it"
