"""Data parallel training on CPU with gloo, in one torchrun of 2 processes (this file is their script)."""
import os
import pathlib
import socket
import subprocess
import sys

import torch

import rho
from conftest import ROOT, call, records, trainer


def scores():
    s = torch.randn(8, 32, generator=torch.Generator().manual_seed(0))
    s[:4] += 1.0  # rank 0's half scores higher: local and global selections must differ
    return s


def step_grads(tr):  # one optimizer step, and the gradients it took (after clipping): zero_grad skipped
    tr.optimizer.zero_grad = lambda set_to_none=True: None
    tr.step(0)
    return [p.grad for p in tr.model.parameters()]


def ranks(pipeline, out):
    """Each process: a global top-k of its half, a step, an SLM run (--scope global), a run failing on rank 0."""
    import infra
    import train_slm
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
    tr = trainer(pipeline, ratio=1.0, tokens_per_step=2 * 2 * 8 * 64)  # joins the process group
    rank, calls = int(os.environ["RANK"]), []
    selected = rho.select_topk_global(scores()[rank * 4:(rank + 1) * 4], 0.6, rank)
    tr.train_model.register_comm_hook(None, lambda state, bucket: calls.append(1) or allreduce_hook(None, bucket))
    grads = step_grads(tr)
    torch.save({"global": selected, "grads": grads, "allreduces": len(calls), "accum": tr.accum}, f"{out}.{rank}")
    os.chdir(pipeline)
    args = ["--ratio", "0.6", "--max_tokens", "8192", "--n_evals", "2"]
    train_slm.main(infra.cli(train_slm.SlmRun, "", [*args, "--scope", "global", "--name", "ddp2"]))
    rho.Trainer.evaluate = lambda self: (_ for _ in ()).throw(RuntimeError("evaluation failed on rank 0"))
    train_slm.main(infra.cli(train_slm.SlmRun, "", [*args, "--name", "fails"]))


def test_two_processes_equal_one_on_the_whole_batch_and_a_failing_rank_ends_the_run(pipeline, tmp_path, monkeypatch):
    """Top-k, gradients (one all-reduce a step) and a --scope global log as one process's; a failing rank exits."""
    with socket.socket() as s:  # a free port: a static rendezvous starts faster than --standalone's
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", f"--master_port={port}", "--nproc_per_node=2",
                          os.path.abspath(__file__), str(pipeline), str(tmp_path / "out")], cwd=pipeline,
                         env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
    one = step_grads(trainer(pipeline, ratio=1.0, batch_size=32))  # meanwhile, here: one process, the whole batch
    monkeypatch.chdir(pipeline)
    call("train_slm.py", "--ratio", "0.6", "--max_tokens", "8192", "--n_evals", "2", "--batch_size", "16", "--name",
         "single16")
    try:
        out = p.communicate(timeout=300)[0]
    except subprocess.TimeoutExpired:
        p.terminate()  # torchrun stops its ranks on SIGTERM (a SIGKILL would leave them running)
        p.communicate(timeout=60)
        raise AssertionError("the run hangs: rank 0 waits at exit for ranks that wait in another collective")
    assert p.returncode != 0 and "evaluation failed on rank 0" in out, out[-5000:]
    parts = [torch.load(tmp_path / f"out.{r}", weights_only=True) for r in range(2)]
    together = torch.cat([p["global"] for p in parts])
    assert torch.equal(together, rho.select_topk(scores(), 0.6))
    assert not torch.equal(torch.cat([rho.select_topk(half, 0.6) for half in scores().chunk(2)]), together)
    assert [p["accum"] for p in parts] == [2, 2] and [p["allreduces"] for p in parts] == [1, 1]  # one bucket
    for a, b, c in zip(parts[0]["grads"], parts[1]["grads"], one):
        assert torch.equal(a, b) and torch.allclose(a, c, atol=1e-6, rtol=1e-4)
    a, b = (records(pipeline / "out" / name, evals=True) for name in ("ddp2", "single16"))
    assert [r["tokens"] for r in a] == [r["tokens"] for r in b] and len(a) > 1
    for ra, rb in zip(a, b):
        assert abs(ra["val_loss"] - rb["val_loss"]) < 1e-4 and ra.get("precision") == rb.get("precision")
        assert "train_loss" not in ra or abs(ra["train_loss"] - rb["train_loss"]) < 1e-4


if __name__ == "__main__":
    ranks(pathlib.Path(sys.argv[1]), sys.argv[2])
