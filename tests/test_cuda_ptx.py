"""Every CUDA kernel that the simulator tests launch also compiles for a real GPU.

The simulator runs kernels as Python and cannot tell whether NVVM accepts them;
CI has no GPU. So the cuda cases of the op tests run once more under the
simulator, recording each kernel launch's argument types (``ptx_check.record``),
and each recorded (kernel, signature) is compiled to PTX for an H100 (sm_90) in
a second interpreter that needs only the CUDA toolkit libraries, not a driver
(``ptx_check.py``). Every kernel of the package must have run; float32 and
float16 kernels must not contain float64 arithmetic. Skipped where numba-cuda or the toolkit's NVVM and NVRTC are
missing (the ``cuda`` extra installs them).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

CAN_COMPILE = """
import ptx_check
ptx_check.pretend_a_device((9, 0))
from numba import cuda
def k(x):
    x[0] = 1.0
cuda.compile_ptx(k, "void(float32[::1])", cc=(9, 0))
"""


def _run(args, **env):
    environ = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + str(TESTS), **env)
    environ.pop("NUMBA_ENABLE_CUDASIM", None)
    environ.update(env)
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=environ, capture_output=True, text=True,
                          timeout=1200)


@pytest.fixture(scope="module")
def toolkit():
    probe = _run(["-c", CAN_COMPILE])
    if probe.returncode != 0:
        pytest.skip("numba-cuda cannot compile PTX here (no CUDA toolkit libraries: "
                    "pip install 'numba-cuda[cu12]'): " + probe.stderr.strip().splitlines()[-1])


def test_every_simulated_kernel_compiles_for_sm90_without_float64(toolkit, tmp_path):
    record = tmp_path / "kernels.pkl"
    tests = ["tests/test_ops.py", "tests/test_variants_float16.py", "tests/test_local_response_norm.py",
             "tests/test_batch_renorm.py", "tests/test_weight_norm.py", "tests/test_spectral_norm.py",
             "tests/test_running_stats.py", "tests/test_cuda.py"]
    ran = _run(["-m", "pytest", "-q", "-x", "-m", "cuda", "-p", "no:cacheprovider", *tests],
               NUMBA_ENABLE_CUDASIM="1", NUMBANORM_RECORD_KERNELS=str(record))
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    compiled = _run([str(TESTS / "ptx_check.py"), str(record), "--cc", "9.0"])
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr
