#!/usr/bin/env python3
"""Compare `epi eval` log-likelihood records with an exact single-pass reference (a measuring tool,
not run by CI; see README.md here).

  compare_reference.py reference --server URL --ref-tool ./ref_loglik --model M.gguf \
      --records run/records.jsonl --out ref.json
      Tokenizes every (context, " " + choice) pair of the records through the server's /tokenize
      exactly as lm-eval's _encode_pair does (trailing white space of the context moves to the
      continuation; whole = tok(context + continuation); continuation = whole[len(tok(context)):],
      no BOS), runs ref_loglik (one forward pass per pair, logits at every position) and writes
      {"suite/doc_id": [logprob per choice]} with the reference acc and acc_norm.

  compare_reference.py compare --ref ref.json RUN_DIR [RUN_DIR ...]
      For each run: acc and acc_norm per suite, and the largest |logprob - reference| over the
      choices marked exact (and over all choices); prediction differences between runs.

Fails with a message naming the file and line on a record it cannot read.
"""
import argparse
import datetime
import json
import subprocess
import sys
import urllib.request


def rstrip_ws(s):
    # Python str.rstrip(): exactly what lm-eval uses
    t = s.rstrip()
    return t, s[len(t):]


def tokenize(server, text):
    body = json.dumps({"content": text, "add_special": False}).encode()
    req = urllib.request.Request(server.rstrip("/") + "/tokenize", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return [t if isinstance(t, int) else t["id"] for t in json.load(r)["tokens"]]


def read_records(path):
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            try:
                r = json.loads(line)
                out.append(r)
            except ValueError as e:
                sys.exit("%s:%d: not a JSON record: %s" % (path, n, e))
    return out


def preds(logprobs, choices):
    acc = max(range(len(logprobs)), key=lambda i: (logprobs[i], -i))
    norm = [lp / len(c) for lp, c in zip(logprobs, choices)]
    acc_norm = max(range(len(norm)), key=lambda i: (norm[i], -i))
    return acc, acc_norm


def reference(a):
    recs = read_records(a.records)
    lines, keys = [], []
    for r in recs:
        for i, choice in enumerate(r["choices"]):
            ctx, tail = rstrip_ws(r["context"])
            cont = tail + " " + choice
            c_ids = tokenize(a.server, ctx)
            whole = tokenize(a.server, ctx + cont)
            k_ids = whole[len(c_ids):]
            if not k_ids:
                sys.exit("%s: %s/%s choice %d adds no tokens" % (a.records, r["suite"], r["doc_id"], i))
            key = "%s/%s/%d" % (r["suite"], r["doc_id"], i)
            keys.append(key)
            lines.append("%s\t%s\t%s\n" % (key, ",".join(map(str, c_ids)), ",".join(map(str, k_ids))))
    p = subprocess.run([a.ref_tool, a.model, str(a.threads)], input="".join(lines), capture_output=True,
                       text=True, check=False)
    if p.returncode != 0:
        sys.exit("ref_loglik failed (%d): %s" % (p.returncode, p.stderr[-2000:]))
    vals = {}
    for line in p.stdout.splitlines():
        key, lp, greedy, per = line.split("\t")
        vals[key] = float(lp)
    out = {}
    for r in recs:
        lps = [vals["%s/%s/%d" % (r["suite"], r["doc_id"], i)] for i in range(len(r["choices"]))]
        acc, acc_norm = preds(lps, r["choices"])
        out["%s/%s" % (r["suite"], r["doc_id"])] = {
            "logprobs": lps, "gold": r["gold"], "acc": acc, "acc_norm": acc_norm}
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
    summary(out, "reference")


def summary(ref, label):
    by = {}
    for key, v in ref.items():
        s = key.split("/")[0]
        d = by.setdefault(s, [0, 0, 0])
        d[0] += 1
        d[1] += v["acc"] == v["gold"]
        d[2] += v["acc_norm"] == v["gold"]
    for s, (n, a, an) in sorted(by.items()):
        print("%s %s: n=%d acc=%.4f acc_norm=%.4f" % (label, s, n, a / n, an / n))


def compare(a):
    with open(a.ref) as f:
        ref = json.load(f)
    summary(ref, "reference")
    runs = []
    for d in a.runs:
        recs = read_records(d + "/records.jsonl")
        by, dmax_exact, dmax_all, n_exact, n_all = {}, 0.0, 0.0, 0, 0
        worst = None
        pred = {}
        for r in recs:
            key = "%s/%s" % (r["suite"], r["doc_id"])
            rv = ref.get(key)
            if rv is None or r.get("error"):
                print("%s: %s missing from the reference or failed: %s" % (d, key, r.get("error")))
                continue
            st = by.setdefault(r["suite"], [0, 0, 0])
            st[0] += 1
            st[1] += bool(r["correct"])
            st[2] += bool(r["correct_norm"])
            pred[key] = (r["prediction"], r["prediction_norm"], r["choice_logprobs"])
            for i, (lp, ex) in enumerate(zip(r["choice_logprobs"], r["choice_exact"])):
                diff = abs(lp - rv["logprobs"][i])
                n_all += 1
                dmax_all = max(dmax_all, diff)
                if ex:
                    n_exact += 1
                    if diff > dmax_exact:
                        dmax_exact, worst = diff, (key, i, lp, rv["logprobs"][i])
        try:
            with open(d + "/summary.json") as f:
                summ = json.load(f)
        except (OSError, ValueError):
            summ = {"suites": []}
        timing = {}
        for st in summ.get("suites", []):
            span = st.get("span_s") or [0, 0]
            timing[st["suite"]] = (span[1] - span[0], st.get("items") or 0, st.get("requests"), st.get("inexact_items"))
        for s, (n, acc, an) in sorted(by.items()):
            secs, items, reqs, inexact = timing.get(s, (float("nan"), 0, None, None))
            print("%s %s: n=%d acc=%.4f acc_norm=%.4f  %.1f s (%.2f s/item)  requests %s  inexact items %s" % (
                d, s, n, acc / n, an / n, secs, secs / items if items else float("nan"), reqs, inexact))
        details = summ.get("backend", {}).get("details", {})
        duration = summ.get("duration_seconds")
        if duration is None and summ.get("started_utc") and summ.get("ended_utc"):
            t = [datetime.datetime.fromisoformat(summ[k].replace("Z", "+00:00")) for k in ("started_utc", "ended_utc")]
            duration = (t[1] - t[0]).total_seconds()
        print("%s: top_n_mode=%s reproducible=%s max_concurrency=%s duration %.1f s" % (
            d, details.get("top_n_mode"), details.get("reproducible"), details.get("max_concurrency"),
            duration if duration is not None else float("nan")))
        print("%s: max |lp - ref| over %d exact choices = %.6f (%s); over all %d = %.6f" % (
            d, n_exact, dmax_exact, worst, n_all, dmax_all))
        runs.append((d, pred))
    for (d0, p0), (d1, p1) in zip(runs, runs[1:]):
        keys = sorted(set(p0) & set(p1))
        dp = sum(p0[k][0] != p1[k][0] for k in keys)
        dn = sum(p0[k][1] != p1[k][1] for k in keys)
        dl = max((abs(x - y) for k in keys for x, y in zip(p0[k][2], p1[k][2])), default=0.0)
        print("%s vs %s: %d/%d acc predictions differ, %d acc_norm; max |logprob diff| %.6f" % (
            d0, d1, dp, len(keys), dn, dl))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("reference")
    r.add_argument("--server", required=True)
    r.add_argument("--ref-tool", required=True)
    r.add_argument("--model", required=True)
    r.add_argument("--records", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--threads", type=int, default=2)
    c = sub.add_parser("compare")
    c.add_argument("--ref", required=True)
    c.add_argument("runs", nargs="+")
    a = ap.parse_args()
    reference(a) if a.cmd == "reference" else compare(a)


if __name__ == "__main__":
    main()
