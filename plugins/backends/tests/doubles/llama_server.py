#!/usr/bin/env python3
"""Test double of llama.cpp's `llama-server`, replaying the recordings in ../fixtures/llama-server.

What is RECORDED (served byte for byte, headers included, from the .http files):
  GET /health, GET /v1/models (and /models), GET /props and GET /slots (as recorded unless --ctx or
  --slots change them); POST /tokenize of the recorded text (with pieces) and of the text + " Paris"
  (ids); POST /v1/completions of the recorded prompt with 8 tokens, with `logprobs: 5`, with
  `stream: true`; the recorded `echo: true, logprobs: 1, max_tokens: 1` request on prompt + " Paris"
  (echo silently ignored: one generated token's log-probability only); the shapes of the recorded
  POST /completion replies (`n_probs`, `n_predict: 0`, `id_slot`, `cache_prompt: false`), the 400
  `exceed_context_size_error` of a prompt longer than a slot's context and the 500 `Context size has
  been exceeded.` of prompts that together overflow a shared KV pool. The recorded prompt's top 20
  are served for it however it is sent.

What it IMITATES of the recorded server's behaviour (observed on the build of the fixtures README):
  - slots: `id_slot` pins a request to a slot (it waits while the slot is busy), else the idle slot
    whose cache covers more than 10 % of the prompt best, else the least recently used; `cache_prompt`
    reuses the longest common prefix of the slot's cache (`timings.cache_n`), a fully cached prompt
    still evaluates its last token, `cache_prompt: false` evaluates everything; the slot then holds
    the prompt (not the sampled token);
  - the RAM prompt cache (`--cache-ram`, on by default as in llama-server; 0 turns it off): when less
    than half of what the chosen slot holds is kept, its cache is saved and the saved prompt that
    keeps more (at least a quarter of itself) is restored into the slot, as llama-server's
    get_available_slot / server_prompt_cache::load do;
  - batch numerics: the prompt is evaluated in ubatches of --ubatch tokens; a distribution whose last
    position, or any reused cached position, was computed in a ubatch of fewer than --min-batch
    tokens (ggml's CPU flash-attention tile, 64) is PERTURBED by up to 0.35 nats (deterministic), as
    llama.cpp's small-batch kernels are (measured: 0.35 and 0.53 nats on a 711-token prompt);
  - the KV pool: --ctx tokens per slot, shared by all slots with --unified; requests in flight whose
    prompts together exceed a shared pool get the recorded HTTP 500;
  - KV cells (--unified, more than one slot): one buffer of --ctx cells shared by the slots, as
    llama.cpp's llama_kv_cache places them: each ubatch takes the free cells found from `head`
    (from cell 0 when head > used + 2 * n_tokens), head then follows the last cell placed, and
    removing a slot's cells moves head back to the first freed cell when lower (find_slot,
    apply_ubatch, seq_rm); a ubatch with no room makes the server purge idle slots one by one, in
    slot order, and retry (try_clear_idle_slots), else the request fails;
  - shared-KV numerics: a distribution whose sequence does not lie in cells 0, 1, 2, ... of a
    unified buffer is PERTURBED by up to 0.4 nats, depending on where it lies (ggml's CPU flash
    attention takes the cells in 64-cell tiles; measured on the real llama-server, -c 4096, 4
    slots: up to 0.71 nats on a continuation, and the reference's numbers at offset 0; with -np 1
    or --no-kv-unified every slot gave the same numbers bit for bit);
  - SIGTERM: requests being answered finish, then the listening socket closes (new connections are
    refused), the process stays alive and open connections get no reply, ever (recorded: the queued
    requests of a real llama-server after SIGTERM);
  - --delay-ms: each evaluated prompt token takes this long (to make requests overlap).

What is SYNTHESISED (same headers, same JSON shapes and key order as the recordings; values made up
but deterministic):
  - a tokenizer: GPT-2-style pre-tokenisation; pieces seen in the recordings keep their recorded ids
    (it reproduces tokenize.http exactly), other pieces get ids from a hash;
  - a "model": for a token prefix, log-probabilities over the 49152-token vocabulary are a log-softmax
    of hashed logits plus a bonus for tokens in the prompt and a larger one for tokens that followed
    the last token earlier in the prompt (so few-shot answer letters rank high). For the two prefixes
    the recordings show top log-probabilities for, those recorded values are pinned at the top and the
    rest of the mass is spread evenly;
  - greedy generation from that model for any other prompt, `n_probs` top-N lists, `logprobs.content`,
    streaming events, `usage`, `timings` (cache_n from a simulated per-slot prefix cache, like
    llama-server: a fully cached prompt still evaluates its last token);
  - a 400 `invalid_request_error` with `Connection: close` for a body that is not JSON (the message
    imitates the recorded nlohmann one with Python's position), 404 for other routes.

Options: --port (0 = any; the chosen port is printed as `listening on 127.0.0.1:PORT`), --log FILE
(one JSON line per request: method, path, raw header names and values, body), --echo ignore|reject
(`reject` imitates older builds: HTTP 400 "Only no echo is supported"), --add-bos (a model whose
tokenizer adds BOS with add_special), --flavour vllm (vLLM's documented interface instead: /version,
/tokenize with `prompt`/`add_special_tokens`, `echo` honoured with the legacy `tokens`/`token_logprobs`
shape, no /props or /completion; synthesised from vLLM's source, not recorded), --slots N (2),
--ctx N (2048, each slot's context), --unified, --ubatch N (512), --min-batch N (64), --delay-ms X,
--ignore-id-slot (a server that does not honour `id_slot`), --cache-ram N (8192; 0: no RAM cache),
--no-slots (GET /slots answers llama-server's 501 `not_supported_error`).
The log also gets {"event": "peak_pool", "tokens": N} lines: the most prompt tokens in flight.
"""

import argparse
import json
import math
import os
import re
import socket
import socketserver
import sys
import threading
import time

import numpy as np

from kv_slots import ContextExceeded, HttpError, Slots, fnv1a
import signal

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "fixtures", "llama-server")
V = 49152
EOS = 2
BOS = 1
RECORDED_TEXT = "Question: What is the capital of France?\nAnswer:"
MODEL = "SmolLM2-135M-Instruct.Q4_1.gguf"


def load_http(name):
    with open(os.path.join(FIXTURES, name), "rb") as f:
        raw = f.read()
    head, body = raw.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    headers = [tuple(l.split(b": ", 1)) if b": " in l else (l.rstrip(b":"), b"") for l in lines[1:]]
    return lines[0], headers, body


REC = {n[:-5]: load_http(n) for n in os.listdir(FIXTURES) if n.endswith(".http")}

# Pieces and ids seen in the recordings.
KNOWN = {"": EOS}
for t in json.loads(REC["tokenize"][2])["tokens"]:
    KNOWN[t["piece"]] = t["id"]
KNOWN[" Paris"] = 7042
_nprobs = json.loads(REC["completion_n_probs"][2])
for e in _nprobs["completion_probabilities"][0]["top_logprobs"]:
    KNOWN.setdefault(e["token"], e["id"])
_echo = json.loads(REC["v1_completions_echo"][2])
for e in _echo["choices"][0]["logprobs"]["content"]:
    KNOWN.setdefault(e["token"], e["id"])
ID2PIECE = {v: k for k, v in KNOWN.items()}
ID2PIECE[BOS] = "<|im_start|>"
RECORDED_IDS = [t["id"] for t in json.loads(REC["tokenize"][2])["tokens"]]
RECORDED_IDS_PARIS = json.loads(REC["tokenize_with_continuation"][2])["tokens"]
PINNED = {
    tuple(RECORDED_IDS): [(e["id"], e["logprob"]) for e in _nprobs["completion_probabilities"][0]["top_logprobs"]],
    tuple(RECORDED_IDS_PARIS): [
        (e["id"], e["logprob"]) for e in _echo["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
    ],
}
GEN_SETTINGS = _nprobs["generation_settings"]
PIECE_RE = re.compile(r"'(?:[sdmt]|ll|ve|re)| ?[^\W\d_]+| ?\d| ?[^\s\w]+| ?_+|\s+(?!\S)|\s+")
LOCK = threading.Lock()


def _recorded_completion(name):
    """(prompt ids, n_predict, n_probs, cache_n, id_slot) of a recorded /completion reply."""
    r = json.loads(REC[name][2])
    g = r["generation_settings"]
    return (tokenize(r["prompt"])[0], g["n_predict"], g["n_probs"], r["timings"]["cache_n"], r["id_slot"])


def piece_id(p):
    if p in KNOWN:
        return KNOWN[p]
    i = 100 + fnv1a(p.encode("utf-8"), 32) % (V - 100)
    with LOCK:
        ID2PIECE.setdefault(i, p)
    return i


def tokenize(text, add_bos=False):
    pieces = PIECE_RE.findall(text)
    if "".join(pieces) != text:  # never expected; keep the double total
        pieces = list(text)
    ids = [piece_id(p) for p in pieces]
    return ([BOS] if add_bos else []) + ids, pieces


def detokenize(ids):
    return "".join(ID2PIECE.get(i, "<t%d>" % i) for i in ids if i != BOS)


def logprobs_after(prefix):
    """Log-probabilities of every token after `prefix` (numpy array of V floats)."""
    pinned = PINNED.get(tuple(prefix))
    if pinned:
        mass = sum(math.exp(lp) for _, lp in pinned)
        arr = np.full(V, math.log((1.0 - mass) / (V - len(pinned))))
        for i, lp in pinned:
            arr[i] = lp
        return arr
    seed = fnv1a(b"".join(int(t).to_bytes(4, "little") for t in prefix[-16:]))
    with np.errstate(over="ignore"):
        x = np.arange(V, dtype=np.uint64) ^ np.uint64(seed)
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    logits = 4.0 * ((x >> np.uint64(11)).astype(np.float64) / float(1 << 53))
    if prefix:
        p = np.array(prefix, dtype=np.int64)
        logits[np.unique(p[p < V])] += 3.0
        last = prefix[-1]
        follow = [prefix[i + 1] for i in range(len(prefix) - 1) if prefix[i] == last and prefix[i + 1] < V]
        if follow:
            logits[np.unique(np.array(follow, dtype=np.int64))] += 5.0
    m = logits.max()
    return logits - (m + math.log(np.exp(logits - m).sum()))


def top(arr, n):
    n = max(0, min(n, V))
    idx = np.argpartition(-arr, n - 1)[:n] if n > 0 else np.array([], dtype=np.int64)
    idx = sorted(idx.tolist(), key=lambda i: (-arr[i], i))
    return [(i, float(arr[i])) for i in idx]


def tok_entry(i, lp):
    piece = ID2PIECE.get(i, "<t%d>" % i) if i != EOS else ""
    return {"id": i, "token": piece, "bytes": list(piece.encode("utf-8")), "logprob": lp}


def perturbed(arr, seed, nats):
    """`arr` moved by up to `nats` per token, deterministic in `seed`, renormalised."""
    with np.errstate(over="ignore"):
        x = (np.arange(V, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ np.uint64(seed)
        x = (x ^ (x >> np.uint64(29))) * np.uint64(0xBF58476D1CE4E5B9)
    out = arr + nats * ((x >> np.uint64(11)).astype(np.float64) / float(1 << 53) - 0.5) * 2.0
    m = out.max()
    return out - (m + math.log(np.exp(out - m).sum()))


def small_batch(arr, prefix):
    """The distribution as llama.cpp's small-batch kernels give it: up to 0.35 nats off, per token,
    deterministic in the prefix."""
    seed = fnv1a(b"small" + b"".join(int(t).to_bytes(4, "little") for t in prefix[-16:]))
    return perturbed(arr, seed, 0.35)


def shared_kv(arr, layout):
    """The distribution as a slot other than 0 of a unified KV buffer gives it (`layout`: see
    `Slots.evaluate`)."""
    return perturbed(arr, fnv1a(b"shared-kv" + int(layout).to_bytes(8, "little")), 0.4)


RECORDED_COMPLETIONS = {
    n: _recorded_completion(n)
    for n in ("completion_n_probs", "completion_n_probs_slot", "completion_n_probs_whole", "completion_n_predict_0")
}


def generate(prompt_ids, n_predict, n_probs, stop, small=False, others=0):
    """Greedy generation: [(id, logprob, top list)], text, stop_type. `small`: the prompt's last
    position was computed in a small batch (the first distribution is perturbed; later generated
    tokens are not: only the distribution after the prompt is compared with single-pass values)."""
    toks, text, out = list(prompt_ids), "", []
    stop_type = "limit"
    for step in range(max(n_predict, 0)):
        arr = logprobs_after(toks)
        if small and step == 0 and tuple(toks) not in PINNED:
            arr = small_batch(arr, toks)
        if others and step == 0 and tuple(toks) not in PINNED:
            arr = shared_kv(arr, others)
        best = top(arr, max(n_probs, 1))
        i, lp = best[0]
        out.append((i, lp, best[:n_probs] if n_probs > 0 else []))
        toks.append(i)
        if i == EOS:
            stop_type = "eos"
            break
        text += ID2PIECE.get(i, "<t%d>" % i)
        hit = [text.find(s) for s in stop if s and s in text]
        if hit:
            text = text[: min(hit)]
            stop_type = "word"
            break
    return out, text, stop_type


def timings(cache_n, prompt_n, predicted_n):
    pms, gms = 18.5 * max(prompt_n, 1), 30.0 * predicted_n
    return {
        "cache_n": cache_n,
        "prompt_n": prompt_n,
        "prompt_ms": pms,
        "prompt_per_token_ms": pms / max(prompt_n, 1),
        "prompt_per_second": 1000.0 * max(prompt_n, 1) / pms,
        "predicted_n": predicted_n,
        "predicted_ms": gms if predicted_n else 0.001,
        "predicted_per_token_ms": (gms / predicted_n) if predicted_n else 0.0,
        "predicted_per_second": (1000.0 * predicted_n / gms) if predicted_n else 0.0,
    }


def ident(prefix, seed_text):
    h = fnv1a(seed_text.encode("utf-8"))
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    out = ""
    for _ in range(32):
        out += alphabet[h % len(alphabet)]
        h = (h * 6364136223846793005 + 1442695040888963407) & ((1 << 64) - 1)
    return prefix + out


def dumps(v):
    return json.dumps(v, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class Handler(socketserver.BaseRequestHandler):
    def setup(self):
        self.buf = b""

    def read_request(self):
        while b"\r\n\r\n" not in self.buf:
            chunk = self.request.recv(65536)
            if not chunk:
                return None
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = (lines[0].split(" ") + ["", ""])[:3]
        headers = []
        for l in lines[1:]:
            if ":" in l:
                k, v = l.split(":", 1)
                headers.append((k, v.strip()))
        # llama-server (cpp-httplib) reads the length case-insensitively (recorded).
        length = 0
        for k, v in headers:
            if k.lower() == "content-length":
                length = int(v)
        while len(self.buf) < length:
            chunk = self.request.recv(65536)
            if not chunk:
                return None
            self.buf += chunk
        body, self.buf = self.buf[:length], self.buf[length:]
        return method, path.split("?")[0], headers, body

    def handle(self):
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            try:
                req = self.read_request()
            except (ConnectionError, OSError):
                return
            if req is None:
                return
            method, path, headers, body = req
            self.server.log(method, path, headers, body)
            if self.server.terminating.is_set():
                # After SIGTERM: never answered (the connection stays open).
                while True:
                    time.sleep(3600)
            try:
                keep = self.route(method, path, body)
            except HttpError as e:
                self.send_json(
                    {"error": dict({"code": e.code, "message": e.message, "type": e.typ}, **e.extra)}, e.code,
                    close=True,
                )
                return
            except (BrokenPipeError, ConnectionError):
                return
            closing = any(k.lower() == "connection" and v.lower() == "close" for k, v in headers)
            if not keep or closing:
                return

    # ---- output -------------------------------------------------------------------------------
    def send_raw(self, name):
        status, hdrs, body = REC[name]
        out = status + b"\r\n"
        chunked = any(k.lower() == b"transfer-encoding" for k, _ in hdrs)
        for k, v in hdrs:
            out += k + b": " + v + b"\r\n"
        out += b"\r\n"
        if chunked:
            for ev in body.split(b"\n\n"):
                if ev.strip():
                    piece = ev + b"\n\n"
                    out += b"%x\r\n" % len(piece) + piece + b"\r\n"
            out += b"0\r\n\r\n"
        else:
            out += body
        self.request.sendall(out)
        return not any(k == b"Connection" and v == b"close" for k, v in hdrs)

    def send_json(self, obj, code=200, close=False):
        body = dumps(obj)
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 500: "Internal Server Error"}[code]
        out = "HTTP/1.1 %d %s\r\nServer: llama.cpp\r\nAccess-Control-Allow-Origin: \r\n" % (code, reason)
        out += "Content-Type: application/json; charset=utf-8\r\nContent-Length: %d\r\n" % len(body)
        out += "Connection: close\r\n" if close else "Keep-Alive: timeout=5, max=100\r\n"
        self.request.sendall(out.encode("latin-1") + b"\r\n" + body)
        return not close

    def send_stream(self, events):
        out = (
            b"HTTP/1.1 200 OK\r\nServer: llama.cpp\r\nAccess-Control-Allow-Origin: \r\nX-Accel-Buffering: no\r\n"
            b"Content-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\nKeep-Alive: timeout=5, max=100\r\n\r\n"
        )
        self.request.sendall(out)
        for ev in events:
            piece = b"data: " + (ev if isinstance(ev, bytes) else dumps(ev)) + b"\n\n"
            self.request.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
        self.request.sendall(b"0\r\n\r\n")
        return True

    # ---- routes -------------------------------------------------------------------------------
    def parse(self, body):
        try:
            return json.loads(body.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            line, col = getattr(e, "lineno", 1), getattr(e, "colno", 1)
            raise HttpError(
                400,
                "[json.exception.parse_error.101] parse error at line %d, column %d: syntax error while parsing "
                "value - %s" % (line, col, getattr(e, "msg", str(e))),
                "invalid_request_error",
            )

    def route(self, method, path, body):
        vllm = self.server.flavour == "vllm"
        if method == "GET":
            if path == "/health":
                return self.send_raw("health")
            if path in ("/v1/models", "/models"):
                return self.send_raw("models")
            if path == "/props" and not vllm:
                return self.props()
            if path == "/slots" and not vllm:
                return self.slots_list()
            if path == "/version" and vllm:
                return self.send_json({"version": "0.0.0-double"})
            raise HttpError(404, "File Not Found", "not_found_error")
        if method != "POST":
            raise HttpError(404, "File Not Found", "not_found_error")
        if path == "/tokenize":
            return self.tokenize(self.parse(body))
        if path == "/detokenize":
            req = self.parse(body)
            return self.send_json({"content": detokenize(req.get("tokens", []))})
        if path in ("/v1/completions", "/completions"):
            return self.completions(self.parse(body))
        if path in ("/v1/chat/completions", "/chat/completions"):
            return self.chat(self.parse(body))
        if path == "/completion" and not vllm:
            return self.native_completion(self.parse(body))
        raise HttpError(404, "File Not Found", "not_found_error")

    def props(self):
        if self.server.recorded_layout:
            return self.send_raw("props")
        v = json.loads(REC["props"][2])
        v["total_slots"] = len(self.server.slots.slots)
        v["default_generation_settings"]["n_ctx"] = self.server.slots.n_ctx
        return self.send_json(v)

    def slots_list(self):
        if self.server.no_slots:
            raise HttpError(501, "This server does not support slots endpoint. Start it with `--slots`",
                            "not_supported_error")
        if self.server.recorded_layout and not any(sl.busy or sl.tokens for sl in self.server.slots.slots):
            return self.send_raw("slots")
        sl = self.server.slots
        # llama-server adds the task's fields (n_prompt_tokens: what the slot holds) once a slot has
        # served one (`t_last`).
        return self.send_json([dict({"id": x.id, "n_ctx": sl.n_ctx, "speculative": False, "is_processing": x.busy},
                                    **({"n_prompt_tokens": len(x.tokens)} if x.t_last else {}))
                               for x in sl.slots])

    def prompt_ids(self, prompt):
        if isinstance(prompt, str):
            return tokenize(prompt, self.server.add_bos)[0], prompt
        if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
            return list(prompt), detokenize(prompt)
        raise HttpError(400, '"prompt" must be a string or a list of tokens', "invalid_request_error")

    def tokenize(self, req):
        if self.server.flavour == "vllm":
            text = req.get("prompt")
            if not isinstance(text, str):
                raise HttpError(400, "prompt: field required", "BadRequestError")
            ids, _ = tokenize(text, self.server.add_bos and req.get("add_special_tokens", True))
            return self.send_json({"count": len(ids), "max_model_len": 2048, "tokens": ids})
        text = req.get("content", "")
        add_special = bool(req.get("add_special", False))
        with_pieces = bool(req.get("with_pieces", False))
        if text == RECORDED_TEXT and with_pieces and not add_special:
            return self.send_raw("tokenize")
        if text == RECORDED_TEXT + " Paris" and not with_pieces and not add_special:
            return self.send_raw("tokenize_with_continuation")
        ids, pieces = tokenize(text, self.server.add_bos and add_special)
        if with_pieces:
            plist = (["<|im_start|>"] if len(ids) > len(pieces) else []) + pieces
            return self.send_json({"tokens": [{"id": i, "piece": p} for i, p in zip(ids, plist)]})
        return self.send_json({"tokens": ids})

    def completions(self, req):
        vllm = self.server.flavour == "vllm"
        echo = bool(req.get("echo", False))
        if echo and not vllm and self.server.echo == "reject":
            raise HttpError(400, "Only no echo is supported", "invalid_request_error")
        prompt = req.get("prompt")
        if prompt is None:
            raise HttpError(400, '"prompt" must be provided', "invalid_request_error")
        max_tokens = int(req.get("max_tokens", 16))
        n_lp = req.get("logprobs")
        n_lp = int(n_lp) if isinstance(n_lp, int) and not isinstance(n_lp, bool) else (1 if n_lp else 0)
        stream = bool(req.get("stream", False))
        stop = req.get("stop") or []
        stop = [stop] if isinstance(stop, str) else stop
        if vllm:
            return self.vllm_completions(req, prompt, max_tokens, n_lp, echo, stop)
        ids, text = self.prompt_ids(prompt)
        # Recorded exchanges (echo is ignored by this build: the echo request is answered as if
        # it had not asked for it).
        if ids == RECORDED_IDS and max_tokens == 8 and not echo:
            if stream and not n_lp:
                return self.send_raw("v1_completions_stream")
            if not stream and n_lp == 5:
                return self.send_raw("v1_completions_logprobs")
            if not stream and not n_lp:
                return self.send_raw("v1_completions")
        if ids == RECORDED_IDS_PARIS and max_tokens == 1 and n_lp == 1 and not stream:
            return self.send_raw("v1_completions_echo")
        slot, cache_n, _, _ = self.run_on_slot(ids)
        out, gen_text, stop_type = generate(ids, max_tokens, n_lp, stop)
        finish = "length" if stop_type == "limit" else "stop"
        logprobs = None
        if n_lp:
            logprobs = {
                "content": [
                    dict(tok_entry(i, lp), top_logprobs=[tok_entry(j, l) for j, l in tl]) for i, lp, tl in out
                ]
            }
        usage = {
            "completion_tokens": len(out),
            "prompt_tokens": len(ids),
            "total_tokens": len(ids) + len(out),
            "prompt_tokens_details": {"cached_tokens": cache_n},
        }
        cid = ident("chatcmpl-", text + str(max_tokens))
        created = int(time.time())
        tm = timings(cache_n, len(ids) - cache_n, len(out))
        if stream:
            events = []
            for k, (i, lp, tl) in enumerate(out):
                piece = "" if i == EOS else ID2PIECE.get(i, "<t%d>" % i)
                events.append(
                    {
                        "choices": [{"text": piece, "index": 0, "logprobs": None, "finish_reason": None}],
                        "created": created,
                        "model": MODEL,
                        "system_fingerprint": "b0-unknown",
                        "object": "text_completion",
                        "id": cid,
                    }
                )
            events.append(
                {
                    "choices": [{"text": "", "index": 0, "logprobs": None, "finish_reason": finish}],
                    "created": created,
                    "model": MODEL,
                    "system_fingerprint": "b0-unknown",
                    "object": "text_completion",
                    "usage": usage,
                    "id": cid,
                    "timings": tm,
                }
            )
            events.append(b"[DONE]")
            return self.send_stream(events)
        return self.send_json(
            {
                "choices": [{"text": gen_text, "index": 0, "logprobs": logprobs, "finish_reason": finish}],
                "created": created,
                "model": MODEL,
                "system_fingerprint": "b0-unknown",
                "object": "text_completion",
                "usage": usage,
                "id": cid,
                "timings": tm,
            }
        )

    def vllm_completions(self, req, prompt, max_tokens, n_lp, echo, stop):
        if isinstance(prompt, list) and prompt and all(isinstance(p, list) for p in prompt):
            prompts = prompt
        else:
            prompts = [prompt]
        choices, pt, ct = [], 0, 0
        for idx, p in enumerate(prompts):
            ids, text = self.prompt_ids(p)
            out, gen_text, stop_type = generate(ids, max_tokens, n_lp, stop)
            pt, ct = pt + len(ids), ct + len(out)
            toks, lps, tops = [], [], []
            if echo:
                for k, t in enumerate(ids):
                    toks.append(ID2PIECE.get(t, "<t%d>" % t))
                    if k == 0:
                        lps.append(None)
                        tops.append(None)
                    else:
                        arr = logprobs_after(ids[:k])
                        lp = max(float(arr[t]), -9999.0)
                        lps.append(lp)
                        d = {ID2PIECE.get(t, "<t%d>" % t): lp}
                        for j, l in top(arr, n_lp):
                            d.setdefault(ID2PIECE.get(j, "<t%d>" % j), l)
                        tops.append(d)
            for i, lp, tl in out:
                toks.append("" if i == EOS else ID2PIECE.get(i, "<t%d>" % i))
                lps.append(lp)
                d = {toks[-1]: lp}
                for j, l in tl:
                    d.setdefault(ID2PIECE.get(j, "<t%d>" % j), l)
                tops.append(d)
            offsets, pos = [], 0
            for t in toks:
                offsets.append(pos)
                pos += len(t)
            logprobs = None
            if n_lp:
                logprobs = {"text_offset": offsets, "token_logprobs": lps, "tokens": toks, "top_logprobs": tops}
            choices.append(
                {
                    "index": idx,
                    "text": (text if echo else "") + gen_text,
                    "logprobs": logprobs,
                    "finish_reason": "length" if stop_type == "limit" else "stop",
                    "stop_reason": None,
                    "prompt_logprobs": None,
                }
            )
        return self.send_json(
            {
                "id": "cmpl-" + ident("", json.dumps(prompts))[:32],
                "object": "text_completion",
                "created": int(time.time()),
                "model": MODEL,
                "choices": choices,
                "usage": {"prompt_tokens": pt, "total_tokens": pt + ct, "completion_tokens": ct},
            }
        )

    def chat(self, req):
        msgs = req.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise HttpError(400, "'messages' is required", "invalid_request_error")
        text = ""
        if msgs[0].get("role") != "system":
            text += "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        for m in msgs:
            c = m.get("content")
            if isinstance(c, list):  # accepted by llama-server (recorded)
                c = "".join(p.get("text", "") for p in c if isinstance(p, dict))
            text += "<|im_start|>" + str(m.get("role")) + "\n" + str(c) + "<|im_end|>\n"
        text += "<|im_start|>assistant\n"
        ids = tokenize(text)[0]
        max_tokens = int(req.get("max_tokens", 16))
        stop = req.get("stop") or []
        stop = [stop] if isinstance(stop, str) else stop
        slot, cache_n, _, _ = self.run_on_slot(ids)
        out, gen_text, stop_type = generate(ids, max_tokens, 0, stop)
        finish = "length" if stop_type == "limit" else "stop"
        usage = {
            "completion_tokens": len(out),
            "prompt_tokens": len(ids),
            "total_tokens": len(ids) + len(out),
            "prompt_tokens_details": {"cached_tokens": cache_n},
        }
        cid = ident("chatcmpl-", text + str(max_tokens))
        created = int(time.time())
        tm = timings(cache_n, len(ids) - cache_n, len(out))
        if req.get("stream"):
            head = {"created": created, "id": cid, "model": MODEL, "system_fingerprint": "b0-unknown",
                    "object": "chat.completion.chunk"}
            events = [dict({"choices": [{"finish_reason": None, "index": 0,
                                         "delta": {"role": "assistant", "content": None}}]}, **head)]
            for i, _, _ in out:
                if i == EOS:
                    continue
                events.append(dict({"choices": [{"finish_reason": None, "index": 0,
                                                 "delta": {"content": ID2PIECE.get(i, "<t%d>" % i)}}]}, **head))
            events.append(dict({"choices": [{"finish_reason": finish, "index": 0, "delta": {}}]}, **head))
            if (req.get("stream_options") or {}).get("include_usage"):
                events.append(dict({"choices": []}, **head, usage=usage, timings=tm))
            events.append(b"[DONE]")
            return self.send_stream(events)
        return self.send_json(
            {
                "choices": [{"finish_reason": finish, "index": 0,
                             "message": {"role": "assistant", "content": gen_text}}],
                "created": created,
                "model": MODEL,
                "system_fingerprint": "b0-unknown",
                "object": "chat.completion",
                "usage": usage,
                "id": cid,
                "timings": tm,
            }
        )

    def run_on_slot(self, ids, id_slot=None, cache_prompt=True):
        """Evaluates a prompt on a slot as llama-server does: (slot id, cache_n, small-batch numerics,
        the unified-KV layout key, 0 where it does not move the numbers)."""
        slots = self.server.slots
        if len(ids) >= slots.n_ctx:
            raise HttpError(
                400,
                "request (%d tokens) exceeds the available context size (%d tokens), try increasing it"
                % (len(ids), slots.n_ctx),
                "exceed_context_size_error",
                {"n_prompt_tokens": len(ids), "n_ctx": slots.n_ctx},
            )
        try:
            sl = slots.acquire(ids, id_slot)
        except ContextExceeded:
            raise HttpError(500, "Context size has been exceeded.", "server_error")
        try:
            try:
                cache_n, small, others = slots.evaluate(sl, ids, cache_prompt)
            except ContextExceeded:
                raise HttpError(500, "Context size has been exceeded.", "server_error")
            if self.server.delay_ms:
                time.sleep(self.server.delay_ms * (len(ids) - cache_n) / 1000.0)
        finally:
            slots.release(sl, ids)
        self.server.note_peak()
        return sl.id, cache_n, small, others

    def native_completion(self, req):
        prompt = req.get("prompt")
        if prompt is None:
            raise HttpError(400, '"prompt" must be provided', "invalid_request_error")
        ids, text = self.prompt_ids(prompt)
        n_predict = int(req.get("n_predict", -1))
        n_probs = int(req.get("n_probs", 0))
        id_slot = req.get("id_slot")
        cache_prompt = bool(req.get("cache_prompt", True))
        slot, cache_n, small, others = self.run_on_slot(ids, id_slot if isinstance(id_slot, int) else None, cache_prompt)
        # The recorded replies, where the request and the slot's state are the recorded ones.
        for name, (r_ids, r_predict, r_probs, r_cache, r_slot) in RECORDED_COMPLETIONS.items():
            if (ids, n_predict, n_probs, cache_n, slot) == (r_ids, r_predict, r_probs, r_cache, r_slot):
                return self.send_raw(name)
        if n_predict == 0:
            # Recorded: one token is sampled (it is the reply's content) but not kept in the cache.
            out, gen_text, stop_type = generate(ids, 1, 0, [])
            stop_type = "limit"
        else:
            out, gen_text, stop_type = generate(ids, n_predict if n_predict > 0 else 16, n_probs, [], small, others)
        settings = dict(GEN_SETTINGS)
        settings.update({"n_predict": n_predict, "max_tokens": n_predict, "n_probs": n_probs,
                         "temperature": float(req.get("temperature", 0.8))})
        resp = {
            "index": 0,
            "content": gen_text,
            "tokens": [],
            "id_slot": slot,
            "stop": True,
            "model": MODEL,
            "tokens_predicted": max(len(out), 1),
            "tokens_evaluated": len(ids),
            "generation_settings": settings,
            "prompt": text,
            "has_new_line": "\n" in gen_text,
            "truncated": False,
            "stop_type": stop_type,
            "stopping_word": "",
            "tokens_cached": len(ids) + (len(out) - 1 if n_predict != 0 else 0),
            "timings": timings(cache_n, len(ids) - cache_n, max(len(out), 1)),
        }
        if n_probs > 0 and n_predict != 0:
            resp["completion_probabilities"] = [
                dict(tok_entry(i, lp), top_logprobs=[tok_entry(j, l) for j, l in tl]) for i, lp, tl in out
            ]
        return self.send_json(resp)


class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def note_peak(self):
        if not self.log_path:
            return
        with LOCK:
            if self.slots.peak > self.logged_peak:
                self.logged_peak = self.slots.peak
                with open(self.log_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps({"event": "peak_pool", "tokens": self.slots.peak}) + "\n")

    def log(self, method, path, headers, body):
        if not self.log_path:
            return
        rec = {"method": method, "path": path, "headers": headers, "body": body.decode("utf-8", "replace")}
        with LOCK:
            with open(self.log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(rec) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--log")
    ap.add_argument("--echo", choices=["ignore", "reject"], default="ignore")
    ap.add_argument("--add-bos", action="store_true")
    ap.add_argument("--flavour", choices=["llama.cpp", "vllm"], default="llama.cpp")
    ap.add_argument("--slots", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--unified", action="store_true")
    ap.add_argument("--ubatch", type=int, default=512)
    ap.add_argument("--min-batch", type=int, default=64)
    ap.add_argument("--delay-ms", type=float, default=0.0)
    ap.add_argument("--ignore-id-slot", action="store_true")
    ap.add_argument("--cache-ram", type=int, default=8192)
    ap.add_argument("--no-slots", action="store_true")
    a = ap.parse_args()
    srv = Server(("127.0.0.1", a.port), Handler)
    srv.log_path, srv.echo, srv.add_bos, srv.flavour = a.log, a.echo, a.add_bos, a.flavour
    srv.slots = Slots(a.slots, a.ctx, a.unified, a.ubatch, a.min_batch, a.ignore_id_slot, a.cache_ram != 0)
    srv.recorded_layout = (a.slots, a.ctx, a.unified) == (2, 2048, False)
    srv.delay_ms, srv.logged_peak = a.delay_ms, 0
    srv.no_slots = a.no_slots
    srv.terminating = threading.Event()

    def on_term(signum, frame):
        # Like llama-server: stop accepting (the listening socket closes), keep the process and its
        # open connections, answer nothing more.
        srv.terminating.set()
        threading.Thread(target=srv.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)
    print("listening on 127.0.0.1:%d" % srv.server_address[1], flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    if srv.terminating.is_set():
        srv.server_close()  # new connections are refused from here on
        while True:
            time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
