"""Shared fixtures: a tiny pipeline and a few real-data files, built once per session; ways to run the scripts."""
import contextlib
import importlib
import json
import os
import random
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# The CPU only, on a GPU machine too (exact equalities, gloo): CUDA hidden here and in children (test_gpu.py gives it
# back). One thread a process: a spinning OpenMP pool on a busy machine slows the tiny models' first calls up to 80x.
GPUS = os.environ.get("CUDA_VISIBLE_DEVICES")
os.environ["CUDA_VISIBLE_DEVICES"] = ""
os.environ["OMP_NUM_THREADS"] = "1"


def run(*args, cwd, check=True):
    """Run a script as a user would; returns the CompletedProcess."""
    p = subprocess.run([sys.executable, os.path.join(ROOT, args[0]), *args[1:]], cwd=cwd, capture_output=True,
                       env=dict(os.environ, PYTHONPATH=ROOT), text=True, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def call(script, *args):
    """Run a script's main() in this process, as `python script args` would (a user error raises SystemExit)."""
    import infra
    mod = importlib.import_module(script.removesuffix(".py"))
    cls = {"train_ref": "RefRun", "train_slm": "SlmRun", "plot": "PlotRun", "data": "DataRun",
           "data_real": "RealRun"}[mod.__name__]
    return mod.main(infra.cli(getattr(mod, cls), "", list(args)))


def user_error(script, *args):
    """Run a script expecting a user's mistake: returns its message, checked to be `error: <what>; fix: <how>`."""
    with pytest.raises(SystemExit) as e:
        call(script, *args)
    msg = e.value.code
    assert isinstance(msg, str) and msg.startswith("error: ") and "; fix: " in msg and "\n" not in msg, msg
    return msg


def records(run_dir, evals=False):
    """A run's log records, in order (evals: only those of an evaluation)."""
    recs = map(json.loads, (run_dir / "log.jsonl").read_text().splitlines())
    return [r for r in recs if "val_loss" in r or not evals]


def trainer(pipeline, **kw):
    """A Trainer of an SLM 0.6 student on the session's pipeline (it writes nothing until trained)."""
    import rho
    pipe = json.loads((pipeline / "out" / "pipeline.json").read_text())
    cfg = dict(data_dir=str(pipeline / "data"), init=str(pipeline / pipe["base"]), ref_ckpt=str(pipeline / pipe["ref"]),
               score_file=str(pipeline / pipe["scores"]), out_dir=str(pipeline / "out" / "unused"), ratio=0.6,
               batch_size=8, max_tokens=8192, eval_problems=8, eval_max_new=32)
    return rho.Trainer(rho.TrainConfig(**{**cfg, **kw}))


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory):
    """data -> base -> reference -> scores -> SLM 0.6 and CLM students, with the tiny preset."""
    d = tmp_path_factory.mktemp("pipe")
    with contextlib.chdir(d):
        call("train_ref.py", "--preset", "tiny")
        call("train_slm.py", "--ratio", "0.6", "1.0")
    return d


@pytest.fixture(scope="session")
def real_files(tmp_path_factory):
    """Local files shaped like real corpora for data_real.py: web.jsonl, GSM8K-like train and test.parquet."""
    import datasets
    d = tmp_path_factory.mktemp("files")
    rng = random.Random(0)
    words = "the sum of two numbers is we use cookies subscribe proof lemma let x be real".split()
    with open(d / "web.jsonl", "w") as f:
        for i in range(300):
            text = f"Page {i}. {rng.randint(1, 9)} + {rng.randint(1, 9)} = ? " + " ".join(rng.choices(words, k=60))
            f.write(json.dumps({"text": text, "url": f"https://example.org/{i}"}) + "\n")
    gsm = [{"question": f"Tom has {a} apples and buys {b} more. How many apples does he have?",
            "answer": f"He has {a} + {b} = <<{a}+{b}={a + b}>>{a + b} apples.\n#### {a + b}"}
           for a in range(1, 15) for b in range(1, 15)]
    datasets.Dataset.from_list(gsm[:150]).to_parquet(str(d / "train.parquet"))
    datasets.Dataset.from_list(gsm[150:]).to_parquet(str(d / "test.parquet"))
    return d
