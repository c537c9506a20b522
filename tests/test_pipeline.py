"""The pipeline as a user runs it: data, base, reference, scores, students, plot, a resume; beyond the paper."""
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import data
import infra
import rho
from conftest import ROOT, call, records, user_error


def test_the_corpus_is_byte_identical_for_a_seed_labelled_and_round_trips_any_text(pipeline, tmp_path):
    for name, seed in (("a", 0), ("c", 1)):  # the session's pipeline built its data of seed 0 too
        data.build(data.data_config("tiny", seed=seed), str(tmp_path / name))
    for name in ("web.bin", "web.labels", "ref_train.bin", "ref_val.bin", "eval.jsonl", "meta.json"):
        assert (tmp_path / "a" / name).read_bytes() == (pipeline / "data" / name).read_bytes(), name
    assert (tmp_path / "a" / "web.bin").read_bytes() != (tmp_path / "c" / "web.bin").read_bytes()
    d = str(pipeline / "data")
    meta, (tokens, labels), tok = data.read_meta(d), data.load_tokens(d, "web"), data.Tokenizer.from_meta(d)
    assert len(tokens) == len(labels) == meta["splits"]["web"]["tokens"]
    share = meta["splits"]["web"]["kind_share"]
    assert abs(sum(share.values()) - 1) < 1e-3
    assert all(share[k] > 0 for k in ("math", "math_wrong", "boilerplate", "gibberish", "prose"))
    # every clean math token sits in a document whose final answer follows from its arithmetic
    assert "####" in tok.decode([t for t, l in zip(tokens.tolist(), labels.tolist()) if l == data.MATH])
    assert tok.vocab_hash == meta["vocab_hash"] and len(tok.vocab) < 2000
    for text in ["Question: Mia has 7 apples.\nAnswer: 7 + 5 = 12\n#### 12\n",
                 "Zebras über ünïcødé 🦓 and words never seen: quixotic fjord 12345.678"]:
        ids = tok.encode(text)
        assert max(ids) < len(tok.vocab) and tok.decode(ids) == text


def test_end_to_end_tiny_pipeline(pipeline, monkeypatch, capsys):
    out = pipeline / "out"
    pipe = json.loads((out / "pipeline.json").read_text())
    assert pipe["base"] and pipe["ref"]  # a run is what its config and its inputs' hashes say
    assert set(json.loads((out / "slm0.6" / "config.json").read_text())["inputs"]) == {"data", "init", "ref"}
    for run_dir in ("base", "ref", "slm0.6", "clm"):
        evals = records(out / run_dir, evals=True)
        assert evals[0]["tokens"] == 0 < evals[-1]["tokens"] and all(0 <= r["acc"] <= 1 for r in evals)
        assert all(np.isfinite(r["val_loss"]) for r in evals) and (out / run_dir / "done.json").exists()
        assert (out / run_dir / "ckpt.pt").exists()
    slm = records(out / "slm0.6")
    last = [r for r in slm if "selected" in r][-1]
    assert 0 <= last["precision"] <= 1 and set(last["selected"]) >= {"math", "gibberish"}
    # the student starts from the base model: same held-out loss at step 0
    assert slm[0]["val_loss"] == pytest.approx(records(out / "base")[-1]["val_loss"], abs=1e-5)
    # SLM and CLM see the same tokens: equal token counts at every eval
    assert [r["tokens"] for r in records(out / "slm0.6", True)] == [r["tokens"] for r in records(out / "clm", True)]
    scores = np.memmap(out / "ref" / "scores.bin", dtype=np.float16, mode="r")
    assert len(scores) == len(data.load_tokens(str(pipeline / "data"), "web")[0])
    monkeypatch.chdir(pipeline)
    call("plot.py")  # the lesson: three rows, SLM - CLM in words, what SLM kept; every table in compare.md
    printed = capsys.readouterr().out
    assert (out / "compare.png").stat().st_size > 10_000
    assert "| reference alone" in printed and "| CLM (every web token) |" in printed and "| SLM 0.6 (the top" in printed
    verdict = next(line for line in printed.splitlines() if line.startswith("SLM 0.6 vs CLM: "))
    assert " pts [" in verdict and "p=" in verdict and verdict.endswith("a verdict needs several pipelines).")
    assert "- target-format math: " in printed and "- boilerplate: " in printed and "| SLM 0.6 |" not in printed
    assert "| SLM 0.6 |" in (out / "compare.md").read_text()  # the full table, beside the lesson
    call("train_slm.py", "--ratio", "0.6")  # a rerun is reused (--ref_mode online trains alike: test_method.py)
    assert "reusing" in capsys.readouterr().out


def test_resume_after_sigkill_equals_uninterrupted_run(pipeline, monkeypatch):
    """Killed between evaluations, a run resumes to the uninterrupted run's log; Ctrl-C says how to resume."""
    args, killed = ["--ratio", "0.6", "--ckpt_every", "0"], pipeline / "out" / "killed"  # evaluations: steps 0, 1, 39
    target = random.Random().randrange(10, 30, 5)  # a random logged step to kill after, between two evaluations
    p = subprocess.Popen([sys.executable, os.path.join(ROOT, "train_slm.py"), *args, "--name", "killed"], cwd=pipeline,
                         env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while p.poll() is None:
        log = (killed / "log.jsonl").read_text().splitlines() if (killed / "log.jsonl").exists() else []
        if any(json.loads(x)["step"] >= target for x in log if x.endswith("}")):
            os.kill(p.pid, signal.SIGKILL)
        time.sleep(0.01)
    assert p.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert infra.load_checkpoint(str(killed / "ckpt.pt"))["step"] >= target - 5 > 1
    assert (killed / ".lock").exists() and not (killed / "done.json").exists()  # the lock file stays: it blocks nothing
    monkeypatch.chdir(pipeline)
    assert "--resume" in user_error("train_slm.py", *args, "--name", "killed")
    call("train_slm.py", *args, "--name", "killed", "--resume")
    drop = ("time", "eval_time", "tok_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in records(killed)] == \
        [{k: v for k, v in r.items() if k not in drop} for r in records(pipeline / "out" / "slm0.6")]
    # Ctrl-C at step 10 (what SIGINT raises in Python): one line naming the checkpoint and the command to resume
    step = rho.Trainer.step
    monkeypatch.setattr(rho.Trainer, "step", lambda tr, i: step(tr, i) if i != 10 else (_ for _ in ()).throw(
        KeyboardInterrupt))
    monkeypatch.setattr(sys, "argv", ["train_slm.py", *args, "--name", "stopped"])
    msg = user_error("train_slm.py", *args, "--name", "stopped")
    assert msg.startswith("error: interrupted at step 10; out/stopped/ckpt.pt holds step 10"), msg
    assert msg.endswith("--name stopped --resume`"), msg


def test_benchmark_measures_every_configuration_on_the_same_model(pipeline, monkeypatch, capsys):
    import train_slm
    monkeypatch.chdir(pipeline)
    train_slm.bench(train_slm.SlmRun(), infra.read_pipeline("out"), steps=2, rounds=2)
    lines = capsys.readouterr().out.splitlines()
    rows = [re.fullmatch(r"  (.+?) +([\d,]+) tok/s   step time ([\d.]+)x CLM's", line) for line in lines[1:4]]
    assert [r[1] for r in rows] == ["CLM", "SLM 0.6, cached scores", "SLM 0.6, online reference"], lines
    assert rows[0][3] == "1.000" and all(r[2] != "0" and float(r[3]) > 0 for r in rows)  # a CPU: no MFU
    assert lines[4].startswith("  scoring pass (forward only)") and "x CLM training" in lines[4]


def test_gibberish_never_cuts_a_problem_in_two_and_a_slip_carried_on_changes_the_final_answer():
    cfg = data.DataConfig(mix={"math_wrong": 1.0}, p_gibberish=1.0)  # a slip: before it, the wrong result, the rest
    pages = list(data.web_pages(cfg, random.Random(0), 300, data.key_splits(0)["train"]))
    for kinds in ([k for _, k in segs] for segs in pages):
        assert all(kinds[i - 1] == kinds[i + 1] == data.MATH for i, k in enumerate(kinds) if k == data.WRONG), kinds
    assert sum(data.GIBBER in [k for _, k in segs] for segs in pages) == 300
    q, steps, ans = data.FAMILIES[4][0](data.key_splits(0)["train"][4][0], random.Random(5))  # cost, then change
    for seed in range(20):
        for carry in (True, False):
            segs = data.wrong_problem(q, steps, random.Random(seed), carry)
            text, wrong = "".join(t for t, _ in segs), int(segs[1][0])
            final = data.extract_answer(text)
            lines = text.split("\nAnswer: ")[1].splitlines()[:-1]
            slipped = next(i for i, line in enumerate(lines) if f"= {wrong}" in line)
            assert data.CALC_RE.search(lines[slipped]).group(4) == str(wrong)
            assert (final != ans) if carry else (final == ans and lines[slipped + 1:] == steps[slipped + 1:])


def test_a_reference_sweep_on_a_shared_base_and_a_smaller_reference_from_its_own_base(pipeline, monkeypatch):
    """The sweep keeps the lowest validation answer loss; --ref_web 3: the base's first third of web and the subset."""
    monkeypatch.chdir(pipeline)
    call("train_ref.py", "--preset", "tiny", "--out_dir", "swept", "--base", "out/base/ckpt.pt", "--ref_epochs", "1",
         "3", "--ref_lr", "1e-3", "--ref_web", "3")
    pipe = json.loads(open("swept/pipeline.json").read())
    assert not os.path.exists("swept/base") and pipe["base"] == "out/base/ckpt.pt" and pipe["ref_web"] == 3
    sweep = pipe["ref_sweep"]
    assert sorted(sweep) == ["swept/ref-e1-lr0.001", "swept/ref-e3-lr0.001"]
    web, hq = data.load_tokens("data", "web_base")[0], data.load_tokens("data", "ref_train")[0]
    for d, run in sweep.items():  # what the pipeline records is what each run's summary says
        assert run["val_answer_loss"] == json.loads(open(os.path.join(d, "done.json")).read())["val_answer_loss"]
        cfg, epochs = json.loads(open(os.path.join(d, "config.json")).read()), int(run["ref_epochs"])
        assert (cfg["split"], cfg["part"], cfg["mix_hq"]) == ("web_base", "0/3", epochs)
        tokens = data.training_data(rho.TrainConfig(**{k: cfg[k] for k in ("data_dir", "split", "part", "mix_hq")}))[2]
        assert len(tokens) == cfg["max_tokens"] == len(web) // 3 + epochs * len(hq)
        assert np.array_equal(tokens, np.concatenate([web[:len(web) // 3], *[hq] * epochs]))
    best = min(sweep, key=lambda d: sweep[d]["val_answer_loss"])
    assert pipe["ref"] == os.path.join(best, "ckpt.pt") and pipe["scores"] == os.path.join(best, "scores.bin")
    assert pipe["ref_epochs"] == sweep[best]["ref_epochs"] and os.path.exists(pipe["scores"])
    assert "--ref_web" in user_error("train_ref.py", "--preset", "tiny", "--out_dir", "bad", "--ref_web", "-1")
    # a student uses them; with soft weighting, in a folder of its own at the default temperature
    call("train_slm.py", "--out_dir", "swept", "--ratio", "0.6", "--weighting", "soft", "--max_tokens", "3000")
    run = pipeline / "swept" / "slm0.6-soft0.1"
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["init"] == "out/base/ckpt.pt" and cfg["ref_ckpt"] == pipe["ref"]
    assert (cfg["weighting"], cfg["temperature"]) == ("soft", 0.1)
    assert [r for r in records(run) if "selected" in r] and json.loads((run / "done.json").read_text())["val_loss"] > 0
    # --student_base: the reference (half the width) fine-tunes from its own base, the students from the given one
    call("train_ref.py", "--preset", "tiny", "--out_dir", "small", "--n_embd", "16", "--n_head", "1",
         "--student_base", "out/base/ckpt.pt", "--ref_epochs", "1")
    pipe = json.loads(open("small/pipeline.json").read())
    assert pipe["base"] == "out/base/ckpt.pt" and os.path.exists("small/base/ckpt.pt")
    assert rho.GPT.from_checkpoint(rho.load_checkpoint(pipe["ref"])).config.n_embd == 16
    call("train_slm.py", "--out_dir", "small", "--ratio", "0.6", "--max_tokens", "3000")
    cfg = json.loads(open("small/slm0.6/config.json").read())
    assert (cfg["init"], cfg["ref_ckpt"], cfg["score_file"]) == ("out/base/ckpt.pt", pipe["ref"], pipe["scores"])
    assert rho.GPT.from_checkpoint(rho.load_checkpoint("small/slm0.6/ckpt.pt")).config.n_embd == 32
