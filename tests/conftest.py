"""Shared fixtures: a tiny random BERT built from a config, and a tiny user task from real SST-2."""

from __future__ import annotations

import csv
import os
import random
import shutil
import signal
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for the Hub by accident
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# A test run started in the background (`pytest &` in a script) has SIGINT ignored (POSIX), and every
# CLI it starts inherits that, so the tests that press Ctrl-C on a search or the dashboard would see
# it ignored. Children of a terminal's foreground job get the default: give them that.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
TINY_HIDDEN, TINY_LAYERS, TINY_INTERMEDIATE = 32, 3, 64


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA_DIR.is_dir():
        pytest.fail(f"the GLUE data folder {DATA_DIR} (../shared/data beside the repository) is missing")
    return DATA_DIR


def _folder_with_minilm_tokenizer(tmp_path_factory, name: str) -> Path:
    from autopeft.models import resolve_model

    folder = tmp_path_factory.mktemp(name)
    src = Path(resolve_model("all-MiniLM-L6-v2"))
    for file in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(src / file, folder / file)
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    """A 3-layer, hidden-32 BERT with random weights and the real MiniLM WordPiece tokenizer."""
    from transformers import BertConfig, BertModel

    folder = _folder_with_minilm_tokenizer(tmp_path_factory, "tiny-bert")
    config = BertConfig(vocab_size=30522, hidden_size=TINY_HIDDEN, num_hidden_layers=TINY_LAYERS,
                        num_attention_heads=2, intermediate_size=TINY_INTERMEDIATE, max_position_embeddings=128)
    import torch
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> str:
    from transformers import GPT2Config, GPT2Model

    # GPT-2's byte-level BPE is not shipped offline; a WordPiece stand-in only has to tokenize.
    folder = _folder_with_minilm_tokenizer(tmp_path_factory, "tiny-gpt2")
    config = GPT2Config(vocab_size=30522, n_embd=TINY_HIDDEN, n_layer=2, n_head=2, n_positions=128)
    GPT2Model(config).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_task(tmp_path_factory, data_dir) -> str:
    """A user CSV task: 96 train / 48 dev rows drawn from the real SST-2 files."""
    folder = tmp_path_factory.mktemp("tiny-task")
    for split, n in (("train", 96), ("dev", 48)):
        with open(data_dir / "glue" / "SST-2" / f"{split}.tsv", newline="") as f:
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
        rows = random.Random(0).sample(rows, n)
        with open(folder / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            w.writerows(rows)
    (folder / "tiny.yaml").write_text(
        "name: tiny\nlabels: ['0', '1']\nmetrics: [accuracy]\nprimary_metric: accuracy\n"
        "local:\n  train: train.csv\n  dev: dev.csv\n  text_columns: [text]\n  label_column: label\n")
    return str(folder / "tiny.yaml")


@pytest.fixture(scope="session")
def tiny_regression_task(tmp_path_factory, data_dir) -> str:
    """A user regression task: 96 train / 48 dev sentence pairs from the real SICK files (scores 1-5)."""
    folder = tmp_path_factory.mktemp("tiny-regression")
    for split, source, n in (("train", "SICK_train.txt", 96), ("dev", "SICK_trial.txt", 48)):
        with open(data_dir / "senteval" / "SICK" / source, newline="") as f:
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
        rows = random.Random(0).sample(rows, n)
        with open(folder / f"{split}.tsv", "w", newline="") as f:
            f.write("a\tb\tscore\n" + "".join(f"{r[1]}\t{r[2]}\t{r[3]}\n" for r in rows))
    (folder / "tiny_r.yaml").write_text(
        "name: tiny_r\nmetrics: [pearson, spearman]\nprimary_metric: pearson\n"
        "local:\n  train: train.tsv\n  dev: dev.tsv\n  text_columns: [a, b]\n  label_column: score\n")
    return str(folder / "tiny_r.yaml")


@pytest.fixture(scope="session")
def ray_for_searches():
    """Call it before an in-process search: one local Ray for all of them. A search reuses a running
    Ray and leaves it up (search.run_trials), so this saves a start and a stop (about 6 s) per
    search. Searches in subprocesses start their own: a Ray that ray.init() started is not found by
    another process's ray.init() (only `ray start` publishes its address)."""
    def start() -> None:
        import ray

        from autopeft.cluster import connect

        if not ray.is_initialized():
            connect(None)
    return start


@pytest.fixture
def ray_stopped():
    """For a test that sets its trials' environment (a plugin module): the shared Ray, started
    before, would not pass it on, so the search starts its own."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
