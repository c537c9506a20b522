"""The CUDA path on a CPU: a graph break, a bf16 dtype clash, batch sizes, processes sharing a GPU, its RNG."""
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist

import data
import infra
import rho
from conftest import trainer


def test_under_bf16_the_step_compiles_as_one_graph_and_every_selection_trains_and_counts(pipeline, monkeypatch):
    """Compiled under bf16 as on CUDA: one graph, as eager; aot_eager traces as inductor (RHO_TEST_INDUCTOR=1) would."""
    backend = "inductor" if os.environ.get("RHO_TEST_INDUCTOR") == "1" else "aot_eager"
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda m: compile_(m, fullgraph=True, backend=backend))
    monkeypatch.setattr(rho, "autocast", lambda device: torch.autocast("cpu", dtype=torch.bfloat16))
    losses = []
    for kw in ({"compile": "off"}, {"compile": "on"}, {"ref_mode": "online"}, {"weighting": "soft"},
               {"select": "random"}):
        tr = trainer(pipeline, **kw)
        assert isinstance(tr.train_model, torch._dynamo.eval_frame.OptimizedModule) == (kw.get("compile") == "on")
        loss, kept, labels = tr.step(0)
        assert torch.isfinite(loss) and kept.dtype in (torch.bool, torch.float32), kw
        meter = infra.Meter(tr, data.KINDS, data.MATH)  # counts without bincount, for any weights' dtype
        meter.add(loss, kept, labels)
        assert torch.equal(meter.seen, torch.bincount(labels.view(-1), minlength=len(data.KINDS)).float())
        assert torch.allclose(meter.kept, torch.bincount(labels.view(-1), kept.view(-1).float(), len(data.KINDS)))
        losses.append([loss.item()] + [tr.step(i)[0].item() for i in (1, 2)])
    assert np.all(np.isfinite(losses[1])) and np.allclose(losses[1], losses[0], atol=0.02)  # compiled: as eager
    out = tr.evaluate()
    assert np.isfinite(out["val_loss"]) and np.isfinite(out["answer_loss"]) and 0 <= out["acc"] <= 1


def test_scoring_and_evaluation_batches_are_sized_by_block_and_vocabulary(monkeypatch, tmp_path):
    assert rho.eval_batch("cuda", 1024, 100_277, 512) == 4   # gpt2: 4 x 1 GB of logits, losses; not 512
    assert rho.eval_batch("cuda", 256, 1280, 512) == 512     # the gpu preset on the embedded corpus
    assert rho.eval_batch("cpu", 128, 1280, 32) == 32 and rho.eval_batch("cpu", 64, 1280, 64) == 64  # as asked
    assert rho.eval_batch("cuda", 1024, 10 ** 7, 512) == 1
    asked, sizes = [], []
    monkeypatch.setattr(rho, "eval_batch", lambda *a: asked.append(a) or 3)
    model = rho.GPT(rho.GPTConfig(vocab_size=50, block_size=16, n_layer=1, n_head=1, n_embd=8))
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda x, *a, **kw: sizes.append(len(x)) or forward(x, *a, **kw))
    tokens = np.random.default_rng(0).integers(0, 50, 10 * 16 + 1).astype(np.uint16)  # 10 blocks
    rho.score_corpus(model, tokens, 16, str(tmp_path / "s.bin"), "cpu", log=lambda *a: None)
    rho.eval_loss(model, rho.Blocks(tokens, 16, 1, 0), "cpu")
    assert asked == [("cpu", 16, 50, 32), ("cpu", 16, 50, 64)] and sizes == [3, 3, 3, 1] * 2


def test_each_process_binds_its_gpu_before_the_process_group_and_checkpoints_its_rng(pipeline, tmp_path, monkeypatch):
    """Under torchrun with NCCL, process i binds cuda:i before init_process_group (and passes it as device_id)."""
    import atexit
    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    for where, name, value in (
            (torch.cuda, "is_available", lambda: True), (torch.cuda, "device_count", lambda: 2),
            (torch.cuda, "set_device", lambda d: calls.append(("set_device", d))),
            (dist, "is_initialized", lambda: False),
            (dist, "init_process_group", lambda **kw: calls.append((kw["backend"], kw.get("device_id")))),
            (dist, "get_rank", lambda: 1), (dist, "get_world_size", lambda: 2), (atexit, "register", lambda f: f)):
        monkeypatch.setattr(where, name, value)
    assert infra.dist_setup("auto") == (1, 2, "cuda:1")
    assert calls == [("set_device", 1), ("nccl", torch.device("cuda", 1))]
    calls.clear()
    assert infra.dist_setup("cpu") == (1, 2, "cpu") and calls == [("gloo", None)]  # --device cpu: gloo, no GPU
    with pytest.raises(SystemExit, match="every process on one GPU"):
        infra.dist_setup("cuda:1")
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(SystemExit, match="nproc_per_node=2"):
        infra.dist_setup("cuda")
    monkeypatch.undo()  # a checkpoint keeps its own GPU's RNG and resumes on another
    tr = trainer(pipeline)
    tr.device, state, asked, restored = "cuda:1", torch.arange(4, dtype=torch.uint8), [], []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: asked.append(device) or state)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device: restored.append((s.tolist(), device)))
    infra.save_checkpoint(str(tmp_path / "ckpt.pt"), tr, 0)
    tr.device = "cuda:0"  # resumed with fewer GPUs
    infra.restore(tr, infra.load_checkpoint(str(tmp_path / "ckpt.pt")))
    assert asked == ["cuda:1"] and restored == [([0, 1, 2, 3], "cuda:0")]
