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
    assert "{demo,bench,info}" in done.stdout
