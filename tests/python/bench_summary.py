"""Summarises the benchmark suite's JSON files (scripts/bench) into one table and suite.json,
with the issue's targets as ratios measured in the same run.

usage: bench_summary.py DIR
"""

import json
import os
import sys


def load(d, name):
    path = os.path.join(d, name)
    return json.load(open(path)) if os.path.exists(path) else None


def main():
    d = sys.argv[1]
    rows = []

    def row(what, value, unit="images/s", target=None):
        rows.append({"what": what, "value": value, "unit": unit, "target": target})

    step = load(d, "step_throughput.json")
    lt = load(d, "libtorch_cpu.json")
    eager = load(d, "pytorch_eager_cpu.json")
    ddp = load(d, "pytorch_ddp.json")
    eager32 = load(d, "pytorch_eager_cpu_micro32.json")
    if lt and eager:
        row("seed CNN step, burn-flex (pure Rust), batch 128 in one pass", lt["images_per_sec_cpu_flex"])
        row("seed CNN step, LibTorch CPU through burn-tch, batch 128 in one pass", lt["images_per_sec_device"])
        row("seed CNN step, PyTorch eager, batch 128 in one pass", eager["images_per_sec"])
        row("LibTorch / PyTorch eager, one pass", lt["images_per_sec_device"] / eager["images_per_sec"], "ratio", ">= 1.0")
        row("pure Rust / PyTorch eager, one pass", lt["images_per_sec_cpu_flex"] / eager["images_per_sec"], "ratio", ">= 0.5")
    if lt and eager32 and "images_per_sec_cpu_flex_micro32" in lt:
        row("seed CNN step, burn-flex, batch 128 as 4 x 32 (worker default)", lt["images_per_sec_cpu_flex_micro32"])
        row("seed CNN step, LibTorch CPU, batch 128 as 4 x 32", lt["images_per_sec_device_micro32"])
        row("seed CNN step, PyTorch eager, batch 128 as 4 x 32", eager32["images_per_sec"])
        row("LibTorch / PyTorch eager, 4 x 32", lt["images_per_sec_device_micro32"] / eager32["images_per_sec"], "ratio", ">= 1.0")
        row("pure Rust / PyTorch eager, 4 x 32", lt["images_per_sec_cpu_flex_micro32"] / eager32["images_per_sec"], "ratio", ">= 0.5")
        best_torch = max(eager["images_per_sec"], eager32["images_per_sec"])
        row("pure Rust (4 x 32) / PyTorch eager (its faster way)", lt["images_per_sec_cpu_flex_micro32"] / best_torch, "ratio", ">= 0.5")
        row("LibTorch (faster way) / PyTorch eager (its faster way)", max(lt["images_per_sec_device"], lt["images_per_sec_device_micro32"]) / best_torch, "ratio", ">= 1.0")
    if step:
        by = {r["setup"]: r["images_per_sec"] for r in step["rows"]}
        single = next(v for k, v in by.items() if k.startswith("single process, batch 128 as"))
        two = next((v for k, v in by.items() if "2 worker" in k and "prefetch on" in k), None)
        one = next((v for k, v in by.items() if "1 worker" in k and "prefetch on" in k), None)
        row("ctcluster single process, no network", single)
        if one:
            row("ctcluster coordinator + 1 worker, loopback", one)
        if two:
            row("ctcluster coordinator + 2 workers, loopback", two)
            row("2 workers / single process (ctcluster)", two / single, "ratio", ">= 0.95")
    if ddp:
        row("PyTorch one process, no DDP", ddp["single_process_images_per_sec"])
        row(f"PyTorch DDP, {ddp['ddp_processes']} gloo processes", ddp["ddp_images_per_sec"])
        row("DDP / one process (PyTorch)", ddp["scaling_efficiency"], "ratio")
    red = load(d, "reduce_adam.json")
    if red:
        worst = max(r["fused_seconds"] / r["bound_seconds"] for r in red["rows"])
        row("reduce + Adam, worst fused / bandwidth bound", worst, "ratio", "<= 2.0")
    print("\n| measurement | value | target |")
    print("|---|---:|---|")
    for r in rows:
        v = f"{r['value']:.2f}" if r["unit"] == "ratio" else f"{r['value']:.0f} {r['unit']}"
        print(f"| {r['what']} | {v} | {r['target'] or ''} |")
    json.dump({"rows": rows}, open(os.path.join(d, "suite.json"), "w"), indent=2)
    print(f"\nwritten to {os.path.join(d, 'suite.json')}")


if __name__ == "__main__":
    main()
