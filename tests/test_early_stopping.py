"""Early stopping: the plateau count, and an L1 run that stops on it, records why, and stays stopped on resume."""

from __future__ import annotations

import json

import pytest

from pikagen_jax.config_utils import load_config
from pikagen_jax.training.early_stopping import evaluations_without_improvement, stop_reason


@pytest.mark.parametrize("values, mode, min_delta, expected", [
    ([], "min", 0.0, 0),
    ([0.5], "min", 0.0, 0),
    ([0.5, 0.4, 0.3], "min", 0.0, 0),
    ([0.5, 0.3, 0.4, 0.35], "min", 0.0, 2),
    ([0.5, 0.3, 0.4, 0.29], "min", 0.0, 0),
    ([0.5, 0.3, 0.4, 0.29], "min", 0.05, 2),  # 0.29 beats 0.3 by less than min_delta
    ([0.3, 0.2996, 0.2993, 0.2991], "min", 0.001, 3),  # creeping down never counts as improving
    ([0.3, float("nan"), 0.31], "min", 0.0, 2),
    ([0.1, 0.3, 0.2], "max", 0.0, 1),
])
def test_evaluations_without_improvement(values, mode, min_delta, expected):
    assert evaluations_without_improvement(values, min_delta=min_delta, mode=mode) == expected


def test_stop_reason_and_bad_arguments():
    assert stop_reason([0.5, 0.6, 0.7], patience=0) is None  # patience 0: never stop
    assert stop_reason([0.5, 0.6], patience=2) is None
    reason = stop_reason([0.5, 0.6, 0.7], patience=2, name="val_l1")
    assert "val_l1" in reason and "2 evaluation(s)" in reason and "best 0.5" in reason
    with pytest.raises(ValueError, match="mode"):
        evaluations_without_improvement([1.0], mode="lowest")
    with pytest.raises(ValueError, match="min_delta"):
        evaluations_without_improvement([1.0], min_delta=-1)


def test_l1_run_stops_early_records_it_and_stays_stopped_on_resume(small_data, tmp_path):
    from pikagen_jax.l1.train import RESULTS_FILE, train_and_evaluate

    overrides = [f"data.data_dir={small_data['data_dir']}", f"data.dataset={small_data['kaggle']}",
                 "train.num_steps=12", "eval.every_steps=2", "eval.splits=('val',)",
                 # an improvement must exceed 10 (L1 is < 2): every evaluation after the first is a plateau
                 "train.early_stop_patience=2", "train.early_stop_min_delta=10.0"]
    config = load_config("configs/l1.py:smoke", overrides)
    result = train_and_evaluate(config, tmp_path)
    assert result.final_step == 6 and result.stopped_early and "patience 2" in result.stopped_early
    assert result.recompiles == 0
    curve = json.loads((tmp_path / "learning_curves.json").read_text())
    assert [p["step"] for p in curve] == [2, 4, 6]
    assert 6 in [int(p.name) for p in (tmp_path / "checkpoints").iterdir()]  # the stop step is checkpointed
    assert (tmp_path / "sheets" / "val_step_0000006.png").is_file()  # and sampled
    results = json.loads((tmp_path / RESULTS_FILE).read_text())
    assert results["trained_steps"] == 6 and results["stopped_early"] == result.stopped_early

    again = train_and_evaluate(config, tmp_path)  # resume: the same history says stop, so no step runs
    assert again.start_step == 6 and again.final_step == 6 and again.stopped_early == result.stopped_early

    with pytest.raises(ValueError, match="early_stop_patience"):
        train_and_evaluate(load_config("configs/l1.py:smoke", overrides[:2] + ["train.early_stop_patience=-1"]),
                           tmp_path / "bad")
