"""The pipeline as a user runs it: data, base, reference, scores, students, plot; and user mistakes."""
import json
import os

import numpy as np
import pytest

import data
import infra
from conftest import ROOT, call, run, user_error


def test_data_is_byte_identical_for_a_seed_and_differs_across_seeds(tmp_path):
    cfg = data.data_config("tiny")
    data.build(cfg, str(tmp_path / "a"))
    data.build(cfg, str(tmp_path / "b"))
    data.build(data.data_config("tiny", seed=1), str(tmp_path / "c"))
    for name in ("web.bin", "web.labels", "ref_train.bin", "ref_val.bin", "eval.jsonl", "meta.json"):
        a, b = (tmp_path / "a" / name).read_bytes(), (tmp_path / "b" / name).read_bytes()
        assert a == b, name
    assert (tmp_path / "a" / "web.bin").read_bytes() != (tmp_path / "c" / "web.bin").read_bytes()


def test_corpus_is_labelled_and_held_out_problems_are_unseen(tmp_path):
    meta = data.build(data.data_config("tiny"), str(tmp_path))
    tokens, labels = data.load_tokens(str(tmp_path), "web")
    assert len(tokens) == len(labels) == meta["splits"]["web"]["tokens"]
    share = meta["splits"]["web"]["kind_share"]
    assert abs(sum(share.values()) - 1) < 1e-3
    assert all(share[k] > 0 for k in ("math", "math_wrong", "boilerplate", "gibberish", "prose"))
    tok = data.Tokenizer.from_meta(str(tmp_path))
    text = "".join(tok.decode(data.load_tokens(str(tmp_path), s)[0].tolist()) for s in ("web", "web_base", "ref_train"))
    for e in data.load_eval(str(tmp_path)):
        q = e["prompt"].split("\n")[0]
        assert q not in text
    # every clean math token sits in a document whose final answer follows from its arithmetic
    math_text = tok.decode([t for t, l in zip(tokens.tolist(), labels.tolist()) if l == data.MATH])
    assert "####" in math_text


def test_vocabulary_compaction_round_trips_any_text(tmp_path):
    data.build(data.data_config("tiny"), str(tmp_path))
    tok = data.Tokenizer.from_meta(str(tmp_path))
    assert tok.vocab_hash == data.read_meta(str(tmp_path))["vocab_hash"]
    assert len(tok.vocab) < 2000
    for text in ["Question: Mia has 7 apples.\nAnswer: 7 + 5 = 12\n#### 12\n",
                 "Zebras über ünïcødé 🦓 and words never seen: quixotic fjord 12345.678"]:
        ids = tok.encode(text)
        assert max(ids) < len(tok.vocab)
        assert tok.decode(ids) == text


def test_cl100k_file_matches_tiktokens_declared_hash():
    enc = data.cl100k()
    assert enc.n_vocab > 100_000
    assert enc.encode_ordinary("#### 12") == [827, 220, 717]


def test_end_to_end_tiny_pipeline(pipeline, monkeypatch, capsys):
    out = pipeline / "out"
    pipe = json.loads((out / "pipeline.json").read_text())
    assert pipe["base"] and pipe["ref"]
    for run_dir in ("base", "ref", "slm0.6", "clm"):
        recs = [json.loads(x) for x in (out / run_dir / "log.jsonl").read_text().splitlines()]
        evals = [r for r in recs if "val_loss" in r]
        assert evals[0]["tokens"] == 0 and evals[-1]["tokens"] > 0
        assert all(np.isfinite(r["val_loss"]) and 0 <= r["acc"] <= 1 for r in evals)
        assert (out / run_dir / "ckpt.pt").exists() and (out / run_dir / "done.json").exists()
    slm = [json.loads(x) for x in (out / "slm0.6" / "log.jsonl").read_text().splitlines()]
    last = [r for r in slm if "selected" in r][-1]
    assert 0 <= last["precision"] <= 1 and set(last["selected"]) >= {"math", "gibberish"}
    # the student starts from the base model: same held-out loss at step 0
    base_final = [json.loads(x) for x in (out / "base" / "log.jsonl").read_text().splitlines()][-1]["val_loss"]
    assert slm[0]["val_loss"] == pytest.approx(base_final, abs=1e-5)
    # SLM and CLM see the same tokens: equal token counts at every eval
    clm = [json.loads(x) for x in (out / "clm" / "log.jsonl").read_text().splitlines()]
    assert [r["tokens"] for r in slm if "val_loss" in r] == [r["tokens"] for r in clm if "val_loss" in r]
    scores = np.memmap(out / "ref" / "scores.bin", dtype=np.float16, mode="r")
    assert len(scores) == len(data.load_tokens(str(pipeline / "data"), "web")[0])
    monkeypatch.chdir(pipeline)
    call("plot.py")  # the lesson: three rows, SLM - CLM in words, what SLM kept; every table in compare.md
    printed = capsys.readouterr().out
    assert (out / "compare.png").stat().st_size > 10_000
    assert "| reference alone" in printed and "| CLM (every web token) |" in printed and "| SLM 0.6 (the top" in printed
    verdict = next(line for line in printed.splitlines() if line.startswith("SLM 0.6 vs CLM: "))
    assert " pts [" in verdict and "p=" in verdict and verdict.endswith(("problems.", "these problems."))
    assert "- target-format math: " in printed and "- boilerplate: " in printed and "| SLM 0.6 |" not in printed
    assert "| SLM 0.6 |" in (out / "compare.md").read_text()  # the full table, beside the lesson
    call("plot.py", "--full")
    assert "| CLM |" in capsys.readouterr().out


def test_rerun_reuses_finished_runs(pipeline, monkeypatch, capsys):
    monkeypatch.chdir(pipeline)
    call("train_slm.py", "--ratio", "0.6")
    assert "reusing" in capsys.readouterr().out


def test_cached_and_online_reference_train_the_same(pipeline, monkeypatch):
    monkeypatch.chdir(pipeline)
    call("train_slm.py", "--ratio", "0.6", "--ref_mode", "online")
    out = pipeline / "out"
    a = [json.loads(x) for x in (out / "slm0.6" / "log.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (out / "slm0.6-online" / "log.jsonl").read_text().splitlines()]
    va = [r["val_loss"] for r in a if "val_loss" in r]
    vb = [r["val_loss"] for r in b if "val_loss" in r]
    assert np.allclose(va, vb, atol=2e-3)


def test_resume_after_sigkill_equals_uninterrupted_run(pipeline, tmp_path, monkeypatch):
    """Killed (SIGKILL) between two evaluations, with a checkpoint at every logged step (--ckpt_every 0), a run
    resumes past the last evaluation and logs what an uninterrupted one does; Ctrl-C (SIGINT) ends a run with one
    line that says how to resume it."""
    import random
    import signal
    import subprocess
    import sys
    import time
    args = ["--ratio", "0.6", "--max_tokens", "60000", "--n_evals", "12", "--ckpt_every", "0"]  # evals 45 and 72
    target = random.Random().randrange(55, 70, 5)  # a random logged step to kill after, between two evaluations
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)

    def start(name, output, stderr=subprocess.STDOUT):
        return subprocess.Popen([sys.executable, os.path.join(ROOT, "train_slm.py"), *args, "--name", name],
                                cwd=pipeline, env=env, stdout=output, stderr=stderr, text=True)

    def stop(p, name, sig, target):
        log = pipeline / "out" / name / "log.jsonl"
        while p.poll() is None:
            steps = [json.loads(x)["step"] for x in log.read_text().splitlines() if x.endswith("}")] \
                if log.exists() else []
            if any(step >= target for step in steps):
                os.kill(p.pid, sig)
                break
            time.sleep(0.01)
        return p.communicate()
    with open(tmp_path / "straight.txt", "w") as output:
        straight = start("straight", output)  # the uninterrupted run, trained alongside the one to kill
    p = start("killed", subprocess.DEVNULL)
    stop(p, "killed", signal.SIGKILL, target)
    assert p.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert infra.load_checkpoint(str(pipeline / "out" / "killed" / "ckpt.pt"))["step"] >= target - 5 > 45
    q = start("stopped", subprocess.DEVNULL, subprocess.PIPE)
    _, err = stop(q, "stopped", signal.SIGINT, 10)
    assert q.returncode == 1 and "Traceback" not in err and "--name stopped --resume`" in err.splitlines()[-1], err
    assert err.splitlines()[-1].startswith("error: interrupted at step "), err
    assert (pipeline / "out" / "killed" / ".lock").exists()  # the killed holder's lock file stays: it blocks nothing
    assert not (pipeline / "out" / "killed" / "done.json").exists()
    monkeypatch.chdir(pipeline)
    assert "--resume" in user_error("train_slm.py", *args, "--name", "killed")
    run("train_slm.py", *args, "--name", "killed", "--resume", cwd=pipeline)
    assert straight.wait(timeout=600) == 0, (tmp_path / "straight.txt").read_text()[-3000:]

    def records(name):
        recs = [json.loads(x) for x in (pipeline / "out" / name / "log.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k not in ("time", "eval_time", "tok_s")} for r in recs]
    assert records("killed") == records("straight")


def test_benchmark_measures_every_configuration_on_the_same_model(pipeline, monkeypatch):
    import train_slm
    monkeypatch.chdir(pipeline)
    r = train_slm.SlmRun()
    pipe = json.loads((pipeline / "out" / "pipeline.json").read_text())
    cfgs = {"CLM": train_slm.student_config(r, pipe, 1.0, None),
            "SLM": train_slm.student_config(r, pipe, 0.6, None),
            "online": train_slm.student_config(r, pipe, 0.6, None, ref_mode="online")}
    result = train_slm.benchmark(cfgs, steps=2, rounds=2)
    assert list(result) == ["CLM", "SLM", "online"] and result["CLM"][1] == 1.0
    assert all(tok_s > 0 and rel > 0 and mfu is None for tok_s, rel, mfu in result.values())  # a CPU: no MFU


def test_gibberish_never_cuts_a_problem_in_two():
    """A page's gibberish block goes between its blocks: a problem with a slip (three segments: the text before the
    wrong result, the wrong result, the rest) stays whole."""
    import random
    cfg = data.DataConfig(mix={"math_wrong": 1.0}, p_gibberish=1.0)
    keys = data.key_splits(0)["train"]
    pages = list(data.web_pages(cfg, random.Random(0), 300, keys))
    for segs in pages:
        kinds = [k for _, k in segs]
        for i, k in enumerate(kinds):
            if k == data.WRONG:
                assert kinds[i - 1] == data.MATH and kinds[i + 1] == data.MATH, kinds
    assert sum(data.GIBBER in [k for _, k in segs] for segs in pages) == 300


def test_a_slip_carried_on_changes_the_final_answer_and_one_not_carried_on_does_not():
    import random
    keys = data.key_splits(0)["train"]
    q, steps, ans = data.FAMILIES[4][0](keys[4][0], random.Random(5))  # two steps: cost, then change
    for seed in range(20):
        for carry in (True, False):
            segs = data.wrong_problem(q, steps, random.Random(seed), carry)
            text, wrong = "".join(t for t, _ in segs), int(segs[1][0])
            final = data.extract_answer(text)
            lines = text.split("\nAnswer: ")[1].splitlines()[:-1]
            slipped = next(i for i, line in enumerate(lines) if f"= {wrong}" in line)
            assert data.CALC_RE.search(lines[slipped]).group(4) == str(wrong)
            assert (final != ans) if carry else (final == ans and lines[slipped + 1:] == steps[slipped + 1:])
