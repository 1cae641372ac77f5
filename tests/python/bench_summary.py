"""Summarises the benchmark suite's JSON files (scripts/bench) into one table and suite.json,
with the issue's targets as ratios measured in the same run.

usage: bench_summary.py DIR
"""

import json
import os
import statistics
import sys


def load(d, name):
    path = os.path.join(d, name)
    return json.load(open(path)) if os.path.exists(path) else None


def load_rounds(d, name):
    """`name.1.json`, `name.2.json`, ...: each numeric field's median over the rounds (plus
    `rounds`, the count); `name.json` alone if there are no rounds."""
    found = []
    i = 1
    while os.path.exists(os.path.join(d, f"{name}.{i}.json")):
        found.append(load(d, f"{name}.{i}.json"))
        i += 1
    if not found:
        return load(d, name + ".json")
    merged = dict(found[0])
    for key, value in found[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            merged[key] = statistics.median(r[key] for r in found)
    merged["rounds"] = len(found)
    return merged


def main():
    d = sys.argv[1]
    rows = []

    def row(what, value, unit="images/s", target=None):
        rows.append({"what": what, "value": value, "unit": unit, "target": target})

    step = load(d, "step_throughput.json")
    lt = load_rounds(d, "libtorch_cpu")
    eager = load_rounds(d, "pytorch_eager_cpu")
    ddp = load(d, "pytorch_ddp.json")
    eager32 = load_rounds(d, "pytorch_eager_cpu_micro32")
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
        # Each side at its faster way of running a step of 128.
        best_torch = max(eager["images_per_sec"], eager32["images_per_sec"])
        best_flex = max(lt["images_per_sec_cpu_flex"], lt["images_per_sec_cpu_flex_micro32"])
        best_lt = max(lt["images_per_sec_device"], lt["images_per_sec_device_micro32"])
        row("LibTorch / PyTorch eager, each its faster way", best_lt / best_torch, "ratio", ">= 1.0")
        row("pure Rust / PyTorch eager, each its faster way", best_flex / best_torch, "ratio", ">= 0.5")
    if step:
        by = {r["setup"]: r["images_per_sec"] for r in step["rows"]}
        single = next(v for k, v in by.items() if k.startswith("single process, batch 128 as"))
        two = next((v for k, v in by.items() if "2 worker" in k and k.endswith("prefetch on")), None)
        two_blocks = next((v for k, v in by.items() if "2 worker" in k and "2 micro-batches a task" in k), None)
        one = next((v for k, v in by.items() if "1 worker" in k and "prefetch on" in k), None)
        row("ctcluster single process, no network", single)
        if one:
            row("ctcluster coordinator + 1 worker, loopback", one)
        if two:
            row("ctcluster coordinator + 2 workers, loopback", two)
            row("2 workers / single process (ctcluster)", two / single, "ratio", ">= 0.95")
        if two_blocks:
            row("ctcluster coordinator + 2 workers, 2 micro-batches a task", two_blocks)
            row("2 workers, 2 micro-batches a task / single process", two_blocks / single, "ratio")
    if ddp:
        row("PyTorch one process, no DDP", ddp["single_process_images_per_sec"])
        row(f"PyTorch DDP, {ddp['ddp_processes']} gloo processes", ddp["ddp_images_per_sec"])
        row("DDP / one process (PyTorch)", ddp["scaling_efficiency"], "ratio")
        # The pure-Rust workers of step_throughput (in one process) for scale; the target of
        # 1.0 is the LibTorch workers' end to end, below.
        if step and two:
            row("ctcluster 2 pure-Rust workers (in process) / PyTorch DDP 2 processes", two / ddp["ddp_images_per_sec"], "ratio")
        if step and two_blocks:
            row("ctcluster 2 pure-Rust workers, 2 micro-batches a task / PyTorch DDP", two_blocks / ddp["ddp_images_per_sec"], "ratio")
    vs = load(d, "ctcluster_vs_ddp.json")
    if vs:
        n = vs["workers"]
        row(f"ctcluster, coordinator + {n} LibTorch workers, end to end", vs["ctcluster_images_per_sec"])
        row(f"PyTorch DDP, {n} gloo processes, same minutes", vs["ddp_images_per_sec"])
        row(f"ctcluster {n} LibTorch workers / PyTorch DDP {n} processes", vs["ratio"], "ratio", ">= 1.0")
    zoo, tzoo = load(d, "zoo_throughput.json"), load(d, "torch_zoo.json")
    if zoo:
        torch_by = {r["architecture"]: r["images_per_sec"] for r in (tzoo or {}).get("rows", [])}
        for r in zoo["rows"]:
            row(f"{r['architecture']} step, 28x28, burn-flex", r["images_per_sec"])
            if r["architecture"] in torch_by:
                row(f"{r['architecture']} step, 28x28, PyTorch eager", torch_by[r["architecture"]])
                row(f"{r['architecture']}: burn-flex / PyTorch eager", r["images_per_sec"] / torch_by[r["architecture"]], "ratio")
    red = load(d, "reduce_adam.json")
    if red:
        worst = max(r["fused_seconds"] / r["bound_seconds"] for r in red["rows"])
        row("reduce + Adam, worst fused / bandwidth bound", worst, "ratio", "<= 2.0")
    scale = load(d, "scale.json")
    if scale:
        def busiest(r):
            # Older scale.json files have no aggregator columns: the coordinator was the busiest.
            return r.get("busiest_process_received_bytes_per_step", r["coordinator_received_bytes_per_step"])
        today = next((r for r in scale if r["case"]["micro_batches_per_task"] == 1 and r["case"]["micro_batch_size"] == 32
                      and r["case"].get("aggregators", 0) == 0), None)
        for r in scale:
            c = r["case"]
            what = f"scale, ResNet-18, {r['workers']} workers, batch {r['batch_size']}: {c['name']}"
            row(f"{what}: coordinator MB received a step", r["coordinator_received_bytes_per_step"] / 1e6, "MB")
            row(f"{what}: busiest process MB received a step", busiest(r) / 1e6, "MB")
            row(f"{what}: coordinator peak RSS", r["coordinator_peak_rss_bytes"] / 1e6, "MB")
            if c.get("aggregators", 0):
                row(f"{what}: largest aggregator peak RSS", r["aggregator_peak_rss_bytes"] / 1e6, "MB")
            row(f"{what}: step time", r["step_seconds"], "s")
            if today and r is not today:
                target = "<= 0.25" if c.get("aggregators", 0) == 4 and c["micro_batches_per_task"] == 1 else None
                row(f"{what}: busiest process bytes / today's", busiest(r) / busiest(today), "ratio", target)
    if lt and "rounds" in lt:
        print(f"\nseed CNN step rows: median of {lt['rounds']} rounds, taken in turns")
    print("\n| measurement | value | target |")
    print("|---|---:|---|")
    for r in rows:
        v = f"{r['value']:.2f}" if r["unit"] == "ratio" else f"{r['value']:.0f} {r['unit']}"
        print(f"| {r['what']} | {v} | {r['target'] or ''} |")
    json.dump({"rows": rows}, open(os.path.join(d, "suite.json"), "w"), indent=2)
    print(f"\nwritten to {os.path.join(d, 'suite.json')}")


if __name__ == "__main__":
    main()
