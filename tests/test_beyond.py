"""Beyond the paper, through the scripts: a reference sweep on a shared base that keeps some web, soft weighting,
a reference smaller than the student."""
import json
import os

import numpy as np

import data
import rho
from conftest import call, records, user_error


def test_a_reference_sweep_on_a_shared_base_keeps_the_lowest_validation_answer_loss(pipeline, monkeypatch):
    """On another pipeline's base (not trained again); --ref_web 3: the first third of the base's web and the subset."""
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


def test_a_smaller_reference_from_its_own_base_guides_a_student_of_the_other_base(pipeline, monkeypatch):
    """--student_base: the reference (half the width) fine-tunes from its own base, the students from the given one."""
    monkeypatch.chdir(pipeline)
    call("train_ref.py", "--preset", "tiny", "--out_dir", "small", "--n_embd", "16", "--n_head", "1",
         "--student_base", "out/base/ckpt.pt", "--ref_epochs", "1")
    pipe = json.loads(open("small/pipeline.json").read())
    assert pipe["base"] == "out/base/ckpt.pt" and os.path.exists("small/base/ckpt.pt")
    assert rho.GPT.from_checkpoint(rho.load_checkpoint(pipe["ref"])).config.n_embd == 16
    call("train_slm.py", "--out_dir", "small", "--ratio", "0.6", "--max_tokens", "3000")
    cfg = json.loads(open("small/slm0.6/config.json").read())
    assert (cfg["init"], cfg["ref_ckpt"], cfg["score_file"]) == ("out/base/ckpt.pt", pipe["ref"], pipe["scores"])
    assert rho.GPT.from_checkpoint(rho.load_checkpoint("small/slm0.6/ckpt.pt")).config.n_embd == 32
