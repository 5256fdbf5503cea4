#!/usr/bin/env python3
"""Regenerates examples/data/submission/power_trace_001.csv: a synthetic but realistic one-hour
trace of a 4-node Raspberry Pi 5 cluster (AC inlet per node, 1 Hz, as the epi-meter logs it via the
Orchestrator) running distributed-llama. Deterministic (fixed seed); standard library only.

Shape: each node idles near 3.3 W at the inlet; under distributed-llama inference the root node
(node 0) draws ~10.6 W and workers ~9.7 W, with dips of a few seconds between benchmark queries
(prompt handling on the root only) and ±0.15 W noise. Mains 121.3 V, power factor ~0.99.
The first and last few seconds are idle (the run starts and ends inside the window)."""
import math
import random
import sys
from pathlib import Path

out = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "submission" / "power_trace_001.csv")
rng = random.Random(2026)
SECONDS = 3600
NODES = 4
with out.open("w") as f:
    f.write("timestamp_ms,node_id,watts_rms,volts_rms,amps_rms,power_factor\n")
    for s in range(SECONDS):
        # A query every ~37 s; the 3 s between queries are lighter on workers.
        phase = s % 37
        between = phase < 3
        active = 5 <= s < SECONDS - 5
        for n in range(NODES):
            if not active:
                w = 3.3 + 0.05 * n
            elif between:
                w = (7.9 if n == 0 else 4.6) + 0.1 * n
            else:
                w = (10.6 if n == 0 else 9.7) + 0.35 * math.sin(s / 53.0 + n) + 0.02 * n
            w += rng.gauss(0.0, 0.15)
            v = 121.3 + rng.gauss(0.0, 0.08)
            pf = min(1.0, 0.991 + rng.gauss(0.0, 0.002))
            a = w / (v * pf)
            f.write(f"{s * 1000},{n},{w:.3f},{v:.3f},{a:.4f},{pf:.4f}\n")
print(f"wrote {out}")
