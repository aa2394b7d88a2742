"""The baseline of benchmarks/overhead.py: the same configuration trained by a bare torch loop.

No autopeft import: plain transformers + adapters + torch, the way a user would write it by hand.
Prints one JSON line of timings. Run by overhead.py in a fresh process, like a Ray trial.
"""

import csv
import json
import os
import random
import sys
import time

T0 = time.perf_counter()
import torch  # noqa: E402

torch.set_num_threads(1)
import adapters  # noqa: E402
from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402

model_dir, data_dir, n_train, batch, lr, seq_len = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])


def read(split):
    with open(os.path.join(data_dir, "glue", "SST-2", f"{split}.tsv"), newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    return [r[0] for r in rows], [int(r[1]) for r in rows]


texts, labels = read("train")
idx = sorted(random.Random(0).sample(range(len(texts)), n_train))
texts, labels = [texts[i] for i in idx], [labels[i] for i in idx]
dev_texts, dev_labels = read("dev")

torch.manual_seed(0)
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
adapters.init(model)
model.add_adapter("a", config=adapters.SeqBnConfig(reduction_factor=384 / 24.5))
model.train_adapter("a")
T_LOADED = time.perf_counter()

opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
model.train()
order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(0)).tolist()
for s in range(0, len(order), batch):
    b = order[s:s + batch]
    enc = tok([texts[i] for i in b], truncation=True, max_length=seq_len, padding=True, return_tensors="pt")
    loss = model(**enc, labels=torch.tensor([labels[i] for i in b])).loss
    loss.backward()
    opt.step()
    opt.zero_grad()
T_TRAINED = time.perf_counter()

model.eval()
correct = 0
with torch.no_grad():
    for s in range(0, len(dev_texts), batch * 2):
        enc = tok(dev_texts[s:s + batch * 2], truncation=True, max_length=seq_len, padding=True, return_tensors="pt")
        correct += (model(**enc).logits.argmax(-1) == torch.tensor(dev_labels[s:s + batch * 2])).sum().item()
T_END = time.perf_counter()
print(json.dumps({"accuracy": correct / len(dev_texts), "setup_seconds": T_LOADED - T0,
                  "train_seconds": T_TRAINED - T_LOADED, "eval_seconds": T_END - T_TRAINED,
                  "in_process_seconds": T_END - T0}))
