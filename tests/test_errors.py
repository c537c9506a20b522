"""Every mistake a user can make is one line, `error: <what>; fix: <how>`, before anything is written. Each case
is a command (the script, its flags, a setup that makes the mistake) and the words its line must hold, run in this
process; one case runs as a user runs it, for the command line's side of the contract."""
import glob
import json
import os
import pickle
import shutil

import pytest
import torch

import data
from conftest import run, user_error


def copy_pipeline(t):
    """A private copy of the tiny pipeline (data + base + ref + scores) that a case may damage."""
    d, pipeline = t.tmp, t.pipeline
    shutil.copytree(pipeline / "data", d / "data")
    for name in ("base", "ref"):
        shutil.copytree(pipeline / "out" / name, d / "out" / name)
    pipe = json.loads((pipeline / "out" / "pipeline.json").read_text())
    pipe.update(data_dir=str(d / "data"), base=str(d / "out" / "base" / "ckpt.pt"),
                ref=str(d / "out" / "ref" / "ckpt.pt"), scores=str(d / "out" / "ref" / "scores.bin"))
    (d / "out" / "pipeline.json").write_text(json.dumps(pipe))
    return d


def edit_checkpoint(path, change):
    ckpt = torch.load(path, weights_only=True)
    change(ckpt)
    torch.save(ckpt, path)


# ----------------------------------------------------------------------------------------------------------
# Setups: each makes one mistake and returns the folder the command runs in

def shared(t):  # the session's pipeline, read only: the command must refuse before it writes anything
    return t.pipeline


def empty(t):
    return t.tmp


def pipeline_json(t, **paths):
    """A pipeline.json in an empty folder pointing at the session's pipeline, with some paths changed."""
    pipe = json.loads((t.pipeline / "out" / "pipeline.json").read_text())
    pipe.update(data_dir=str(t.pipeline / "data"), **{k: str(t.pipeline / pipe[k]) for k in ("base", "ref", "scores")})
    (t.tmp / "out").mkdir()
    (t.tmp / "out" / "pipeline.json").write_text(json.dumps({**pipe, **paths}))
    return t.tmp


def missing_ref_ckpt(t):
    return pipeline_json(t, ref=str(t.tmp / "nope.pt"))


def other_vocabulary(t):
    data.build(data.data_config("tiny", seed=5), str(t.tmp / "data"))
    assert data.read_meta(str(t.tmp / "data"))["vocab_hash"] != data.read_meta(str(t.pipeline / "data"))["vocab_hash"]
    return pipeline_json(t, data_dir=str(t.tmp / "data"))


def random_run(t):  # a --select random run: --explain ranks by excess or reference loss, not by chance
    folder = pipeline_json(t)
    cfg = json.loads((t.pipeline / "out" / "slm0.6" / "config.json").read_text())
    (folder / "out" / "random0.6").mkdir()
    (folder / "out" / "random0.6" / "config.json").write_text(json.dumps({**cfg, "select": "random",
                                                                                "data_dir": str(t.pipeline / "data")}))
    return folder


class Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def pickle_ckpt(t):  # a checkpoint whose unpickling would run code
    d = copy_pipeline(t)
    torch.save({"version": 1, "model": Evil()}, d / "out" / "base" / "ckpt.pt", pickle_module=pickle)
    return d


def future_ckpt(t):
    d = copy_pipeline(t)
    edit_checkpoint(d / "out" / "ref" / "ckpt.pt", lambda ckpt: ckpt.update(version=999))
    return d


def other_reference(t):  # another reference of the same shapes: the score file is not its
    d = copy_pipeline(t)
    edit_checkpoint(d / "out" / "ref" / "ckpt.pt", lambda ckpt: ckpt["model"]["lm_head.weight"].add_(0.01))
    return d


def damaged(how):
    def setup(t):
        d = copy_pipeline(t)
        web = d / "data" / "web.bin"
        if how == "truncate":
            web.write_bytes(web.read_bytes()[:1000])
        elif how == "delete":
            web.unlink()
        elif how == "labels":
            (d / "data" / "web.labels").write_bytes(b"\x00" * 10)
        else:
            (d / "data" / "meta.json").write_text("{ not json")
        return d
    return setup


def empty_eval(t):
    d = copy_pipeline(t)
    (d / "data" / "eval.jsonl").write_text("")
    return d


def real(t):  # the session's real-data files, read only; the corpus goes to a folder of the case's own
    return t.files


def real_file(name, text):
    def setup(t):
        (t.tmp / name).write_text(text)
        return t.files
    return setup


# a later flag replaces an earlier one
REAL = ["data_real.py", "--web", "web.jsonl", "--hq", "train.parquet", "--eval", "test.parquet", "--max_tokens",
        "12000", "--hq_val", "20", "--ngram_share", "0.5", "--data_dir", "{tmp}/d"]
SLM = ["train_slm.py", "--ratio", "0.6"]
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")

# id: (setup, command, words the line holds, paths (globs, in the command's folder) that must not exist after it)
CASES = {
    **{f"ratio {r}": (shared, ["train_slm.py", "--ratio", r, "--name", "bad"], ["--ratio"], ["out/bad"])
       for r in ("0", "1.5", "-0.2")},
    "unknown preset": (shared, ["train_ref.py", "--preset", "huge"], ["preset"], []),
    "changed config": (shared, [*SLM, "--max_tokens", "12345"], ["another configuration", "--overwrite"], []),
    "no reference pipeline": (empty, SLM, ["train_ref.py"], ["out"]),
    "no reference checkpoint": (missing_ref_ckpt, SLM, ["reference", "train_ref.py"], ["out/slm0.6"]),
    "more references than trained": (shared, [*SLM, "--refs", "3"], ["not 3;", "--refs 3"], ["out/slm0.6-refs3mean"]),
    "another vocabulary": (other_vocabulary, SLM, ["vocabulary"], ["out/slm0.6"]),
    "pickle checkpoint": (pickle_ckpt, SLM, ["not a loadable"], ["PWNED", "out/slm0.6"]),
    "incompatible checkpoint": (future_ckpt, [*SLM, "--ref_mode", "online"], ["incompatible version"],
                                ["out/slm0.6-online"]),
    "score file of another reference": (other_reference, SLM, ["does not belong"], ["out/slm0.6"]),
    **{f"data file {how}": (damaged(how), SLM, ["data.py"], ["out/slm0.6"])
       for how in ("truncate", "delete", "labels", "meta")},
    "empty eval set": (empty_eval, ["train_slm.py", "--ratio", "1.0", "--name", "e"], ["eval.jsonl holds no problems"],
                       ["out/e"]),
    "fewer tokens than one batch": (shared, ["train_slm.py", "--ratio", "1.0", "--batch_size", "4096", "--name", "big"],
                                    ["fewer than one batch"], ["out/big"]),
    "block without room": (shared, ["train_ref.py", "--preset", "tiny", "--eval_max_new", "64", "--out_dir",
                                    "{tmp}/out"], ["leaves no room for a question", "--eval_max_new"], ["{tmp}/out/*"]),
    "mix_hq with cached scores": (shared, [*SLM, "--mix_hq", "1"], ["covers the web split", "--ref_mode online"],
                              ["out/slm0.6-mixhq1"]),
    "more test problems than keys": (empty, ["data.py", "--preset", "cpu", "--corpus", "n_eval=5000"],
                                     ["fewer than the 5000 asked for"], ["data"]),
    "explain a run that is not SLM": (random_run, ["plot.py", "--explain", "out/random0.6"],
                                      ["not SLM or ref-loss against one reference"], ["out/random0.6/explain.md"]),
    "cuda without a GPU": (shared, [*SLM, "--device", "cuda", "--name", "gpu"], ["no CUDA GPU"], ["out/gpu"]),
    **{f"{flag} of no run": (empty, ["plot.py", flag, "{tmp}"], ["error: {tmp} is not a student run"], [])
       for flag in ("--tokens", "--categories")},
    "too few kept checkpoints": (shared, ["plot.py", "--categories", "out/clm"], ["--keep_ckpts"], []),
    "no text file": (shared, ["plot.py", "--tokens", "out/slm0.6", "--text", "{tmp}/missing.txt"], ["no text file"],
                     []),
    "real: missing field": (real, [*REAL, "--web_field", "content"], ["no field 'content'"], ["{tmp}/d/*"]),
    "real: empty": (real_file("empty.jsonl", ""), [*REAL, "--web", "{tmp}/empty.jsonl"], ["is empty"], ["{tmp}/d/*"]),
    "real: budget": (real, [*REAL, "--max_tokens", "10000000"], ["--max_tokens"], ["{tmp}/d/*"]),
    "real: malformed": (real_file("bad.jsonl", '{"text": "fine"}\n{"text": broken\n'),
                        [*REAL, "--web", "{tmp}/bad.jsonl"], ["cannot read"], ["{tmp}/d/*"]),
    # a missing local file is named as given: not sent to the hub, not a --max_tokens 0 complaint
    "real: missing web": (real, [*REAL, "--max_tokens", "0", "--web", "corpora/web.jsonl"],
                          ["no such file: corpora/web.jsonl"], ["{tmp}/d/*"]),
    "real: missing hq": (real, [*REAL, "--hq", "./train.jsonl"], ["no such file: ./train.jsonl"], ["{tmp}/d/*"]),
    "real: missing eval": (real, [*REAL, "--eval", "~/nowhere/*.parquet"], ["no such file: ~/nowhere/*.parquet"],
                           ["{tmp}/d/*"]),
}


class Where:
    """What a setup may use: an empty folder of its own, the session's pipeline and real-data files."""

    def __init__(self, request, tmp_path):
        self.request, self.tmp = request, tmp_path

    @property
    def pipeline(self):
        return self.request.getfixturevalue("pipeline")

    @property
    def files(self):
        return self.request.getfixturevalue("real_files")


@pytest.mark.parametrize("case", [pytest.param(k, marks=NO_GPU if "cuda" in k else ()) for k in CASES])
def test_a_mistake_is_one_line_and_writes_nothing(case, request, tmp_path, monkeypatch):
    setup, command, words, absent = CASES[case]
    folder = setup(Where(request, tmp_path))
    monkeypatch.chdir(folder)

    def fill(text):  # {tmp}: the case's own folder
        return text.format(tmp=tmp_path)
    msg = user_error(*map(fill, command))
    for w in map(fill, words):
        assert w in msg, msg
    for path in map(fill, absent):
        assert not glob.glob(os.path.join(folder, path)), path


def test_a_mistake_on_the_command_line_is_the_last_line_of_stderr_and_no_traceback(tmp_path, monkeypatch):
    """As a user runs it: a hub dataset while offline (the switch is read when `datasets` is imported: a fresh
    process)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    p = run("data_real.py", "--source", "owm-gsm8k", "--data_dir", str(tmp_path / "d"), check=False, cwd=tmp_path)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "; fix: " in last and "work offline" in last, last
    assert not glob.glob(str(tmp_path / "d" / "*"))
