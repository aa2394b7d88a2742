"""The trained winner as an MLflow Model, so it can be promoted and served with MLflow's own tools.

A pyfunc whose only code is ``TrainedClassifier`` here: it needs ``autopeft`` installed (no code is
copied into the model), and it carries the whole ``autopeft train`` output folder as its artifact
(peft adapter or `adapters` folders, tokenizer, train config). The base model is not copied: it
loads the way training loaded it (the embedded default from its package, a Hub id through the Hub
cache, a local folder from the same path). ``predict`` takes a DataFrame with the task's text
columns and returns the label names (scores for a regression task).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import mlflow.pyfunc

from autopeft.errors import AutopeftError

MODEL_NAME = "model"  # mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
PREDICT_BATCH = 32


class TrainedClassifier(mlflow.pyfunc.PythonModel):
    """An ``autopeft train`` output behind MLflow's pyfunc interface."""

    def load_context(self, context: Any) -> None:
        from autopeft.finetune import load_trained

        self.model, self.tokenizer, info = load_trained(context.artifacts["trained"])
        self.columns: list[str] = info["text_columns"]
        self.labels: list[str] | None = info["labels"]
        self.max_length = int(info["budget"]["max_seq_length"])

    # No type hints: MLflow would read them as the schema; the logged signature is the one that counts.
    def predict(self, context, model_input, params=None):
        import pandas as pd
        import torch

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        missing = [c for c in self.columns if c not in frame.columns]
        if missing:
            raise AutopeftError(f"input lacks column(s) {missing}; this model reads {self.columns} "
                                f"(got {list(frame.columns)})")
        texts = [frame[c].astype(str).tolist() for c in self.columns]
        out: list = []
        with torch.no_grad():
            for start in range(0, len(frame), PREDICT_BATCH):
                batch = self.tokenizer(*(t[start:start + PREDICT_BATCH] for t in texts), truncation=True,
                                       max_length=self.max_length, padding=True, return_tensors="pt")
                logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                if self.labels is None:
                    out += logits.squeeze(-1).tolist()
                else:
                    out += [self.labels[i] for i in logits.argmax(-1).tolist()]
        return out


def input_example(columns: Sequence[str], texts: Sequence[Sequence[str]]):
    """A DataFrame of a few rows in the model's input shape (the logged example)."""
    import pandas as pd

    return pd.DataFrame([dict(zip(columns, row)) for row in texts], columns=list(columns))


def log_trained_model(tracking_uri: str, run_id: str, trained_dir: str | Path, example: Any,
                      register: str | None = None) -> str:
    """Log ``trained_dir`` as the MLflow Model ``model`` of run ``run_id``; register it as ``register``.

    Returns the model URI (``runs:/<run_id>/model``).
    """
    import mlflow
    from mlflow.models import infer_signature

    import autopeft

    loaded = TrainedClassifier()
    loaded.load_context(_Context({"trained": str(trained_dir)}))
    signature = infer_signature(example, loaded.predict(None, example))
    requirements = [f"autopeft=={autopeft.__version__}"]  # it pins the rest (torch, transformers, peft, ...)
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_id=run_id):
        # Explicit requirements: MLflow would otherwise infer them by loading the model in a subprocess.
        # A fresh instance: the logged one is pickled, and must not carry the loaded weights.
        mlflow.pyfunc.log_model(name=MODEL_NAME, python_model=TrainedClassifier(), artifacts={"trained": str(trained_dir)},
                                input_example=example, signature=signature, pip_requirements=requirements,
                                registered_model_name=register)
    return f"runs:/{run_id}/{MODEL_NAME}"


class _Context:
    """Stands in for MLflow's context when the model is used before it is logged (for its signature)."""

    def __init__(self, artifacts: dict[str, str]) -> None:
        self.artifacts = artifacts
