"""Reference outputs for the synthetic HellaSwag files, computed with CPython.

HellaSwag's real data could not be obtained here, so the tests run on synthetic documents in its
real JSONL format. This script transcribes lm-evaluation-harness's HellaSwag code
(`lm_eval/tasks/hellaswag/utils.py`: preprocess, process_docs) and its few-shot assembly
(`ContextSampler`: Random(1234), draw k+1 and drop the evaluated document; prompt =
examples joined by "\n\n" + query) as lm-eval-tasks.md describes them, plus the Open LLM
Leaderboard v1 variant (Random(42) shuffle of the documents, then rnd.sample(train, k) per
document from the same generator). The Rust tests in src/hellaswag.rs assert these values.

    python3 lm_eval_reference.py   # prints the values the tests use
"""
import hashlib
import json
import random
import re
from pathlib import Path

HERE = Path(__file__).parent / "hellaswag"


def preprocess(text):
    text = text.strip()
    # NOTE: Brackets are artifacts of the WikiHow dataset portion of HellaSwag.
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def process_doc(doc):
    ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    return {
        "query": preprocess(doc["activity_label"] + ": " + ctx),
        "choices": [preprocess(ending) for ending in doc["endings"]],
        "gold": int(doc["label"]),
    }


def load(name):
    return [json.loads(line) for line in (HERE / name).read_text().splitlines() if line.strip()]


def context(shots, doc):
    return "".join(s["query"] + " " + s["choices"][s["gold"]] + "\n\n" for s in shots) + doc["query"]


def sha(s):
    return hashlib.sha256(s.encode("utf-8")).hexdigest()


train_raw, val_raw = load("hellaswag_train.jsonl"), load("hellaswag_val.jsonl")
train, val = [process_doc(d) for d in train_raw], [process_doc(d) for d in val_raw]
for i, d in enumerate(val):
    print(f"val[{i}] query={d['query']!r}")
    print(f"val[{i}] choices={d['choices']!r} gold={d['gold']}")

k = 10
rnd = random.Random(1234)
for i, doc in enumerate(val_raw):
    drawn = rnd.sample(range(len(train_raw)), k + 1)
    shots = [j for j in drawn if train_raw[j] != doc][:k]
    print(f"lm-eval doc {i}: shots={shots} sha256={sha(context([train[j] for j in shots], val[i]))}")

order = list(range(len(val)))
rnd = random.Random(42)
rnd.shuffle(order)
for i in order:
    shots = rnd.sample(range(len(train)), k)
    print(f"leaderboard-v1 doc {i}: shots={shots} sha256={sha(context([train[j] for j in shots], val[i]))}")
