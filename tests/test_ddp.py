"""Data parallel training on CPU with the gloo backend: global selection is exact, and a 2-process run equals
one process on the concatenated batch."""
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
