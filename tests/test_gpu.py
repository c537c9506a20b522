"""Opt-in on a CUDA machine (RHO_GPU_TESTS=1): experiments/gpu_check.sh on the GPUs conftest hides elsewhere."""
import os
import subprocess
import sys

import pytest

from conftest import GPUS, ROOT

pytestmark = pytest.mark.skipif(os.environ.get("RHO_GPU_TESTS") != "1",
                                reason="opt-in: RHO_GPU_TESTS=1, on a machine with a CUDA GPU")


def test_gpu_check_passes(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    if GPUS is not None:  # the GPUs the shell gave, not conftest's none
        env["CUDA_VISIBLE_DEVICES"] = GPUS
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]  # this python and its torchrun
    p = subprocess.run(["bash", os.path.join(ROOT, "experiments", "gpu_check.sh"), str(tmp_path)], env=env,
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0 and "all checks passed" in p.stdout, p.stdout[-3000:] + p.stderr[-3000:]
