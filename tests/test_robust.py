"""Nothing lost, nothing trusted blindly: atomic writes, non-finite losses, reruns, one writer per folder."""
import json
import os
import shutil
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch

import infra
from conftest import ROOT, call, records, trainer, user_error


def test_a_crash_while_writing_or_a_non_finite_loss_keeps_the_last_good_file(pipeline, tmp_path, monkeypatch):
    tr, path = trainer(pipeline), str(tmp_path / "ckpt.pt")
    infra.save_checkpoint(path, tr, step=7)
    infra.atomic_write(str(tmp_path / "meta.json"), b'{"old": 1}')
    monkeypatch.setattr(torch, "save", lambda obj, f: f.write(b"PK\x03\x04 half") and (_ for _ in ()).throw(OSError))
    with pytest.raises(OSError):  # the disk full while the checkpoint is written
        infra.save_checkpoint(path, tr, step=8)
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError("power cut")))
    with pytest.raises(OSError):  # a power cut before the data file is on disk
        infra.atomic_write(str(tmp_path / "meta.json"), b'{"new": 2, "and a lot more": "' + b"x" * 100000 + b'"}')
    assert infra.load_checkpoint(path)["step"] == 7
    assert json.loads((tmp_path / "meta.json").read_text()) == {"old": 1}
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt", "meta.json"]  # no temporary file left behind
    monkeypatch.undo()
    monkeypatch.chdir(pipeline)  # a loss that blows up stops the run before it checkpoints the broken model
    assert "lower --lr" in user_error("train_slm.py", "--ratio", "1.0", "--lr", "1e30", "--name", "boom")
    ckpt = infra.load_checkpoint(str(pipeline / "out" / "boom" / "ckpt.pt"))
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert not (pipeline / "out" / "boom" / "done.json").exists()


def test_a_rerun_reuses_overwrite_replaces_what_differs_a_copy_uses_its_own(pipeline, tmp_path, monkeypatch, capsys):
    for name in ("data", "out/base", "out/ref"):
        shutil.copytree(pipeline / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    call("train_ref.py", "--preset", "tiny")
    out = capsys.readouterr().out
    assert out.count("reusing") >= 4 and "training" not in out, out  # data, base, reference, scores
    call("train_ref.py", "--preset", "tiny", "--overwrite")
    assert "training" not in capsys.readouterr().out  # all whole: nothing replaced
    ref = tmp_path / "out" / "ref" / "ckpt.pt"
    ref.write_bytes(ref.read_bytes()[:5000])  # a reference cut short: only it (and its scores) are made again
    call("train_ref.py", "--preset", "tiny", "--overwrite")
    out = capsys.readouterr().out
    assert "out/ref: replacing a finished run whose ckpt.pt is damaged or missing (--overwrite)" in out, out
    assert "training out/ref" in out and "training out/base" not in out, out
    # a copied pipeline trains from its own base and scores
    copy = pipeline / "copied"  # beside out/, whose base and scores the recorded paths name
    for name in ("base", "ref", "pipeline.json"):  # the pipeline without its students
        (shutil.copytree if name != "pipeline.json" else shutil.copy)(pipeline / "out" / name, copy / name)
    monkeypatch.chdir(pipeline)
    try:
        call("train_slm.py", "--out_dir", "copied", "--ratio", "0.6", "--name", "s", "--max_tokens", "3000")
        cfg = json.loads((copy / "s" / "config.json").read_text())
    finally:
        shutil.rmtree(copy)
    assert cfg["init"] == os.path.join("copied", "base", "ckpt.pt")
    assert cfg["score_file"] == os.path.join("copied", "ref", "scores.bin")


def test_eta_counts_training_and_evaluation_time_apart_and_ctrl_c_outside_a_loop_is_one_line(capsys):
    tr = SimpleNamespace(device="cpu", max_iters=100, labels=None, tokens_per_step=10, flops_per_token=1, peak=None,
                         world=1, lr_at=lambda step: 1.0)
    meter = infra.Meter(tr, ["math"], 0)
    assert meter.eta(0, 5) is None  # nothing trained yet: no guess
    meter.timed(lambda: time.sleep(0.3))  # the first evaluation, slow next to training
    meter.reset()
    for _ in range(10):  # ten training steps of 10 tokens in 0.1 s
        meter.add(torch.tensor(1.0), torch.ones(2, 2), None)
    time.sleep(0.1)
    rec = meter.record(10)
    assert rec["train_loss"] == 1.0 and 300 < rec["tok_s"] <= 1000
    # 90 steps left at 0.01 s, no evaluation left: 0.9 s (not all time over all steps: 3.6 s)
    assert 0.9 <= meter.eta(10, 0) < 1.8
    assert 0.9 + 2 * 0.3 <= meter.eta(10, 2) < 2 * (0.9 + 2 * 0.3)
    # Ctrl-C outside a training loop: one line, no traceback
    assert sys.excepthook is infra.interrupted  # what Ctrl-C raises in any script: a corpus build, scoring, a plot
    shown = []
    infra.interrupted(KeyboardInterrupt, KeyboardInterrupt(), None, hook=lambda *a: shown.append(a))
    err = capsys.readouterr().err
    assert not shown and err.startswith("error: interrupted; fix: run the same command again") and err.count("\n") == 1
    infra.interrupted(ValueError, ValueError("x"), None, hook=lambda *a: shown.append(a))
    assert len(shown) == 1  # other errors keep their traceback


def test_a_run_folder_has_one_writer(pipeline, monkeypatch):
    """Of two processes on one run folder one trains, the other stops with one line; a folder let go is free."""
    args = [sys.executable, os.path.join(ROOT, "train_slm.py"), "--ratio", "0.6", "--max_tokens", "15000", "--name",
            "twin"]
    procs = [subprocess.Popen(args, cwd=pipeline, env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [(p.communicate(timeout=600), p.returncode) for p in procs]
    assert sorted(code for _, code in outs) == [0, 1], outs
    last = next(err for (_, err), code in outs if code).strip().splitlines()[-1]
    assert last.startswith("error: out/twin is being written by another process; fix: "), last
    steps = [r["step"] for r in records(pipeline / "out" / "twin")]
    assert steps == sorted(set(steps)) and (pipeline / "out" / "twin" / "done.json").exists()
    monkeypatch.chdir(pipeline)  # the holder and the writer: this process, through two open files of .lock
    with infra.FolderLock(str(pipeline / "out" / "held")):
        assert "being written" in user_error("train_slm.py", "--ratio", "0.6", "--name", "held")
        assert not (pipeline / "out" / "held" / "config.json").exists()
    call("train_slm.py", "--ratio", "0.6", "--name", "held", "--max_tokens", "5000")
    assert (pipeline / "out" / "held" / "done.json").exists()
