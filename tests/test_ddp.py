"""Data parallel training on CPU with the gloo backend: global selection is exact, a 2-process run equals one
process on the concatenated batch, gradient accumulation all-reduces once a step, and a failing rank ends the run."""
import json
import os
import subprocess
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import rho
from conftest import ROOT, call


def _global_selection_worker(rank, world, init_file, scores, ratio, out):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    B = scores.size(0) // world
    mine = rho.select_topk_global(scores[rank * B:(rank + 1) * B], ratio, rank)
    local = rho.select_topk(scores[rank * B:(rank + 1) * B], ratio)
    torch.save({"global": mine, "local": local}, f"{out}.{rank}")
    dist.destroy_process_group()


def test_global_selection_over_two_ranks_equals_one_process_on_the_concatenated_batch(tmp_path):
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(8, 32, generator=g)
    scores[:4] += 1.0  # rank 0's half scores higher: local and global selections must differ
    ratio = 0.6
    mp.spawn(_global_selection_worker, args=(2, str(tmp_path / "init"), scores, ratio, str(tmp_path / "out")),
             nprocs=2, join=True)
    parts = [torch.load(tmp_path / f"out.{r}", weights_only=True) for r in range(2)]
    together = torch.cat([p["global"] for p in parts])
    assert torch.equal(together, rho.select_topk(scores, ratio))
    assert together.sum() == rho.n_selected(ratio, scores.numel())
    assert not torch.equal(torch.cat([p["local"] for p in parts]), together)  # local really is different


def test_torchrun_two_processes_equal_one_process_with_the_global_batch(pipeline, tmp_path, monkeypatch):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    args = ["--ratio", "0.6", "--max_tokens", "8192", "--n_evals", "2"]
    with open(tmp_path / "ddp2.txt", "w") as output:
        p = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                              "--master_port=29533", os.path.join(ROOT, "train_slm.py"), *args, "--scope", "global",
                              "--name", "ddp2"], cwd=pipeline, env=env, stdout=output, stderr=subprocess.STDOUT)
    monkeypatch.chdir(pipeline)  # meanwhile, in this process: one process with the global batch
    call("train_slm.py", *args, "--batch_size", "16", "--name", "single16")
    assert p.wait(timeout=600) == 0, (tmp_path / "ddp2.txt").read_text()[-5000:]

    def evals(name):
        recs = [json.loads(x) for x in (pipeline / "out" / name / "log.jsonl").read_text().splitlines()]
        return [(r["tokens"], r["val_loss"], r.get("train_loss"), r.get("precision")) for r in recs if "val_loss" in r]
    a, b = evals("ddp2"), evals("single16")
    assert [x[0] for x in a] == [x[0] for x in b]
    for (_, va, ta, pa), (_, vb, tb, pb) in zip(a, b):
        assert abs(va - vb) < 1e-4 and (ta is None or abs(ta - tb) < 1e-4) and pa == pb


def _grads(tr):
    """Make tr.optimizer.step keep the gradients it is given (after clipping) in tr.grads."""
    step = tr.optimizer.step

    def keep(*a, **kw):
        tr.grads = [p.grad.clone() for p in tr.model.parameters()]
        return step(*a, **kw)
    tr.optimizer.step = keep


def _accumulation_worker(rank, world, port, pipeline, cfg, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world))
    os.chdir(pipeline)
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
    tr = rho.Trainer(rho.TrainConfig(**cfg))
    calls = []
    tr.train_model.register_comm_hook(None, lambda state, bucket: calls.append(1) or allreduce_hook(None, bucket))
    _grads(tr)
    tr.step(0)
    torch.save({"grads": tr.grads, "allreduces": len(calls), "accum": tr.accum}, f"{out}.{rank}")


def test_accumulation_over_two_ranks_all_reduces_once_and_equals_one_big_batch(pipeline, tmp_path, monkeypatch):
    """--tokens_per_step of 2 micro-batches on each of 2 processes (gloo): the gradients of the step equal one
    process's on the 4 micro-batches as one batch, and DDP all-reduces once a step, not once a micro-batch."""
    import socket
    pipe = json.loads((pipeline / "out" / "pipeline.json").read_text())
    cfg = dict(data_dir=str(pipeline / "data"), init=str(pipeline / pipe["base"]), out_dir=str(tmp_path / "unused"),
               ratio=1.0, batch_size=8, eval_problems=0, max_tokens=8192, tokens_per_step=2 * 2 * 8 * 64)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_accumulation_worker, args=(2, port, str(pipeline), cfg, str(tmp_path / "out")), nprocs=2, join=True)
    parts = [torch.load(tmp_path / f"out.{r}", weights_only=True) for r in range(2)]
    assert [p["accum"] for p in parts] == [2, 2] and [p["allreduces"] for p in parts] == [1, 1]  # one bucket
    monkeypatch.chdir(pipeline)
    one = rho.Trainer(rho.TrainConfig(**{**cfg, "batch_size": 32, "tokens_per_step": 0}))
    _grads(one)
    one.step(0)
    for a, b, c in zip(parts[0]["grads"], parts[1]["grads"], one.grads):
        assert torch.equal(a, b) and torch.allclose(a, c, atol=1e-6, rtol=1e-4)


def test_a_rank_that_fails_while_the_others_wait_in_a_collective_ends_the_run(pipeline, tmp_path):
    """Rank 0 raises while evaluating and the other rank waits in an all_reduce (the selection counts): rank 0 must
    exit (torchrun then stops the rest), not wait at exit in a barrier that no other rank joins."""
    script = tmp_path / "fail_eval.py"
    script.write_text("import sys, infra, rho, train_slm\n"
                      "def evaluate(self):\n    raise RuntimeError('evaluation failed on rank 0')\n"
                      "rho.Trainer.evaluate = evaluate\n"
                      "train_slm.main(infra.cli(train_slm.SlmRun, '', sys.argv[1:]))\n")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    p = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29534",
                          str(script), "--ratio", "0.6", "--max_tokens", "4096", "--name", "fails"], cwd=pipeline,
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out = p.communicate(timeout=90)[0]
    except subprocess.TimeoutExpired:
        p.terminate()  # torchrun stops its ranks on SIGTERM (a SIGKILL would leave them running)
        p.communicate(timeout=60)
        raise AssertionError("the run hangs: rank 0 waits at exit for ranks that wait in another collective")
    assert p.returncode != 0 and "evaluation failed on rank 0" in out
