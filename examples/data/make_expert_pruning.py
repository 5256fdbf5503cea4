#!/usr/bin/env python3
"""Regenerates examples/data/expert-pruning/: an illustrative expert-pruning sweep as EPI result
JSON files, for trying `epi pareto`, `epi bars` and `epi curve` at once. Standard library only,
deterministic.

ILLUSTRATIVE, SYNTHETIC VALUES — NOT MEASUREMENTS. They are shaped like what the expert-pruning
paper sets out to measure: Qwen3-30B-A3B (128 experts per layer, 8 active) at Q4_K_M on a 4x
Raspberry Pi 5 16GB cluster under distributed-llama, the least-used experts (by router frequency)
dropped from every layer, 0 to 96 of 128. The baseline (0 dropped) is the example submission's
result (examples/data/submission/epi_001.json: 5.613 J/token, accuracy 0.7427, 38.3 W). A smaller
model runs a little faster at about the same power, so J/token falls by up to ~22 %; accuracy holds
to ~32 dropped and then falls away. A control arm drops experts at random (same sizes, worse
accuracy: dominated points on the Pareto plot).

Every file is internally consistent: epi = joules_per_token / accuracy_composite,
joules_per_token = total_joules / total_tokens, composite = mean of the three scores (equal
weights), kwh = total_joules / 3.6e6, duration = total_joules / avg_watts, and the EPI interval is
[J/T·(1−e)/A_hi, J/T·(1+e)/A_lo] with e = 0.02 (the instrument) as `epi calculate` computes it."""
import json
import math
import uuid
from pathlib import Path

OUT = Path(__file__).parent / "expert-pruning"
TOKENS = 24576          # generated tokens of the benchmark run (as the submission example)
PROMPT_TOKENS = 1187840  # prompt tokens of the same run
BASE = {"mmlu_5shot": 0.781, "arc_challenge_25shot": 0.642, "hellaswag_10shot": 0.805}
# Relative loss of each benchmark per unit of damage (ARC-Challenge suffers most, HellaSwag least).
SENSITIVITY = {"mmlu_5shot": 1.0, "arc_challenge_25shot": 1.35, "hellaswag_10shot": 0.7}

# (experts dropped, method, J/token, avg watts, damage)
RUNS = [
    (0, None, 5.6129, 38.33, 0.000),
    (8, "frequency", 5.5230, 38.27, 0.0023),
    (16, "frequency", 5.4310, 38.21, 0.0057),
    (24, "frequency", 5.3330, 38.13, 0.0118),
    (32, "frequency", 5.2210, 38.05, 0.0223),
    (48, "frequency", 5.0180, 37.94, 0.0603),
    (64, "frequency", 4.8020, 37.82, 0.1357),
    (80, "frequency", 4.5910, 37.71, 0.2515),
    (96, "frequency", 4.3830, 37.60, 0.3967),
    (16, "random", 5.4420, 38.22, 0.0511),
    (32, "random", 5.2340, 38.06, 0.1100),
    (64, "random", 4.8190, 37.84, 0.2999),
]


def result(i, dropped, method, jpt, watts, damage):
    scores = {k: round(v * (1 - SENSITIVITY[k] * damage), 4) for k, v in BASE.items()}
    acc = sum(scores.values()) / 3
    energy = jpt * TOKENS
    duration = energy / watts
    # 95 % accuracy interval: Wilson-like half-width, scaled from the baseline's ±0.0098.
    hw = 0.0098 * math.sqrt(acc * (1 - acc) / (0.7427 * 0.2573))
    a_lo, a_hi = acc - hw, acc + hw
    e = 0.02
    surgery = "none (baseline)" if dropped == 0 else f"drop {dropped} experts ({method})"
    params = {"experts_dropped": dropped}
    if method:
        params["method"] = method
    name = f"epi_drop{dropped:02d}_{method or 'baseline'}.json"
    return name, {
        "epi": jpt / acc,
        "joules_per_token": jpt,
        "accuracy_composite": acc,
        "energy": {
            "total_joules": round(energy, 4),
            "total_tokens": TOKENS,
            "avg_watts": watts,
            "peak_watts": round(watts + 3.04, 2),
            "duration_seconds": round(duration, 1),
            "kwh": energy / 3.6e6,
            "token_basis": "generated",
            "method": "integrated",
            "source": "trace-csv",
            "sample_rate_hz": 1.0,
            "coverage": 1.0,
            "channels": 4,
        },
        "accuracy": {
            **scores,
            "composite": acc,
            "weights": {"arc_challenge": 1 / 3, "hellaswag": 1 / 3, "mmlu": 1 / 3},
        },
        "model": "qwen3-30b-a3b",
        "quantization": "Q4_K_M",
        "surgery": surgery,
        "hardware": "4x Pi 5 16GB (distributed-llama)",
        "instrument": "epi-meter v1.0",
        "measurement_point": "AC inlet per node",
        "environment": {"ambient_temp_c": 22.0, "frequency_governor": "performance"},
        "run_metadata": {
            "run_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"epi-bench/examples/expert-pruning/{name}")),
            "timestamp_utc": f"2026-05-{16 + i // 6:02d}T{8 + 2 * (i % 6):02d}:00:00Z",
            "repetition": 1,
            "epi_meter_firmware": "0.1.0",
            "epi_bench_version": "0.1.0",
            "inference_engine": "distributed-llama",
            "inference_engine_version": "0.16.4",
            "data_note": "illustrative synthetic values, not a measurement (examples/data/make_expert_pruning.py)",
        },
        "uncertainty": {
            "energy_rel_accuracy": e,
            "accuracy_ci95": [a_lo, a_hi],
            "epi_ci95": [jpt * (1 - e) / a_hi, jpt * (1 + e) / a_lo],
            "note": "accuracy: 95% interval from item counts; energy: instrument accuracy; EPI interval combines both",
        },
        "metrics": {
            "ept_in": energy / PROMPT_TOKENS,
            "ept_out": jpt,
            "ept_total": energy / (PROMPT_TOKENS + TOKENS),
        },
        "surgery_params": params,
    }


OUT.mkdir(exist_ok=True)
for i, run in enumerate(RUNS):
    name, r = result(i, *run)
    (OUT / name).write_text(json.dumps(r, indent=2) + "\n")
    print(f"{name}: J/T {r['joules_per_token']:.4f}  A {r['accuracy_composite']:.4f}  EPI {r['epi']:.4f}")
