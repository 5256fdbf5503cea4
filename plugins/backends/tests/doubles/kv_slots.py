"""The KV cache and slots of the llama-server double (`llama_server.py`): llama-server's per-slot
prompt cache, `id_slot` pinning, ubatches, the KV pool shared by the slots (unified) or split
between them, and where in the cache's cells each sequence lies (llama.cpp's `find_slot`,
`apply_ubatch` and `seq_rm` head rules, and the purge of idle slots when a batch finds no room).
Split out of `llama_server.py`, which imports it; it fails only as the double does (exceptions the
request handler turns into HTTP errors)."""

import threading
import time

def fnv1a(data, bits=64):
    if bits == 64:
        h, prime, mask = 0xCBF29CE484222325, 0x100000001B3, (1 << 64) - 1
    else:
        h, prime, mask = 0x811C9DC5, 0x01000193, (1 << 32) - 1
    for b in data:
        h = ((h ^ b) * prime) & mask
    return h


class HttpError(Exception):
    def __init__(self, code, message, typ, extra=None):
        self.code, self.message, self.typ, self.extra = code, message, typ, extra or {}


class ContextExceeded(Exception):
    pass


class Slot:
    def __init__(self, i):
        self.id, self.tokens, self.small, self.busy, self.t_last = i, [], [], False, 0.0


class Slots:
    """llama-server's slots: per-slot prompt cache (longest common prefix; a fully cached prompt still
    evaluates its last token), `id_slot` pinning, ubatches, and the KV pool."""

    def __init__(self, n, n_ctx, unified, ubatch, min_batch, ignore_id_slot, cache_ram):
        self.slots = [Slot(i) for i in range(n)]
        self.ram = [] if cache_ram else None
        self.n_ctx, self.unified, self.ubatch, self.min_batch = n_ctx, unified, ubatch, min_batch
        self.ignore_id_slot = ignore_id_slot
        self.cv = threading.Condition()
        self.in_flight = 0
        self.peak = 0
        # The unified KV buffer: per cell None or (slot id, position); llama_kv_cache's head.
        self.cells, self.head = [None] * n_ctx, 0

    def seq_rm(self, sid, p0):
        """llama_kv_cache::seq_rm: frees the slot's cells of positions >= p0; head moves back to the
        first freed cell when that is lower."""
        first = None
        for c, v in enumerate(self.cells):
            if v is not None and v[0] == sid and v[1] >= p0:
                self.cells[c] = None
                first = c if first is None else first
        if first is not None and first < self.head:
            self.head = first

    def place(self, sl, p0, p1):
        """find_slot + apply_ubatch for positions p0..p1-1 of the slot; False: no room."""
        n = p1 - p0
        used = sum(v is not None for v in self.cells)
        if len(self.cells) - used < n:
            return False
        c = self.head if self.head <= used + 2 * n else 0
        idxs = []
        while len(idxs) < n:
            if c >= len(self.cells):
                c = 0
            if self.cells[c] is None:
                idxs.append(c)
            c += 1
        for i, c in enumerate(idxs):
            self.cells[c] = (sl.id, p0 + i)
        self.head = idxs[-1] + 1
        return True

    def purge_idle(self, busy):
        """try_clear_idle_slots: purges the first idle slot holding tokens; False: none."""
        for o in self.slots:
            if o is not busy and not o.busy and o.tokens:
                self.seq_rm(o.id, 0)
                o.tokens, o.small = [], []
                return True
        return False

    def layout(self, sl):
        """0 where the slot's sequence lies in cells 0, 1, 2, ...; else a key of where it lies."""
        mine = sorted((v[1], c) for c, v in enumerate(self.cells) if v is not None and v[0] == sl.id)
        if all(c == i for i, (_, c) in enumerate(mine)):
            return 0
        return 1 + (fnv1a(repr([c for _, c in mine]).encode()) % 1000003)

    def select(self, tokens, id_slot):
        """llama-server's get_available_slot: the pinned slot, else the idle slot whose cache covers
        more than 10 % of the prompt best, else the least recently used; then, when less than half
        of what the chosen slot holds is kept, its cache is saved to the RAM prompt cache and the
        cached prompt that keeps more (at least a quarter of it) is restored into it. None: busy."""
        def lcp(a):
            k = 0
            while k < min(len(a), len(tokens)) and a[k] == tokens[k]:
                k += 1
            return k

        pinned = id_slot is not None and id_slot >= 0 and not self.ignore_id_slot
        ret, update = None, False
        if pinned:
            if id_slot >= len(self.slots):
                raise HttpError(400, "Invalid id_slot: %d" % id_slot, "invalid_request_error")
            ret = self.slots[id_slot]
            if ret.busy:
                return None
        f_sim_best = 0.0
        for sl in self.slots:
            if (pinned and sl is not ret) or sl.busy or not sl.tokens:
                continue
            sim = lcp(sl.tokens) / max(len(tokens), 1)
            if sim > f_sim_best and sim > 0.1:
                f_sim_best, ret = sim, sl
        if ret is not None and ret.tokens and f_sim_best * len(tokens) / len(ret.tokens) < 0.5:
            update = True
        if ret is None:
            idle = [sl for sl in self.slots if not sl.busy]
            if not idle:
                return None
            ret, update = min(idle, key=lambda x: x.t_last), True
        if update and self.ram is not None:
            if ret.tokens:
                self.ram.append((list(ret.tokens), list(ret.small)))
            k0 = lcp(ret.tokens)
            keep_best = k0 / len(ret.tokens) if ret.tokens else -1.0
            sim_best = k0 / max(len(tokens), 1)
            best = None
            for i, (t, _) in enumerate(self.ram):
                k = lcp(t)
                keep, sim = k / len(t), k / max(len(tokens), 1)
                if keep >= 0.25 and keep_best < keep and sim_best < sim:
                    keep_best, sim_best, best = keep, sim, i
            if best is not None:
                ret.tokens, ret.small = self.ram.pop(best)
        return ret

    def acquire(self, tokens, id_slot):
        """Waits for a slot (see `select`) and marks it busy; a prompt that does not fit in the shared
        pool beside those in flight raises ContextExceeded."""
        with self.cv:
            while True:
                sl = self.select(tokens, id_slot)
                if sl is not None:
                    sl.busy = True
                    if self.unified:
                        if self.in_flight + len(tokens) > self.n_ctx:
                            sl.busy = False
                            raise ContextExceeded()
                        self.in_flight += len(tokens)
                        self.peak = max(self.peak, self.in_flight)
                    return sl
                self.cv.wait()

    def evaluate(self, sl, tokens, cache_prompt):
        """Evaluates `tokens` on the slot: returns (cache_n, small, layout) where `small` says whether
        the last position or a reused one was computed in a small batch, and `layout` is nonzero
        where a unified KV buffer moves the numbers (a slot other than 0: its id and the tokens the
        other slots hold)."""
        with self.cv:
            k = 0
            if cache_prompt:
                while k < min(len(sl.tokens), len(tokens)) and sl.tokens[k] == tokens[k]:
                    k += 1
                if k == len(tokens) and k > 0:
                    k -= 1
            small = list(sl.small[:k])
            cells = self.unified and len(self.slots) > 1
            if cells:
                self.seq_rm(sl.id, k)
            pos = k
            while pos < len(tokens):
                n = min(self.ubatch, len(tokens) - pos)
                if cells:
                    while not self.place(sl, pos, pos + n):
                        if not self.purge_idle(sl):
                            self.seq_rm(sl.id, 0)
                            sl.tokens, sl.small = [], []
                            raise ContextExceeded()
                small.extend([n < self.min_batch] * n)
                pos += n
            sl.tokens, sl.small = list(tokens), small
            return k, any(small), (self.layout(sl) if cells else 0)

    def release(self, sl, tokens):
        with self.cv:
            sl.busy = False
            sl.t_last = time.time()
            if self.unified:
                self.in_flight -= len(tokens)
            self.cv.notify_all()
