"""Nothing lost, nothing trusted blindly: atomic writes, safe loading, non-finite losses, bad inputs."""
import json
import os
import pickle
import shutil
import time

import pytest
import torch

import infra
import rho
from conftest import run
from test_pipeline import assert_user_error


def copy_pipeline(pipeline, tmp_path):
    """A private copy of the tiny pipeline (data + base + ref + scores) that a test may damage."""
    shutil.copytree(pipeline / "data", tmp_path / "data")
    (tmp_path / "out").mkdir()
    for d in ("base", "ref"):
        shutil.copytree(pipeline / "out" / d, tmp_path / "out" / d)
    pipe = json.loads((pipeline / "out" / "pipeline.json").read_text())
    pipe.update(data_dir=str(tmp_path / "data"), base=str(tmp_path / "out" / "base" / "ckpt.pt"),
                ref=str(tmp_path / "out" / "ref" / "ckpt.pt"), scores=str(tmp_path / "out" / "ref" / "scores.bin"))
    (tmp_path / "out" / "pipeline.json").write_text(json.dumps(pipe))
    return tmp_path


def test_crash_while_writing_a_checkpoint_keeps_the_previous_one(pipeline, tmp_path, monkeypatch):
    monkeypatch.chdir(pipeline)
    saved = infra.read_config(str(pipeline / "out" / "slm0.6"))
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


class Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_a_pickle_that_would_run_code_is_refused(pipeline, tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"version": 1, "model": Evil()}, evil, pickle_module=pickle)
    with pytest.raises(SystemExit, match="not a loadable rho checkpoint"):
        infra.load_checkpoint(str(evil))
    d = copy_pipeline(pipeline, tmp_path / "p")
    shutil.copy(evil, d / "out" / "base" / "ckpt.pt")
    assert_user_error(run("train_slm.py", "--ratio", "0.6", check=False, cwd=d), "not a loadable")
    assert not (d / "PWNED").exists() and not (tmp_path / "PWNED").exists()


def test_checkpoint_from_an_incompatible_version_is_refused(pipeline, tmp_path):
    d = copy_pipeline(pipeline, tmp_path)
    ckpt = torch.load(d / "out" / "ref" / "ckpt.pt", weights_only=True)
    ckpt["version"] = 999
    torch.save(ckpt, d / "out" / "ref" / "ckpt.pt")
    assert_user_error(run("train_slm.py", "--ratio", "0.6", "--ref_mode", "online", check=False, cwd=d),
                      "incompatible version")


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(pipeline):
    p = run("train_slm.py", "--ratio", "1.0", "--lr", "1e30", "--name", "boom", check=False, cwd=pipeline)
    assert_user_error(p, "lower --lr")
    ckpt = infra.load_checkpoint(str(pipeline / "out" / "boom" / "ckpt.pt"))
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert not (pipeline / "out" / "boom" / "done.json").exists()


@pytest.mark.parametrize("damage", ["truncate", "delete", "labels", "meta"])
def test_damaged_data_files_are_one_clear_line(pipeline, tmp_path, damage):
    d = copy_pipeline(pipeline, tmp_path)
    web = d / "data" / "web.bin"
    if damage == "truncate":
        web.write_bytes(web.read_bytes()[:1000])
    elif damage == "delete":
        web.unlink()
    elif damage == "labels":
        (d / "data" / "web.labels").write_bytes(b"\x00" * 10)
    else:
        (d / "data" / "meta.json").write_text("{ not json")
    p = run("train_slm.py", "--ratio", "0.6", check=False, cwd=d)
    assert_user_error(p, "data.py")
    assert not (d / "out" / "slm0.6").exists()


def test_empty_eval_set_and_too_large_block_are_one_clear_line(pipeline, tmp_path):
    d = copy_pipeline(pipeline, tmp_path)
    cfg = rho.TrainConfig(data_dir=str(d / "data"), out_dir=str(d / "out" / "big"), block_size=4096,
                          batch_size=64, n_layer=1, n_head=1, n_embd=8, eval_problems=0)
    with pytest.raises(SystemExit, match="fewer than one batch"):
        rho.train(cfg)
    (d / "data" / "eval.jsonl").write_text("")
    with pytest.raises(SystemExit, match="eval.jsonl holds no problems"):
        rho.train(rho.TrainConfig(data_dir=str(d / "data"), out_dir=str(d / "out" / "e"), n_layer=1, n_head=1,
                                  n_embd=8, block_size=32, batch_size=2))
    assert not (d / "out" / "big").exists() and not (d / "out" / "e").exists()


def test_score_file_of_another_reference_is_refused(pipeline, tmp_path):
    d = copy_pipeline(pipeline, tmp_path)
    ckpt = torch.load(d / "out" / "ref" / "ckpt.pt", weights_only=True)
    ckpt["model"]["lm_head.weight"] += 0.01  # another reference, same shapes
    torch.save(ckpt, d / "out" / "ref" / "ckpt.pt")
    assert_user_error(run("train_slm.py", "--ratio", "0.6", check=False, cwd=d), "does not belong")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_flag_without_a_gpu_is_one_clear_line(pipeline):
    assert_user_error(run("train_slm.py", "--ratio", "0.6", "--device", "cuda", "--name", "gpu", check=False,
                          cwd=pipeline), "no CUDA GPU")


def test_rerunning_a_finished_pipeline_reuses_everything(pipeline):
    p = run("train_ref.py", "--preset", "tiny", cwd=pipeline)
    assert p.stdout.count("reusing") >= 4  # data, base, reference, scores
    assert "training" not in p.stdout


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


def test_a_run_folder_has_one_writer(pipeline):
    """Two processes started together on one run folder: one trains, the other stops with one line and touches
    nothing; while a process holds the folder, no other starts in it; a killed holder's lock blocks nothing."""
    import subprocess
    import sys
    from conftest import ROOT
    args = [sys.executable, os.path.join(ROOT, "train_slm.py"), "--ratio", "0.6", "--max_tokens", "150000",
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
    holder = infra.FolderLock(str(pipeline / "out" / "held"))
    p = run("train_slm.py", "--ratio", "0.6", "--name", "held", check=False, cwd=pipeline)
    assert_user_error(p, f"process {os.getpid()}")
    assert not (pipeline / "out" / "held" / "config.json").exists()
    holder.release()
    run("train_slm.py", "--ratio", "0.6", "--name", "held", "--max_tokens", "5000", cwd=pipeline)
