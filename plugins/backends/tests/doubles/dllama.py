#!/usr/bin/env python3
"""Test double of distributed-llama: `dllama worker`, `dllama inference` and `dllama-api`.

Run as `dllama.py worker|inference ARGS` (the `dllama` binary) or `dllama.py api ARGS` (the
`dllama-api` binary). Arguments are parsed like distributed-llama's AppCliArgs (name/value pairs,
`--workers` taking every following non-option, `Unknown option: X` otherwise); errors print
`🚨 Critical error: ...` and exit 1, as the real program does.

RECORDED (../fixtures/distributed-llama, a real build at commit 8d624a7 serving SmolLM2-135M):
  - `dllama-api` startup output (api_startup.log, with the real port and sequence length), then
    `Server URL: http://localhost:PORT/v1/`;
  - GET /v1/models, OPTIONS (CORS 204), any other route (404 `Not Found`), served byte for byte;
  - chat replies served byte for byte for the recorded request shapes: one message, `max_tokens`
    24, not streamed (chat_nonstream.http); one message, `max_tokens` 12, streamed (chat_stream.http,
    chunked, `data: [DONE]` without a blank line after it); three messages, not streamed
    (chat_multiturn.http);
  - `dllama inference` of the recorded prompt with `--steps 40`: inference_v0.16.4.log (its stdout);
  - the process DIES, with no reply (socket closed, exit 134 after a C++-style `terminate called`
    message on stderr), on a request whose body length is only in a header not spelled exactly
    `Content-Length` (the body is then read as empty or cut), on a body that is not JSON, and on a
    message whose `content` is not a string; one request at a time; `Connection: close` always.

SYNTHESISED (same headers, framing and JSON shapes and key order as the recordings):
  - other chat replies: for a prompt listing lettered choices (`\\nA. ...`), a deterministic answer
    chosen by a hash of the prompt: a letter in one of several phrasings, or (one time in n+1) a reply
    without a letter; otherwise filler text. `index` is the recorded garbage (-1724863392),
    `finish_reason` is "" (non-streamed), usage counts `prompt_tokens` as the tokens not served from
    its naive prefix cache (as dllama-api does) and `completion_tokens` including the end-of-sequence
    step; streams carry no usage and sometimes two tokens per event;
  - `dllama inference` output for other prompts in the v0.16.4 format (default), or with
    DLLAMA_DOUBLE_FORMAT=v0.12.0 or v0.11 in those older formats (as printed by their sources);
    pieces include a newline and the `~` of undecodable tokens;
  - the worker: listens, prints `Listening on 0.0.0.0:PORT...`, accepts a root, receives its
    configuration and weights (a small made-up protocol between the doubles), prints
    `📀 RequiredMemory`, `🚁 Network is in non-blocking mode`, `🛑 Stop signal` when the root finishes
    (or a read exception when it dies), then waits for the next root — forever.
  The root connects to every worker given with --workers and fails if one is not listening.

OUTPUT BUFFERING, as the C programs' stdio (read from the v0.16.4 source and seen on the real build):
  stdout is line-buffered at a terminal and block-buffered (4 KiB) otherwise, e.g. over an SSH exec
  channel. Only these lines are flushed when they are printed: `dllama inference` after the prompt
  evaluation and after every token; `dllama-api` after every generated piece and after the `🔶` that
  ends a request. So the worker's `Listening on` and dllama-api's `Server URL:` do NOT arrive while
  the process runs (until 4 KiB gather); a process that exits normally (`🚨 Critical error` of
  `dllama`) flushes at exit; dllama-api has no handler for most errors: the C++ runtime prints
  `terminate called after throwing an instance of 'std::runtime_error'` and `what(): …` on stderr and
  aborts, and its buffered stdout is lost.
  Also faithful: the worker closes its listening socket while it serves a root and listens again
  after; a connection that closes without sending a configuration kills it (`🚨 Critical error:
  Socket closed`, exit 1 — so nobody may probe its port with a TCP connection); a root that dies
  mid-run gives `🚨 Network error: Socket closed` and the worker listens again. dllama-api that
  cannot connect to a worker prints `🚨 Connection error: Cannot connect`, `🔄 Retrying in 3
  seconds...` and retries forever (not flushed either).
  DLLAMA_DOUBLE_LOAD_MS: milliseconds the root spends "loading the model" before it listens.
"""

import json
import os
import re
import signal
import socket
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "fixtures", "distributed-llama")
GARBAGE_INDEX = -1724863392
PIECE_RE = re.compile(r"'(?:[sdmt]|ll|ve|re)| ?[^\W\d_]+| ?\d| ?[^\s\w]+| ?_+|\s+(?!\S)|\s+")
RECORDED_PROMPT = "Question: What is the capital of France?\nAnswer:"
CHATML = "<|im_start|>{role}\n{content}<|im_end|>\n"

if sys.stdout.isatty():
    sys.stdout.reconfigure(line_buffering=True)
else:
    # stdio's full buffering of a pipe: 4 KiB, flushed when full, at a normal exit, or explicitly.
    sys.stdout = open(sys.stdout.fileno(), "w", buffering=4096, encoding="utf-8", closefd=False)

API_MODE = len(sys.argv) > 1 and sys.argv[1] == "api"


class ConnectError(Exception):
    """distributed-llama's NnConnectionSocketException."""


def fixture(name, binary=True):
    with open(os.path.join(FIX, name), "rb") as f:
        data = f.read()
    return data if binary else data.decode("utf-8")


def fnv1a(data):
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & ((1 << 64) - 1)
    return h


def pieces(text):
    p = PIECE_RE.findall(text)
    return p if "".join(p) == text else list(text)


def critical(msg):
    """A std::runtime_error: `dllama` catches it in main (printed, flushed at exit, exit 1);
    `dllama-api` does not (std::terminate: stderr, abort, buffered stdout lost)."""
    if API_MODE:
        sys.stderr.write("terminate called after throwing an instance of 'std::runtime_error'\n")
        sys.stderr.write("  what():  %s\n" % msg)
        sys.stderr.flush()
        os.abort()
    print("🚨 Critical error: %s" % msg)
    sys.stdout.flush()
    sys.exit(1)


class Args:
    def __init__(self, argv):
        self.model = self.tokenizer = self.prompt = None
        self.buffer = "f32"
        self.workers = []
        self.port = 9990
        self.nthreads = 1
        self.steps = 0
        self.temperature = 0.8
        self.max_seq_len = 0
        i = 0
        while i + 1 < len(argv):
            name, value = argv[i], argv[i + 1]
            if name == "--model":
                self.model = value
            elif name == "--tokenizer":
                self.tokenizer = value
            elif name == "--prompt":
                self.prompt = value
            elif name == "--buffer-float-type":
                if value not in ("f32", "f16", "q40", "q80"):
                    critical("Invalid float type: " + value)
                self.buffer = value
            elif name == "--workers":
                j = i + 1
                while j < len(argv) and not argv[j].startswith("-"):
                    if ":" not in argv[j]:
                        critical("Invalid worker address: " + argv[j])
                    h, p = argv[j].rsplit(":", 1)
                    self.workers.append((h, int(p)))
                    j += 1
                i = j
                continue
            elif name == "--port":
                self.port = int(value)
            elif name == "--nthreads":
                self.nthreads = int(value)
            elif name == "--steps":
                self.steps = int(value)
            elif name == "--temperature":
                self.temperature = float(value)
            elif name in ("--topp", "--seed", "--chat-template", "--host"):
                pass
            elif name == "--max-seq-len":
                self.max_seq_len = int(value)
            else:
                critical("Unknown option: " + name)
            i += 2


def header_lines(seq_len):
    out = []
    for line in fixture("api_startup.log", False).splitlines():
        if line.startswith("💿 Weights loaded"):
            out.append(line)
            break
        if line.startswith("💡 SeqLen:"):
            line = "💡 SeqLen: %d" % seq_len
        out.append(line)
    return out


def start_root(a):
    """Loads the 'model', connects to the workers and sends them weights, as the root does."""
    if a.model is None or a.tokenizer is None:
        critical("Model path is required" if a.model is None else "Tokenizer path is required")
    if not os.path.isfile(a.model):
        critical("Cannot open model file (%s): No such file or directory" % a.model)
    if not os.path.isfile(a.tokenizer):
        critical("Failed to open tokenizer file")
    n_nodes = len(a.workers) + 1
    if n_nodes & (n_nodes - 1):
        critical("The number of nodes must be a power of 2")
    if n_nodes > 3:  # SmolLM2-135M has 3 KV heads
        critical("This version does not support more nodes than the number of KV heads in the model")
    if a.buffer != "q80":
        critical("This version supports only Q40 weights with Q80 sync type")
    seq = a.max_seq_len or 8192
    lines = header_lines(seq)
    for line in lines[:-2]:
        print(line)
    socks = []
    for i, (h, p) in enumerate(a.workers):
        print("⭕ Socket[%d]: connecting to %s:%d worker" % (i, h, p))
        try:
            s = socket.create_connection((h, p), timeout=5)
        except OSError as e:
            print("Cannot connect to %s:%d (%s)" % (h, p, e.strerror or e))
            for o in socks:
                o.close()
            raise ConnectError("Cannot connect")
        print("⭕ Socket[%d]: connected" % i)
        socks.append(s)
    if socks:
        print("⭕ Network is initialized")
    print(lines[-2])
    for i, s in enumerate(socks):
        s.sendall(b"CONFIG nodes=%d index=%d\n" % (n_nodes, i + 1) + b"W" * 65536)
    load_ms = float(os.environ.get("DLLAMA_DOUBLE_LOAD_MS", "0"))
    if load_ms > 0:
        time.sleep(load_ms / 1000.0)
    print(lines[-1])
    if socks:
        print("🚁 Network is in non-blocking mode")
    return socks


def finish_root(socks):
    for s in socks:
        try:
            s.sendall(b"STOP\n")
            s.close()
        except OSError:
            pass


# ---------------------------------------------------------------------------------------------
# worker


def worker(argv):
    a = Args(argv)
    if a.port < 1024:
        critical("Invalid port number")
    while True:
        # NnNetwork::serve: a listening socket per root, closed once the root has connected.
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            srv.bind(("0.0.0.0", a.port))
        except OSError as e:
            critical("Cannot bind port: %s" % (e.strerror or e))
        srv.listen(1)
        print("Listening on 0.0.0.0:%d..." % a.port)
        conn, _ = srv.accept()
        srv.close()
        print("⭕ The root node has connected")
        data = b""
        while b"\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                critical("Socket closed")  # the real worker exits: not a root after all
            data += chunk
        print("📀 RequiredMemory: 122 MB")
        print("🚁 Network is in non-blocking mode")
        stopped = False
        while True:
            try:
                chunk = conn.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            data += chunk
            if b"STOP\n" in data:
                stopped = True
                break
        conn.close()
        if stopped:
            print("🛑 Stop signal")
        else:
            print("🚨 Network error: Socket closed")


# ---------------------------------------------------------------------------------------------
# inference

SYNTH_PIECES = [" The", " answer", " is", ":", " this", "\n", " one", "~", "\n\n", " and", " more", "."]


def inference(argv):
    a = Args(argv)
    if a.prompt is None:
        critical("Prompt is required")
    if a.steps == 0:
        critical("Number of steps is required")
    fmt = os.environ.get("DLLAMA_DOUBLE_FORMAT", "v0.16.4")
    n_input = len(pieces(a.prompt)) + 1  # BOS added
    seq = a.max_seq_len or 8192
    if n_input > seq:
        critical("The number of prompt tokens is greater than the sequence length")
    if n_input > a.steps:
        critical("The number of prompt tokens is greater than the number of steps")
    try:
        socks = start_root(a)
    except ConnectError as e:
        critical(str(e))
    if a.prompt == RECORDED_PROMPT and a.steps == 40 and fmt == "v0.16.4" and not a.workers:
        text = fixture("inference_v0.16.4.log", False)
        body = text.split("💿 Weights loaded\n", 1)[1].split("\nreal\t", 1)[0]
        for line in body.splitlines(keepends=True):  # flushed as the real run flushes
            sys.stdout.write(line)
            if line.startswith("🔶") or line.startswith("🔷"):
                sys.stdout.flush()
        finish_root(socks)
        return
    n_eval = n_input - 1
    n_pred = min(seq, a.steps) - n_eval
    h = fnv1a(a.prompt.encode("utf-8"))
    preds = [SYNTH_PIECES[(h + k) % len(SYNTH_PIECES)] for k in range(n_pred)]
    kb = 0
    if fmt == "v0.11":
        prompt_pieces = pieces(a.prompt)
        toks = prompt_pieces[1:] + preds
        for k, p in enumerate(toks[: a.steps]):
            print("🔶 G %4d ms I %4d ms T %4d ms S %6d kB R %6d kB %s" % (40 + k % 7, 30, 10, kb, kb, p))
        n = len(toks[: a.steps])
        print("Generated tokens:    %d" % n)
        print("Avg tokens / second: %.2f" % (1000.0 / 43.0))
        print("Avg generation time: %.2f ms" % 43.0)
        print("Avg inference time:  %.2f ms" % 30.0)
        print("Avg transfer time:   %.2f ms" % 10.0)
        finish_root(socks)
        return
    print(a.prompt)
    done = 0
    while done < n_eval:
        b = min(32, n_eval - done)
        if fmt == "v0.12.0":
            print("🔷️ E%5u ms S%6u kB R%6u kB (%d tokens)" % (12 * b, kb, kb, b))
        else:
            print("🔷️ Eval%5u ms Sync%5u ms | Sent%6u kB Recv%6u kB | (%d tokens)" % (12 * b, 0, kb, kb, b))
        done += b
    sys.stdout.flush()
    for k, p in enumerate(preds):
        ms = 44 + (h >> k) % 9
        if fmt == "v0.12.0":
            print("🔶 P%5u ms S%6u kB R%6u kB %s" % (ms, kb, kb, p))
        else:
            print("🔶 Pred%5u ms Sync%5u ms | Sent%6u kB Recv%6u kB | %s" % (ms, 0, kb, kb, p))
        sys.stdout.flush()
    print()
    print("Evaluation")
    print("   nBatches: %d" % 32)
    print("    nTokens: %d" % n_eval)
    print("   tokens/s: %3.2f (%3.2f ms/tok)" % (1000.0 / 12.0, 12.0))
    print("Prediction")
    print("    nTokens: %d" % n_pred)
    print("   tokens/s: %3.2f (%3.2f ms/tok)" % (1000.0 / 48.0, 48.0))
    finish_root(socks)


# ---------------------------------------------------------------------------------------------
# dllama-api


def die(conn, what):
    """The real server throws from its request parsing: std::terminate, no reply, socket closed."""
    sys.stderr.write("terminate called after throwing an instance of '%s'\n" % what)
    sys.stderr.flush()
    try:
        conn.close()
    except OSError:
        pass
    os._exit(134)


def read_request(conn):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, extra = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    method, path = (parts + ["", ""])[:2]
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k] = v.strip()
    length = 0
    if "Content-Length" in headers:  # exactly this spelling, as dllama-api reads it
        length = int(headers["Content-Length"])
        if len(extra) > length:
            die(conn, "std::runtime_error")
        while len(extra) < length:
            chunk = conn.recv(65536)
            if not chunk:
                die(conn, "std::runtime_error")
            extra += chunk
    # Without an exact `Content-Length` the body length is 0: the body is lost.
    body = extra[:length]
    return method, path, headers, body


def send_raw(conn, name):
    raw = fixture(name)
    head, body = raw.split(b"\r\n\r\n", 1)
    if b"Transfer-Encoding: chunked" not in head:
        conn.sendall(raw)
        return
    # curl printed the stream without its chunk framing: frame it again as dllama-api does, one
    # chunk per event, `data: [DONE]` as the last chunk, then `0000` (its end chunk).
    out = head + b"\r\n\r\n"
    for ev in body.split(b"\r\n\r\n"):
        if not ev.strip():
            continue
        piece = ev if ev.strip() == b"data: [DONE]" else ev + b"\r\n\r\n"
        out += b"%x\r\n" % len(piece) + piece + b"\r\n"
    out += b"0000\r\n\r\n"
    conn.sendall(out)


def answer_for(prompt):
    """A deterministic reply to a lettered multiple-choice prompt (the choices of its last
    question: few-shot examples come before it), or filler text."""
    letters = re.findall(r"(?m)^([A-Z])\. ", prompt.rsplit("\n\n", 1)[-1])
    h = fnv1a(prompt.encode("utf-8"))
    if letters:
        n = len(letters)
        k = h % (n + 1)
        if k == n:
            return "I am not sure which one is right."
        letter = letters[k]
        style = (h >> 16) % 3
        return [letter, "The answer is %s." % letter, "%s. That is the correct choice." % letter][style]
    return "This is a synthetic reply of the distributed-llama test double, which has no model at all."


class ApiState:
    def __init__(self, seq_len):
        self.cache = []  # [(role, content)] of the last conversation, dllama-api's naive cache
        self.n = 0
        self.seq_len = seq_len


def chat(conn, state, req):
    msgs = req.get("messages")
    if not isinstance(msgs, list):
        die(conn, "nlohmann::json_abi_v3_11_3::detail::type_error")
    conv = []
    for m in msgs:
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or not isinstance(m.get("role"), str):
            die(conn, "nlohmann::json_abi_v3_11_3::detail::type_error")
        conv.append((m["role"], m["content"]))
    stream = req.get("stream", False)
    if not isinstance(stream, bool):
        die(conn, "nlohmann::json_abi_v3_11_3::detail::type_error")
    max_tokens = req.get("max_tokens", -1)
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
        die(conn, "nlohmann::json_abi_v3_11_3::detail::type_error")
    if "stop" in req and not (isinstance(req["stop"], list) and all(isinstance(s, str) for s in req["stop"])):
        die(conn, "nlohmann::json_abi_v3_11_3::detail::type_error")
    if len(conv) == 1 and not stream and max_tokens == 24:
        state.cache = []
        return send_raw(conn, "chat_nonstream.http")
    if len(conv) == 1 and stream and max_tokens == 12:
        state.cache = []
        return send_raw(conn, "chat_stream.http")
    if len(conv) == 3 and not stream:
        state.cache = []
        return send_raw(conn, "chat_multiturn.http")
    # The naive cache: a conversation that extends the cached one evaluates only its new messages.
    delta = conv
    if state.cache and len(conv) > len(state.cache) and conv[: len(state.cache)] == state.cache:
        delta = conv[len(state.cache):]
    prompt = "".join(CHATML.format(role=r, content=c) for r, c in delta) + "<|im_start|>assistant\n"
    n_prompt = len(pieces(prompt)) + (1 if delta is conv else 0)
    reply = answer_for(conv[-1][1])
    toks = pieces(reply)
    limit = max_tokens if max_tokens > 0 else state.seq_len
    if len(toks) < limit:
        out, n_completion = toks, len(toks) + 1  # the end-of-sequence step is counted
    else:
        out, n_completion = toks[:limit], limit
    text = "".join(out)
    state.cache = conv + [("assistant", text)]
    created = int(time.time())
    cid = "cmpl-j%d" % state.n
    state.n += 1
    if stream:
        head = (
            b"HTTP/1.1 200 OK\r\nAccess-Control-Allow-Origin: *\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
            b"Connection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        conn.sendall(head)
        k = 0
        while k < len(out):
            take = 2 if (k % 5 == 3 and k + 1 < len(out)) else 1  # sometimes two tokens per event
            delta_text = "".join(out[k : k + take])
            k += take
            ev = {"choices": [{"delta": {"content": delta_text, "role": "assistant"}, "finish_reason": "", "index": 0}],
                  "created": created, "id": cid.replace("j", "c"), "model": "Distributed Model",
                  "object": "chat.completion"}
            chunk = b"data: " + json.dumps(ev, separators=(",", ":"), ensure_ascii=False).encode("utf-8") + b"\r\n\r\n"
            conn.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        ev = {"choices": [{"finish_reason": "stop", "index": 0}], "created": created, "id": cid.replace("j", "c"),
              "model": "Distributed Model", "object": "chat.completion"}
        chunk = b"data: " + json.dumps(ev, separators=(",", ":")).encode("utf-8") + b"\r\n\r\n"
        conn.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        done = b"data: [DONE]"
        conn.sendall(b"%x\r\n" % len(done) + done + b"\r\n" + b"0000\r\n\r\n")
        return
    body = {
        "choices": [{"finish_reason": "", "index": GARBAGE_INDEX, "message": {"content": text, "role": "assistant"}}],
        "created": created,
        "id": cid,
        "model": "Distributed Model",
        "object": "chat.completion",
        "usage": {"completion_tokens": n_completion, "prompt_tokens": n_prompt,
                  "total_tokens": n_completion + n_prompt},
    }
    data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    conn.sendall(
        b"HTTP/1.1 200 OK\r\nAccess-Control-Allow-Origin: *\r\nContent-Type: application/json; charset=utf-8\r\n"
        b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(data) + data
    )


def api(argv):
    a = Args(argv)
    while True:  # main(): a connection error is retried every 3 s, forever
        try:
            socks = start_root(a)
            break
        except ConnectError as e:
            print("🚨 Connection error: %s" % e)
            print("🔄 Retrying in 3 seconds...")
            time.sleep(3)
    state = ApiState(a.max_seq_len or 8192)
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        srv.bind(("0.0.0.0", a.port))
    except OSError as e:
        critical("Cannot bind port: %s" % (e.strerror or e))
    srv.listen(16)
    seen_header = False
    for line in fixture("api_startup.log", False).splitlines():
        if line.startswith("💿 Weights loaded"):
            seen_header = True
            continue
        if not seen_header:
            continue
        if line.startswith("Listening on"):
            line = "Listening on 0.0.0.0:%d..." % a.port
        if line.startswith("Server URL:"):
            line = "Server URL: http://localhost:%d/v1/" % a.port
        print(line)
    log = os.environ.get("DLLAMA_DOUBLE_LOG")

    def on_term(*_):
        finish_root(socks)
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_term)
    while True:  # one request at a time
        conn, _ = srv.accept()
        conn.settimeout(30)
        try:
            req = read_request(conn)
        except OSError:
            conn.close()
            continue
        if req is None:
            conn.close()
            continue
        method, path, headers, body = req
        print("🔷 %s %s" % (method, path))
        if log:
            with open(log, "a", encoding="utf-8") as f:
                f.write(json.dumps({"method": method, "path": path, "headers": list(headers.items()),
                                    "body": body.decode("utf-8", "replace")}) + "\n")
        parsed = None
        if body:
            try:
                parsed = json.loads(body.decode("utf-8"))
            except (ValueError, UnicodeDecodeError):
                die(conn, "nlohmann::json_abi_v3_11_3::detail::parse_error")
        if method == "OPTIONS":
            send_raw(conn, "options.http")
        elif method == "GET" and path == "/v1/models":
            send_raw(conn, "models.http")
        elif method == "POST" and path == "/v1/chat/completions":
            if not isinstance(parsed, dict):  # no body (e.g. its length was in `content-length`)
                die(conn, "nlohmann::json_abi_v3_11_3::detail::type_error")
            print("🔹%s🔸" % "".join(CHATML.format(role=m.get("role"), content=m.get("content"))
                                      for m in parsed.get("messages", []) if isinstance(m, dict)))
            delay = float(os.environ.get("DLLAMA_DOUBLE_DELAY_MS", "0")) / 1000.0
            if delay > 0:
                time.sleep(delay)
            chat(conn, state, parsed)
            print("🔶")
            sys.stdout.flush()
        else:
            send_raw(conn, "no_route.http")
        try:
            conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        conn.close()


def main():
    if len(sys.argv) < 2:
        critical("Unsupported mode")
    mode, rest = sys.argv[1], sys.argv[2:]
    if mode == "worker":
        worker(rest)
    elif mode == "inference":
        inference(rest)
    elif mode == "api":
        api(rest)
    else:
        critical("Unsupported mode")


if __name__ == "__main__":
    main()
