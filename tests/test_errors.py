"""Every mistake a user can make is one line, `error: <what>; fix: <how>`, before anything is written."""
import glob
import json
import operator
import os
import pickle
import shutil

import pytest
import torch

import data
from conftest import run, user_error

# a setup gets a Where and returns the folder its command runs in
shared = operator.attrgetter("pipeline")  # the session's pipeline: the command must refuse before it writes anything
empty = operator.attrgetter("tmp")
real = operator.attrgetter("real_files")  # read only; the corpus goes to a folder of the case's own


def written(name, text, where=empty):  # a file of the case's own holding text
    def setup(t):
        (t.tmp / name).write_text(text)
        return where(t)
    return setup


def copied(change):  # a private copy of the tiny pipeline (data, base, reference, scores), damaged by change(folder)
    def setup(t):
        for name in ("data", "out/base", "out/ref"):
            shutil.copytree(t.pipeline / name, t.tmp / name)
        shutil.copy(t.pipeline / "out" / "pipeline.json", t.tmp / "out")
        change(t.tmp)
        return t.tmp
    return setup


def cut(path, keep):  # one file cut short, as a kill or a full disk leaves it
    return copied(lambda d: (d / path).write_bytes((d / path).read_bytes()[:keep]))


def pipeline_json(t, **paths):  # a pipeline.json in an empty folder pointing at the session's pipeline, paths changed
    pipe = json.loads((t.pipeline / "out" / "pipeline.json").read_text())
    pipe.update(data_dir=str(t.pipeline / "data"), **{k: str(t.pipeline / pipe[k]) for k in ("base", "ref", "scores")})
    (t.tmp / "out").mkdir()
    (t.tmp / "out" / "pipeline.json").write_text(json.dumps({**pipe, **paths}))
    return t.tmp


def other_vocabulary(t):
    data.build(data.data_config("tiny", seed=5), str(t.tmp / "data"))
    assert data.read_meta(str(t.tmp / "data"))["vocab_hash"] != data.read_meta(str(t.pipeline / "data"))["vocab_hash"]
    return pipeline_json(t, data_dir=str(t.tmp / "data"))


def random_run(t):  # a --select random run: --explain ranks by excess or reference loss, not by chance
    cfg = json.loads((t.pipeline / "out" / "slm0.6" / "config.json").read_text())
    (pipeline_json(t) / "out" / "random0.6").mkdir()
    (t.tmp / "out" / "random0.6" / "config.json").write_text(json.dumps({**cfg, "select": "random",
                                                                         "data_dir": str(t.pipeline / "data")}))
    return t.tmp


def another_reference(d):  # of the same shapes
    ckpt = torch.load(d / "out/ref/ckpt.pt", weights_only=True)
    ckpt["model"]["lm_head.weight"].add_(0.01)
    torch.save(ckpt, d / "out/ref/ckpt.pt")


class Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


# a later flag replaces an earlier one
REAL = ["data_real.py", "--web", "web.jsonl", "--hq", "train.parquet", "--eval", "test.parquet", "--max_tokens",
        "12000", "--hq_val", "20", "--ngram_share", "0.5", "--data_dir", "{tmp}/d"]
SLM = ["train_slm.py", "--ratio", "0.6"]
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")

# id: (setup, command, words the line holds, paths (globs, in the command's folder) that must not exist after it)
CASES = {
    **{f"ratio {r}": (shared, ["train_slm.py", "--ratio", r, "--name", "bad"], ["--ratio"], ["out/bad"])
       for r in ("0", "1.5")},
    "unknown preset": (shared, ["train_ref.py", "--preset", "huge"], ["preset"], []),
    "changed config": (shared, [*SLM, "--max_tokens", "12345"], ["another configuration", "--overwrite"], []),
    "no reference pipeline": (empty, SLM, ["train_ref.py"], ["out"]),
    "no reference checkpoint": (lambda t: pipeline_json(t, ref=str(t.tmp / "nope.pt")), SLM,
                                ["reference", "train_ref.py"], ["out/slm0.6"]),
    "another vocabulary": (other_vocabulary, SLM, ["vocabulary"], ["out/slm0.6"]),
    "pickle checkpoint": (copied(lambda d: torch.save({"model": Evil()}, d / "out/base/ckpt.pt", pickle_module=pickle)),
                          SLM, ["not a loadable"], ["PWNED", "out/slm0.6"]),
    "another program's checkpoint": (copied(lambda d: torch.save({"weight": torch.zeros(2)}, d / "out/ref/ckpt.pt")),
                                     [*SLM, "--ref_mode", "online"], ["not a loadable rho checkpoint"],
                                     ["out/slm0.6-online"]),
    "score file of another reference": (copied(another_reference), SLM, ["does not belong"], ["out/slm0.6"]),
    **{f"data file {how}": (setup, SLM, ["data.py"], ["out/slm0.6"]) for how, setup in (
        ("truncate", cut("data/web.bin", 1000)), ("delete", copied(lambda d: (d / "data/web.bin").unlink())),
        ("labels", copied(lambda d: (d / "data/web.labels").write_bytes(b"\0" * 10))),
        ("meta", copied(lambda d: (d / "data/meta.json").write_text("{ not json"))))},
    "empty eval set": (copied(lambda d: (d / "data/eval.jsonl").write_text("")), ["train_slm.py", "--ratio", "1.0",
                       "--name", "e"], ["eval.jsonl holds no problems"], ["out/e"]),
    "fewer tokens than one batch": (shared, ["train_slm.py", "--ratio", "1.0", "--batch_size", "4096", "--name", "big"],
                                    ["fewer than one batch"], ["out/big"]),
    "block without room": (shared, ["train_ref.py", "--preset", "tiny", "--eval_max_new", "64", "--out_dir",
                                    "{tmp}/out"], ["leaves no room for a question", "--eval_max_new"], ["{tmp}/out/*"]),
    "mix_hq with SLM": (shared, [*SLM, "--mix_hq", "1"], ["control of plain next-token training", "--ratio 1.0"],
                        ["out/slm0.6-mixhq1"]),
    "more test problems than keys": (empty, ["data.py", "--preset", "cpu", "--corpus", "n_eval=5000"],
                                     ["fewer than the 5000 asked for"], ["data"]),
    "explain a run that is not SLM": (random_run, ["plot.py", "--explain", "out/random0.6"],
                                      ["not SLM or ref-loss"], ["out/random0.6/explain.md"]),
    "cuda without a GPU": (shared, [*SLM, "--device", "cuda", "--name", "gpu"], ["no CUDA GPU"], ["out/gpu"]),
    **{f"{flag} of no run": (empty, ["plot.py", flag, "{tmp}"], ["error: {tmp} is not a student run"], [])
       for flag in ("--tokens", "--categories")},
    "too few kept checkpoints": (shared, ["plot.py", "--categories", "out/clm"], ["--keep_ckpts"], []),
    "no text file": (shared, ["plot.py", "--tokens", "out/slm0.6", "--text", "{tmp}/missing.txt"], ["no text file"],
                     []),
    "real: missing field": (real, [*REAL, "--web_field", "content"], ["no field 'content'"], ["{tmp}/d/*"]),
    "real: empty": (written("empty.jsonl", "", real), [*REAL, "--web", "{tmp}/empty.jsonl"], ["is empty"],
                    ["{tmp}/d/*"]),
    "real: budget": (real, [*REAL, "--max_tokens", "10000000"], ["--max_tokens"], ["{tmp}/d/*"]),
    "real: malformed": (written("bad.jsonl", '{"text": "fine"}\n{"text": broken\n', real),
                        [*REAL, "--web", "{tmp}/bad.jsonl"], ["cannot read"], ["{tmp}/d/*"]),
    # a missing local file (or a mistyped file type) is named as given: not sent to the hub, no --max_tokens 0 error
    **{f"real: missing {flag} {path}": (real, [*REAL, "--max_tokens", "0", f"--{flag}", path],
                                        [f"no such file: {path}"], ["{tmp}/d/*"]) for flag, path in (
        ("web", "corpora/web.jsonl"), ("web", "corpora/web.jsnl"), ("hq", "./train.jsonl"),
        ("eval", "~/nowhere/*.parquet"))},
    # numbers out of range: one table of flags (train_slm.py's in the shared pipeline, train_ref.py's before any data)
    **{f"train_slm.py --{flag} {v}": (shared, ["train_slm.py", "--ratio", "1.0", f"--{flag}", v, "--name", "n"],
                                      [f"--{flag} ", "; fix: pass --" + flag], ["out/n"])
       for flag, v in (("batch_size", "0"), ("lr", "-1"), ("seed", "-1"), ("mix_hq", "-1"), ("max_tokens", "0"),
                       ("n_evals", "0"))},
    **{f"train_ref.py --{flag} {v}": (empty, ["train_ref.py", "--preset", "tiny", f"--{flag}", v],
                                      [f"--{flag} ", "; fix: pass --" + flag], ["data", "out"])
       for flag, v in (("n_head", "0"), ("n_layer", "0"), ("block_size", "-4"), ("seed", "-1"), ("base_lr", "0"),
                       ("ref_epochs", "0"))},
    "temperature without soft": (shared, [*SLM, "--temperature", "0.5", "--name", "t"], ["add --weighting soft"],
                                 ["out/t"]),
    "a budget of many passes": (shared, [*SLM, "--max_tokens", "10000000", "--name", "big"],
                                ["passes over split 'web'", "--max_tokens 72"], ["out/big"]),
    "unknown device": (shared, [*SLM, "--device", "gpu", "--name", "g"], ["unknown --device gpu"], ["out/g"]),
    **{f"{flag} a file": (written("f", "not a folder"), ["train_ref.py", "--preset", "tiny", f"--{flag}", "f"],
                          ["f is a file"], [other]) for flag, other in (("out_dir", "data"), ("data_dir", "out"))},
    "base a folder": (shared, ["train_ref.py", "--preset", "tiny", "--base", "out/base", "--out_dir", "{tmp}/o"],
                      ["is a folder", "--base out/base/ckpt.pt"], ["{tmp}/o"]),
    "base of another shape": (shared, ["train_ref.py", "--preset", "tiny", "--base", "out/base/ckpt.pt", "--block_size",
                                       "32", "--n_layer", "3", "--out_dir", "{tmp}/o"],
                              ["--n_layer 3, --block_size 32 cannot change the base", "block_size 64"], ["{tmp}/o"]),
    "student base of another block size": (shared, ["train_ref.py", "--preset", "tiny", "--block_size", "32",
                                                    "--student_base", "out/base/ckpt.pt", "--out_dir", "{tmp}/o"],
                                           ["has another block size", "--block_size"], ["{tmp}/o"]),
    "corpus setting of another type": (empty, ["train_ref.py", "--preset", "tiny", "--corpus", 'n_web="many"'],
                                       ["n_web takes a int"], ["data", "out"]),
    "gpt2 preset on the embedded corpus": (empty, ["train_ref.py", "--preset", "gpt2"],
                                           ["is for a real corpus", "data_real.py"], ["data", "out"]),
    "truncated base": (cut("out/base/ckpt.pt", 5000), ["train_ref.py", "--preset", "tiny"],
                       ["out/base holds a finished run whose ckpt.pt is damaged", "--overwrite"], ["out/slm0.6"]),
    "truncated score file": (cut("out/ref/scores.bin", 5000), SLM, ["cut short"], ["out/slm0.6"]),
    "done.json cut short": (cut("out/base/done.json", 20), ["train_ref.py", "--preset", "tiny"],
                            ["out/base/done.json is not valid JSON", "--resume"], []),
    "plot.py on a run folder": (shared, ["plot.py", "--out_dir", "out/slm0.6"], ["is a run folder", "--out_dir out"],
                                []),
    "plot.py --png into no folder": (shared, ["plot.py", "--png", "{tmp}/no/x.png"], ["there is no folder"], []),
}


class Where:
    """What a setup may use: its own empty folder (tmp), the session's pipeline and real_files (made on first use)."""
    def __init__(self, request, tmp):
        self.request, self.tmp = request, tmp

    def __getattr__(self, fixture):
        return self.request.getfixturevalue(fixture)


@pytest.mark.parametrize("case", [pytest.param(k, marks=NO_GPU if "cuda" in k else ()) for k in CASES])
def test_a_mistake_is_one_line_and_writes_nothing(case, request, tmp_path, monkeypatch):
    setup, command, words, absent = CASES[case]
    folder = setup(Where(request, tmp_path))
    monkeypatch.chdir(folder)
    msg = user_error(*(c.format(tmp=tmp_path) for c in command))  # {tmp}: the case's own folder
    for w in words:
        assert w.format(tmp=tmp_path) in msg, msg
    for path in absent:
        assert not glob.glob(os.path.join(folder, path.format(tmp=tmp_path))), path


def test_a_mistake_on_the_command_line_is_the_last_line_of_stderr_and_no_traceback(tmp_path, monkeypatch):
    """As a user runs it, in a fresh process (`datasets` reads the offline switch on import): a hub dataset offline."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    p = run("data_real.py", "--source", "owm-gsm8k", "--data_dir", str(tmp_path / "d"), check=False, cwd=tmp_path)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "; fix: " in last and "work offline" in last, last
    assert not glob.glob(str(tmp_path / "d" / "*"))
