"""bench/bench_vs_torch.py's case selection and report (no workers run here)."""

import argparse

import pytest

from bench import bench_vs_torch as bench


def _args(**kw):
    base = dict(quick=False, gan_cases="64x16,128x16:3", text_finetune="partial", models="gan,l1")
    return argparse.Namespace(**{**base, **kw})


def test_parse_gan_cases_reads_size_batch_and_steps():
    assert bench.parse_gan_cases("64x64, 128x16:3") == [(64, 64, None), (128, 16, 3)]
    with pytest.raises(SystemExit, match="SIZExBATCH"):
        bench.parse_gan_cases("64-16")


def test_cases_follow_flags():
    cases = bench.cases_for(_args())
    assert [(c["model"], c["image_size"], c["batch"], c.get("steps")) for c in cases] == [
        ("gan", 64, 16, None), ("gan", 128, 16, 3), ("l1", 215, 10, None)]
    assert "train.batch_size=16" in cases[0]["overrides"] and "data.image_size=128" in cases[1]["overrides"]
    assert [c["image_size"] for c in bench.cases_for(_args(quick=True, models="gan"))] == [64]


def test_markdown_reports_a_skipped_case_and_the_ratios():
    run = {"case": {"model": "l1", "name": "L1 215 px", "batch": 10},
           "jax": {"matmul_gflops": 100.0, "flops_per_step": 2e11, "step_s": [1.0] * 3, "step_s_median": 1.0,
                   "images_per_s": 10.0, "trace_s": 1.0, "compile_s": 2.0, "max_rss_mib": 100.0},
           "torch": {"matmul_gflops": 90.0, "step_s": [4.0] * 3, "step_s_median": 4.0, "images_per_s": 2.5,
                     "first_step_s": 5.0, "max_rss_mib": 80.0}}
    skipped = {"case": {"model": "gan", "name": "GAN 128 px", "batch": 64}, "jax": {}, "torch": {},
               "skipped": "our compiled step needs 30.0 GiB"}
    report = {"command": "python bench/bench_vs_torch.py", "cases": [skipped, run],
              "machine": {"os_cpu_count": 2, "threads": 2, "load_before": [1, 1, 1], "load_after": [1, 1, 1],
                          "gen_batch": 64, "versions": {k: "x" for k in ("jax", "flax", "torch", "transformers")}}}
    text = bench.markdown(report)
    assert "skipped: our compiled step needs 30.0 GiB" in text
    assert "**4.00**" in text and "200 (200 %)" in text  # 10 / 2.5 img/s; 200 GFLOP / 1 s vs a 100 GFLOP/s peak


def test_report_appends_heading_command_and_table(tmp_path):
    from bench.report import append_markdown, command_line

    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n")
    command = command_line("/somewhere/bench/bench_demo.py", ["--minutes=5", "--out=x.json"])
    assert command == "python bench/bench_demo.py --minutes=5 --out=x.json"
    append_markdown(md, "Demo (2026-12-05)", command, "| a | b |\n|---|---|\n| 1 | 2 |\n\n")
    assert md.read_text() == ("# Benchmarks\n\n### Demo (2026-12-05)\n\n`python bench/bench_demo.py --minutes=5 "
                              "--out=x.json`\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")


def test_quality_at_budget_parses_recipes_and_writes_rows():
    from bench import quality_at_budget as quality

    assert quality.parse_recipe("da=configs/gan.py:cpu,train.diffaugment=color,cutout,optim.lr_d=1e-4") == (
        "da", "configs/gan.py:cpu", ["train.diffaugment=color,cutout", "optim.lr_d=1e-4"])
    with pytest.raises(ValueError, match="must look like name="):
        quality.parse_recipe("configs/gan.py:cpu")
    kid = {"mean": 0.21491, "std": 0.00383, "whole_sets": False}
    results = {"recipes": {"cpu": {"config": "configs/gan.py:cpu", "overrides": ["optim.lr_d=8e-4"], "steps": 1225,
                                   "seconds_per_step": 1.514, "test": {"kid": kid, "fid": 266.06},
                                   "train": {"kid": {"mean": 0.2197, "std": 0.0, "whole_sets": True}, "fid": 225.8}}}}
    header, rule, row = quality.markdown_rows(results, ["test", "train"])
    assert header.count("|") == rule.count("|") == row.count("|") == 9
    assert row == ("| cpu | `configs/gan.py:cpu` + `optim.lr_d=8e-4` | 1225 | 1.51 | 0.2149 ± 0.0038 | 266.1 | "
                   "0.2197 (whole set) | 225.8 |")
