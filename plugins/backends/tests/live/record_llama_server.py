#!/usr/bin/env python3
"""Records the exchanges in ../fixtures/llama-server from a live llama-server (a tool, not run by CI).

  record_llama_server.py --port P --out DIR [--only NAME,...]
      P: a server started as `llama-server -m SmolLM2-135M-Instruct.Q4_1.gguf -c 4096 -np 2 -t 2`.
  record_llama_server.py --port Q --out DIR --pool
      Q: a server with a small shared KV pool, `-c 512 -np 4 -kvu`: records the HTTP 500 `Context
      size has been exceeded` that concurrent prompts get when together they exceed the pool.

Each file is the raw reply as `curl -i` prints it (status line, headers, blank line, body), a
streamed body with its chunk framing removed. Every path to the model file is
shortened to the file name and Content-Length adjusted. Requests go over raw sockets, so header
names and odd bodies are sent exactly as written here. Exits non-zero naming the exchange that
failed.
"""
import argparse
import json
import os
import re
import socket
import sys
import threading

TEXT = "Question: What is the capital of France?\nAnswer:"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def exchange(port, raw, timeout=600):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(raw)
    buf = b""
    while True:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            break
        if not chunk:
            break
        buf += chunk
        if complete(buf):
            break
    s.close()
    return buf


def complete(buf):
    if b"\r\n\r\n" not in buf:
        return False
    head, body = buf.split(b"\r\n\r\n", 1)
    m = re.search(rb"\r\nContent-Length: (\d+)", head, re.I)
    if m:
        return len(body) >= int(m.group(1))
    if re.search(rb"\r\nTransfer-Encoding: chunked", head, re.I):
        return body.endswith(b"0\r\n\r\n")
    return False


def dechunk(body):
    out, rest = b"", body
    while rest:
        size_line, rest = rest.split(b"\r\n", 1)
        n = int(size_line, 16)
        if n == 0:
            break
        out, rest = out + rest[:n], rest[n + 2:]
    return out


def tidy(raw):
    head, body = raw.split(b"\r\n\r\n", 1)
    if re.search(rb"\r\nTransfer-Encoding: chunked", head, re.I):
        body = dechunk(body)
    new = re.sub(rb'"[^"]*/' + re.escape(MODEL_FILE.encode()) + rb'"', b'"' + MODEL_FILE.encode() + b'"', body)
    if new != body:
        body = new
        head = re.sub(rb"(\r\nContent-Length: )\d+", lambda m: m.group(1) + str(len(body)).encode(), head)
    return head + b"\r\n\r\n" + body


def post(path, obj, extra=b"", name_len=b"Content-Length"):
    body = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + extra + name_len + b": " + str(len(body)).encode() + b"\r\n\r\n" + body)


def get(path):
    return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def body_json(raw):
    return json.loads(tidy(raw).split(b"\r\n\r\n", 1)[1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--pool", action="store_true")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)

    def save(name, raw):
        if not raw:
            sys.exit("%s: no reply" % name)
        with open(os.path.join(a.out, name + ".http"), "wb") as f:
            f.write(tidy(raw))
        print("recorded", name, raw.split(b"\r\n", 1)[0].decode())

    if a.pool:
        # Four prompts of 400 tokens at once in a 512-token pool: the first 500 is recorded.
        ids = json.loads(tidy(exchange(a.port, post("/tokenize", {"content": TEXT}))).split(b"\r\n\r\n", 1)[1])["tokens"]
        replies = [None] * 4

        def one(k):
            prompt = [(t + k) % 40000 + 100 for t in (ids * 40)[:400]]
            replies[k] = exchange(a.port, post("/completion", {"prompt": prompt, "n_predict": 1, "n_probs": 1,
                                                                 "cache_prompt": False}))
        ts = [threading.Thread(target=one, args=(k,)) for k in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        bad = [r for r in replies if r.startswith(b"HTTP/1.1 500")]
        if not bad:
            sys.exit("pool: no reply was an HTTP 500 (%s)" % [r.split(b"\r\n", 1)[0] for r in replies])
        save("completion_context_exceeded", bad[0])
        return

    p = a.port
    save("health", exchange(p, get("/health")))
    save("models", exchange(p, get("/v1/models")))
    save("props", exchange(p, get("/props")))
    save("slots", exchange(p, get("/slots")))
    tok = exchange(p, post("/tokenize", {"content": TEXT, "add_special": False, "with_pieces": True}))
    save("tokenize", tok)
    ids = [t["id"] for t in body_json(tok)["tokens"]]
    tok2 = exchange(p, post("/tokenize", {"content": TEXT + " Paris", "add_special": False}))
    save("tokenize_with_continuation", tok2)
    paris = body_json(tok2)["tokens"]
    save("detokenize", exchange(p, post("/detokenize", {"tokens": ids})))
    save("v1_completions", exchange(p, post("/v1/completions", {"prompt": TEXT, "max_tokens": 8, "temperature": 0})))
    save("v1_completions_logprobs", exchange(p, post("/v1/completions", {"prompt": TEXT, "max_tokens": 8,
                                                                         "temperature": 0, "logprobs": 5})))
    save("v1_completions_echo", exchange(p, post("/v1/completions", {"prompt": paris, "max_tokens": 1, "temperature": 0,
                                                                     "logprobs": 1, "echo": True})))
    save("v1_completions_stream", exchange(p, post("/v1/completions", {"prompt": TEXT, "max_tokens": 8,
                                                                       "temperature": 0, "stream": True})))
    # The top-N request of the cached mode, after the same prompt was evaluated: cache hit.
    top = {"prompt": ids, "n_predict": 1, "n_probs": 20, "temperature": 0.0, "cache_prompt": True,
           "post_sampling_probs": False}
    exchange(p, post("/completion", top))
    save("completion_n_probs", exchange(p, post("/completion", top)))
    # The single-pass mode's requests on a pinned slot: a step without generation, then the
    # top-N request that evaluates the rest.
    save("completion_n_predict_0", exchange(p, post("/completion", {"prompt": ids[:6], "n_predict": 0, "temperature": 0.0,
                                                                    "cache_prompt": True, "id_slot": 0})))
    save("completion_n_probs_slot", exchange(p, post("/completion", dict(top, id_slot=0))))
    # The whole prompt evaluated afresh.
    save("completion_n_probs_whole", exchange(p, post("/completion", dict(top, cache_prompt=False))))
    props = body_json(exchange(p, get("/props")))
    n_ctx = props["default_generation_settings"]["n_ctx"]
    save("completion_too_long", exchange(p, post("/completion", {"prompt": (ids * (n_ctx // len(ids) + 2))[:n_ctx + 5],
                                                                 "n_predict": 1, "n_probs": 1})))
    save("chat_nonstream", exchange(p, post("/v1/chat/completions", {"messages": [{"role": "user", "content": "Say hello"}],
                                                                     "max_tokens": 8, "temperature": 0})))
    save("chat_stream", exchange(p, post("/v1/chat/completions", {"messages": [{"role": "user", "content": "Say hello"}],
                                                                  "max_tokens": 8, "temperature": 0, "stream": True,
                                                                  "stream_options": {"include_usage": True}})))
    save("bad_json", exchange(p, post("/v1/completions", b'{"prompt": "x", "max_tokens": [1, 2}')))
    save("content_array", exchange(p, post("/v1/chat/completions",
                                            {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
                                             "max_tokens": 4, "temperature": 0}, extra=b"Connection: close\r\n")))
    save("lowercase_content_length", exchange(p, post("/v1/completions", {"prompt": TEXT, "max_tokens": 2},
                                                      extra=b"Connection: close\r\n", name_len=b"content-length")))
    save("health_after", exchange(p, get("/health")))


if __name__ == "__main__":
    main()
