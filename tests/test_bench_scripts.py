"""The benchmark scripts' own logic: the README section run_cpu.py writes, with the machine and the load."""

from __future__ import annotations

import json
import sys

import pytest
from bench_support import record, write_jsonl
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

import run_cpu  # noqa: E402 (benchmarks/ is a folder of scripts)

GIT = {"commit": "a" * 40, "dirty": False}
PEAK = {"probes": [{"tflops": 0.138, "load_1m": 0.3}, {"tflops": 0.12, "load_1m": 0.9}], "used": 0.138,
        "measured_at": "2026-12-01T23:40:00+00:00"}  # fmt: skip


def host(start: float, end: float) -> dict:
    return {"cpu": "AMD EPYC", "cpu_count": 2, "memory_bytes": 8 * 2**30, "os": "Linux", "torch_threads": 2,
            "load_average_1m_at_start": start, "load_average_1m_at_end": end}  # fmt: skip


def runs(time: str = "2026-12-01T23:45:00+00:00") -> list[dict]:
    versions = {"python": "3.11.7", "torch": "2.13"}
    return [
        record("alpaca max, no patches (FastChat-style)", 200, host=host(0.2, 2.1), git=GIT, time=time,
               versions=versions),  # fmt: skip
        record("alpaca packed", 2000, host=host(0.4, 2.3), git=GIT, time=time, versions=versions),
        record("alpaca packed", 1800, host=host(3.0, 5.0), git=GIT, time=time, versions=versions),
    ]


def test_the_table_names_the_machine_the_runs_ran_on_the_peak_and_the_load_of_every_configuration():
    text = run_cpu.table(runs(), PEAK)
    assert text.startswith("Machine: AMD EPYC, 2 cores, 8 GiB RAM, Linux; Python 3.11.7, torch 2.13 (2 threads).")
    assert ("0.138 TFLOP/s, the best of these probes at 2026-12-01T23:40:00+00:00: 0.138 (load 0.30), "
            "0.12 (load 0.90)") in text
    assert "Commit(s): aaaaaaa; 3 runs" in text
    assert "| alpaca packed | 1.70, 3.00 | 3.65, 5.00 |" in text  # median and max of the two runs
    assert "| alpaca packed | 1,900 |" in text and "| 9.50x |" in text  # compare's row: medians, ratio to FastChat


def test_the_readme_section_between_the_markers_is_replaced_and_nothing_else():
    readme = f"# Benchmarks\nintro\n{run_cpu.BEGIN}\nold table\n{run_cpu.END}\nafter\n"
    assert run_cpu.replace_section(readme, "new\n") == f"# Benchmarks\nintro\n{run_cpu.BEGIN}\nnew\n{run_cpu.END}\nafter\n"
    for broken in ("no markers\n", f"{run_cpu.END}\n{run_cpu.BEGIN}\n", f"{run_cpu.BEGIN}\n{run_cpu.BEGIN}\n{run_cpu.END}"):
        with pytest.raises(ValueError, match="exactly one"):
            run_cpu.replace_section(broken, "x")


def test_table_only_rebuilds_the_readme_from_the_runs_after_the_peak_probe(tmp_path, monkeypatch):
    older = runs(time="2026-11-30T10:00:00+00:00")  # another machine's runs earlier in the appended file
    for r in older:
        r["host"]["cpu"] = "Old CPU"
    output = write_jsonl(tmp_path / "cpu_latest.jsonl", *older, *runs())
    peak_file = tmp_path / "peak.json"
    peak_file.write_text(json.dumps(PEAK))
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{run_cpu.BEGIN}\nold\n{run_cpu.END}\nafter\n")
    argv = ["run_cpu.py", "--table-only", "--output", str(output), "--peak-file", str(peak_file),
            "--table", str(tmp_path / "table.md"), "--readme", str(readme)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    run_cpu.main()
    text = readme.read_text()
    assert text.startswith(f"intro\n{run_cpu.BEGIN}\nMachine: AMD EPYC") and text.endswith(f"{run_cpu.END}\nafter\n")
    assert "Old CPU" not in text and "; 3 runs;" in text
    assert (tmp_path / "table.md").read_text() in text


def test_a_readme_without_the_markers_is_refused_before_anything_runs(tmp_path, monkeypatch, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("no markers here\n")
    monkeypatch.setattr(sys, "argv", ["run_cpu.py", "--readme", str(readme), "--output", str(tmp_path / "x.jsonl")])
    with pytest.raises(SystemExit, match=f"error: {readme}: the README needs exactly one"):
        run_cpu.main()
    assert not (tmp_path / "x.jsonl").exists() and readme.read_text() == "no markers here\n"


def test_the_targets_are_judged_from_the_medians_and_a_miss_says_so():
    from llama_hw.bench.compare import rows_by_config

    named = {"alpaca max, no patches (FastChat-style)": 100, "alpaca dynamic (default)": 1000, "alpaca packed": 1400,
             "sharegpt dynamic (default)": 1000, "sharegpt packed": 1700, "full 2048-token rows (MFU)": 1300}  # fmt: skip
    records = [record(name, rate, host=host(0.2, 1.0)) for name, rate in named.items()]
    records[-1]["model_flops_utilization"] = 0.52
    records[-1]["mfu"] = 0.45
    rows, _ = rows_by_config(records)
    lines = "\n".join(run_cpu.targets(rows))
    assert "| 1,000 / 100 = **10.0x** | met |" in lines
    assert "| 1,400 / 1,000 = **1.40x** (ShareGPT: 1.70x) | **not met** |" in lines
    assert "model FLOPs **52.0 %**, executed 45.0 % | met |" in lines
    assert "| largest executed 50.0 %, model FLOPs 52.0 % | met |" in lines
    assert run_cpu.targets(rows_by_config(records[:1])[0]) == [
        "| target | measured here | |", "|---|---|---|", "| no MFU above 100 % | largest executed 50.0 %, "
        "model FLOPs 50.0 % | met |"]  # fmt: skip


def test_readme_edits_made_while_the_runs_measured_are_kept(tmp_path, monkeypatch):
    output = write_jsonl(tmp_path / "cpu_latest.jsonl", *runs())
    peak_file = tmp_path / "peak.json"
    peak_file.write_text(json.dumps(PEAK))
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{run_cpu.BEGIN}\nold\n{run_cpu.END}\n")
    table = run_cpu.table

    def table_after_an_edit(*args):  # somebody edits the README during the hour of measuring
        readme.write_text(readme.read_text() + "notes written meanwhile\n")
        return table(*args)

    monkeypatch.setattr(run_cpu, "table", table_after_an_edit)
    monkeypatch.setattr(sys, "argv", ["run_cpu.py", "--table-only", "--output", str(output), "--peak-file",
                                      str(peak_file), "--table", str(tmp_path / "t.md"), "--readme", str(readme)])
    run_cpu.main()
    text = readme.read_text()
    assert text.endswith(f"{run_cpu.END}\nnotes written meanwhile\n") and "\nold\n" not in text
