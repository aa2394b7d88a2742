"""The CLI: help on every command, and bad input as one clear message with exit code 2."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from autopeft.cli import app

runner = CliRunner()


@pytest.mark.parametrize("args", [["--help"], ["search", "--help"]])
def test_help(args):
    result = runner.invoke(app, args)
    assert result.exit_code == 0
    assert "Usage" in result.output


@pytest.mark.parametrize("args, message", [
    (["--task", "nosuchtask"], "unknown task"),
    (["--space", "nosuchspace"], "unknown search space 'nosuchspace'"),
    (["--sampler", "annealing"], "unknown sampler 'annealing'"),
    (["--model", "/nonexistent/model"], "cannot load base model '/nonexistent/model'"),
    (["--data-dir", "/nonexistent/data"], "/nonexistent/data"),
    (["--num-samples", "0"], "at least 1"),
])
def test_bad_input_is_one_message_and_exit_2(args, message, tmp_path, data_dir):
    result = runner.invoke(app, ["search", "--data-dir", str(data_dir), "--workdir", str(tmp_path), *args])
    assert result.exit_code == 2, result.output
    assert message.lower() in result.output.lower()
    assert "Traceback" not in result.output


def test_missing_task_file_in_data_dir(tmp_path):
    (tmp_path / "glue").mkdir()
    result = runner.invoke(app, ["search", "--data-dir", str(tmp_path), "--workdir", str(tmp_path)])
    assert result.exit_code == 2
    assert "SST-2" in result.output and "AUTOPEFT_DATA_DIR" in result.output


def test_resume_moves_only_the_target():
    from autopeft.cli import extend_target
    from autopeft.search import BUDGETED_NUM_SAMPLES, SearchSettings

    counted = SearchSettings(name="s", model="m", task="sst2", space="small", num_samples=8, sampler="random")
    assert extend_target(counted, None, None) == counted  # plain --resume: as started
    more = extend_target(counted, 20, None)
    assert (more.num_samples, more.cpu_budget_s, more.sampler) == (20, None, "random")
    budgeted = extend_target(counted, None, 300.0)  # a budget where there was a count: the count stops capping
    assert (budgeted.num_samples, budgeted.cpu_budget_s) == (BUDGETED_NUM_SAMPLES, 300.0)
    assert extend_target(budgeted, None, 600.0).cpu_budget_s == 600.0
    assert extend_target(budgeted, 12, None).num_samples == 12 and extend_target(budgeted, 12, None).cpu_budget_s == 300.0
    sized = SearchSettings(name="s", scheduler="sh")  # the default: 8 full trials' worth
    assert extend_target(sized, None, None, 12.0).full_trials == 12.0
    assert extend_target(sized, None, None, 12.0).num_samples == 12 * 9, "its cap as for a new search"
    assert (extend_target(sized, 20, None).num_samples, extend_target(sized, 20, None).full_trials) == (20, None), \
        "a count given ends the stored size: it would stop the search first"
    assert extend_target(sized, None, 300.0).full_trials is None


def test_a_default_search_trains_eight_full_trials_worth():
    from autopeft.search import BUDGETED_NUM_SAMPLES, DEFAULT_FULL_TRIALS, DEFAULT_SCHEDULER, SearchSettings

    halving = SearchSettings(name="s", scheduler="sh")
    assert (halving.full_trials, halving.num_samples) == (DEFAULT_FULL_TRIALS, DEFAULT_FULL_TRIALS * 9), \
        "more, shorter trials; at most as many as 8 full trials pay for at rung 0's 1/9"
    assert (SearchSettings(name="s", scheduler="fifo").num_samples, SearchSettings(name="s", scheduler="fifo").full_trials) \
        == (DEFAULT_FULL_TRIALS, None), "under fifo every trial is a full one: the count says it"
    assert SearchSettings(name="s", scheduler="fifo", full_trials=4.5).num_samples == 5
    assert SearchSettings(name="s").scheduler == DEFAULT_SCHEDULER
    assert (SearchSettings(name="s", scheduler="sh", num_samples=5).full_trials,
            SearchSettings(name="s", scheduler="sh", cpu_budget_s=60.0).full_trials) == (None, None), \
        "a count or a CPU budget given is the target"
    assert SearchSettings(name="s", scheduler="sh", cpu_budget_s=60.0).num_samples == BUDGETED_NUM_SAMPLES
    assert SearchSettings.from_dict(halving.to_dict()) == halving, "a resumed search keeps its size"
    # Samplers are sized for what 8 full trials buy if 1/3 go on at each rung (7/27 each): 31, not the cap
    assert halving.planned_trials() == 31 and SearchSettings(name="s", scheduler="fifo").planned_trials() == 8
