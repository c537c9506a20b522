"""The pipeline as a user runs it: data, base, reference, scores, students, plot; and user mistakes."""
import json
import os

import numpy as np
import pytest

import data
from conftest import run


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


def test_end_to_end_tiny_pipeline(pipeline):
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
    p = run("plot.py", cwd=pipeline)
    assert (out / "compare.png").stat().st_size > 10_000
    assert "| CLM |" in p.stdout and "| SLM 0.6 |" in p.stdout and "| reference |" in p.stdout


def test_rerun_reuses_finished_runs(pipeline):
    p = run("train_slm.py", "--ratio", "0.6", cwd=pipeline)
    assert "reusing" in p.stdout


def test_cached_and_online_reference_train_the_same(pipeline):
    run("train_slm.py", "--ratio", "0.6", "--ref_mode", "online", cwd=pipeline)
    out = pipeline / "out"
    a = [json.loads(x) for x in (out / "slm0.6" / "log.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (out / "slm0.6-online" / "log.jsonl").read_text().splitlines()]
    va = [r["val_loss"] for r in a if "val_loss" in r]
    vb = [r["val_loss"] for r in b if "val_loss" in r]
    assert np.allclose(va, vb, atol=2e-3)


def assert_user_error(p, *words):
    assert p.returncode != 0
    assert "Traceback" not in p.stderr
    last = (p.stderr.strip() or p.stdout.strip()).splitlines()[-1]
    assert last.startswith("error:") and "fix:" in last, last
    for w in words:
        assert w in last, last


@pytest.mark.parametrize("ratio", ["0", "1.5", "-0.2"])
def test_bad_ratio_is_one_clear_line(pipeline, ratio):
    assert_user_error(run("train_slm.py", "--ratio", ratio, "--name", "bad", check=False, cwd=pipeline), "--ratio")
    assert not (pipeline / "out" / "bad").exists()


def test_missing_reference_is_one_clear_line(tmp_path):
    assert_user_error(run("train_slm.py", "--ratio", "0.6", check=False, cwd=tmp_path), "train_ref.py")


def test_missing_reference_checkpoint_is_one_clear_line(pipeline, tmp_path):
    pipe = json.loads((pipeline / "out" / "pipeline.json").read_text())
    pipe["ref"] = str(tmp_path / "nope.pt")
    pipe["data_dir"] = str(pipeline / "data")
    pipe["base"] = str(pipeline / "out" / "base" / "ckpt.pt")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "pipeline.json").write_text(json.dumps(pipe))
    assert_user_error(run("train_slm.py", "--ratio", "0.6", check=False, cwd=tmp_path), "reference", "train_ref.py")


def test_corpus_with_another_vocabulary_is_one_clear_line(pipeline, tmp_path):
    other = tmp_path / "data"
    data.build(data.data_config("tiny", seed=5), str(other))
    assert data.read_meta(str(other))["vocab_hash"] != data.read_meta(str(pipeline / "data"))["vocab_hash"]
    pipe = json.loads((pipeline / "out" / "pipeline.json").read_text())
    pipe.update(data_dir=str(other), base=str(pipeline / "out" / "base" / "ckpt.pt"),
                ref=str(pipeline / "out" / "ref" / "ckpt.pt"), scores=str(pipeline / "out" / "ref" / "scores.bin"))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "pipeline.json").write_text(json.dumps(pipe))
    assert_user_error(run("train_slm.py", "--ratio", "0.6", check=False, cwd=tmp_path), "vocabulary")
    assert not (tmp_path / "out" / "slm0.6" / "ckpt.pt").exists()


def test_unknown_preset_and_changed_config_are_one_clear_line(pipeline):
    assert_user_error(run("train_ref.py", "--preset", "huge", check=False, cwd=pipeline), "preset")
    p = run("train_slm.py", "--ratio", "0.6", "--max_tokens", "12345", check=False, cwd=pipeline)
    assert_user_error(p, "--overwrite")


def test_resume_after_sigkill_equals_uninterrupted_run(pipeline):
    import random
    import signal
    import subprocess
    import sys
    import time
    from conftest import ROOT
    args = ["--ratio", "0.6", "--max_tokens", "60000", "--n_evals", "12"]
    run("train_slm.py", *args, "--name", "straight", cwd=pipeline)
    log = pipeline / "out" / "killed" / "log.jsonl"
    target = random.Random().randrange(10, 100, 5)  # a random logged step to kill after
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    p = subprocess.Popen([sys.executable, os.path.join(ROOT, "train_slm.py"), *args, "--name", "killed"],
                         cwd=pipeline, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while p.poll() is None:
        if log.exists() and any(json.loads(x)["step"] >= target for x in log.read_text().splitlines() if x.endswith("}")):
            os.kill(p.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    p.wait()
    assert p.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert (pipeline / "out" / "killed" / ".lock").exists()  # the killed holder's lock file stays: it blocks nothing
    assert not (pipeline / "out" / "killed" / "done.json").exists()
    again = run("train_slm.py", *args, "--name", "killed", check=False, cwd=pipeline)
    assert_user_error(again, "--resume")
    run("train_slm.py", *args, "--name", "killed", "--resume", cwd=pipeline)

    def records(name):
        recs = [json.loads(x) for x in (pipeline / "out" / name / "log.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k not in ("time", "tok_s")} for r in recs]
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
    assert all(tok_s > 0 and rel > 0 for tok_s, rel in result.values())
