"""The experiment's measures and controls: a held-out test set, answer loss, x fewer tokens, paired tests, controls."""
import importlib.util
import json
import math
import re

import numpy as np
import pytest
import torch

import analysis
import data
import infra
import plot
import rho
import train_ref
import train_slm
from conftest import ROOT, trainer
from test_method import tiny_model

MASK = {w: "<name>" for w in data.NAMES} | {w: "<item>" for w in data.ITEMS + data.CONTAINERS}


def masked_questions(text):
    """Every question in a text, names, items and containers masked: what is left is the template and numbers."""
    return {" ".join(MASK.get(w.strip(".?,"), w) for w in q.split()) for q in re.findall(r"Question: ([^\n]*)\n", text)}


def test_test_and_validation_problems_share_no_template_and_numbers_with_any_training_split(tmp_path):
    data.build(data.data_config("tiny", n_eval=300, n_ref_val=100), str(tmp_path))
    tok = data.Tokenizer.from_meta(str(tmp_path))
    train = set().union(*(masked_questions(tok.decode(data.load_tokens(str(tmp_path), split)[0].tolist()))
                          for split in ("ref_train", "web_base", "web")))
    assert len(train) > 500
    for name in ("eval", "val"):
        problems = data.load_eval(str(tmp_path), name)
        held = [masked_questions(p["prompt"] + "\n") for p in problems]
        assert all(len(q) == 1 for q in held)
        held = set().union(*held)
        assert len(held) == len(problems)  # no two held-out problems share a template and numbers
        assert not held & train, sorted(held & train)[:3]
        train |= held  # and the validation problems share none with the test problems
    # the default corpus holds out at least 1000 test problems, of every family
    cfg = data.data_config("cpu")
    keys = data.key_splits(cfg.seed)
    for i, (_, space) in enumerate(data.FAMILIES):  # the three parts of every family's keys partition it
        parts = [set(keys[s][i]) for s in ("eval", "ref_val", "train")]
        assert sum(map(len, parts)) == len(space) == len(set().union(*parts))
    _, evals, vals = data.documents(cfg)
    assert len(evals) == cfg.n_eval >= 1000 and len(vals) == cfg.n_ref_val
    assert {e["solution"].strip().splitlines()[-1] for e in evals} == {f"#### {e['answer']}" for e in evals}


def test_answer_loss_scores_the_solution_given_the_question_only():
    tok = type("Tok", (), {"encode": lambda self, s: [ord(c) % 50 for c in s]})()
    model = tiny_model(3, vocab=50, block=32).eval()
    problems = [{"prompt": "Q: 3+4?\nA:", "solution": " 7\n#### 7\n", "answer": 7},
                {"prompt": "Q: a longer one, 12+30?\nA:", "solution": " 42\n#### 42\n", "answer": 42},
                {"prompt": "Q: a question longer than the whole block of 32 tokens, 1+1?\nA:",
                 "solution": " 2\n#### 2\n", "answer": 2}]
    losses = []
    for p in problems:  # one at a time, unpadded: the loss of every solution token given all before it
        q, s = tok.encode(p["prompt"]), tok.encode(p["solution"])
        ids = torch.tensor([(q + s)[-33:]])  # a sequence longer than the block keeps its end: the whole solution
        losses += rho.token_losses(model(ids[:, :-1]), ids[:, 1:])[0][-len(s):].tolist()
    encoded = data.encode_problems(tok, problems)
    assert rho.eval_answer_loss(model, encoded, "cpu", batch_size=2) == pytest.approx(np.mean(losses), abs=1e-6)
    other = data.encode_problems(tok, [{**problems[0], "solution": " 8\n#### 8\n"}] + problems[1:])
    assert rho.eval_answer_loss(model, other, "cpu") != pytest.approx(np.mean(losses))  # the answer is scored


@pytest.mark.parametrize("ys, target, higher, t, bound", [
    ([1.0, 0.8, 0.6, 0.4], 0.5, False, 250.0, False),   # between the 3rd and 4th evaluation
    ([0.4, 0.6, 0.3], 0.5, False, 0.0, False),          # starts at or below: reached at the start
    ([0.5, 0.45], 0.5, False, 0.0, False),
    ([1.0, 0.45, 0.55, 0.4], 0.5, False, 100.0, True),  # dips and comes back: the first reach; before the first
    ([1.0, 0.9, 0.45, 0.55, 0.4], 0.5, False, 188.89, False),  # evaluation only a bound; later interpolated
    ([1.0, 0.9, 0.8], 0.5, False, None, False),         # never
    ([0.1, 0.2, 0.3, 0.5], 0.4, True, 250.0, False),    # accuracy: higher is better
])
def test_tokens_to_reach(ys, target, higher, t, bound):
    assert plot.tokens_to_reach([0, 100, 200, 300, 400], ys, target, higher) == (pytest.approx(t, abs=0.01), bound)


def test_x_fewer_compute_and_kept_share_on_known_curves():
    clm, run = ({"tokens": np.array([0., 100, 200, 400]), "answer": np.array(answer), "acc": np.array(acc),
                 "flops": 800.0, "cfg": {"split": "web", "ratio": 1.0}}
                for answer, acc in (([1, .8, .6, .5], [.1, .4, .3, .4]), ([1, .7, .5, .4], [.1, .2, .4, .5])))
    assert plot.x_fewer(run, clm, "answer") == (2.0, False)          # reaches 0.5 at 200 of CLM's 400 tokens
    # CLM first reached its final 40% accuracy at 100 tokens, then dipped: its 100, not its budget, against run's 200
    assert plot.x_fewer(run, clm, "acc") == (0.5, False)
    assert plot.x_fewer(clm, run, "answer") == (None, False)
    assert plot.x_fewer(run, clm, "answer", compute=True) == (pytest.approx(2.0), False)  # no overhead: the same
    nan = {**clm, "answer": np.full(4, np.nan)}  # a measure a run does not have is no measure, not "never"
    assert np.isnan(plot.x_fewer(run, nan, "answer")[0]) and plot.med_x([plot.x_fewer(run, nan, "answer")]) == "-"
    assert np.isnan(plot.x_fewer(run, {**clm, "tokens": clm["tokens"][:1], "answer": clm["answer"][:1]}, "answer")[0])
    assert plot.med_x([(math.inf, False)]) == "at start" and plot.med_x([(3.0, True)]) == ">=3.00x"
    # medians: the lower one of an even count, never below every value, a bound marking what it could raise
    assert plot.med_x([(None, False), (2.0, False), (3.0, True)]) == "2.00x [never, >=3.00x]"
    assert plot.med_x([(1.0, True), (2.0, False), (3.0, False)]) == ">=2.00x [>=1.00x, >=3.00x]"
    assert plot.med_x([(None, False), (3.0, False)]) == "never [never, 3.00x]"
    assert plot.med_x([(4.0, False), (4.0, True)]) == plot.med_x([(4.0, True), (4.0, False)])
    assert plot.med_x([(math.nan, False)]) == "-" and plot.med_x([]) == ""
    assert plot.final([{"answer": [x]} for x in (0.5, np.nan, 0.7)], "answer") == "0.6000 [0.5000, 0.7000] (2 of 3)"
    # the records since the previous evaluation: 100 tokens at 50% of math kept, then 300 tokens at 90%
    run = {"tokens": np.array([0., 100, 400]), "composition": [{}, {"math": 1.0}, {"math": 0.8}],
           "selected": [{}, {"math": 0.5, "prose": 0.0}, {"math": 0.9, "prose": 0.2}]}
    kept = analysis.kept_over_run(run)
    assert kept == {"math": pytest.approx(0.8), "prose": pytest.approx(0.15), "precision": pytest.approx(0.85)}
    assert analysis.kept_over_run({**run, "selected": [{}, {}, {}]}) is None  # real data: no token kinds


def test_paired_tests_and_the_noise_floor_on_known_answers(tmp_path):
    a, b = np.arange(100) < 10, np.zeros(100, bool)
    assert plot.mcnemar(a, b) == (10, 0, pytest.approx(2 / 2 ** 10))
    assert plot.mcnemar(b, b)[2] == plot.mcnemar(np.array([1, 1, 0, 0], bool), np.array([0, 1, 1, 0], bool))[2] == 1.0
    t = plot.paired([(a, b), (a, b)])  # seeds with test problems of their own: the pooled McNemar test
    assert t["diff"] == pytest.approx(0.1) and t["p"] == pytest.approx(2 / 2 ** 20)
    assert 0.03 < t["ci"][0] < 0.1 < t["ci"][1] < 0.17
    assert [p for _, p in t["per_seed"]] == [pytest.approx(2 / 2 ** 10)] * 2
    # seeds sharing their test problems: the same 10 problems twice are not 20 independent ones
    shared = plot.paired([(a, b), (a, b)], shared=True)
    assert shared["diff"] == pytest.approx(0.1) and 2 / 2 ** 10 * 0.5 < shared["p"] < 2 / 2 ** 10 * 2
    assert shared["ci"][1] - shared["ci"][0] > t["ci"][1] - t["ci"][0]
    far = plot.paired([(np.ones(200, bool), np.zeros(200, bool))] * 2, shared=True)["p"]  # beyond every random flip
    assert far == pytest.approx(1 / 10001)
    assert plot.paired([(a, b)], shared=True)["p"] == pytest.approx(2 / 2 ** 10)  # one run: its exact McNemar p
    # answers are read back at their length (one '0'/'1' each); runs of other lengths pair on the common problems
    right = [True, False, True, True, False, True, False]
    (tmp_path / "config.json").write_text(json.dumps({"seed": 0, "lr": 1, "split": "web", "select": "", "ratio": 1}))
    (tmp_path / "log.jsonl").write_text(json.dumps({"val_loss": 1, "tokens": 0, "flops": 0, "correct": "1011010"}))
    assert plot.load_run(str(tmp_path), {"seed": 0, "data_dir": ""}, "", "CLM")["correct"].tolist() == right
    assert plot.paired([(np.array(right + [True] * 3), np.array(right))])["diff"] == 0.0
    # the noise floor pairs each run with the baseline of its pipeline and data order

    def run(arm, pipe, acc, loss, student=0):
        return {"name": arm, "order": student, "pipe": {"dir": pipe}, "acc": np.array([acc]), "alone": False,
                "answer": np.array([loss]), "correct": np.arange(100) < round(100 * acc), "slm": arm == "SLM 0.6"}
    chosen = [run(arm, pipe, (0.33 if arm == "SLM 0.6" else 0.3) + shift + jitter, 0.5 - shift, student)  # SLM: +3
              for pipe, shift in (("p0", 0.0), ("p1", 0.1), ("p2", 0.2))  # pipelines differ; data orders differ less
              for student, jitter in ((0, 0.0), (100, 0.02), (101, -0.02)) for arm in ("CLM", "SLM 0.6")]
    chosen.append(run("oracle", "p0", 0.5, 0.1))  # one data order only: not in the table
    res = {"chosen": chosen, "shared": False}
    lines = plot.noise_tables(res)  # against CLM, then against SLM 0.6 (run on several data orders)
    (clm, clm_slm), (slm, slm_slm) = ([x for x in lines if x.startswith(f"| {a} |")] for a in ("CLM", "SLM 0.6"))
    assert "| 9 |" in slm and "+3.0 [+3.0, +3.0], 9 of 9 above" in slm and "+0.0000" in slm
    assert "sd 8.8%" in clm and "| 2.0% |" in clm  # the spread over all runs, and over data orders alone
    assert "oracle" not in "\n".join(lines) and plot.noise_tables({**res, "chosen": chosen[-1:]}) == []
    # then every arm against SLM, paired the same way: CLM is 3 points below it in every run
    assert "paired with SLM 0.6 of the same pipeline" in lines[lines.index(clm_slm) - 4]
    assert "-3.0 [-3.0, -3.0], 0 of 9 above" in clm_slm and slm_slm.endswith("|  |  |  |")
    # a row's interval does not depend on the other rows: an arm whose gain varies, with and without another arm
    gains = (0.7, -1.3, 2.9, 0.1, 4.4, -2.2, 1.7, 3.3, -0.6)
    wobbly = [run("ref-loss", r["pipe"]["dir"], float(r["acc"][0]) + gains[i] / 100, 0.4, r["order"])
              for i, r in enumerate(chosen[:-1:2])]
    both, alone = ([x for x in plot.noise_tables({**res, "chosen": rows}) if x.startswith("| ref-loss |")]
                   for rows in (chosen + wobbly, chosen[::2] + wobbly))
    assert both[0] == alone[0] and len(alone) == 1 and "+1.0 [" in alone[0]


def test_eval_schedule():
    steps = infra.eval_steps(2929, 16)
    assert steps[0] == 0 and steps[-1] == 2929 and steps == sorted(set(steps)) and len(steps) == 17
    assert steps[1] == 15 and all(b / a < 1.5 for a, b in zip(steps[1:], steps[2:]))  # dense early, 1.42x apart
    assert infra.eval_steps(3, 16) == [0, 1, 2, 3] and infra.eval_steps(50, 1) == [0, 50]  # 1: start and end


def test_every_control_selects_what_it_says_in_a_folder_and_budget_of_its_own(pipeline, monkeypatch):
    tr = trainer(pipeline, select="excess")
    x, y, ref, lab = tr.blocks.read(tr.blocks.block_ids(0))
    losses = rho.token_losses(tr.model(x), y).detach()
    assert torch.equal(tr.select_tokens(losses, x, y, ref, labels=lab), rho.select_topk(losses - ref, 0.6))
    tr = trainer(pipeline, select="ref_loss")  # the tokens with the lowest reference loss, whatever the student's
    sel = tr.select_tokens(losses, x, y, ref, labels=lab)
    assert torch.equal(sel, tr.select_tokens(torch.rand_like(losses), x, y, ref, labels=lab))
    assert sel.sum() == rho.n_selected(0.6, losses.numel()) and ref[sel].max() <= ref[~sel].min()
    tr = trainer(pipeline, select="oracle")  # exactly the tokens labelled target math, whatever the ratio
    sel = tr.select_tokens(losses, x, y, ref, labels=lab)
    assert torch.equal(sel, lab == data.MATH) and 0 < sel.sum() < sel.numel()
    loss, mask, _ = tr.step(0)  # and each one trains through the same step
    assert torch.isfinite(loss) and mask.dtype == torch.bool
    # CLM + HQ mix: the web split with 2.5 epochs of the high-quality subset (all target math) appended
    web, hq = (len(data.load_tokens(str(pipeline / "data"), s)[0]) for s in ("web", "ref_train"))
    tr = trainer(pipeline, ratio=1.0, mix_hq=2.5)
    assert len(tr.blocks.tokens) == web + int(2.5 * hq) and np.all(tr.blocks.labels[web:] == data.MATH)
    # each control and student seed (a data order) is a run of its own; ref_long: the reference's budget + SLM's extra
    monkeypatch.chdir(pipeline)
    pipe, meta = json.loads((pipeline / "out" / "pipeline.json").read_text()), data.read_meta(str(pipeline / "data"))
    cfg, p = train_slm.student_config(train_slm.SlmRun(ref_long=True), pipe, 1.0, None), pipe["settings"]
    assert cfg.split == "ref_train" and cfg.out_dir == "out/reflong"
    assert cfg.max_tokens == int(p["ref_epochs"] * meta["splits"]["ref_train"]["tokens"]) + p["student_tokens"] + \
        meta["splits"]["web"]["tokens"] // 3
    cfgs = [train_slm.student_config(train_slm.SlmRun(**kw), pipe, 1.0 if "mix_hq" in kw else 0.6, None) for kw in (
        dict(select="random"), dict(select="ref_loss"), dict(select="oracle"), dict(mix_hq=4), {}, dict(seed=1))]
    assert [c.out_dir[4:] for c in cfgs] == ["random0.6", "refloss0.6", "oracle", "clm-mixhq4", "slm0.6", "slm0.6-s1"]
    assert cfgs[2].ratio == 1.0 and [c.seed for c in cfgs[-2:]] == [pipe["seed"], 1]


def test_every_driver_job_known_before_it_runs_parses_with_its_scripts_flags():
    """Each fixed stage of experiments/driver.py's plans holds jobs of unique names and targets, of accepted flags."""
    spec = importlib.util.spec_from_file_location("driver", f"{ROOT}/experiments/driver.py")
    spec.loader.exec_module(driver := importlib.util.module_from_spec(spec))
    configs, checked = {"train_ref.py": train_ref.RefRun, "train_slm.py": train_slm.SlmRun}, 0
    for plan, stages in driver.PLANS.items():
        jobs = [job for stage in stages() if not callable(stage) for job in stage]
        assert len({j[0] for j in jobs}) == len(jobs) and len({j[1] for j in jobs}) == len(jobs), plan
        checked += len(jobs)
        for *_, argv in jobs:
            infra.cli(configs[argv[0]], "", [*argv[1:], "--resume"])  # an unknown flag or bad value exits here
    assert checked > 100
    with pytest.raises(SystemExit):  # and the check can fail
        infra.cli(train_slm.SlmRun, "", ["--ratio", "0.6", "--no_such_flag"])
