"""The peft form of a configuration, on the tiny models: export -> train -> plain-peft reload gives the
trainable-parameter count and dev metric that `autopeft train` reported; configurations peft cannot
hold give one line naming the part and keep the `adapters` form."""

from __future__ import annotations

import json
import re

import pytest
import torch

from autopeft.config import PeftConfig, TrainBudget
from autopeft.export import ExportedConfig, load_export, save_export
from autopeft.finetune import ADAPTERS_FORM, PEFT_FORM, load_trained, train_exported
from autopeft.peft_export import to_peft
from readme_recipes import readme_block

BUDGET = TrainBudget(train_examples=48, eval_examples=None, batch_size=16, max_seq_length=32, learning_rate=5e-3)


def _peft(*methods: dict) -> PeftConfig:
    return PeftConfig.from_dict({"methods": list(methods)})


PEFT_CASES = {
    # per-module and per-layer ranks: rank_pattern over the modules `adapters` placed them on
    "lora_ranks": _peft({"method": "lora", "layers": [0, 2], "rank": 4, "alpha": 8, "targets": ["query", "value"]},
                        {"method": "lora", "layers": [1], "rank": 2, "alpha": 4, "targets": ["output"]},
                        {"method": "lora", "layers": [0, 1, 2], "rank": 3, "alpha": 8, "targets": ["intermediate"]}),
    "ia3": _peft({"method": "ia3", "layers": [0, 1, 2], "targets": ["key", "value", "intermediate"]}),
    "ia3_ffn_out": _peft({"method": "ia3", "layers": [1, 2], "targets": ["output"]}),
    "prefix_flat": _peft({"method": "prefix", "layers": [0, 1, 2], "length": 4, "flat": True}),
    "prefix_mlp": _peft({"method": "prefix", "layers": [0, 1, 2], "length": 2, "flat": False}),
    "prompt": _peft({"method": "prompt", "length": 4}),
}


@pytest.mark.parametrize("case", sorted(PEFT_CASES))
def test_trained_peft_adapter_reloads_with_plain_peft(case, tiny_bert, tiny_task, tmp_path, monkeypatch):
    """The README's peft recipe, run as written, reproduces what `autopeft train` reported."""
    exp = ExportedConfig(tiny_bert, tiny_task, PEFT_CASES[case])
    native = json.loads(save_export(exp, tmp_path / "autopeft_best.json").read_text())["native"]
    assert native["peft"] is not None and native["peft_unsupported"] is None
    result = train_exported(load_export(tmp_path / "autopeft_best.json"), BUDGET, tmp_path / "trained")
    assert result.form == PEFT_FORM and result.note is None
    # the same count as the `adapters` model a search trial trains
    from autopeft.build import build_model
    assert result.trainable_params == build_model(tiny_bert, exp.peft, num_labels=2).trainable_params

    monkeypatch.chdir(tmp_path)
    recipe = readme_block("deploy-recipe-peft")
    assert not re.search(r"^\s*(import|from) autopeft", recipe, re.M), "the peft recipe must not need autopeft"
    namespace: dict = {}
    exec(compile(recipe, "README peft recipe", "exec"), namespace)
    assert namespace["label"] in (0, 1)
    assert abs(_dev_metric(namespace["model"], namespace["tokenizer"], tiny_task) - result.metric) < 1e-4

    # What the reloaded adapter holds: the parameters under peft's adapter name (modules and head copy).
    held = sum(p.numel() for n, p in namespace["model"].named_parameters() if "default" in n.split("."))
    if case == "prefix_mlp":  # peft saves the prefix the MLP computes; the MLP itself stays behind
        flat = PeftConfig.from_dict({"methods": [{**exp.peft.to_dict()["methods"][0], "flat": True}]})
        assert held == build_model(tiny_bert, flat, num_labels=2).trainable_params < result.trainable_params
    else:
        assert held == result.trainable_params


def _dev_metric(model, tokenizer, task_ref: str) -> float:
    from autopeft.tasks import load_split, load_task
    from autopeft.train import evaluate, subsample, tokenize

    task = load_task(task_ref)
    dev = tokenize(subsample(load_split(task, "dev"), BUDGET.eval_examples, BUDGET.seed), tokenizer,
                   BUDGET.max_seq_length)
    return evaluate(model, dev, task, tokenizer.pad_token_id, 32, torch.device("cpu"))[task.primary_metric]


def test_lora_ranks_become_rank_and_alpha_patterns(tiny_bert):
    form, built = to_peft(tiny_bert, PEFT_CASES["lora_ranks"], 2)
    config = form.config
    assert config["r"] == 4 and len(config["target_modules"]) == 2 * 2 + 1 + 3
    patterns = {k.replace("\\", ""): v for k, v in config["rank_pattern"].items()}
    assert patterns == {"bert.encoder.layer.1.output.dense": 2,
                        **{f"bert.encoder.layer.{i}.intermediate.dense": 3 for i in range(3)}}
    assert {k.replace("\\", ""): v for k, v in config["alpha_pattern"].items()} == {
        "bert.encoder.layer.1.output.dense": 4}
    assert config["modules_to_save"] == ["classifier"]  # the head, read off the model
    # not attention.output.dense: module paths are exact, never suffixes
    assert not any("attention.output" in t for t in config["target_modules"])
    assert built.trainable_params > 0


def test_other_architectures_get_their_own_module_names(tiny_gpt2):
    """GPT-2's feed-forward projections are Conv1D layers named c_fc / c_proj; its head is `score`."""
    form, built = to_peft(tiny_gpt2, _peft({"method": "lora", "layers": [0, 1], "rank": 2, "alpha": 4,
                                            "targets": ["intermediate", "output"]}), 2)
    assert form.reason is None, form.reason
    assert form.config["fan_in_fan_out"] is True and form.config["modules_to_save"] == ["score"]
    assert all(re.search(r"\.mlp\.c_(fc|proj)$", t) for t in form.config["target_modules"])
    # a LoRA on part of GPT-2's fused query/key/value projection has no peft form
    form, built = to_peft(tiny_gpt2, _peft({"method": "lora", "layers": [0], "rank": 2, "targets": ["query", "value"]}), 2)
    assert built is None and "c_attn" in form.reason and "fuses query, key and value" in form.reason


NO_PEFT_CASES = {
    "seq_bn": (_peft({"method": "seq_bn", "layers": [0, 1, 2], "size": 4}), "seq_bn (serial bottleneck adapter)"),
    "lora_with_ia3": (_peft({"method": "lora", "layers": [0, 1], "rank": 2, "targets": ["query"]},
                            {"method": "ia3", "layers": [2], "targets": ["value"]}), "lora with ia3"),
    "bitfit": (_peft({"method": "bitfit", "layers": [1]}), "bitfit: peft has no BitFit"),
    "head_only": (_peft(), "the task head alone"),
    "prefix_some_layers": (_peft({"method": "prefix", "layers": [0, 2], "length": 2, "flat": True}),
                           "prefix in layers [0, 2] only"),
}


@pytest.mark.parametrize("case", sorted(NO_PEFT_CASES))
def test_without_peft_form_one_line_and_the_adapters_form(case, tiny_bert, tiny_task, tmp_path):
    peft, part = NO_PEFT_CASES[case]
    exp = ExportedConfig(tiny_bert, tiny_task, peft)
    native = json.loads(save_export(exp, tmp_path / "e.json").read_text())["native"]
    assert native["peft"] is None and native["peft_unsupported"].startswith(part)
    result = train_exported(exp, BUDGET.replace(train_examples=16), tmp_path / "trained")
    assert result.form == ADAPTERS_FORM
    assert result.note.startswith(f"no peft form: {part}") and "\n" not in result.note
    assert not (tmp_path / "trained" / "peft").exists()
    model, tokenizer, _ = load_trained(tmp_path / "trained")  # the adapters form reloads
    assert abs(_dev_metric(model, tokenizer, tiny_task) - result.metric) < 1e-4


def test_cli_says_why_there_is_no_peft_form(tiny_bert, tiny_task, tmp_path):
    from typer.testing import CliRunner

    from autopeft.cli import app

    path = tmp_path / "e.json"
    save_export(ExportedConfig(tiny_bert, tiny_task, NO_PEFT_CASES["seq_bn"][0]), path)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    out = CliRunner().invoke(app, ["train", str(path), "-o", str(tmp_path / "t"), "--train-examples", "16",
                                   "--epochs", "1", "--tracking-uri", uri, "--register", "tiny-bottleneck"])
    assert out.exit_code == 0, out.output
    text = " ".join(out.output.split())
    assert "registered as 'tiny-bottleneck'" in text  # the `adapters` form is an MLflow Model too
    from mlflow.tracking import MlflowClient
    assert len(MlflowClient(uri).search_model_versions("name = 'tiny-bottleneck'")) == 1
    assert "note: no peft form: seq_bn (serial bottleneck adapter): peft has no bottleneck adapters; the " \
           "`adapters` form is kept" in text
    assert "(adapters form)" in text
    out = CliRunner().invoke(app, ["train", str(path), "--full-finetune", "--register", "x"])
    assert out.exit_code == 2 and "--register needs a PEFT result" in " ".join(out.output.split())
