"""The benchmark scripts' own logic: the README table run_cpu.py writes, with the machine and the load."""

from __future__ import annotations

import sys

from bench_support import record
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

import run_cpu  # noqa: E402 (benchmarks/ is a folder of scripts)


def host(start: float, end: float) -> dict:
    return {"load_average_1m_at_start": start, "load_average_1m_at_end": end}


def test_the_table_names_the_machine_the_peak_and_the_load_of_every_configuration():
    git = {"commit": "a" * 40, "dirty": False}
    records = [
        record("alpaca max, no patches (FastChat-style)", 200, host=host(0.2, 2.1), git=git),
        record("alpaca packed", 2000, host=host(0.4, 2.3), git=git),
        record("alpaca packed", 1800, host=host(3.0, 5.0), git=git),
    ]
    peak = {"probes": [{"tflops": 0.138, "load_1m": 0.3}, {"tflops": 0.12, "load_1m": 0.9}], "used": 0.138,
            "measured_at": "2026-12-01T23:40:00+00:00"}  # fmt: skip
    machine = {"cpu": "AMD EPYC", "cores": 2, "memory_gib": 8.0, "os": "Linux", "python": "3.11.7", "torch": "2.13",
               "torch_threads": 2}  # fmt: skip
    text = run_cpu.table(records, peak, machine)
    assert text.startswith("Machine: AMD EPYC, 2 cores, 8 GiB RAM")
    assert ("0.138 TFLOP/s, the best of these probes at 2026-12-01T23:40:00+00:00: 0.138 (load 0.30), "
            "0.12 (load 0.90)") in text
    assert "Commit(s): aaaaaaa; 3 runs" in text
    assert "| alpaca packed | 1.70, 3.00 | 3.65, 5.00 |" in text  # median and max of the two runs
    assert "| alpaca packed | 1,900 |" in text and "| 9.50x |" in text  # compare's row: medians, ratio to FastChat
