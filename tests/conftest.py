"""Shared fixtures: a tiny pipeline built once per test session, in a temporary folder."""
import importlib
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def run(*args, cwd, check=True):
    """Run one of the scripts as a user would; returns the CompletedProcess."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    p = subprocess.run([sys.executable, os.path.join(ROOT, args[0]), *args[1:]], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def call(script, *args):
    """Run a script's main() in this process, as `python script args` would from the current folder, without
    an interpreter start-up per call (for the slower tests); a user error raises SystemExit."""
    import infra
    mod = importlib.import_module(script.removesuffix(".py"))
    cls = {"train_ref": "RefRun", "train_slm": "SlmRun", "plot": "PlotRun", "data": "DataRun"}[mod.__name__]
    return mod.main(infra.cli(getattr(mod, cls), "", list(args)))


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory):
    """data -> base -> reference -> scores -> SLM 0.6 and CLM students, with the tiny preset."""
    d = tmp_path_factory.mktemp("pipe")
    run("train_ref.py", "--preset", "tiny", cwd=d)
    run("train_slm.py", "--ratio", "0.6", "1.0", cwd=d)
    return d
