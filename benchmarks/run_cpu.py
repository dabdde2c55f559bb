"""The CPU results of benchmarks/README.md, regenerated on the machine at hand by one command.

bench-20m on real conversations (alpaca demo and FastChat's dummy ShareGPT set), every padding strategy,
with and without llama_hw's runtime patches, plus full 2048-token rows for MFU. Each configuration runs
`--repeats` times; `bench run` measures each until its median rate is known to +-5 % (at most
`--time-limit` seconds of measuring). A run starts once the 1-minute load average is below `--max-load`,
or after waiting `--max-wait` seconds — then it runs anyway and the load is in its record and the table:
figures measured on a busy machine say so. The fp32 GEMM peak that MFU divides by is probed first (the
best of 5 probes of the CPU backend's own GEMM probe, each with its load average) and handed to every run
as LLAMA_HW_PEAK_TFLOPS; it is written to `--peak-file`. Finally the markdown table (machine, peak, load
per configuration, `bench compare`'s columns) is written to `--table` and replaces the section of
benchmarks/README.md between its run_cpu.py markers; `--table-only` rebuilds both from the records.

    python benchmarks/run_cpu.py [--repeats 3] [--max-load 1.0] [--only NAME ...] [--output F.jsonl] [--table F.md]
    python benchmarks/run_cpu.py --table-only
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from llama_hw.bench.results import read_jsonl
from llama_hw.utils.shared import shared_path

HERE = Path(__file__).resolve().parent
ALPACA = str(shared_path("data", "alpaca", "alpaca_en_demo.json"))
SHAREGPT = str(shared_path("data", "conversations", "fastchat_dummy_conversation.json"))
TOKENIZER = str(shared_path("data", "tokenizers", "llama2"))
MODEL = ["--model", "bench-20m", "--seq-len", "2048", "--micro-batch", "4", "--precision", "fp32", "--device", "cpu"]
ON_ALPACA = [*MODEL, "--data_path", ALPACA, "--template", "vicuna_v1.1", "--tokenizer", TOKENIZER]
ON_SHAREGPT = [*MODEL, "--data_path", SHAREGPT, "--template", "vicuna_v1.1", "--tokenizer", TOKENIZER]
BEGIN, END = "<!-- run_cpu.py: begin -->", "<!-- run_cpu.py: end -->"  # the README's generated section
FEW = ["--min-steps", "6"]  # configurations of several seconds a step

# name -> flags; the step count is bench run's own (until the median is stable, within --time-limit)
RUNS = {
    "alpaca max, no patches (FastChat-style)": [*ON_ALPACA, "--padding", "max", "--patches", "none", "--warmup", "1",
                                                 *FEW],
    "alpaca max": [*ON_ALPACA, "--padding", "max", "--warmup", "2"],
    "alpaca dynamic, no patches": [*ON_ALPACA, "--padding", "dynamic", "--patches", "none", "--warmup", "3"],
    "alpaca dynamic (default)": [*ON_ALPACA, "--padding", "dynamic", "--warmup", "3"],
    "alpaca packed, no patches": [*ON_ALPACA, "--padding", "packed", "--patches", "none", "--warmup", "1", *FEW],
    "alpaca packed": [*ON_ALPACA, "--padding", "packed", "--warmup", "2"],
    "sharegpt max, no patches (FastChat-style)": [*ON_SHAREGPT, "--padding", "max", "--patches", "none",
                                                   "--warmup", "1", *FEW],
    "sharegpt dynamic (default)": [*ON_SHAREGPT, "--padding", "dynamic", "--warmup", "3"],
    "sharegpt packed": [*ON_SHAREGPT, "--padding", "packed", "--warmup", "2"],
    "full 2048-token rows (MFU)": [*MODEL, "--warmup", "2"],
    "full 2048-token rows, no patches": [*MODEL, "--patches", "none", "--warmup", "2"],
}


def wait_for_quiet(max_load: float, poll_s: float = 15.0, give_up_s: float = 3600.0) -> float:
    """Block until the 1-minute load average is below `max_load` or `give_up_s` passed; returns the load."""
    waited = 0.0
    while (load := os.getloadavg()[0]) >= max_load and waited < give_up_s:
        print(f"  load {load:.2f} >= {max_load}: waiting", file=sys.stderr, flush=True)
        time.sleep(poll_s)
        waited += poll_s
    return load


def probe_peak(max_load: float, max_wait: float, probes: int = 5) -> dict:
    """The CPU backend's fp32 GEMM probe `probes` times (best of 3 repeats each), with the load before each."""
    import torch

    from llama_hw.backends.cpu import PROBE_REPEATS, measure_gemm_tflops

    wait_for_quiet(max_load, give_up_s=max_wait)
    results = []
    for _ in range(probes):
        load = os.getloadavg()[0]
        results.append({"tflops": round(measure_gemm_tflops(torch.float32, repeats=PROBE_REPEATS), 4), "load_1m": load})
    best = max(results, key=lambda r: r["tflops"])
    return {"probes": results, "used": best["tflops"], "load_1m_of_best": best["load_1m"],
            "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}  # fmt: skip


def machine_of(record: dict) -> dict:
    """The machine a run record ran on, as the table names it (from the record, not from the machine rendering)."""
    host, versions = record["host"], record.get("versions", {})
    return {"cpu": host.get("cpu", "unknown CPU"), "cores": host.get("cpu_count"),
            "memory_gib": host.get("memory_bytes", 0) / 2**30, "os": host.get("os", "unknown OS"),
            "python": versions.get("python", "?"), "torch": versions.get("torch", "?"),
            "torch_threads": host.get("torch_threads")}  # fmt: skip


def table(records: list[dict], peak: dict) -> str:
    """The README's section: machine, peak, `bench compare`'s table and the load each configuration ran under."""
    from llama_hw.bench.compare import markdown_table, pick_baseline, rows_by_config

    host = machine_of(records[0])

    rows, notes = rows_by_config(records)
    baseline = pick_baseline(rows, next((r.name for r in rows if r.name.startswith("alpaca max, no patches")), None))
    loads: dict[str, list[dict]] = {}
    for record in records:
        loads.setdefault(record["name"], []).append(record["host"])
    commits = sorted({f"{r['git']['commit'][:7]}{' (dirty)' if r['git']['dirty'] else ''}"
                      for r in records if r.get("git", {}).get("commit")})  # fmt: skip
    probes = ", ".join(f"{p['tflops']} (load {p['load_1m']:.2f})" for p in peak["probes"])
    lines = [
        f"Machine: {host['cpu']}, {host['cores']} cores, {host['memory_gib']:.0f} GiB RAM, {host['os']}; Python "
        f"{host['python']}, torch {host['torch']} ({host['torch_threads']} threads).",
        f"fp32 GEMM peak (MFU's denominator): {peak['used']} TFLOP/s, the best of these probes at "
        f"{peak['measured_at']}: {probes}.",
        f"Commit(s): {', '.join(commits) or 'unknown'}; {len(records)} runs; generated by "
        "`python benchmarks/run_cpu.py`.",
        "",
        markdown_table(rows, baseline),
        "",
        "| NAME | 1-minute load at start (median, max) | at end (median, max; includes the run's own threads) |",
        "|---|---:|---:|",
    ]
    for name, hosts in loads.items():
        start = [h["load_average_1m_at_start"] for h in hosts if h.get("load_average_1m_at_start") is not None]
        end = [h["load_average_1m_at_end"] for h in hosts if h.get("load_average_1m_at_end") is not None]
        lines.append(f"| {name} | {_load(start)} | {_load(end)} |")
    lines += [f"\nnote: {note}" for note in notes]
    return "\n".join([*lines, "", *targets(rows)]) + "\n"


def targets(rows: list) -> list[str]:
    """The benchmark targets (issues 7 and 19) against these rows; a target whose runs are absent is left out."""
    by_name = {row.name: row for row in rows}
    lines = ["| target | measured here | |", "|---|---|---|"]

    def ratio(numerator: str, denominator: str) -> float | None:
        if numerator in by_name and denominator in by_name:
            return by_name[numerator].effective / by_name[denominator].effective
        return None

    def met(ok: bool) -> str:
        return "met" if ok else "**not met**"

    def percent(fraction: float) -> str:
        return f"{100 * fraction:.1f} %"

    def rates(numerator: str, denominator: str) -> str:
        return f"{by_name[numerator].effective:,.0f} / {by_name[denominator].effective:,.0f}"

    default = ratio("alpaca dynamic (default)", "alpaca max, no patches (FastChat-style)")
    if default is not None:
        lines.append(f"| default pipeline >= 6x FastChat-style pad-to-max (alpaca, effective tokens/s) | "
                     f"{rates('alpaca dynamic (default)', 'alpaca max, no patches (FastChat-style)')} = **{default:.1f}x** | "
                     f"{met(default >= 6)} |")  # fmt: skip
    packed, sharegpt = ratio("alpaca packed", "alpaca dynamic (default)"), ratio("sharegpt packed",
                                                                                 "sharegpt dynamic (default)")
    if packed is not None:
        also = f" (ShareGPT: {sharegpt:.2f}x)" if sharegpt is not None else ""
        lines.append(f"| packed >= 1.5x dynamic padding (alpaca, batches in data order) | "
                     f"{rates('alpaca packed', 'alpaca dynamic (default)')} = **{packed:.2f}x**{also} | "
                     f"{met(packed >= 1.5)} |")  # fmt: skip
    full, stock = by_name.get("full 2048-token rows (MFU)"), by_name.get("full 2048-token rows, no patches")
    if full is not None and full.mfu is not None and full.model_flops_utilization is not None:
        versus = (f" (stock transformers: {percent(stock.model_flops_utilization)} / {percent(stock.mfu)})"
                  if stock is not None and stock.mfu is not None else "")  # fmt: skip
        lines.append(f"| MFU >= 50 % of the measured fp32 GEMM peak at full 2048-token rows | model FLOPs "
                     f"**{percent(full.model_flops_utilization)}**, executed {percent(full.mfu)}{versus} | "
                     f"{met(full.model_flops_utilization >= 0.5)} |")  # fmt: skip
    executed = [row.mfu for row in rows if row.mfu is not None]
    model = [row.model_flops_utilization for row in rows if row.model_flops_utilization is not None]
    if executed and model:
        lines.append(f"| no MFU above 100 % | largest executed {percent(max(executed))}, model FLOPs "
                     f"{percent(max(model))} | {met(max(executed) <= 1 and max(model) <= 1)} |")  # fmt: skip
    return lines if len(lines) > 2 else []


def replace_section(readme: str, section: str) -> str:
    """`readme` with the text between the BEGIN and END markers replaced by `section`."""
    if readme.count(BEGIN) != 1 or readme.count(END) != 1 or readme.index(BEGIN) > readme.index(END):
        raise ValueError(f"the README needs exactly one {BEGIN!r} line followed by one {END!r} line")
    head, rest = readme.split(BEGIN, 1)
    return f"{head}{BEGIN}\n{section}{END}{rest.split(END, 1)[1]}"


def _load(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}, {max(values):.2f}" if values else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-load", type=float, default=1.0, help="start each run below this 1-minute load")
    parser.add_argument("--max-wait", type=float, default=600.0, help="then start anyway after this many seconds")
    parser.add_argument("--time-limit", type=float, default=90.0, help="seconds of measuring per run at most")
    parser.add_argument("--only", nargs="*", help="run names to run (default: all)")
    # results/cpu.jsonl and cpu_peak.json hold the history of another machine: new runs go beside them
    parser.add_argument("--output", type=Path, default=HERE / "results" / "cpu_latest.jsonl")
    parser.add_argument("--peak-file", type=Path, default=HERE / "results" / "cpu_latest_peak.json")
    parser.add_argument("--table", type=Path, default=HERE / "results" / "cpu_latest_table.md")
    parser.add_argument("--readme", type=Path, default=HERE / "README.md",
                        help=f"the table replaces what stands between {BEGIN} and {END} here")  # fmt: skip
    parser.add_argument("--table-only", action="store_true",
                        help="measure nothing: rebuild the table and README section from --output and --peak-file")
    args = parser.parse_args()
    readme = args.readme.read_text()
    try:
        replace_section(readme, "")  # fail on a README without the markers before an hour of measuring
    except ValueError as error:
        sys.exit(f"error: {args.readme}: {error}")
    if args.table_only:
        peak = json.loads(args.peak_file.read_text())
        # the records of the run that probed this peak: it is probed first, so they all come after it
        records = [r for r in read_jsonl(args.output) if r["time"] >= peak["measured_at"]]
        if not records:
            sys.exit(f"error: {args.output} has no run after the peak probe of {args.peak_file} "
                     f"({peak['measured_at']}); run without --table-only")  # fmt: skip
    else:
        peak, records = measure(args)
    section = table(records, peak)
    args.table.write_text(section)
    # read again: the README may have been edited during the hour of measuring
    args.readme.write_text(replace_section(args.readme.read_text(), section))
    print(f"table: {args.table}; section of {args.readme} replaced", file=sys.stderr)


def measure(args: argparse.Namespace) -> tuple[dict, list[dict]]:
    """Probe the peak (unless given), run every configuration `--repeats` times; the peak and the new records."""
    names = args.only or list(RUNS)
    unknown = [name for name in names if name not in RUNS]
    if unknown:
        sys.exit(f"error: unknown run name(s) {', '.join(map(repr, unknown))}; the runs are: {', '.join(RUNS)}")
    env = dict(os.environ)
    peak = {"probes": [], "used": None, "measured_at": None, "source": "LLAMA_HW_PEAK_TFLOPS"}
    if "LLAMA_HW_PEAK_TFLOPS" not in env:
        peak = probe_peak(args.max_load, args.max_wait)
        env["LLAMA_HW_PEAK_TFLOPS"] = f"fp32={peak['used']}"
        args.peak_file.parent.mkdir(parents=True, exist_ok=True)
        args.peak_file.write_text(json.dumps(peak, indent=1) + "\n")
        print(f"fp32 GEMM peak: {peak['used']} TFLOP/s ({peak['probes']})", file=sys.stderr, flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    first = len(args.output.read_text().splitlines()) if args.output.exists() else 0
    for repeat in range(args.repeats):
        for name in names:
            load = wait_for_quiet(args.max_load, give_up_s=args.max_wait)
            print(f"[{repeat + 1}/{args.repeats}] {name} (load {load:.2f})", file=sys.stderr, flush=True)
            command = [sys.executable, "-m", "llama_hw.bench", "run", *RUNS[name], "--time-limit", str(args.time_limit),
                       "--name", name, "--output", str(args.output), "--json"]  # fmt: skip
            result = subprocess.run(command, capture_output=True, text=True, env=env)
            if result.returncode != 0:
                sys.exit(f"{name} failed:\n{result.stderr[-3000:]}")
    records = read_jsonl(args.output)[first:]  # this invocation's runs
    if peak["used"] is None:
        peak.update(used=records[0]["peak_tflops"], measured_at="(given)")
    return peak, records


if __name__ == "__main__":
    main()
