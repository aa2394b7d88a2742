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
