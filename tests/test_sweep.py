"""The reference tuned like every arm: a sweep of its epochs and rate chosen on validation, and a base shared
between pipeline folders."""
import json
import os

from conftest import call


def test_reference_sweep_keeps_the_lowest_validation_answer_loss_and_a_base_is_shared(pipeline, monkeypatch):
    monkeypatch.chdir(pipeline)
    call("train_ref.py", "--preset", "tiny", "--out_dir", "swept", "--base", "out/base/ckpt.pt",
         "--ref_epochs", "1", "3", "--ref_lr", "1e-3")
    pipe = json.loads(open("swept/pipeline.json").read())
    assert not os.path.exists("swept/base") and pipe["base"] == "out/base/ckpt.pt"  # the base was not trained again
    sweep = pipe["ref_sweep"]
    assert sorted(sweep) == ["swept/ref-e1-lr0.001", "swept/ref-e3-lr0.001"]
    best = min(sweep, key=lambda d: sweep[d]["val_answer_loss"])
    for d, run in sweep.items():  # what the pipeline records is what each run's summary says
        assert run["val_answer_loss"] == json.loads(open(os.path.join(d, "done.json")).read())["val_answer_loss"]
    assert pipe["ref"] == os.path.join(best, "ckpt.pt") and pipe["scores"] == os.path.join(best, "scores.bin")
    assert pipe["ref_epochs"] == sweep[best]["ref_epochs"] and os.path.exists(pipe["scores"])
    call("train_slm.py", "--out_dir", "swept", "--ratio", "0.6", "--max_tokens", "3000")
    cfg = json.loads(open("swept/slm0.6/config.json").read())
    assert cfg["init"] == "out/base/ckpt.pt" and cfg["ref_ckpts"] == pipe["ref"]


def test_a_student_seed_is_a_run_of_its_own(pipeline, monkeypatch):
    """The noise floor needs several student seeds (data orders) per pipeline: each its own folder and arm name,
    its own data order."""
    import train_slm
    monkeypatch.chdir(pipeline)
    pipe = json.loads(open("out/pipeline.json").read())
    cfgs = [train_slm.student_config(train_slm.SlmRun(seed=s), pipe, 0.6, None) for s in (None, 1, 2)]
    assert [c.out_dir for c in cfgs] == ["out/slm0.6", "out/slm0.6-s1", "out/slm0.6-s2"]
    assert [c.arm for c in cfgs] == ["SLM 0.6", "SLM 0.6 (student seed 1)", "SLM 0.6 (student seed 2)"]
    assert [c.seed for c in cfgs] == [pipe["seed"], 1, 2]
