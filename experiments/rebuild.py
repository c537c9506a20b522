"""`python experiments/rebuild.py [name ...] [--write]`: each printout of out/results/ (or those named) made again from
the committed logs (experiments/runs/) and compared, figures byte for byte; exit 1 on a difference; --write replaces."""
import filecmp, os, shutil, subprocess, sys, tempfile
RUNS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "runs")
RESULTS, PLOT_PY = os.path.join(RUNS, "..", "..", "out", "results"), os.path.join(RUNS, "..", "..", "plot.py")
H, W, D, M = "out/headline/default", "web-keeping ref", "out/demo/webref4", "80 epochs"
RATIOS, WEB = "--arms CLM 'SLM 0.4' 'SLM 0.5' 'SLM 0.6' 'SLM 0.7' 'SLM 0.8'", "--arms CLM 'SLM 0.6' 'CLM + HQ x4' " \
    "'oracle (math tokens)'"
PLOT = {  # printout: (the logs' folder under experiments/runs/, plot.py's arguments but --png and --full)
    "demo": ("", "--out_dir out/demo-cpu"), "headline-default": ("", f"--out_dir {H}"),
    "demo-refs": ("", f"--out_dir out/demo/cheap --merge {D}='{W}, 4 epochs' {D}-10ep='{W}, 10 epochs' "
                      f"{D}-40ep='{W}, 40 epochs'"),
    "headline-beyond": ("", f"--out_dir {H} {WEB} 'CLM + HQ x2' 'CLM + HQ x8' 'random 0.6' 'ref-loss 0.6' "
                            "'reference, longer'"),
    "headline-cheapref": ("", f"--out_dir {H}-cheapref"), "headline-refedge": ("", f"--out_dir {H}-refedge0"),
    "headline-refs3": ("", f"--out_dir {H}-refs3"), "headline-webref-ratios": ("", f"--out_dir {H}-webref4 {RATIOS}"),
    "headline-ratios": ("", f"--out_dir {H} {RATIOS} 'SLM 0.6 (soft 0.1)' 'SLM 0.6 (soft 0.5)'"),
    "headline-refedge-tuned": ("", f"--out_dir {H} --merge {H}-refedge-tuned='80-epoch ref' {WEB} 'ref-loss 0.6' "
                                   "reference 'SLM 0.6 (80-epoch ref)' 'ref-loss 0.6 (80-epoch ref)' "
                                   "'reference (80-epoch ref)'"),
    "headline-webref": ("", f"--out_dir {H} --merge {H}-webref4='{W}' {WEB} 'random 0.6' 'reference, longer' "
                            f"'SLM 0.6 ({W})' 'reference ({W})' 'ref-loss 0.6 ({W})'"),
    "headline-webref-tuned": ("", f"--out_dir {H} --merge {H}-webref4='{W}' {H}-webref4-tuned='{W}, {M}' {WEB} "
                                  f"'SLM 0.6 ({W})' 'reference ({W})' 'SLM 0.6 ({W}, {M})' 'reference ({W}, {M})'"),
    "headline-webref-grid": ("epyc", f"--out_dir {H} --merge " + " ".join(  # epyc: another machine's logs
        f"{H}-webref4-{e}ep{lr}='{W}, {e} ep {lr}'" for lr in ("1.2e-2", "2.4e-2") for e in (40, 80)))}
PLOT["headline"] = ("", f"--out_dir {H}")  # the README's figure: the lesson's two panels (not --full)
WN, NS = "out/when/subset", (1000, 500, 250)  # issue 31's screen: every cell beside the 2,000 cell's CLM and oracle
PLOT["when"] = ("", f"--out_dir {WN}2000 --merge {WN}2000-webref4='2000, web-keeping' " + " ".join(
    f"{WN}{n}='{n}' {WN}{n}-webref4{'/seed0' * (n == 1000)}='{n}, web-keeping'" for n in NS) + " --arms CLM 'oracle (math tokens)' reference "
    "'SLM 0.6' 'CLM + HQ x4' 'reference (2000, web-keeping)' 'SLM 0.6 (2000, web-keeping)' " + " ".join(
        f"'{a} ({n})' '{a} ({n}, web-keeping)'" for n in NS for a in ("reference", "SLM 0.6")) + " " + " ".join(
        f"'CLM + HQ x4 ({n})'" for n in NS))
PLOT["when3"] = ("", f"--out_dir {WN}1000-webref4")  # issue 31: the 1,000 cell with the web-keeping ref, 3 x 3
CANNOT = {name: why for why, names in [  # printouts that the committed logs cannot rebuild, and why
    ("its runs' logs are not committed (out/seeds, out/example, out/screens, the regime map, demos in fresh folders)",
     "compare example screens regimes demo-cheapref demo-tuned demo-fresh-reproducing-machine"),
    ("its runs' logs were lost with a machine", "headline-harm-nocarry"), ("timings: measured", "speed demo-times"),
    (f"{H} part-way: its arms' noise-floor runs came after (commit 7a0cff7's logs rebuild it)", "headline-rerun"),
    ("needs checkpoints (as every explain-*)", "categories-headline tokens")] for name in names.split()}

if __name__ == "__main__":
    write, names, bad = "--write" in sys.argv, [a for a in sys.argv[1:] if a != "--write"], 0
    files = os.listdir(RESULTS)
    md = {f[:-3] for f in files if f.endswith(".md")}  # and figures of no printout (tokens.png)
    for name in names or sorted(md | {f[:-4] for f in files if f[-4:] == ".png" and not {f[:-4], f[:-11]} & md}):
        if name not in PLOT:
            print(f"{name}: cannot rebuild: "
                  f"{CANNOT.get(name, 'needs checkpoints' if name[:8] == 'explain-' else 'no command known')}")
            continue
        figs = {f for f in (name + ".png", name + "-ratios.png") if f in files and f[:-4] not in md - {name}}
        with tempfile.TemporaryDirectory() as tmp:  # out/<x>: the logs' folders; data: their corpora's meta.json
            made, where = os.path.join(tmp, "out", "results"), os.path.join(RUNS, PLOT[name][0], "out")
            os.makedirs(made), os.symlink(os.path.join(RUNS, "data"), os.path.join(tmp, "data"))
            for entry in os.listdir(where):
                os.symlink(os.path.join(where, entry), os.path.join(tmp, "out", entry))
            full = " --full" * (name != "headline")
            subprocess.run(f"{sys.executable} {PLOT_PY} {PLOT[name][1]}{full} --png out/results/{name}.png",
                           shell=True, cwd=tmp, stdout=subprocess.DEVNULL, check=True)
            same = open(os.path.join(made, name + ".md")).read() == open(os.path.join(RESULTS, name + ".md")).read()
            have = figs & set(os.listdir(made))  # a committed figure not made, or made with other bytes:
            odd = sorted(figs - {f for f in have if filecmp.cmp(f"{made}/{f}", f"{RESULTS}/{f}", shallow=False)})
            for f in [name + ".md", *have] if write and (odd or not same) else ():  # no new figure
                shutil.copy(os.path.join(made, f), RESULTS)
        bad += not same or bool(odd)
        print(f"{name}: {'same' if same else 'written' if write else 'DIFFERS'}" + (f"; figures {', '.join(odd)}: "
              f"{'written' if write else 'not the same'}" if odd else ""))
    sys.exit(bool(bad))
