"""Opt-in, on a machine with a CUDA GPU: RHO_GPU_TESTS=1 python -m pytest tests/test_gpu.py. The tiny pipeline on
the GPU that conftest hides from every other test (experiments/gpu_check.py --only tiny: compiled, bf16, 2
micro-batches a step, a resume). experiments/gpu_check.py runs this and the other GPU checks."""
import os
import subprocess
import sys

import pytest

from conftest import GPUS, ROOT

pytestmark = pytest.mark.skipif(os.environ.get("RHO_GPU_TESTS") != "1",
                                reason="opt-in: RHO_GPU_TESTS=1, on a machine with a CUDA GPU")


def test_the_tiny_pipeline_trains_and_resumes_on_the_gpu(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    if GPUS is not None:  # the GPUs the shell gave, not conftest's none
        env["CUDA_VISIBLE_DEVICES"] = GPUS
    p = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "gpu_check.py"), "--only", "tiny",
                        "--dir", str(tmp_path)], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0 and "PASS tiny" in p.stdout, p.stdout[-3000:] + p.stderr[-3000:]
