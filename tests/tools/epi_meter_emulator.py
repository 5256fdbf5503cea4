#!/usr/bin/env python3
"""Emulator of the epi-meter board for tests and benchmarks (epi-meter UART protocol v1).

It creates a real pseudo-terminal pair with socat, writes the protocol into the meter side at a
configurable rate, injects the faults a host must survive, and writes its own ground truth.

    socat -d -d pty,raw,echo=0,link=DIR/meter pty,raw,echo=0,link=DIR/host,wait-slave

The host (epi) opens DIR/host. socat relays nothing until the host side is opened (wait-slave),
and the emulator starts its clock only then, so every line it writes after that is either
delivered or deliberately broken -- the ground truth says which.

Faults (--faults all, none, or a comma list), at fixed points of the run:
  partial      the tail of a sample line before anything else (the host opened mid-line)
  garbage      a line of random bytes, some not UTF-8
  malformed    a sample line cut short (its seq cannot be read: a bad line and a lost sample)
  wrong-type   a sample with "w" as a string (bad line; its seq is readable, so not lost)
  negative     a sample with negative watts (bad line, not lost)
  pf           a sample with a power factor of 1.25 (bad line, not lost)
  nan          a sample with "w":NaN (invalid JSON: bad line and lost)
  seq-gap      three samples never sent (lost)
  unknown      a line of an unknown type, and a sample with unknown fields (both fine)
  error        an error line (a meter-error event)
  crlf         a few lines ending with \\r\\n (fine)
  unplug       socat killed (the device node vanishes) and restarted on the same path after
               --unplug-s; the meter keeps sampling meanwhile (those samples are lost)
  reboot       the meter goes down for --reboot-s and boots again: hello, seq from 0, t_ms from
               ~200 ms, the IC energy counter from 0

With --until-signal the run ends at SIGUSR1 (or when the host closes its side) instead of after
--duration, and the ground truth covers what was written until then: for runs whose length the
test cannot know (`epi profile`).

Ground truth (--truth PATH): PATH is a CSV of every sample the host must record
(boot,seq,t_ms,node,w,v,a,pf,wh, values exactly as written on the wire); PATH.json has the
counts the host must report (bad lines, lost samples, reboots, reconnects) and the energy of the
delivered samples per boot, integrated on the meter's clock (trapezoid per node) and from the IC
counter (wh).

Standard library only. Exit status 0 when the run completed.
"""

import argparse
import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time

ALL_FAULTS = ["partial", "garbage", "malformed", "wrong-type", "negative", "pf", "nan", "seq-gap",
              "unknown", "error", "crlf", "unplug", "reboot"]

# When each fault happens, as a share of the run.
AT = {"garbage": 0.05, "malformed": 0.08, "wrong-type": 0.11, "negative": 0.14, "pf": 0.17,
      "nan": 0.20, "seq-gap": 0.23, "unknown": 0.28, "error": 0.31, "unplug": 0.40,
      "crlf": 0.34, "reboot": 0.70}


def log(msg):
    print(f"emulator: {msg}", file=sys.stderr, flush=True)


class HostGone(Exception):
    """The host closed its side of the link (with --until-signal: the end of the run)."""


class Socat:
    """socat relaying DIR/meter (written by the emulator) to DIR/host (read by the host)."""

    def __init__(self, socat, meter, host):
        self.meter, self.host = meter, host
        self.proc = subprocess.Popen(
            [socat, "-d", "-d",
             f"pty,raw,echo=0,link={meter}",
             f"pty,raw,echo=0,link={host},wait-slave,pty-interval=0.02"],
            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        self.transferring = threading.Event()
        self.log = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            self.log.append(line)
            if "starting data transfer loop" in line:
                self.transferring.set()

    def wait_links(self, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if os.path.islink(self.meter) and os.path.islink(self.host):
                return True
            if self.proc.poll() is not None:
                return False
            time.sleep(0.01)
        return False

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Meter:
    """The board: channels with a true power each, the metering ICs' Wh counters, seq and t_ms."""

    def __init__(self, channels, period_ms, t0, seq0, rng, with_wh):
        self.channels, self.period_ms, self.rng, self.with_wh = channels, period_ms, rng, with_wh
        self.boot = 0
        self.seq = seq0 % 2**32
        self.t = t0 % 2**32
        self.wh = [0.35 * (c + 1) for c in range(channels)]  # energy since boot before we started
        self.base = [12.5, 11.9, 30.2, 8.7, 15.0, 22.2, 5.5, 9.9][:channels] + [10.0] * max(0, channels - 8)

    def power(self, c, slot):
        return max(0.0, self.base[c] * (1.0 + 0.3 * math.sin(slot / (7.0 + c))) + self.rng.uniform(-0.2, 0.2))

    def take(self, slot):
        """Measures one period: returns the sample's fields per channel (strings as on the wire)."""
        chans = []
        for c in range(self.channels):
            w = self.power(c, slot)
            v = 121.3 + 0.4 * math.sin(slot / 13.0) + self.rng.uniform(-0.05, 0.05)
            pf = min(1.0, 0.995 - 0.01 * c + self.rng.uniform(-0.002, 0.002))
            a = w / (v * pf)
            self.wh[c] += w * self.period_ms / 3.6e6
            chans.append({"node": c, "w": f"{w:.2f}", "v": f"{v:.2f}", "a": f"{a:.4f}", "pf": f"{pf:.4f}",
                          "var": f"{w * 0.07:.2f}", "wh": f"{self.wh[c]:.4f}" if self.with_wh else None})
        s = {"boot": self.boot, "seq": self.seq, "t_ms": self.t, "ch": chans}
        self.seq = (self.seq + 1) % 2**32
        self.t = (self.t + self.period_ms) % 2**32
        return s

    def reboot(self, boot_ms):
        self.boot += 1
        self.seq = 0
        self.t = boot_ms
        self.wh = [0.0] * self.channels


def sample_line(s, extra_top="", extra_ch="", override=None):
    parts = []
    for ch in s["ch"]:
        f = dict(ch)
        if override and ch["node"] == override[0]:
            f[override[1]] = override[2]
        fields = [f'"node":{f["node"]}', f'"w":{f["w"]}', f'"v":{f["v"]}', f'"a":{f["a"]}',
                  f'"pf":{f["pf"]}', f'"var":{f["var"]}']
        if f["wh"] is not None:
            fields.append(f'"wh":{f["wh"]}')
        parts.append("{" + ",".join(fields) + extra_ch + "}")
    return (f'{{"type":"sample","seq":{s["seq"]},"t_ms":{s["t_ms"]}{extra_top},"ch":[' + ",".join(parts) + "]}")


def hello_line(channels, rate):
    return (f'{{"type":"hello","fw":"0.1.0","board":"epi-meter v1.0","channels":{channels},'
            f'"rate_hz":{rate:g},"ic":"ATM90E26"}}')


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", required=True, help="directory for the meter and host links")
    ap.add_argument("--rate", type=float, default=10.0, help="samples per second (1000/rate whole ms)")
    ap.add_argument("--channels", type=int, default=4)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of meter time to emit")
    ap.add_argument("--faults", default="all", help="all, none, or a comma list of " + ",".join(ALL_FAULTS))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--t0-ms", type=int, default=2**32 - 3000, help="meter t_ms of the first sample (near the wrap by default)")
    ap.add_argument("--seq0", type=int, default=2**32 - 20, help="seq of the first sample (near the wrap by default)")
    ap.add_argument("--no-wh", action="store_true", help="do not send the IC energy counter")
    ap.add_argument("--unplug-s", type=float, default=1.0)
    ap.add_argument("--reboot-s", type=float, default=0.5)
    ap.add_argument("--hello-every-s", type=float, default=10.0)
    ap.add_argument("--truth", help="ground-truth CSV path (and PATH.json)")
    ap.add_argument("--linger-s", type=float, default=30.0, help="after the run, keep the link up this long or until the host closes it")
    ap.add_argument("--start-timeout-s", type=float, default=30.0, help="how long to wait for the host to open its side")
    ap.add_argument("--socat", default="socat")
    ap.add_argument("--until-signal", action="store_true", help="end the run at SIGUSR1 or when the host closes its side (--duration is then an upper bound)")
    args = ap.parse_args()
    stop = {"now": False}
    if args.until_signal:
        signal.signal(signal.SIGUSR1, lambda *_: stop.__setitem__("now", True))

    faults = set(ALL_FAULTS if args.faults == "all" else [] if args.faults == "none" else args.faults.split(","))
    unknown = faults - set(ALL_FAULTS)
    if unknown:
        ap.error(f"unknown faults: {', '.join(sorted(unknown))}")
    period_ms = round(1000.0 / args.rate)
    slots = int(round(args.duration * 1000.0 / period_ms))
    at = {k: int(v * slots) for k, v in AT.items()}
    unplug_slots = max(1, round(args.unplug_s * 1000 / period_ms))
    reboot_slots = max(1, round(args.reboot_s * 1000 / period_ms))
    hello_every = max(1, round(args.hello_every_s * 1000 / period_ms))
    rng = random.Random(args.seed)
    meter = Meter(args.channels, period_ms, args.t0_ms, args.seq0, rng, not args.no_wh)

    os.makedirs(args.dir, exist_ok=True)
    meter_path, host_path = os.path.join(args.dir, "meter"), os.path.join(args.dir, "host")
    socat = Socat(args.socat, meter_path, host_path)
    if not socat.wait_links(10):
        log("socat did not create the links: " + " | ".join(socat.log))
        return 2
    fd = os.open(meter_path, os.O_WRONLY | os.O_NOCTTY)
    print("READY", flush=True)
    if not socat.transferring.wait(args.start_timeout_s):
        log("the host never opened " + host_path)
        socat.stop()
        return 3

    truth_rows = []          # delivered samples
    sent_seqs = []           # (boot, seq, parseable) for every seq the meter used
    bad_lines = 0
    events = []
    reboot_info = []
    unplug_info = []

    def write(text, end="\n"):
        data = (text + end).encode("utf-8") if isinstance(text, str) else text + end.encode()
        try:
            os.write(fd, data)
        except OSError:
            if not args.until_signal:
                raise
            stop["now"] = True  # the host closed its side: the run is over
            raise HostGone()

    def deliver(s, line, end="\n"):
        write(line, end)
        sent_seqs.append((s["boot"], s["seq"], True))
        for ch in s["ch"]:
            truth_rows.append((s["boot"], s["seq"], s["t_ms"], ch))

    if "partial" in faults:
        # The tail of a line the host missed the start of.
        write('.53,"a":0.1031,"pf":0.9970,"var":0.91,"wh":3.4521}]}')
        bad_lines += 1
        events.append("partial")
    write(hello_line(args.channels, args.rate))
    boot_slot = 0

    start = time.monotonic()
    slot = 0
    last_write_wall = None
    try:
        while slot < slots and not stop["now"]:
            due = start + slot * period_ms / 1000.0
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)

            if "reboot" in faults and slot == at["reboot"]:
                # Down: no lines, no seq, no counter. Then a new boot.
                before = time.monotonic()
                last_seq = (meter.seq - 1) % 2**32
                meter.reboot(200)
                slot += reboot_slots
                due = start + slot * period_ms / 1000.0
                now = time.monotonic()
                if due > now:
                    time.sleep(due - now)
                if slot >= slots:
                    break
                write(hello_line(args.channels, args.rate))
                boot_slot = slot
                reboot_info.append({"slot": slot, "down_ms": reboot_slots * period_ms, "last_seq_before": last_seq,
                                    "gap_slots": reboot_slots + 1, "wall_before_ms": (before - start) * 1000})
                events.append("reboot")

            if "unplug" in faults and slot == at["unplug"]:
                time.sleep(0.5)  # let the host read what was written
                os.close(fd)
                socat.stop()
                t_unplug = time.monotonic()
                first_missed = slot
                time.sleep(args.unplug_s)
                socat = Socat(args.socat, meter_path, host_path)
                if not socat.wait_links(10):
                    log("socat did not come back: " + " | ".join(socat.log))
                    return 2
                fd = os.open(meter_path, os.O_WRONLY | os.O_NOCTTY)
                if not socat.transferring.wait(args.start_timeout_s):
                    log("the host did not reopen " + host_path)
                    socat.stop()
                    return 3
                # The meter kept sampling while unplugged: those samples are lost.
                resume = max(slot + unplug_slots, int(math.ceil((time.monotonic() - start) * 1000.0 / period_ms)))
                while slot < resume and slot < slots:
                    s = meter.take(slot)
                    sent_seqs.append((s["boot"], s["seq"], False))
                    slot += 1
                unplug_info.append({"first_missed_slot": first_missed, "resume_slot": slot,
                                    "wall_ms": (time.monotonic() - t_unplug) * 1000})
                events.append("unplug")
                if slot >= slots:
                    break
                due = start + slot * period_ms / 1000.0
                now = time.monotonic()
                if due > now:
                    time.sleep(due - now)

            if (slot - boot_slot) % hello_every == 0 and slot != boot_slot:
                write(hello_line(args.channels, args.rate))

            s = meter.take(slot)
            other = min(1, args.channels - 1)  # the channel a broken sample breaks
            if "garbage" in faults and slot == at["garbage"]:
                write(bytes(rng.randrange(256) for _ in range(40)).replace(b"\n", b"?") + b"\xff\xfe garbage")
                bad_lines += 1
                events.append("garbage")
            if "unknown" in faults and slot == at["unknown"]:
                write('{"type":"diag","heap_free":123456,"uptime_s":42}')
                deliver(s, sample_line(s, extra_top=',"temp_c":41.5', extra_ch=',"thd":0.031'))
                events.append("unknown")
            elif "error" in faults and slot == at["error"]:
                write(f'{{"type":"error","t_ms":{s["t_ms"]},"node":2,"code":"ct_open","msg":"CT clamp not detected"}}')
                deliver(s, sample_line(s))
                events.append("error")
            elif "malformed" in faults and slot == at["malformed"]:
                line = sample_line(s)
                write(line[: len(line) // 3])
                sent_seqs.append((s["boot"], s["seq"], False))
                bad_lines += 1
                events.append("malformed")
            elif "nan" in faults and slot == at["nan"]:
                write(sample_line(s, override=(other, "w", "NaN")))
                sent_seqs.append((s["boot"], s["seq"], False))
                bad_lines += 1
                events.append("nan")
            elif "wrong-type" in faults and slot == at["wrong-type"]:
                write(sample_line(s, override=(other, "w", '"' + s["ch"][other]["w"] + '"')))
                sent_seqs.append((s["boot"], s["seq"], True))
                bad_lines += 1
                events.append("wrong-type")
            elif "negative" in faults and slot == at["negative"]:
                write(sample_line(s, override=(0, "w", "-3.20")))
                sent_seqs.append((s["boot"], s["seq"], True))
                bad_lines += 1
                events.append("negative")
            elif "pf" in faults and slot == at["pf"]:
                write(sample_line(s, override=(0, "pf", "1.25")))
                sent_seqs.append((s["boot"], s["seq"], True))
                bad_lines += 1
                events.append("pf")
            elif "seq-gap" in faults and at["seq-gap"] <= slot < at["seq-gap"] + 3:
                sent_seqs.append((s["boot"], s["seq"], False))
                if slot == at["seq-gap"]:
                    events.append("seq-gap")
            elif "crlf" in faults and at["crlf"] <= slot < at["crlf"] + 5:
                deliver(s, sample_line(s), end="\r\n")
                if slot == at["crlf"]:
                    events.append("crlf")
            else:
                deliver(s, sample_line(s))
            last_write_wall = time.monotonic()
            slot += 1
    except HostGone:
        pass

    # Ground truth.
    lost = 0
    for boot in sorted({b for b, _, _ in sent_seqs}):
        seqs = [(q, ok) for b, q, ok in sent_seqs if b == boot]
        parsed = [i for i, (_, ok) in enumerate(seqs) if ok]
        if parsed:
            lost += sum(1 for i in range(parsed[0], parsed[-1] + 1) if not seqs[i][1])
    energy_by_boot, counter_by_boot = [], []
    for boot in sorted({r[0] for r in truth_rows}):
        e = c = 0.0
        for node in range(args.channels):
            rows = [r for r in truth_rows if r[0] == boot and r[3]["node"] == node]
            t_prev = w_prev = None
            t_cont = None
            for r in rows:
                t = r[2]
                if t_cont is None:
                    t_cont = t
                else:
                    t_cont += (t - t_prev) % 2**32
                w = float(r[3]["w"])
                if w_prev is not None:
                    e += (t_cont - t_last) * (w + w_prev) / 2000.0
                t_prev, t_last, w_prev = t, t_cont, w
            if rows and rows[0][3]["wh"] is not None:
                c += (float(rows[-1][3]["wh"]) - float(rows[0][3]["wh"])) * 3600.0
        energy_by_boot.append(e)
        counter_by_boot.append(c)
    summary = {
        "rate_hz": args.rate, "period_ms": period_ms, "channels": args.channels, "slots": slots,
        "faults": sorted(faults), "events": events,
        "delivered_samples": len(truth_rows),
        "bad_lines": bad_lines, "lost_samples": lost,
        "reboots": len(reboot_info), "reconnects": len(unplug_info),
        "energy_j_by_boot": energy_by_boot, "counter_j_by_boot": counter_by_boot,
        "reboot_info": reboot_info, "unplug_info": unplug_info,
        "wall_s": (time.monotonic() - start),
    }
    if args.truth:
        tmp = args.truth + ".tmp"
        with open(tmp, "w") as f:
            f.write("boot,seq,t_ms,node,w,v,a,pf,wh\n")
            for boot, seq, t, ch in truth_rows:
                f.write(f'{boot},{seq},{t},{ch["node"]},{ch["w"]},{ch["v"]},{ch["a"]},{ch["pf"]},{ch["wh"] or ""}\n')
        with open(args.truth + ".json.tmp", "w") as f:
            json.dump(summary, f, indent=1)
        os.replace(args.truth + ".json.tmp", args.truth + ".json")
        os.replace(tmp, args.truth)  # the CSV last: its presence means the run is complete
    log(f"done: {len(truth_rows)} samples delivered, {bad_lines} bad lines, {lost} lost, events {events}")

    # Keep the link up until the host closes it (socat exits) or the linger time passes.
    end = time.monotonic() + args.linger_s
    while time.monotonic() < end and socat.proc.poll() is None:
        time.sleep(0.05)
    try:
        os.close(fd)
    except OSError:
        pass
    socat.stop()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:
        sys.exit(0)
