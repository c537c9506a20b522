"""The analyses: token-loss categories, the token-selection picture, seed aggregation and the ratio sweep."""
import json
import os
import re

import numpy as np
import pytest

import plot
from conftest import call, run


def test_categorize_sorts_known_trajectories():
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
    cat, delta = plot.categorize(losses, steps)
    assert [plot.CATEGORIES[c] for c in cat] == ["H->L", "L->H", "H->H", "L->L", "H->H", "L->L", "L->H"]
    np.testing.assert_allclose(delta[[0, 1, 2, 5, 6]], [-2.5, 1.3, 0.0, -0.15, 0.25], atol=1e-9)
    # uneven checkpoint spacing is respected: a fall that happens late in steps is still a straight line in steps
    cat2, d2 = plot.categorize(np.array([[2.0], [1.9], [0.0]]), [0, 10, 100])
    assert plot.CATEGORIES[cat2[0]] == "H->L" and -2.1 < d2[0] < -1.9


def test_token_picture_writes_png_and_html(pipeline, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(pipeline)
    call("plot.py", "--tokens", "out/slm0.6", "--pages", "2")
    png, html = pipeline / "out" / "slm0.6" / "tokens.png", pipeline / "out" / "slm0.6" / "tokens.html"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = html.read_text()
    spans = re.findall(r'<span class="(d?)"', page)
    kept = spans.count("")
    scored = len(spans) - 2  # the first token of each page has no loss and is never kept
    assert kept == round(0.6 * scored + 1e-9)
    assert "kind boilerplate" in page or "kind math" in page
    assert "share of each kind kept" in capsys.readouterr().out
    # any text file, without ground-truth kinds
    f = tmp_path / "t.txt"
    f.write_text("Question: Ann has 3 cats and buys 4 more.\nAnswer: 3 + 4 = 7\n#### 7\nSubscribe to our newsletter!")
    call("plot.py", "--tokens", "out/slm0.6", "--text", str(f), "--ratio", "0.5")
    assert "kind " not in html.read_text() and "dropped" in html.read_text()
    with pytest.raises(SystemExit, match="^error: no text file"):
        call("plot.py", "--tokens", "out/slm0.6", "--text", str(tmp_path / "missing.txt"))


def test_categories_over_kept_checkpoints(pipeline, monkeypatch, capsys):
    monkeypatch.chdir(pipeline)
    call("train_slm.py", "--ratio", "1.0", "--keep_ckpts")
    run_dir = pipeline / "out" / "clm-ckpts"
    kept = sorted(f for f in os.listdir(run_dir) if re.fullmatch(r"ckpt_\d{6}\.pt", f))
    assert len(kept) == len([r for r in map(json.loads, open(run_dir / "log.jsonl")) if "val_loss" in r]) >= 3
    capsys.readouterr()
    call("plot.py", "--categories", "out/clm-ckpts", "--pages", "20")
    shares = [float(m) / 100 for m in re.findall(r"\| [HL]->[HL] \| (\d+)% \|", capsys.readouterr().out)]
    assert len(shares) == 4 and abs(sum(shares) - 1) <= 0.02
    assert (run_dir / "categories.png").exists()
    few = run("plot.py", "--categories", "out/clm", cwd=pipeline, check=False)
    assert few.returncode != 0 and "--keep_ckpts" in few.stderr.strip().splitlines()[-1]


def fake_pipeline(root, seed, runs):
    """A pipeline folder with fabricated logs: runs = {name: (ratio, lr, [(tokens, val, acc), ...])}."""
    d = root / f"seed{seed}"
    (d / "data").mkdir(parents=True)
    (d / "data" / "meta.json").write_text(json.dumps({"data_config": {"seed": seed, "n_web": 10}}))
    flops = {"base": 100.0, "ref": 10.0, "scoring": 5.0}
    (d / "pipeline.json").write_text(json.dumps({"seed": seed, "preset": "cpu", "init": "base", "settings": {},
                                                 "data_dir": str(d / "data"), "base": "b", "ref": "r",
                                                 "flops": flops}))
    for name, (ratio, lr, curve) in runs.items():
        (d / name).mkdir()
        cfg = {"split": "web", "ratio": ratio, "select": "excess", "ref_scores": "cached", "init": "b", "lr": lr,
               "ref": "r"}
        (d / name / "config.json").write_text(json.dumps(cfg))
        with open(d / name / "log.jsonl", "w") as f:
            for t, v, a in curve:
                f.write(json.dumps({"step": t, "tokens": t, "flops": 2.0 * t, "val_loss": v, "acc": a}) + "\n")
        (d / name / "done.json").write_text("{}")


def test_plot_aggregates_seeds_and_picks_each_arms_best_lr(tmp_path):
    t = [0, 250, 500, 750, 1000]
    for seed, shift in ((0, 0.0), (1, 0.1)):
        fake_pipeline(tmp_path, seed, {
            "clm-lr1": (1.0, 1e-3, list(zip(t, np.array([1.0, .9, .8, .7, .6]) + shift, [.1, .2, .3, .4, .5]))),
            "clm-lr2": (1.0, 2e-3, list(zip(t, np.array([1.0, .8, .7, .6, .5]) + shift, [.1, .2, .3, .4, .6]))),
            "slm0.6-lr2": (0.6, 2e-3, list(zip(t, np.array([1.0, .5, .4, .3, .2]) + shift, [.1, .5, .6, .7, .8]))),
            "slm0.8-lr2": (0.8, 2e-3, list(zip(t, np.array([1.0, .6, .5, .4, .3]) + shift, [.1, .4, .5, .6, .7]))),
        })
    results = plot.summarize(plot.find_pipelines(str(tmp_path)))
    assert len(results) == 1  # seeds of the same configuration form one group
    rows = {r["arm"]: r for r in results[0]["rows"]}
    assert rows["CLM"]["lr"] == 2e-3 and rows["CLM"]["seeds"] == [0, 1]
    np.testing.assert_allclose(sorted(rows["CLM"]["val"]), [0.5, 0.6])
    # SLM 0.6 reaches CLM's final 0.5 (or 0.6) at 250 tokens: 4x fewer, in both seeds
    np.testing.assert_allclose(rows["SLM 0.6"]["x"], [4.0, 4.0])
    # compute: base left out; SLM pays ref + scoring (15) plus 2 FLOPs/token for 250 tokens; CLM 2000
    np.testing.assert_allclose(rows["SLM 0.6"]["x_flops"], [2000 / 515] * 2)
    agg = plot.aggregate(rows["SLM 0.6"]["runs"])
    np.testing.assert_allclose(agg["val"][0], [1.05, .55, .45, .35, .25])  # mean over seeds
    np.testing.assert_allclose(agg["val"][1], [1.0, .5, .4, .3, .2])      # min
    np.testing.assert_allclose(agg["val"][2], [1.1, .6, .5, .4, .3])      # max
    a = plot.PlotRun(out_dir=str(tmp_path))
    plot.main(a)
    assert (tmp_path / "compare.png").exists() and (tmp_path / "compare-ratios.png").exists()
    summary = (tmp_path / "compare.md").read_text()
    assert "| 0.6 | 0.002 | 0.2500 [0.2000, 0.3000] | 80.0% [80.0%, 80.0%] |" in summary
    assert "| SLM 0.6 | 0.002 |" in summary and "4.00x, 4.00x" in summary


@pytest.mark.parametrize("flag", ["--tokens", "--categories"])
def test_analysis_of_a_folder_that_is_no_run_is_one_clear_error(tmp_path, flag):
    p = run("plot.py", flag, str(tmp_path), cwd=tmp_path, check=False)
    assert p.returncode != 0 and p.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path} is not a student run")


def test_plot_compares_only_the_arms_asked_for(tmp_path):
    t = [0, 500, 1000]
    fake_pipeline(tmp_path, 0, {"clm": (1.0, 1e-3, list(zip(t, [1.0, .8, .6], [.1, .2, .3]))),
                                "slm0.6": (0.6, 1e-3, list(zip(t, [1.0, .5, .4], [.1, .3, .4]))),
                                "slm0.8": (0.8, 1e-3, list(zip(t, [1.0, .6, .5], [.1, .3, .4])))})
    run("plot.py", "--out_dir", str(tmp_path), "--arms", "CLM", "SLM 0.6", "--png", str(tmp_path / "two.png"),
        cwd=tmp_path)
    table = (tmp_path / "two.md").read_text()
    assert "| SLM 0.6 |" in table and "SLM 0.8" not in table and not (tmp_path / "two-ratios.png").exists()
    with pytest.raises(SystemExit, match="no runs of arm"):
        plot.main(plot.PlotRun(out_dir=str(tmp_path), arms=["SLM 0.7"]))
