"""Nothing lost, nothing trusted blindly: atomic writes, non-finite losses, one writer per folder (the mistakes a
user can make, each one line: test_errors.py)."""
import json
import os
import time

import pytest
import torch

import infra
import rho
from conftest import call, run, user_error


def test_crash_while_writing_a_checkpoint_keeps_the_previous_one(pipeline, tmp_path, monkeypatch):
    monkeypatch.chdir(pipeline)
    saved = infra.read_json(str(pipeline / "out" / "slm0.6" / "config.json"))
    tr = rho.Trainer(rho.TrainConfig(**{k: v for k, v in saved.items() if k != "inputs"}))
    path = str(tmp_path / "ckpt.pt")
    infra.save_checkpoint(path, tr, step=7)

    def dying_save(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError):
        infra.save_checkpoint(path, tr, step=8)
    assert infra.load_checkpoint(path)["step"] == 7
    assert os.listdir(tmp_path) == ["ckpt.pt"]  # no temporary file left behind


def test_crash_while_writing_a_data_file_keeps_the_previous_one(tmp_path, monkeypatch):
    path = str(tmp_path / "meta.json")
    infra.atomic_write(path, b'{"old": 1}')
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError("power cut")))
    with pytest.raises(OSError):
        infra.atomic_write(path, b'{"new": 2, "and a lot more": "' + b"x" * 100000 + b'"}')
    assert json.loads(open(path).read()) == {"old": 1}
    assert os.listdir(tmp_path) == ["meta.json"]


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(pipeline, monkeypatch):
    monkeypatch.chdir(pipeline)
    assert "lower --lr" in user_error("train_slm.py", "--ratio", "1.0", "--lr", "1e30", "--name", "boom")
    ckpt = infra.load_checkpoint(str(pipeline / "out" / "boom" / "ckpt.pt"))
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert not (pipeline / "out" / "boom" / "done.json").exists()


def test_rerunning_a_finished_pipeline_reuses_everything(pipeline):
    p = run("train_ref.py", "--preset", "tiny", cwd=pipeline)
    assert p.stdout.count("reusing") >= 4  # data, base, reference, scores
    assert "training" not in p.stdout


def test_overwrite_replaces_only_what_differs_and_says_so(pipeline, tmp_path):
    import shutil
    for name in ("data", "out/base", "out/ref"):
        shutil.copytree(pipeline / name, tmp_path / name)
    assert "training" not in run("train_ref.py", "--preset", "tiny", "--overwrite", cwd=tmp_path).stdout  # all whole
    ref = tmp_path / "out" / "ref" / "ckpt.pt"
    ref.write_bytes(ref.read_bytes()[:5000])  # a reference cut short: only it (and its scores) are made again
    out = run("train_ref.py", "--preset", "tiny", "--overwrite", cwd=tmp_path).stdout
    assert "out/ref: replacing a finished run whose ckpt.pt is damaged or missing (--overwrite)" in out, out
    assert "training out/ref" in out and "training out/base" not in out, out


def test_a_copied_pipeline_trains_from_its_own_base_and_scores(pipeline):
    import shutil
    copy = pipeline / "copied"  # beside out/, whose base and scores the recorded paths name
    for name in ("base", "ref", "pipeline.json"):  # the pipeline without its students
        (shutil.copytree if name != "pipeline.json" else shutil.copy)(pipeline / "out" / name, copy / name)
    try:
        run("train_slm.py", "--out_dir", "copied", "--ratio", "0.6", "--name", "s", cwd=pipeline)
        cfg = json.loads((copy / "s" / "config.json").read_text())
    finally:
        shutil.rmtree(copy)
    assert cfg["init"] == os.path.join("copied", "base", "ckpt.pt")
    assert cfg["score_files"] == os.path.join("copied", "ref", "scores.bin")


def test_slm_loss_of_an_empty_selection_is_zero_and_an_unselected_inf_stays_out():
    losses = torch.tensor([[1.0, 2.0], [3.0, float("inf")]], requires_grad=True)
    none = torch.zeros(2, 2, dtype=torch.bool)
    loss = rho.slm_loss(losses, none)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(losses.grad, torch.zeros(2, 2))
    some = torch.tensor([[True, False], [True, False]])
    assert rho.slm_loss(losses, some).item() == 2.0  # the inf loss was not selected: no nan
    assert rho.slm_loss(losses, torch.tensor([[0.5, 0.0], [0.5, 0.0]])).item() == 2.0  # soft weights alike


def test_eta_counts_training_and_evaluation_time_apart():
    class Tr:
        device, max_iters, labels, tokens_per_step, flops_per_token, peak, world = "cpu", 100, None, 10, 1, None, 1

        def lr_at(self, step):
            return 1.0
    meter = infra.Meter(Tr(), ["math"], 0)
    assert meter.eta(0, 5) is None  # nothing trained yet: no guess (the old first line said eta 28011s)
    meter.timed(lambda: time.sleep(0.3))  # the first evaluation, slow next to training
    meter.reset()
    for _ in range(10):  # ten training steps of 10 tokens in 0.1 s
        meter.add(torch.tensor(1.0), torch.ones(2, 2), None)
    time.sleep(0.1)
    rec = meter.record(10)
    assert rec["train_loss"] == 1.0 and 300 < rec["tok_s"] <= 1000
    # 90 steps left at 0.01 s, no evaluation left: 0.9 s (the old estimate, all time over all steps: 3.6 s)
    assert 0.9 <= meter.eta(10, 0) < 1.8
    assert 0.9 + 2 * 0.3 <= meter.eta(10, 2) < 2 * (0.9 + 2 * 0.3)


def test_a_run_folder_has_one_writer(pipeline, monkeypatch):
    """Two processes started together on one run folder: one trains, the other stops with one line and touches
    nothing; while a process holds the folder, no other starts in it; a killed holder's lock blocks nothing."""
    import subprocess
    import sys
    from conftest import ROOT
    args = [sys.executable, os.path.join(ROOT, "train_slm.py"), "--ratio", "0.6", "--max_tokens", "75000",
            "--name", "twin"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    procs = [subprocess.Popen(args, cwd=pipeline, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes[0] == 0 and codes[1] != 0, outs
    loser = outs[[p.returncode for p in procs].index(codes[1])]
    last = loser[1].strip().splitlines()[-1]
    assert last.startswith("error: out/twin is being written by process") and "fix:" in last
    steps = [json.loads(x)["step"] for x in (pipeline / "out" / "twin" / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and (pipeline / "out" / "twin" / "done.json").exists()
    # a live holder keeps every other writer out; once it is gone (closed, or killed), the folder is free
    monkeypatch.chdir(pipeline)  # the holder and the writer: this process, through two open files of .lock
    holder = infra.FolderLock(str(pipeline / "out" / "held"))
    assert f"process {os.getpid()}" in user_error("train_slm.py", "--ratio", "0.6", "--name", "held")
    assert not (pipeline / "out" / "held" / "config.json").exists()
    holder.release()
    call("train_slm.py", "--ratio", "0.6", "--name", "held", "--max_tokens", "5000")
    assert (pipeline / "out" / "held" / "done.json").exists()


def test_ctrl_c_outside_a_training_loop_is_one_line_without_a_traceback(tmp_path):
    import subprocess
    import sys
    from conftest import ROOT
    # what Ctrl-C raises in any script (they all import infra): during a corpus build, scoring or a plot
    p = subprocess.run([sys.executable, "-c", "import infra; raise KeyboardInterrupt"], cwd=ROOT, text=True,
                       capture_output=True, timeout=120)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith("error: interrupted; fix: run the same command again")
    p = subprocess.run([sys.executable, "-c", "import infra; raise ValueError('x')"], cwd=ROOT, text=True,
                       capture_output=True, timeout=120)
    assert "Traceback" in p.stderr  # other errors keep theirs
