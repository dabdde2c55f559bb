"""`bench compare` and `bench parity`: tables, charts, ratios, verdicts and exit codes; bad input."""

from __future__ import annotations

import pytest

from bench_support import record, write_jsonl
from llama_hw.bench.recipe import main
from llama_hw.errors import run_cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def table_rows(output: str) -> dict[str, list[str]]:
    rows = {}
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] not in ("NAME",) and not cells[0].startswith("---"):
            rows[cells[0]] = cells
    return rows


def test_compare_writes_the_seeds_table_with_ratios_and_a_chart(tmp_path, capsys):
    fastchat = write_jsonl(tmp_path / "a.jsonl", record("fastchat max", effective=200, processed=1800))
    ours = write_jsonl(tmp_path / "b.jsonl", record("llama_hw dynamic", effective=1300, processed=2300),
                       record("llama_hw packed", effective=2000, processed=2050))  # fmt: skip
    png = tmp_path / "out" / "compare.png"
    assert main(["compare", str(fastchat), str(ours), "--baseline", "fastchat max", "--png", str(png)]) == 0
    output = capsys.readouterr().out
    assert output.splitlines()[0].startswith("| NAME | tokens/s/p | MFU | memory | ZeRO | ratio to baseline |")
    rows = table_rows(output)
    assert rows["fastchat max"][1:6] == ["200", "5.6 %", "1.00 GiB", "0", "1.00x"]  # MFU of the text only
    assert rows["llama_hw dynamic"][5] == "6.50x" and rows["llama_hw packed"][5] == "10.00x"
    assert rows["llama_hw packed"][6] == "2,050"  # processed tokens/s/p, padding included
    assert png.read_bytes().startswith(PNG_MAGIC)
    assert not list(png.parent.glob(".*partial"))


def test_repeated_runs_of_a_name_become_their_median(tmp_path, capsys):
    runs = write_jsonl(tmp_path / "runs.jsonl", *(record("busy", effective=value) for value in (100, 300, 200)),
                       record("base", effective=50))  # fmt: skip
    assert main(["compare", str(runs), "--baseline", "base", "--png", str(tmp_path / "c.png")]) == 0
    rows = table_rows(capsys.readouterr().out)
    assert rows["busy"][1] == "200" and rows["busy"][5] == "4.00x" and rows["busy"][-1] == "3"


def test_parity_passes_within_rtol_and_fails_beyond(tmp_path, capsys):
    gpu = write_jsonl(tmp_path / "gpu.jsonl", record("gpu", 1000, losses=[2.0, 1.5, 1.0, 0.8]))
    npu = write_jsonl(tmp_path / "npu.jsonl", record("npu", 1000, losses=[2.0, 1.51, 1.0, 0.8]))
    png = tmp_path / "parity.png"
    assert main(["parity", str(gpu), str(npu), "--rtol", "0.01", "--png", str(png)]) == 0
    output = capsys.readouterr().out
    assert output.startswith("PASS") and "6.67e-03 (step 2)" in output and "over 4 steps" in output
    assert png.read_bytes().startswith(PNG_MAGIC)
    assert main(["parity", str(gpu), str(npu), "--rtol", "0.005", "--png", str(png)]) == 1
    assert capsys.readouterr().out.startswith("FAIL")


def test_parity_picks_runs_by_name_in_one_file(tmp_path, capsys):
    both = write_jsonl(tmp_path / "r.jsonl", record("a", 1, losses=[1.0, 1.0]), record("b", 1, losses=[1.0, 1.5]))
    assert main(["parity", str(both), str(both), "--name-a", "a", "--name-b", "b",
                 "--png", str(tmp_path / "p.png")]) == 1  # fmt: skip
    assert "max relative deviation 5.00e-01" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["compare", "missing.jsonl"], "results file missing.jsonl does not exist"),
    (["run", "--model", "llama-8b"], "--model llama-8b: neither a preset"),
    (["run", "--model", "bench-20m", "--padding", "pad"], "argument --padding: invalid choice"),
    (["run", "--model", "bench-20m", "--data_path", "x.json"], "give --tokenizer DIR for --data_path"),
    (["run", "--model", "bench-20m", "--steps", "0"], "--steps must be a positive integer"),
    (["run", "--model", "bench-20m", "--zero", "2"], "--zero 2 runs DeepSpeed, which needs a launched job"),
])  # fmt: skip
def test_bad_input_is_one_line_and_exit_code_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert run_cli(main, argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_file_that_is_not_bench_results_is_a_data_error(tmp_path, capsys):
    other = tmp_path / "other.jsonl"
    other.write_text('{"name": "x"}\n')
    assert run_cli(main, ["compare", str(other)]) == 2
    assert f"{other}:1: not a `bench run` result (no device," in capsys.readouterr().err
    runs = write_jsonl(tmp_path / "r.jsonl", record("a", 1))
    assert run_cli(main, ["compare", str(runs), "--baseline", "zzz", "--png", str(tmp_path / "c.png")]) == 2
    assert "--baseline 'zzz' is not a run name; the runs are: a" in capsys.readouterr().err
