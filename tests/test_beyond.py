"""Beyond the paper: soft token weighting, a margin on the excess, several reference models, a reference that keeps
some web, through the scripts."""
import json

import numpy as np
import pytest

from conftest import call, user_error


def test_soft_weighting_and_several_references_train_and_plot(pipeline, monkeypatch, capsys):
    out = pipeline / "out"
    monkeypatch.chdir(pipeline)
    call("train_ref.py", "--preset", "tiny", "--refs", "2", "--ref_data", "disjoint")
    pipe = json.loads((out / "pipeline.json").read_text())
    assert sorted(pipe["refs"]) == ["r1", "r2"] and pipe["ref"] == "out/ref/ckpt.pt"  # the main one is kept
    parts = [json.loads((out / "refs" / n / "config.json").read_text())["part"] for n in ("r1", "r2")]
    assert parts == ["0/2", "1/2"]
    call("train_slm.py", "--ratio", "0.6", "--refs", "2", "--combine", "min")
    call("train_slm.py", "--ratio", "0.6", "--weighting", "soft", "--temperature", "0.2")
    call("train_slm.py", "--ratio", "0.6", "--weighting", "margin", "--margin", "0.5")
    cfg = json.loads((out / "slm0.6-refs2min" / "config.json").read_text())
    assert cfg["ref_ckpts"] == "out/refs/r1/ckpt.pt,out/refs/r2/ckpt.pt" and cfg["combine"] == "min"
    assert json.loads((out / "slm0.6-soft0.2" / "done.json").read_text())["val_loss"] > 0
    selected = [r["selected"] for r in map(json.loads, (out / "slm0.6-margin0.5" / "log.jsonl").open())
                if "selected" in r]
    assert selected and all(sum(s.values()) > 0 for s in selected)  # it trained, keeping tokens of some kind
    capsys.readouterr()
    call("plot.py", "--full")
    printed = capsys.readouterr().out
    assert "SLM 0.6 (2 refs, min)" in printed and "SLM 0.6 (soft 0.2)" in printed
    assert "SLM 0.6 (margin 0.5)" in printed
    call("plot.py", "--explain", "out/slm0.6-margin0.5")  # the mechanism table, with the run's own rule
    assert "and every token whose excess is above -0.5" in capsys.readouterr().out


def test_a_run_that_predates_a_setting_is_reused_at_that_settings_default(pipeline, monkeypatch, capsys):
    monkeypatch.chdir(pipeline)
    cfg_path = pipeline / "out" / "slm0.6" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    del cfg["temperature"], cfg["weighting"]  # as written before these settings existed
    cfg_path.write_text(json.dumps(cfg))
    call("train_slm.py", "--ratio", "0.6")
    assert "reusing it" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="another configuration"):
        call("train_slm.py", "--ratio", "0.6", "--weighting", "soft", "--name", "slm0.6")


def test_answer_mask_covers_exactly_the_answers(pipeline):
    import data
    tok = data.Tokenizer.from_meta(str(pipeline / "data"))
    q, a = "Question: Ann has 3 cats and gets 4 more. How many now?\nAnswer:", " 3 + 4 = 7\n#### 7\n"
    ids = tok.encode(q) + tok.encode(a) + [tok.eot] + tok.encode(q) + tok.encode(a) + [tok.eot]
    mask = data.answer_mask(tok, ids)
    n_q, n_a = len(tok.encode(q)), len(tok.encode(a)) + 1  # the answer and its end-of-text token
    assert mask.tolist() == ([False] * n_q + [True] * n_a) * 2


def test_sft_puts_no_loss_on_question_tokens_and_selects_among_answers(pipeline, monkeypatch, capsys):
    import torch
    import rho
    pipe = json.loads((pipeline / "out" / "pipeline.json").read_text())
    for ratio in (1.0, 0.6):
        cfg = rho.TrainConfig(data_dir=str(pipeline / "data"), split="ref_train", sft=True, ratio=ratio,
                              ref_ckpts=str(pipeline / pipe["ref"]), ref_mode="online",
                              init=str(pipeline / pipe["base"]), out_dir=str(pipeline / "out" / "unused"),
                              batch_size=4, eval_problems=0)
        tr = rho.Trainer(cfg)
        ids = tr.blocks.block_ids(0)
        x, y, _, _ = tr.blocks.read(ids)
        valid = tr.blocks.rows(tr.answers, ids, 1, bool)
        assert 0 < valid.sum() < valid.numel()  # question tokens and answer tokens in the batch
        logits = tr.model(x)
        logits.retain_grad()
        losses = rho.token_losses(logits, y)
        mask = tr.select_tokens(losses, x, y, None, valid)
        assert not mask[~valid].any()
        assert mask.sum() == rho.n_selected(ratio, int(valid.sum()))
        rho.slm_loss(losses, mask).backward()
        assert torch.all(logits.grad.norm(dim=-1)[~valid] == 0)
    monkeypatch.chdir(pipeline)
    call("train_slm.py", "--sft", "--ratio", "0.6", "1.0")
    capsys.readouterr()
    call("plot.py", "--full")
    printed = capsys.readouterr().out
    assert "fine-tuning on answer tokens" in printed and "| SFT SLM 0.6 |" in printed
    assert json.loads((pipeline / "out" / "sft-slm0.6" / "config.json").read_text())["split"] == "ref_train"


def test_a_reference_that_keeps_some_web_trains_on_the_subset_and_a_part_of_the_base_web(pipeline, monkeypatch):
    import data
    import rho
    monkeypatch.chdir(pipeline)
    call("train_ref.py", "--preset", "tiny", "--out_dir", "webref", "--base", "out/base/ckpt.pt", "--ref_web", "3")
    pipe = json.loads(open("webref/pipeline.json").read())
    cfg = json.loads(open("webref/ref/config.json").read())
    assert pipe["ref_web"] == 3 and pipe["base"] == "out/base/ckpt.pt" and pipe["ref"] == "webref/ref/ckpt.pt"
    assert (cfg["split"], cfg["part"], cfg["mix_hq"]) == ("web_base", "0/3", 2.0)  # the tiny preset: 2 epochs
    # what it trains on: the first third of the base's web, then the subset twice; one pass over them
    tokens = data.training_data(rho.TrainConfig(**{k: cfg[k] for k in ("data_dir", "split", "part", "mix_hq")}))[2]
    web, hq = data.load_tokens("data", "web_base")[0], data.load_tokens("data", "ref_train")[0]
    assert len(tokens) == cfg["max_tokens"] == len(web) // 3 + 2 * len(hq)
    assert np.array_equal(tokens, np.concatenate([web[:len(web) // 3], hq, hq]))
    assert json.loads(open("webref/ref/done.json").read())["val_answer_loss"] > 0
    call("train_slm.py", "--out_dir", "webref", "--ratio", "0.6", "--max_tokens", "3000")  # a student uses it
    assert json.loads(open("webref/slm0.6/config.json").read())["ref_ckpts"] == "webref/ref/ckpt.pt"
    for bad in (["--ref_web", "-1"], ["--ref_web", "2", "--refs", "2"], ["--ref_web", "2", "--init", "scratch"]):
        assert "--ref_web" in user_error("train_ref.py", "--preset", "tiny", "--out_dir", "bad", *bad)
