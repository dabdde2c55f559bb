"""How long `bench run` measures: the median's confidence interval, the stop rule, the progress bar's phase."""

from __future__ import annotations

import pytest

from llama_hw.bench.meter import phase
from llama_hw.bench.stability import StopRule, median_ci, relative_half_width, spread


def test_the_median_interval_uses_order_statistics():
    assert median_ci([1.0, 2.0, 3.0, 4.0, 5.0]) is None  # 5 values: P(all on one side) = 1/16 > 5 %
    assert median_ci([6.0, 1.0, 2.0, 3.0, 4.0, 5.0]) == (1.0, 6.0)  # 6: the extremes cover it with 96.9 %
    values = list(range(1, 21))  # 20: x_(6) .. x_(15) (P(X <= 5) = 2.1 % <= 2.5 %)
    assert median_ci(values) == (6, 15)
    assert relative_half_width(values) == pytest.approx((15 - 6) / 2 / 10.5)


def test_spread_is_the_p10_to_p90_range_over_the_median():
    assert spread([1.0] * 10) == 0
    assert spread([1.0]) is None
    assert spread([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 11.0]) == pytest.approx(1.0)


def test_auto_steps_stop_once_the_median_is_known_to_the_bound():
    rule = StopRule(min_steps=8, max_steps=60, ci_bound=0.05, time_limit_s=600)
    steady = [1000.0 + (i % 3) for i in range(8)]
    assert rule.done(steady[:7], seconds=7) is None  # below the minimum
    assert rule.done(steady, seconds=8).startswith("median CI +-0.1 % <= +-5 % after 8 steps")
    noisy = [500.0, 1500.0] * 10
    assert rule.done(noisy, seconds=20) is None  # +-50 %: go on
    assert rule.done(noisy * 3, seconds=60).startswith("--max-steps 60 reached (median CI +-50.0 %")
    assert rule.done(noisy, seconds=601).startswith("time limit 600 s reached after 20 steps")


def test_fixed_steps_stop_exactly_there():
    rule = StopRule(fixed=3)
    assert rule.most_steps == 3
    assert rule.done([1.0, 9.0], seconds=2) is None
    assert rule.done([1.0, 9.0, 5.0], seconds=3) == "3 steps as asked (--steps)"


def test_the_progress_bar_says_warm_up_during_warm_up_steps():
    assert [phase(done, 2) for done in range(5)] == ["warm-up 0/2", "warm-up 1/2", "warm-up 2/2", "measuring",
                                                     "measuring"]  # fmt: skip
    assert phase(0, 0) == "measuring"


def test_default_names_keep_what_differs():
    from llama_hw.bench import BenchSpec

    base = BenchSpec(model="bench-20m", micro_batch=4, data_path="data/alpaca_en_demo.json")
    name = base.default_name("cpu", "fp32", 1, ["varlen_attention", "chunked_cross_entropy"])
    assert name == ("bench-20m seq2048 mb4 dynamic alpaca_en_demo fp32 patches:varlen_attention+chunked_cross_entropy "
                    "seed0 cpux1")  # fmt: skip
    variants = [
        BenchSpec(model="bench-20m", micro_batch=4, data_path="data/alpaca_en_demo.json", seed=1),
        BenchSpec(model="bench-20m", micro_batch=4, data_path="data/alpaca_en_demo.json", seq_len=1024),
        BenchSpec(model="bench-20m", micro_batch=2, data_path="data/alpaca_en_demo.json"),
        BenchSpec(model="bench-20m", micro_batch=4, data_path="data/alpaca_en_demo.json", padding="packed"),
    ]
    names = {spec.default_name("cpu", "fp32", 1, ["varlen_attention", "chunked_cross_entropy"]) for spec in variants}
    names.add(base.default_name("cpu", "fp32", 1, []))  # --patches none
    assert len(names | {name}) == 6
