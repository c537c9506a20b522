"""
time_eval.py -- what one evaluation costs, part by part (whole-text loss, the two answer losses, greedy decoding),
for a model and corpus given on the command line; used to measure evaluation on GSM8K-length text (cpu512).

  python experiments/time_eval.py --data_dir data/example --init out/example/base/ckpt.pt --eval_problems 100 \
      --val_problems 100 --eval_max_new 256 --batch_size 4
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import rho  # noqa: E402
from infra import cli  # noqa: E402


def main(cfg):
    tr = rho.Trainer(cfg, log=lambda *a: None)
    parts = {"whole-text loss": lambda: rho.eval_loss(tr.model, tr.val_blocks, tr.device),
             f"validation answer loss ({len(tr.val_problems)} problems)":
                 lambda: rho.eval_answer_loss(tr.model, tr.val_problems, tr.device),
             f"test answer loss ({len(tr.problems)} problems)":
                 lambda: rho.eval_answer_loss(tr.model, tr.problems, tr.device),
             f"greedy decoding ({len(tr.problems)} problems x {cfg.eval_max_new} tokens)":
                 lambda: rho.eval_accuracy(tr.model, tr.tok, tr.problems, tr.device, cfg.eval_max_new)}
    total = 0.0
    for name, f in parts.items():
        t0 = time.time()
        f()
        total += time.time() - t0
        print(f"  {name:55s} {time.time() - t0:6.1f} s")
    print(f"  {'one evaluation':55s} {total:6.1f} s")


if __name__ == "__main__":
    from dataclasses import fields, make_dataclass
    from infra import arg
    Flags = make_dataclass("Flags", [(f.name, f.type, arg(f.default, f.name)) for f in fields(rho.TrainConfig)])
    main(rho.TrainConfig(**vars(cli(Flags, __doc__.split("\n\n")[0].strip()))))
