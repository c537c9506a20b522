"""The analyses: token-loss categories, the token-selection picture, seed aggregation and the ratio sweep."""
import json
import os
import re
import shutil

import numpy as np
import pytest
import torch

import analysis
import plot
from conftest import call, records


def test_categorize_sorts_known_trajectories_and_auroc_counts_ties_half():
    steps = np.array([0, 100, 200, 300, 400])
    x = np.linspace(0, 1, 5)
    losses = np.stack([
        3.0 - 2.5 * x,                         # falls by 2.5: H->L
        0.2 + 1.3 * x,                         # rises by 1.3: L->H
        np.full(5, 3.0),                       # flat and high: H->H
        np.full(5, 0.1),                       # flat and low: L->L
        2.0 + 0.1 * x + [0, .3, -.3, .3, -.3],  # noisy but no trend beyond 0.2, high: H->H
        0.5 - 0.15 * x,                        # falls, but by less than 0.2, low: L->L
        1.0 + 0.25 * x,                        # rises by 0.25: L->H
    ], axis=1)                                  # (K=5 checkpoints, N=7 tokens)
    cat, delta = analysis.categorize(losses, steps)
    assert [analysis.CATEGORIES[c] for c in cat] == ["H->L", "L->H", "H->H", "L->L", "H->H", "L->L", "L->H"]
    np.testing.assert_allclose(delta[[0, 1, 2, 5, 6]], [-2.5, 1.3, 0.0, -0.15, 0.25], atol=1e-9)
    # uneven checkpoint spacing is respected: a fall that happens late in steps is still a straight line in steps
    cat2, d2 = analysis.categorize(np.array([[2.0], [1.9], [0.0]]), [0, 10, 100])
    assert analysis.CATEGORIES[cat2[0]] == "H->L" and -2.1 < d2[0] < -1.9
    assert analysis.auroc([3.0, 4.0], [1.0, 2.0]) == 1.0 and analysis.auroc([1.0], [2.0, 3.0]) == 0.0
    # pairs (pos, neg): 2>1, 2=2, 2<3, 5>1, 5>2, 5>3: (4 + 0.5) / 6
    assert analysis.auroc([2.0, 5.0], [1.0, 2.0, 3.0]) == pytest.approx(4.5 / 6)
    assert np.isnan(analysis.auroc([], [1.0]))


def test_token_picture_keeps_the_top_share_and_categories_read_kept_ckpts(pipeline, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(pipeline)
    pages = call("plot.py", "--tokens", "out/slm0.6", "--pages", "2")
    assert (pipeline / "out" / "slm0.6" / "tokens.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    keep, excess = np.concatenate([p["keep"] for p in pages]), np.concatenate([p["excess"] for p in pages])
    scored = ~np.isnan(excess)  # the first token of each page has no loss and is never kept
    assert scored.sum() == len(excess) - 2 and not keep[~scored].any()
    assert keep.sum() == round(0.6 * scored.sum() + 1e-9)
    assert excess[keep].min() >= excess[scored & ~keep].max()  # the highest excess losses, over all pages
    assert all(p["kinds"] is not None for p in pages)
    assert "share of each kind kept" in capsys.readouterr().out
    # any text file, without ground-truth kinds
    f = tmp_path / "t.txt"
    f.write_text("Question: Ann has 3 cats and buys 4 more.\nAnswer: 3 + 4 = 7\n#### 7\nSubscribe to our newsletter!")
    pages = call("plot.py", "--tokens", "out/slm0.6", "--text", str(f), "--ratio", "0.5")
    assert pages[0]["kinds"] is None and pages[0]["keep"].sum() == round(0.5 * (len(pages[0]["keep"]) - 1) + 1e-9)
    # the categories of token-loss trajectories over a run's kept checkpoints
    call("train_slm.py", "--ratio", "1.0", "--keep_ckpts")
    run_dir = pipeline / "out" / "clm-ckpts"
    kept = [f for f in os.listdir(run_dir) if re.fullmatch(r"ckpt_\d{6}\.pt", f)]
    assert len(kept) == len(records(run_dir, evals=True)) >= 3
    capsys.readouterr()
    call("plot.py", "--categories", "out/clm-ckpts", "--pages", "20")
    shares = [float(m) / 100 for m in re.findall(r"\| [HL]->[HL] \| (\d+)% \|", capsys.readouterr().out)]
    assert len(shares) == 4 and abs(sum(shares) - 1) <= 0.02
    assert (run_dir / "categories.png").exists()


def fake_pipeline(root, seed, runs, n=100, settings=None, name=None, ref_epochs=4):
    """A pipeline of fabricated logs: runs = {name: (arm, ratio, lr, [(tokens, val answer loss, answer loss, acc)])}."""
    d = root / (name or f"seed{seed}")
    (d / "data").mkdir(parents=True)
    meta = {"data_config": {"seed": seed, "n_web": 10}, "splits": {"eval": {"problems": n}}}
    (d / "data" / "meta.json").write_text(json.dumps(meta))
    pipe = {"seed": seed, "preset": "cpu", "settings": settings or {}, "data_dir": str(d / "data"), "base": "b",
            "ref": "ref/ckpt.pt", "flops": {"base": 100.0, "ref": 10.0, "scoring": 5.0},
            "ref_sweep": {"ref": {"ref_epochs": ref_epochs, "ref_lr": 0.01}}}
    (d / "pipeline.json").write_text(json.dumps(pipe))
    for name, (arm, ratio, lr, curve) in runs.items():
        (d / name).mkdir()
        cfg = {"split": "web", "ratio": ratio, "select": "excess", "mix_hq": 0, "ref_mode": "cached", "scope": "local",
               "weighting": "topk", "temperature": 0.1, "init": "b", "lr": lr, "ref_ckpt": "ref/ckpt.pt", "seed": seed,
               "keep_ckpts": False, "data_dir": str(d / "data"), **{k: 1 for k in plot.SHAPE}}
        assert plot.arm_name(cfg) == arm  # the arm comes from the settings
        (d / name / "config.json").write_text(json.dumps(cfg))
        recs = [{"step": t, "tokens": t, "flops": 2.0 * t, "val_loss": v + 0.3, "val_answer_loss": v, "answer_loss": a,
                 "acc": acc, "correct": "1" * round(acc * n) + "0" * (n - round(acc * n))}  # the first acc * n right
                for t, v, a, acc in curve]
        (d / name / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
        (d / name / "done.json").write_text("{}")


def test_plot_keeps_apart_what_pooling_as_seeds_would_hide_and_a_file_cut_short_costs_only_its_run(tmp_path):
    """Runs group by what shapes them (not preset defaults); another budget, a copy or a twin is never a seed."""
    curve = [(0, 1.0, 1.0, 0.1), (100, 0.5, 0.5, 0.3)]
    groups, d = tmp_path / "groups", tmp_path / "apart"
    clm = {"clm-lr1": ("CLM", 1.0, 1e-3, curve)}
    for seed, (settings, epochs) in enumerate([({"n_embd": 64, "lr": 3e-3, "ref_epochs": 4}, 40),
                                               ({"n_embd": 64, "lr": 6e-3, "ref_epochs": 40}, 40.0)]):
        fake_pipeline(groups, seed, clm, settings=settings, ref_epochs=epochs)
    # the preset's defaults differ, the reference swept is the same (40 from a preset or a flag): one group
    assert len(plot.summarize(plot.find_runs(str(groups)))) == 1
    fake_pipeline(groups, 2, clm, settings={"n_embd": 64}, name="short", ref_epochs=4)
    assert len(plot.summarize(plot.find_runs(str(groups)))) == 2  # another reference: another group
    fake_pipeline(groups, 3, clm, settings={"n_embd": 128}, name="wide", ref_epochs=40)
    assert len(plot.summarize(plot.find_runs(str(groups)))) == 3  # another model: another group
    # students of another budget, a byte copy of a pipeline, a second run of an arm at one rate: each apart, with why
    fake_pipeline(d, 0, {name: (arm, ratio, 1e-3, curve) for name, arm, ratio in (
        ("clm", "CLM", 1.0), ("slm", "SLM 0.6", 0.6), ("slm-big", "SLM 0.6", 0.6), ("slm-twin", "SLM 0.6", 0.6))})
    for name, tokens in (("clm", 20000), ("slm", 20000), ("slm-big", 200000), ("slm-twin", 20000)):
        path = d / "seed0" / name / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "max_tokens": tokens}))
    shutil.copytree(d / "seed0", d / "copy")  # a byte copy beside it: the same seed
    notes = []
    results = plot.summarize(plot.find_runs(str(d), notes))
    assert sorted(len(row["runs"]) for res in results for row in res["rows"] if row["arm"] == "SLM 0.6") == [1] * 4
    assert any("differ in max_tokens" in n for n in notes) and any("(a copy?)" in n for n in notes), notes
    assert any(n.startswith(str(d / "seed0" / "slm-twin") + ": left out") for n in notes), notes
    with open(d / "seed0" / "clm" / "log.jsonl", "a") as f:
        f.write('{"step": 200, "tok')  # a kill's last line
    (d / "seed0" / "slm" / "done.json").write_text('{"ste')
    runs = {os.path.basename(run["path"]): run for run in plot.find_runs(str(d / "seed0"))}
    assert runs["clm"]["done"] and len(runs["clm"]["tokens"]) == 2 and not runs["slm"]["done"]


def test_plot_aggregates_seeds_and_picks_each_arms_best_lr_on_validation(tmp_path):
    t = [0, 250, 500, 750, 1000]
    for seed, shift in ((0, 0.0), (1, 0.1)):
        up = np.array([1.0, .9, .8, .7, .6]) + shift
        fake_pipeline(tmp_path, seed, {
            # lr 1e-3 is better on test, lr 2e-3 on validation: the validation decides
            "clm-lr1": ("CLM", 1.0, 1e-3, list(zip(t, up, up - 0.2, [.1, .2, .3, .4, .5]))),
            "clm-lr2": ("CLM", 1.0, 2e-3, list(zip(t, up - 0.1, up, [.1, .2, .3, .4, .4]))),
            "slm0.6-lr2": ("SLM 0.6", 0.6, 2e-3, list(zip(t, up - .3, [1.0, .5, .4, .3, .2], [.1, .4, .5, .6, .8]))),
            "slm0.8-lr2": ("SLM 0.8", 0.8, 2e-3, list(zip(t, up - .2, up - .3, [.1, .4, .5, .6, .7]))),
        })
    results = plot.summarize(plot.find_runs(str(tmp_path)))
    assert len(results) == 1  # seeds of the same configuration form one group
    res = results[0]
    assert res["best"]["CLM"] == 2e-3 and res["seeds"] == [0, 1]
    rows = {r["arm"]: r for r in res["rows"]}
    np.testing.assert_allclose(sorted(r["answer"][-1] for r in rows["CLM"]["runs"]), [0.6, 0.7])
    # SLM 0.6 reaches CLM's final test answer loss (CLM: at 1000 tokens) at 250 in both seeds (4x fewer; a crossing
    # before the first evaluation after step 0: a bound); CLM's final accuracy (40%) at 750 tokens, SLM's at 250: >=3x
    assert rows["SLM 0.6"]["x_answer"] == [(4.0, True), (4.0, True)]
    assert rows["SLM 0.6"]["x_acc"] == [(3.0, True), (3.0, True)]
    # compute: the base left out; SLM pays the reference and the scoring (15) plus 2 FLOPs/token for 250 tokens
    assert [x for x, _ in rows["SLM 0.6"]["x_flops"]] == [pytest.approx(2000 / 515)] * 2
    assert all(bound for _, bound in rows["SLM 0.6"]["x_flops"])
    _, mean, lo, hi = plot.aggregate(rows["SLM 0.6"]["runs"], "val_answer")
    np.testing.assert_allclose(mean, [.75, .65, .55, .45, .35])
    np.testing.assert_allclose(lo, [.7, .6, .5, .4, .3])
    np.testing.assert_allclose(hi, [.8, .7, .6, .5, .4])
    plot.main(plot.PlotRun(out_dir=str(tmp_path)))
    assert (tmp_path / "compare.png").exists() and (tmp_path / "compare-ratios.png").exists()
    summary = (tmp_path / "compare.md").read_text()
    # 80 right of 100 against 40 in each seed, on the same problems: +40 points, every discordant pair one way
    assert "| SLM 0.6 | 0.002 (of 1) | 0.2000 [0.2000, 0.2000] | 80.0% [80.0%, 80.0%] | >=4.00x [>=4.00x, >=4.00x] | " \
        ">=3.00x [>=3.00x, >=3.00x] | >=3.88x [>=3.88x, >=3.88x] |" in summary
    assert "| +40.0 pts [" in summary and f"p={2 / 2 ** 80:.2g} |" in summary
    assert f"| SLM 0.6 vs SLM 0.8 | +10.0 ({2 / 2 ** 10:.2g}), +10.0 ({2 / 2 ** 10:.2g}) |" in summary
    assert "| SLM 0.8 vs SLM 0.6 |" not in summary  # each pair once
    assert "| CLM | 0.002* | 2 |" in summary and "| CLM | 0.001 | 2 |" in summary


def test_plot_compares_only_the_arms_asked_for(tmp_path, capsys):
    t = [0, 500, 1000]
    fake_pipeline(tmp_path, 0, {
        "clm": ("CLM", 1.0, 1e-3, list(zip(t, [1.0, .8, .6], [1.0, .8, .6], [.1, .2, .3]))),
        "slm0.6": ("SLM 0.6", 0.6, 1e-3, list(zip(t, [1.0, .5, .4], [1.0, .5, .4], [.1, .3, .4]))),
        "slm0.8": ("SLM 0.8", 0.8, 1e-3, list(zip(t, [1.0, .6, .5], [1.0, .6, .5], [.1, .3, .4])))})
    png = str(tmp_path / "two.png")
    call("plot.py", "--out_dir", str(tmp_path), "--arms", "CLM", "SLM 0.6", "--png", png, "--full")
    table = (tmp_path / "two.md").read_text()
    assert "| SLM 0.6 |" in table and "SLM 0.8" not in table and not (tmp_path / "two-ratios.png").exists()
    # real data, one rate each: only the three curves are drawn, no empty panels (5.6 inches at 100 dpi each)
    assert int.from_bytes((tmp_path / "two.png").read_bytes()[16:20], "big") == 3 * 560
    with pytest.raises(SystemExit, match="no runs of arm"):
        plot.main(plot.PlotRun(out_dir=str(tmp_path), arms=["SLM 0.7"]))
    capsys.readouterr()
    plot.main(plot.PlotRun(out_dir=str(tmp_path), rates=True))  # for a script: arm<TAB>rate<TAB>folder
    assert capsys.readouterr().out.splitlines() == ["CLM\t0.001\tclm", "SLM 0.6\t0.001\tslm0.6",
                                                    "SLM 0.8\t0.001\tslm0.8"]


def test_explain_tables_kinds_roles_and_slips_and_ranks_ref_loss_by_the_reference(pipeline, tmp_path, monkeypatch):
    monkeypatch.chdir(pipeline)
    t = call("plot.py", "--explain", "out/slm0.6", "--pages", "40")
    text = (pipeline / "out" / "slm0.6" / "explain.md").read_text()
    # the first table: {row: [[share %], [student 0, end], [reference], [excess 0, end], [kept % 0, end]]}
    rows = {cells[0]: [[float(x.rstrip("%")) for x in c.split(" / ")] for c in cells[1:]] for cells in
            ([c.strip() for c in line.strip("|").split("|")] for line in text.splitlines())
            if len(cells) == 6 and cells[1].endswith("%")}
    kinds = analysis.data.KINDS
    assert {kinds[k] for k in np.unique(t["kind"])} | {"all"} | {f"math: {r}" for r in analysis.ROLES} == set(rows)
    assert not ((t["kind"] == analysis.data.MATH) & (t["role"] < 0)).any()  # every math token has a role
    assert sum(rows[f"math: {r}"][0][0] for r in analysis.ROLES) == pytest.approx(rows["math"][0][0], abs=0.3)
    assert rows["all"][0] == [100.0] and rows["all"][4] == pytest.approx([60.0, 60.0], abs=0.1)
    for share, student, (ref,), excess, kept in rows.values():
        assert all(0 <= k <= 100 for k in kept)
        assert excess == pytest.approx([s - ref for s in student], abs=0.002)
    # the second table: slipped results against correct ones, each score's mean on both and its AUROC
    aurocs = [float(a) for a in re.findall(r"^\| [a-z ,0-9]+ \| -?[\d.]+ \| -?[\d.]+ \| ([\d.]+) \|$", text, re.M)]
    assert len(aurocs) == 5 and all(0 <= a <= 1 for a in aurocs)
    # a ref-loss run (the SLM run's folder copied; its paths are relative to the pipeline) ranks by the reference loss
    run_dir = tmp_path / "out" / "refloss0.6"
    shutil.copytree(pipeline / "out" / "slm0.6", run_dir)
    shutil.copy(pipeline / "out" / "pipeline.json", tmp_path / "out")
    cfg = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps({**cfg, "select": "ref_loss"}))
    t = call("plot.py", "--explain", str(run_dir), "--pages", "40")
    keep = analysis.rho.select_topk(torch.tensor(-t["ref"]), 0.6).numpy()  # the lowest reference losses
    assert (t["keep_start"] == keep).all() and (t["keep_end"] == keep).all()
    assert keep.mean() == pytest.approx(0.6, abs=1e-3) and t["ref"][keep].max() <= t["ref"][~keep].min()
    assert not (t["keep_start"] == (t["excess_start"] >= np.quantile(t["excess_start"], 0.4))).all()  # not excess
    text = (run_dir / "explain.md").read_text()
    assert "ref-loss 0.6 explained" in text and "by the reference's loss, lowest first" in text
