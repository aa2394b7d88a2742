"""The trained winner as an MLflow Model: logged to the `autopeft train` run with an input example and
signature, loaded and used by the README's recipe, registered under a name, and served by
`mlflow models serve` on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from autopeft.config import PeftConfig, TrainBudget
from autopeft.export import ExportedConfig
from autopeft.finetune import log_training, train_exported
from local_services import free_port
from readme_recipes import readme_block

pytestmark = pytest.mark.integration
REGISTERED = "sst2-winner"  # the name the README's recipe loads
SERVE_TIMEOUT_S = 150  # `mlflow models serve` imports MLflow, torch and the model on 2 busy cores


@pytest.fixture(scope="module")
def sentence_task(tmp_path_factory, tiny_task) -> str:
    """The tiny task with SST-2's column name (`sentence`), as the README's recipe uses it."""
    folder = tmp_path_factory.mktemp("sentence-task")
    for split in ("train", "dev"):
        rows = (Path(tiny_task).parent / f"{split}.csv").read_text().splitlines()
        (folder / f"{split}.csv").write_text("\n".join(["sentence,label"] + rows[1:]) + "\n")
    (folder / "sst2like.yaml").write_text(
        "name: sst2like\nlabels: [negative, positive]\nmetrics: [accuracy]\nprimary_metric: accuracy\n"
        "local:\n  train: train.csv\n  dev: dev.csv\n  text_columns: [sentence]\n  label_column: label\n"
        "  label_map: {'0': negative, '1': positive}\n")
    return str(folder / "sst2like.yaml")


@pytest.fixture(scope="module")
def trained(tiny_bert, sentence_task, tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    peft = PeftConfig.from_dict({"methods": [{"method": "lora", "layers": [0, 1, 2], "rank": 4, "alpha": 8,
                                              "targets": ["query", "value"]}]})
    exp = ExportedConfig(tiny_bert, sentence_task, peft)
    budget = TrainBudget(train_examples=48, batch_size=16, max_seq_length=32)
    result = train_exported(exp, budget, root / "trained")
    run_id = log_training(result, exp, budget, False, uri, register=REGISTERED)
    return {"root": root, "uri": uri, "run_id": run_id, "result": result}


def test_logged_model_predicts_labels_with_example_and_signature(trained, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    from autopeft.finetune import load_trained

    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained["uri"])
    mlflow.set_tracking_uri(trained["uri"])
    uri = f"runs:/{trained['run_id']}/model"
    info = mlflow.models.get_model_info(uri)
    assert [c.name for c in info.signature.inputs.inputs] == ["sentence"]
    assert info.saved_input_example_info is not None  # the input example is stored with the model

    namespace = {"run_id": trained["run_id"]}
    exec(compile(readme_block("deploy-recipe-mlflow"), "README MLflow recipe", "exec"), namespace)
    assert list(namespace["labels"]) in (["negative"], ["positive"])

    # the same labels as the trained model itself gives, on real dev sentences
    import pandas as pd
    import torch

    model, tokenizer, cfg = load_trained(trained["result"].output_dir)
    sentences = ["a gripping, funny and moving film", "dull, lifeless and far too long", "it is a film"]
    with torch.no_grad():
        batch = tokenizer(sentences, padding=True, return_tensors="pt")
        ids = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.argmax(-1).tolist()
    expected = [cfg["labels"][i] for i in ids]
    assert list(namespace["model"].predict(pd.DataFrame({"sentence": sentences}))) == expected
    assert list(namespace["registered"].predict(pd.DataFrame({"sentence": sentences}))) == expected

    versions = MlflowClient(trained["uri"]).search_model_versions(f"name = '{REGISTERED}'")
    assert [v.run_id for v in versions] == [trained["run_id"]]

    with pytest.raises(Exception, match=r"missing inputs \['sentence'\]"):  # the signature checks input
        namespace["model"].predict(pd.DataFrame({"text": ["no sentence column"]}))


def test_mlflow_models_serve_answers_on_loopback(trained, tmp_path):
    port = free_port()
    # MLflow execs `uvicorn` by name: the interpreter's own bin folder first, as in an activated venv.
    env = {**os.environ, "MLFLOW_TRACKING_URI": trained["uri"],
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{REGISTERED}/1",
                             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + SERVE_TIMEOUT_S
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, f"no answer in {SERVE_TIMEOUT_S} s: " + \
                (tmp_path / "serve.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(base + "/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(1)
        body = json.dumps({"dataframe_split": {"columns": ["sentence"],
                                               "data": [["a gripping, funny and moving film"], ["dull"]]}}).encode()
        request = urllib.request.Request(base + "/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as r:
            predictions = json.loads(r.read())["predictions"]
        assert len(predictions) == 2 and set(predictions) <= {"negative", "positive"}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server's own session: its workers go with it
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
