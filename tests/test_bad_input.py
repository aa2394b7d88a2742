"""Every user-facing input is checked before Ray starts: each bad input below makes
`autopeft search` exit with code 2 and one message that names the problem (no traceback).
The README's reliability table lists the same cases."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from autopeft.cli import app

runner = CliRunner()

SPACE_CASES = {  # id: (search-space YAML, words the message must hold)
    "malformed yaml": ("methods:\n  seq_bn: {size: [8, 16\n", ["malformed YAML", "line"]),
    "unknown method": ("methods:\n  dora: {rank: [4]}\n", ["unknown PEFT method 'dora'", ":2:"]),
    "unknown key": ("methods:\n  lora:\n    rnak: [4]\n", ["unknown key(s) ['rnak']", ":3:"]),
    "unknown top-level key": ("methods: {seq_bn: {size: 8}}\nsamplr: tpe\n", ["['samplr']", ":2:"]),
    "empty choices": ("methods:\n  lora: {rank: []}\n", ["methods.lora.rank", "empty"]),
    "negative choice": ("methods:\n  seq_bn: {size: [8, -2]}\n", ["methods.seq_bn.size", "-2 is out of range"]),
    "rank out of range": ("methods:\n  lora: {rank: [0.5, 4]}\n", ["methods.lora.rank", "whole numbers"]),
    "bad range": ("methods:\n  lora: {rank: {low: 16, high: 2}}\n", ["low <= high"]),
    "layer the model lacks": ("methods:\n  seq_bn: {layers: [0, 9], size: 8}\n",
                              ["layer(s) [9] do not exist", "6 layers"]),
    "unknown target module": ("methods:\n  lora: {targets: [query, dense]}\n",
                              ["unknown target module(s) ['dense']", "query"]),
    "bad layers mode": ("methods:\n  seq_bn: {layers: odd}\n", ["expected one of ['all', 'mask', 'each']"]),
    "bad training key": ("methods: {seq_bn: {size: 8}}\ntraining: {lr: [1.0e-3]}\n", ["['lr']", "learning_rate"]),
}


def run(args: list[str], data_dir: Path, tmp_path: Path):
    return runner.invoke(app, ["search", "--data-dir", str(data_dir), "--workdir", str(tmp_path / "w"),
                               "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", *args])


def assert_clear(result, words: list[str]) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    text = " ".join(result.output.split())  # rich wraps long lines
    for word in words:
        assert word.lower() in text.lower(), f"{word!r} not in: {text}"


@pytest.mark.parametrize("case", SPACE_CASES)
def test_bad_search_space(case, data_dir, tmp_path):
    text, words = SPACE_CASES[case]
    path = tmp_path / "space.yaml"
    path.write_text(text)
    assert_clear(run(["--space", str(path)], data_dir, tmp_path), [str(path), *words])


def _user_task(tmp_path: Path, rows: str, columns: str = "text,label") -> Path:
    (tmp_path / "train.csv").write_text(f"{columns}\n{rows}")
    (tmp_path / "dev.csv").write_text(f"{columns}\n{rows}")
    task = tmp_path / "mine.yaml"
    task.write_text("name: mine\nlabels: [neg, pos]\nmetrics: [accuracy]\nprimary_metric: accuracy\n"
                    "local: {train: train.csv, dev: dev.csv, text_columns: [text], label_column: label}\n")
    return task


OTHER_CASES = {  # id: (extra CLI args, words) — tmp_path is substituted for {tmp}
    "unknown task": (["--task", "sst3"], ["Unknown task 'sst3'", "sst2"]),
    "data dir without the task's files": (["--data-dir", "{tmp}"], ["SST-2", "AUTOPEFT_DATA_DIR"]),
    "missing data dir": (["--data-dir", "{tmp}/nowhere"], ["nowhere"]),
    "unknown base model": (["--model", "no-such-org/no-such-model"], ["cannot load base model", "no-such-model"]),
    "unknown sampler": (["--sampler", "annealing"], ["unknown sampler 'annealing'", "tpe"]),
    "zero trials": (["--num-samples", "0"], ["at least 1"]),
    "negative memory limit": (["--trial-memory-limit-mb", "-5"], ["must be positive"]),
    "unreachable MLflow server": (["--tracking-uri", "http://127.0.0.1:9"], ["http://127.0.0.1:9", "does not answer"]),
    "invalid Ray address": (["--ray-address", "not an address"], ["invalid Ray address", "host:port"]),
    "nobody at the Ray address": (["--ray-address", "127.0.0.1:9"], ["no Ray cluster answers", "127.0.0.1:9"]),
    "resume of an unknown search": (["--resume", "never-ran"], ["no search named 'never-ran'"]),
    "zero batch size": (["--batch-size", "0"], ["batch_size must be positive"]),
    "unknown storage kind": (["--storage", "notadb://x"], ["--storage", "unknown database kind 'notadb'"]),
    "storage that is no URL": (["--storage", "optuna.db"], ["--storage", "not a database URL"]),
    "resume from an unknown storage kind": (["--resume", "x", "--storage", "notadb://x"], ["unknown database kind"]),
    "unknown objective": (["--objectives", "metric,speed"], ["unknown objective 'speed'", "latency_ms"]),
    "objectives without the metric": (["--objectives", "trainable_params,latency_ms"], ["must include 'metric'"]),
    "unknown selection split": (["--select-on", "test"], ["--select-on", "dev, holdout", "'test'"]),
    "holdout size neither fraction nor count": (["--select-on", "holdout", "--holdout-size", "2.5"],
                                                ["--holdout-size", "2.5", "0.1 or 500"]),
    "holdout as large as train": (["--task", "cb", "--select-on", "holdout", "--holdout-size", "250"],
                                  ["leaves nothing to train on", "250 rows", "--holdout-size"]),
    "negative lost-trial retries": (["--retry-lost-trials", "-1"], ["--retry-lost-trials must be 0 or more"]),
    "unknown scheduler": (["--scheduler", "hyperband"], ["unknown scheduler 'hyperband'", "fifo", "sh"]),
    "no full trials": (["--full-trials", "0"], ["--full-trials must be positive, got 0"]),
    "promotion type, too small to reach the top": (["--scheduler", "shp", "--full-trials", "2"],
                                                    ["--scheduler shp", "after 13 trials", "2.33 full trials' worth",
                                                     "--full-trials 2 ends before that"]),
    "promotion type, too few trials": (["--scheduler", "shp", "--num-samples", "12"],
                                       ["after 13 trials", "--num-samples 12 ends before that"]),
    "default scheduler, too few steps": (["--train-examples", "32", "--batch-size", "16"],
                                         ["--rungs 3 needs at least 3 training steps", "--scheduler fifo"]),
    "one rung": (["--scheduler", "sh", "--rungs", "1"], ["--rungs and --reduction-factor must be at least 2"]),
    "more rungs than steps": (["--scheduler", "sh", "--rungs", "4", "--train-examples", "32", "--batch-size", "16"],
                              ["--rungs 4 needs at least 4 training steps", "gives 2"]),
    "reduction factor 1": (["--reduction-factor", "1"], ["--rungs and --reduction-factor must be at least 2"]),
    "zero top seeds": (["--top-seeds", "0"], ["--top-seeds must be at least 1"]),
    "rung confidence 1": (["--rung-confidence", "1"], ["--rung-confidence must be at least 0 and below 1"]),
    "rank check without halving": (["--scheduler", "fifo", "--rank-check"],
                                   ["--rank-check opens rungs of successive halving", "--scheduler fifo has none"]),
    "warm starts halved without halving": (["--scheduler", "fifo", "--halve-warm-starts"],
                                           ["--halve-warm-starts ranks warm starts", "--scheduler fifo has none"]),
    "zero CPU budget": (["--cpu-budget-s", "0"], ["--cpu-budget-s must be positive", "got 0"]),
    "negative parameter ceiling": (["--max-params", "-5"], ["--max-params must be positive"]),
    "zero memory ceiling": (["--max-memory", "0"], ["--max-memory must be positive"]),
}


@pytest.mark.parametrize("case", OTHER_CASES)
def test_other_bad_inputs(case, data_dir, tmp_path):
    args, words = OTHER_CASES[case]
    assert_clear(run([a.replace("{tmp}", str(tmp_path)) for a in args], data_dir, tmp_path), words)


@pytest.mark.parametrize("value", ["often", "0", "-3"])
def test_bad_heartbeat_interval(value, data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOPEFT_HEARTBEAT_S", value)
    assert_clear(run([], data_dir, tmp_path), [f"AUTOPEFT_HEARTBEAT_S={value!r}", "positive number of seconds"])


def test_unloadable_model_folder(data_dir, tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{not json")
    assert_clear(run(["--model", str(tmp_path / "model")], data_dir, tmp_path), ["cannot load base model"])


def test_task_file_missing_a_column(data_dir, tmp_path):
    task = _user_task(tmp_path, "good film,pos\n", columns="sentence,label")
    assert_clear(run(["--task", str(task)], data_dir, tmp_path), ["text", "sentence"])


def test_task_label_outside_its_set(data_dir, tmp_path):
    task = _user_task(tmp_path, "good film,pos\nbad film,meh\n")
    assert_clear(run(["--task", str(task)], data_dir, tmp_path), ["'meh'", "neg", "pos"])


def test_at_least_twenty_bad_inputs_are_covered():
    assert len(SPACE_CASES) + len(OTHER_CASES) + 3 >= 20


def test_rerunning_a_name_with_other_settings(data_dir, tmp_path, tiny_bert):
    """A study started under fifo (the default before halving) is not continued under sh, nor on
    another budget, by running its --name again; --resume keeps its settings."""
    import optuna

    from autopeft.search import SearchSettings
    from autopeft.study import SETTINGS_ATTR

    started = SearchSettings(name="taken", model=tiny_bert, workdir=str(tmp_path / "w"), scheduler="fifo",
                             num_samples=2)
    (tmp_path / "w").mkdir()
    optuna.create_study(study_name="taken", storage=started.storage_url()).set_user_attr(
        SETTINGS_ATTR, started.to_dict())
    result = run(["--name", "taken", "--model", tiny_bert, "--train-examples", "64"], data_dir, tmp_path)
    assert_clear(result, ["search 'taken' already exists with other settings", "scheduler 'fifo', not 'sh'",
                          "budget.train_examples", "--resume taken"])
