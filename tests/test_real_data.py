"""Real corpora through `datasets`, tested on local files the tests write (the same code path as a hub name)."""
import json
import os
import random

import datasets
import numpy as np
import pytest

import data
from conftest import run
from test_pipeline import assert_user_error


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("files")
    rng = random.Random(0)
    words = "the sum of two numbers is we use cookies subscribe proof lemma let x be real".split()
    with open(d / "web.jsonl", "w") as f:  # web-shaped: text plus metadata
        for i in range(300):
            text = f"Page {i}. {rng.randint(1, 9)} + {rng.randint(1, 9)} = ? " + " ".join(rng.choices(words, k=60))
            f.write(json.dumps({"text": text, "url": f"https://example.org/{i}"}) + "\n")
    gsm = [{"question": f"Tom has {a} apples and buys {b} more. How many apples does he have?",
            "answer": f"He has {a} + {b} = <<{a}+{b}={a + b}>>{a + b} apples.\n#### {a + b}"}
           for a in range(1, 15) for b in range(1, 15)]
    datasets.Dataset.from_list(gsm[:150]).to_parquet(str(d / "train.parquet"))  # GSM8K-shaped
    datasets.Dataset.from_list(gsm[150:]).to_parquet(str(d / "test.parquet"))
    return d


def build(files, out, *extra, web=None):
    return run("data.py", "--source", "custom", "--web", str(web or files / "web.jsonl"), "--hq",
               str(files / "train.parquet"), "--eval", str(files / "test.parquet"), "--max_tokens", "12000",
               "--hq_val", "20", "--ngram_share", "0.5", "--data_dir", str(out), *extra, check=False, cwd=files)


def test_local_jsonl_and_parquet_build_a_corpus(files, tmp_path):
    p = build(files, tmp_path / "d")
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stderr.count("tokenizing") == 1  # not a terminal: the progress line is written once, not redrawn
    meta = data.read_meta(str(tmp_path / "d"))
    assert meta["source"]["web"].endswith("web.jsonl") and meta["kinds"] is None
    assert meta["splits"]["web_base"]["tokens"] + meta["splits"]["web"]["tokens"] == 12000  # the exact budget
    assert meta["splits"]["ref_val"]["documents"] == 20 and meta["splits"]["ref_train"]["documents"] == 130
    assert not (tmp_path / "d" / "web.labels").exists()  # real data has no ground-truth kinds
    evals = data.load_eval(str(tmp_path / "d"))
    assert len(evals) == 46 and evals[0]["prompt"].startswith("Question: ") and evals[0]["prompt"].endswith("Answer:")
    assert evals[0]["answer"] == int(evals[0]["prompt"].split(" has ")[1].split()[0]) + \
        int(evals[0]["prompt"].split("buys ")[1].split()[0])
    tok = data.Tokenizer.from_meta(str(tmp_path / "d"))
    text = tok.decode(data.load_tokens(str(tmp_path / "d"), "ref_train")[0][:60].tolist())
    assert text.startswith("Question: Tom has") and "#### " in tok.decode(
        data.load_tokens(str(tmp_path / "d"), "ref_train")[0].tolist())
    assert not [f for f in os.listdir(tmp_path / "d") if "tmp" in f]


def test_real_corpus_trains_end_to_end_without_selection_statistics(files, tmp_path):
    assert build(files, tmp_path / "data").returncode == 0
    run("train_ref.py", "--preset", "tiny", cwd=tmp_path)
    p = run("train_slm.py", "--ratio", "0.6", cwd=tmp_path)
    assert "no ground-truth token kinds" in p.stdout
    recs = [json.loads(x) for x in (tmp_path / "out" / "slm0.6" / "log.jsonl").read_text().splitlines()]
    assert all("selected" not in r for r in recs) and np.isfinite(recs[-1]["val_loss"])
    run("plot.py", cwd=tmp_path)
    assert (tmp_path / "out" / "compare.png").exists()


@pytest.mark.parametrize("case, words", [
    ("missing field", "no field 'content'"),
    ("empty", "is empty"),
    ("budget", "--max_tokens"),
    ("malformed", "cannot read"),
    ("hub", "work offline"),
])
def test_bad_real_sources_are_one_clear_line(files, tmp_path, case, words):
    if case == "missing field":
        p = build(files, tmp_path / "d", "--web_field", "content")
    elif case == "empty":
        (tmp_path / "empty.jsonl").write_text("")
        p = build(files, tmp_path / "d", web=tmp_path / "empty.jsonl")
    elif case == "budget":
        p = build(files, tmp_path / "d", "--max_tokens", "10000000")
    elif case == "malformed":
        (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"text": broken\n')
        p = build(files, tmp_path / "d", web=tmp_path / "bad.jsonl")
    else:
        os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
        try:
            p = run("data.py", "--source", "owm-gsm8k", "--data_dir", str(tmp_path / "d"), check=False, cwd=tmp_path)
        finally:
            del os.environ["HF_HUB_OFFLINE"], os.environ["HF_DATASETS_OFFLINE"]
    assert_user_error(p, words)
    assert not (tmp_path / "d" / "meta.json").exists()
    assert not [f for f in os.listdir(tmp_path / "d")] if (tmp_path / "d").exists() else True


def test_final_number_reads_gsm8k_and_plain_answers():
    assert data.final_number("so 3 + 4 = <<3+4=7>>7\n#### 7") == 7
    assert data.final_number("The answer is 1,234.") == 1234
    assert data.final_number(42) == 42 and data.final_number(" 12 ") == 12
    assert data.final_number("no number") is None


def test_web_documents_holding_a_test_problem_are_dropped(files, tmp_path):
    test = [json.loads(x) for x in datasets.load_dataset("parquet", data_files=str(files / "test.parquet"),
                                                          split="train").to_pandas().to_json(orient="records",
                                                                                             lines=True).splitlines()]
    rng = random.Random(1)
    web, planted = [], 0
    for line in (files / "web.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rng.random() < 0.1:  # a page quoting a test problem, question and worked answer
            p = rng.choice(test)
            rec["text"] += f" Homework help! Question: {p['question']}\nAnswer: {p['answer']} Thanks for reading!"
            planted += 1
        web.append(json.dumps(rec))
    (tmp_path / "web.jsonl").write_text("\n".join(web) + "\n")
    p = build(files, tmp_path / "d", "--max_tokens", "0", web=tmp_path / "web.jsonl")
    assert p.returncode == 0, p.stderr[-2000:]
    assert f"dropped {planted:,} noisy corpus document(s)" in p.stdout and planted > 10
    meta = data.read_meta(str(tmp_path / "d"))
    assert meta["decontamination"]["dropped_documents"] == {"noisy corpus": planted}
    tok = data.Tokenizer.from_meta(str(tmp_path / "d"))
    text = "".join(tok.decode(data.load_tokens(str(tmp_path / "d"), s)[0].tolist()) for s in ("web", "web_base"))
    assert "Homework help" not in text and "Page 1." in text
    # --max_tokens 0 takes the whole file: every page that is left, 40% of them for the base model
    assert meta["splits"]["web"]["documents"] + meta["splits"]["web_base"]["documents"] == 300 - planted
    assert abs(meta["splits"]["web_base"]["documents"] / (300 - planted) - 0.4) < 0.01


def test_questions_longer_than_the_block_are_cut_and_a_block_without_room_is_refused(files, tmp_path):
    long = [{"question": "Tom reads a long story about apples, pears and plums in the garden behind the old school "
                         f"every single afternoon of the week, and then he buys {a} more apples. How many now?",
             "answer": f"#### {a}"} for a in range(1, 30)]
    (tmp_path / "long.jsonl").write_text("".join(json.dumps(r) + "\n" for r in long))
    p = run("data.py", "--source", "custom", "--web", str(files / "web.jsonl"), "--hq", str(files / "train.parquet"),
            "--eval", str(tmp_path / "long.jsonl"), "--hq_val", "20", "--ngram_share", "0.5", "--data_dir", "data",
            cwd=tmp_path)
    p = run("train_ref.py", "--preset", "tiny", "--eval_max_new", "64", check=False, cwd=tmp_path)
    assert_user_error(p, "leaves no room for a question", "--eval_max_new")
    assert not (tmp_path / "out" / "base").exists()
    p = run("train_ref.py", "--preset", "tiny", cwd=tmp_path)  # a 64-token block, 32 answer tokens
    assert "note: 8 of 8 test questions are longer than the 32 tokens" in p.stdout
    assert json.loads((tmp_path / "out" / "ref" / "done.json").read_text())["acc"] >= 0
