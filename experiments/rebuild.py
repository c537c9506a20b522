"""`python experiments/rebuild.py [name ...] [--write] [--ckpts DIR]`: each printout of out/results/ (or those named)
made again from the committed logs (experiments/runs/) and compared, figures byte for byte; exit 1 on a difference;
--write replaces. --ckpts DIR: also those that need checkpoints, from the runs of their plan made again in DIR (a
checkout where `python experiments/driver.py <plan>` ran)."""
import filecmp
import os
import shutil
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS, RESULTS = os.path.join(REPO, "experiments", "runs"), os.path.join(REPO, "out", "results")
H, D, WN = "out/headline/default", "out/demo/webref4", "out/when/subset"  # the logs' folders
W, M, E = "web-keeping ref", "80 epochs", "80-epoch ref"  # labels
WEB = "--arms CLM 'SLM 0.6' 'CLM + HQ x4' 'oracle (math tokens)'"
RATIOS = "--arms CLM 'SLM 0.4' 'SLM 0.5' 'SLM 0.6' 'SLM 0.7' 'SLM 0.8'"
K, NS = "web-keeping", (1000, 500, 250)  # issue 31's screen: every cell beside the 2,000 cell's CLM and oracle
WIDTHS = ((32, "half"), (16, "quarter"))  # issue 31: references of half and a quarter of the student's width
PLOT = {  # printout: plot.py's arguments but --png and --full
    "demo": "--out_dir out/demo-cpu", "headline-default": f"--out_dir {H}", "headline": f"--out_dir {H}",
    "demo-refs": f"--out_dir out/demo/cheap --merge {D}='{W}, 4 epochs' {D}-10ep='{W}, 10 epochs' "
                 f"{D}-40ep='{W}, 40 epochs'",
    "headline-beyond": f"--out_dir {H} {WEB} 'CLM + HQ x2' 'CLM + HQ x8' 'random 0.6' 'ref-loss 0.6' "
                       "'reference, longer'",
    "headline-cheapref": f"--out_dir {H}-cheapref", "headline-refedge": f"--out_dir {H}-refedge0",
    "headline-refs3": f"--out_dir {H}-refs3", "headline-webref-ratios": f"--out_dir {H}-webref4 {RATIOS}",
    "headline-ratios": f"--out_dir {H} {RATIOS} 'SLM 0.6 (soft 0.1)' 'SLM 0.6 (soft 0.5)'",
    "headline-refedge-tuned": f"--out_dir {H} --merge {H}-refedge-tuned='{E}' {WEB} 'ref-loss 0.6' reference "
                              f"'SLM 0.6 ({E})' 'ref-loss 0.6 ({E})' 'reference ({E})'",
    "headline-webref": f"--out_dir {H} --merge {H}-webref4='{W}' {WEB} 'random 0.6' 'reference, longer' "
                       f"'SLM 0.6 ({W})' 'reference ({W})' 'ref-loss 0.6 ({W})'",
    "headline-webref-tuned": f"--out_dir {H} --merge {H}-webref4='{W}' {H}-webref4-tuned='{W}, {M}' {WEB} "
                             f"'SLM 0.6 ({W})' 'reference ({W})' 'SLM 0.6 ({W}, {M})' 'reference ({W}, {M})'",
    "headline-webref-grid": f"--out_dir {H} --merge " + " ".join(
        f"{H}-webref4-{e}ep{lr}='{W}, {e} ep {lr}'" for lr in ("1.2e-2", "2.4e-2") for e in (40, 80)),
    "when": f"--out_dir {WN}2000 --merge {WN}2000-webref4='2000, {K}' " + " ".join(
        f"{WN}{n}='{n}' {WN}{n}-webref4{'/seed0' * (n == 1000)}='{n}, {K}'" for n in NS) + " --arms CLM 'oracle (math "
    f"tokens)' reference 'SLM 0.6' 'CLM + HQ x4' 'reference (2000, {K})' 'SLM 0.6 (2000, {K})' " + " ".join(
        f"'{a} ({n})' '{a} ({n}, {K})'" for n in NS for a in ("reference", "SLM 0.6")) + " " + " ".join(
        f"'CLM + HQ x4 ({n})'" for n in NS),
    "when-width": f"--out_dir {WN}2000 --merge {WN}2000-webref4='{K}' " + " ".join(  # issue 31: small references
        f"{WN}2000-ref{w}='{x}-width ref' {WN}2000-ref{w}-webref4='{x}-width ref, {K}'" for w, x in WIDTHS) +
    f" --arms CLM 'oracle (math tokens)' 'CLM + HQ x4' reference 'SLM 0.6' 'reference ({K})' 'SLM 0.6 ({K})' " +
    " ".join(f"'{a} ({x}-width ref{k})'" for _, x in WIDTHS for k in ("", f", {K}") for a in ("reference", "SLM 0.6")),
    "when-width3": f"--out_dir {WN}2000-ref32-webref4 --merge {WN}2000-webref4='student-width ref'",  # 3 pipelines
    "when-budget": "--out_dir out/when/budget10m-webref4",  # issue 31: a 10M-token student, seed 0
    "when3": f"--out_dir {WN}1000-webref4"}  # issue 31: the 1,000 cell with the web-keeping ref, 3 x 3
CKPTS = {  # printout: (the plan that makes its runs, plot.py's arguments run in DIR, the file they write or stdout)
    **{f"explain-{n}": (p, f"--explain out/{r}", f"out/{r}/explain.md") for n, p, r in [
        ("headline", "headline-default", "headline/default/seed0/slm0.6-lr0.006"),
        ("webref", "webref-default", "headline/default-webref4/seed0/slm0.6-lr0.006"),
        ("webref-refloss", "webref-default", "headline/default-webref4/seed0/refloss0.6-lr0.003"),
        ("refedge", "refedge-default", "headline/default-refedge0/seed0/slm0.6-lr0.006"),
        ("when1000", "when", "when/subset1000-webref4/seed0/slm0.6-lr0.003"),
        ("width", "width", "when/subset2000-ref32-webref4/seed0/slm0.6-lr0.003")]},
    "tokens": ("when", "--tokens out/when/subset1000-webref4/seed0/slm0.6-lr0.003",
               "out/when/subset1000-webref4/seed0/slm0.6-lr0.003/tokens.png"),
    "categories-headline": ("categories-default", "--categories out/headline/default/seed0/clm-ckpts-lr0.006", "")}
ELSEWHERE = {"headline-webref-grid": "epyc"}  # another machine's logs, in experiments/runs/<it>/
CANNOT = {name: why for why, names in [  # printouts that the committed logs cannot rebuild, and why
    ("timings: measured by the command it names", "speed demo-times")] for name in names.split()}

if __name__ == "__main__":
    ckpts = sys.argv[sys.argv.index("--ckpts") + 1] if "--ckpts" in sys.argv else None
    write, names = "--write" in sys.argv, [a for a in sys.argv[1:] if a not in ("--write", "--ckpts", ckpts)]
    files = os.listdir(RESULTS)
    md = {f[:-3] for f in files if f.endswith(".md")}  # and figures of no printout (tokens.png)
    bad = 0
    for name in names or sorted(md | {f[:-4] for f in files if f.endswith(".png") and not {f[:-4], f[:-11]} & md}):
        if name in CKPTS and ckpts:  # made in DIR from the checkpoints, compared with the committed file
            plan, flags, wrote = CKPTS[name]
            out = subprocess.run(f"{sys.executable} {REPO}/plot.py {flags}", shell=True, cwd=ckpts, text=True,
                                 stdout=subprocess.PIPE, check=True).stdout
            ext, made = os.path.splitext(wrote)[1] or ".md", os.path.join(ckpts, wrote)
            same = filecmp.cmp(made, f"{RESULTS}/{name}{ext}", shallow=False) if wrote else \
                out.rsplit("\n\nwrote ", 1)[0] + "\n" == open(f"{RESULTS}/{name}.md").read()
            bad += not same
            print(f"{name}: {'same' if same else 'DIFFERS'} (from the checkpoints of plan {plan} in {ckpts})")
            continue
        if name not in PLOT:
            why = f"needs the checkpoints of plan {CKPTS[name][0]}: --ckpts DIR" if name in CKPTS else \
                CANNOT.get(name, "no command known")
            print(f"{name}: cannot rebuild: {why}")
            continue
        figs = [f for f in (name + ".png", name + "-ratios.png") if f in files and f[:-4] not in md - {name}]
        with tempfile.TemporaryDirectory() as tmp:  # out/<x>: the logs' folders; data: their corpora's meta.json
            made, logs = os.path.join(tmp, "out", "results"), os.path.join(RUNS, ELSEWHERE.get(name, ""), "out")
            os.makedirs(made)
            os.symlink(os.path.join(RUNS, "data"), os.path.join(tmp, "data"))
            for entry in os.listdir(logs):
                os.symlink(os.path.join(logs, entry), os.path.join(tmp, "out", entry))
            full = " --full" if name != "headline" else ""  # the README's figure: the lesson's two panels
            subprocess.run(f"{sys.executable} {REPO}/plot.py {PLOT[name]}{full} --png out/results/{name}.png",
                           shell=True, cwd=tmp, stdout=subprocess.DEVNULL, check=True)
            odd = [f for f in [name + ".md", *figs] if not os.path.exists(f"{made}/{f}")  # a committed file only
                   or not filecmp.cmp(f"{made}/{f}", f"{RESULTS}/{f}", shallow=False)]
            for f in [f for f in odd if write and os.path.exists(f"{made}/{f}")]:
                shutil.copy(f"{made}/{f}", RESULTS)
        bad += bool(odd)
        print(f"{name}: same" if not odd else f"{name}: {'written' if write else 'DIFFERS'}: {', '.join(odd)}")
    sys.exit(bool(bad))
