"""The user's path after a search, on the tiny model: search -> pareto -> export -> train, the plain-code
rebuild recipe from the README, the Pareto HTML report, and the MLflow UI in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from autopeft.cli import app
from autopeft.config import TrainBudget
from autopeft.export import ExportError, load_export, save_export
from autopeft.finetune import full_budget, load_trained, log_training, train_exported
from autopeft.report import REPORT_HTML
from autopeft.results import NothingToPick, SearchNotFound, hand_picks, load_search, pick, to_export
from autopeft.search import SearchSettings, run_search
from autopeft.schema import KIND_TAG, SEARCH_TAG, SOURCE_RUN_TAG
from local_services import free_port
from readme_recipes import readme_block

pytestmark = pytest.mark.integration
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def search(tiny_bert, tiny_task, tmp_path_factory, ray_for_searches):
    ray_for_searches()
    root = tmp_path_factory.mktemp("after-search")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    settings = SearchSettings(
        name="tiny-after", model=tiny_bert, task=tiny_task, space="hybrid", num_samples=2, max_concurrent_trials=2,
        scheduler="fifo",
        budget=TrainBudget(train_examples=32, eval_examples=32, batch_size=16), workdir=str(root / "runs"),
        tracking_uri=uri)
    result = run_search(settings, show_progress=False)
    return {"root": root, "uri": uri, "result": result}


def test_pareto_reads_the_store_back(search):
    record = load_search("tiny-after", search["uri"])
    client = MlflowClient(search["uri"])
    assert all(client.get_run(t["run_id"]).data.tags["autopeft.eval_split"] == "dev" for t in record.trials)
    result = search["result"]
    assert record.parent_run_id == result.parent_run_id
    assert {t["run_id"] for t in record.front} == {r["run_id"] for r in result.front}
    assert [t["metric"] for t in record.front] == sorted((t["metric"] for t in record.front), reverse=True)
    # by parent run id, and the latest search by default
    assert load_search(result.parent_run_id, search["uri"]).name == "tiny-after"
    assert load_search(None, search["uri"]).name == "tiny-after"
    with pytest.raises(SearchNotFound):
        load_search("no-such-search", search["uri"])


def test_pick_and_constraints(search):
    front = load_search("tiny-after", search["uri"]).front
    best = pick(front)[0]
    assert best["metric"] == max(t["metric"] for t in front)
    smallest = min(front, key=lambda t: t["trainable_params"])
    assert pick(front, max_params=smallest["trainable_params"])[0]["run_id"] == smallest["run_id"]
    assert pick(front, trial=smallest["trial"])[0]["run_id"] == smallest["run_id"]
    with pytest.raises(NothingToPick, match="constraints"):
        pick(front, max_params=1)
    with pytest.raises(NothingToPick, match="empty"):
        pick([])


def test_cli_pareto_export_and_errors(search, tmp_path):
    runner = CliRunner()
    uri = search["uri"]
    out = runner.invoke(app, ["pareto", "tiny-after", "--tracking-uri", uri, "--pick", "best",
                              "--report", str(tmp_path / "r.html")])
    assert out.exit_code == 0, out.output
    assert "Pareto front of tiny-after" in out.output and "picked trial" in out.output
    assert "hand-pick (warm start 0) trial 0, " in " ".join(out.output.split())  # the hybrid space's baseline
    assert (tmp_path / "r.html").stat().st_size > 100_000  # plotly.js inlined
    out = runner.invoke(app, ["export", "--tracking-uri", uri, "-o", str(tmp_path / "best.json")])
    assert out.exit_code == 0, out.output
    assert load_export(tmp_path / "best.json").source["search"] == "tiny-after"
    reason = json.loads((tmp_path / "best.json").read_text())["native"]["peft_unsupported"]
    said = "note: no peft form: " in out.output  # one line naming the part, when peft cannot hold it
    assert said == (reason is not None) and (reason is None or reason.split(":")[0] in out.output)
    for args, message in (
        (["pareto", "nope", "--tracking-uri", uri], "no search 'nope'"),
        (["pareto", "tiny-after", "--tracking-uri", uri, "--min-metric", "2"], "meets the constraints"),
        (["pareto", "tiny-after", "--tracking-uri", uri, "--pick", "x"], "--pick takes"),
        (["train", str(tmp_path / "missing.json")], "does not exist"),
        (["dashboard", "nope", "--tracking-uri", uri], "no search 'nope'"),  # before any server starts
    ):
        out = runner.invoke(app, args)
        assert out.exit_code == 2, (args, out.output)
        assert message in " ".join(out.output.split()), (args, out.output)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ExportError, match="cannot read"):
        load_export(tmp_path / "bad.json")
    (tmp_path / "bad2.json").write_text(json.dumps({"model": "m", "task": "t", "peft": {"methods": [{"method": "x"}]}}))
    with pytest.raises(ExportError, match="unknown PEFT method"):
        load_export(tmp_path / "bad2.json")


def _readme_recipe(marker: str = "rebuild-recipe") -> str:
    return readme_block(marker)


def test_export_round_trip_and_readme_recipe(search, tmp_path, monkeypatch):
    record = load_search("tiny-after", search["uri"])
    recipe = _readme_recipe()
    assert "autopeft" not in recipe.replace("autopeft_best.json", ""), "the recipe must not need autopeft"
    monkeypatch.chdir(tmp_path)
    for trial in [t for t in record.trials if t["status"] == "COMPLETE"]:
        exp = to_export(record, trial)
        path = save_export(exp, tmp_path / "autopeft_best.json")
        assert load_export(path) == exp  # the exported file reloads into an identical config
        namespace: dict = {}
        exec(compile(recipe, "README recipe", "exec"), namespace)
        assert namespace["trainable"] == trial["trainable_params"], (trial["peft"], namespace["trainable"])


def test_lora_export_rebuilds_with_peft(tiny_bert, tiny_task, tmp_path, monkeypatch):
    from autopeft.build import build_model
    from autopeft.config import PeftConfig
    from autopeft.export import ExportedConfig

    peft = PeftConfig.from_dict({"methods": [{"method": "lora", "layers": [0, 2], "rank": 4, "alpha": 8,
                                              "targets": ["query", "value", "output"]}]})
    save_export(ExportedConfig(tiny_bert, tiny_task, peft), tmp_path / "autopeft_best.json")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(_readme_recipe("rebuild-recipe-peft"), "README peft recipe", "exec"), namespace)
    assert namespace["trainable"] == build_model(tiny_bert, peft, num_labels=2).trainable_params


def test_train_exported_reloads_and_links_to_search(search, tmp_path, data_dir):
    record = load_search("tiny-after", search["uri"])
    best = pick(record.front)[0]
    exp = to_export(record, best)
    budget = full_budget(exp.budget, train_examples=None, epochs=2)
    epochs = []
    result = train_exported(exp, budget, tmp_path / "trained", on_epoch=lambda e, m: epochs.append(m))
    assert len(epochs) == 2 and result.metric == max(m["accuracy"] for m in epochs)
    assert result.trainable_params == best["trainable_params"]
    run_id = log_training(result, exp, budget, False, None)

    from autopeft.tasks import load_split, load_task
    from autopeft.train import evaluate, subsample, tokenize

    model, tokenizer, info = load_trained(tmp_path / "trained")
    task = load_task(exp.task)
    dev = tokenize(subsample(load_split(task, "dev"), budget.eval_examples, budget.seed), tokenizer,
                   budget.max_seq_length)
    again = evaluate(model, dev, task, tokenizer.pad_token_id, 32, torch.device("cpu"))
    assert abs(again["accuracy"] - result.metric) < 1e-6

    run = MlflowClient(search["uri"]).get_run(run_id)
    assert run.data.tags["mlflow.parentRunId"] == record.parent_run_id
    assert run.data.tags[SEARCH_TAG] == "tiny-after" and run.data.tags[KIND_TAG] == "train"
    assert run.data.tags[SOURCE_RUN_TAG] == best["run_id"]
    assert run.data.metrics["metric"] == pytest.approx(result.metric)


def test_train_of_a_holdout_config_picks_on_the_holdout_and_reports_dev(tiny_bert, tiny_task, tmp_path, monkeypatch):
    """The budget carries the holdout: best epoch on the held-out rows, the final metrics on dev."""
    import autopeft.train as train_module
    from autopeft.config import PeftConfig
    from autopeft.export import ExportedConfig
    from autopeft.finetune import TRAIN_CONFIG
    from autopeft.methods.seq_bn import SeqBnConfig
    from autopeft.tasks import load_split, load_task, split_holdout

    seen = []
    real = train_module.train_and_evaluate
    monkeypatch.setattr(train_module, "train_and_evaluate",
                        lambda model, tok, task, train, dev, *a, **k: seen.append((train, dev)) or real(
                            model, tok, task, train, dev, *a, **k))
    budget = TrainBudget(train_examples=None, eval_examples=None, batch_size=16, epochs=2, select_on="holdout",
                         holdout_size=24)
    exp = ExportedConfig(tiny_bert, tiny_task, PeftConfig((SeqBnConfig((0, 1, 2), 8),)), budget)
    epochs = []
    result = train_exported(exp, budget, tmp_path / "trained", on_epoch=lambda e, m: epochs.append(m))
    task = load_task(tiny_task)
    rest, held = split_holdout(load_split(task, "train"), 24, seed=0)
    assert seen[-1] == (rest, held)  # trained without the held-out rows, epochs scored on them
    assert result.select_on == "holdout" and len(epochs) == 2
    assert max(m["accuracy"] for m in epochs) == result.history[result.best_epoch - 1]["accuracy"]
    info = json.loads((tmp_path / "trained" / TRAIN_CONFIG).read_text())
    assert info["select_on"] == "holdout" and info["budget"]["select_on"] == "holdout"
    # The reported metric is dev's, measured once with the kept epoch.
    from autopeft.train import evaluate, tokenize

    model, tokenizer, _ = load_trained(tmp_path / "trained")
    dev = tokenize(load_split(task, "dev"), tokenizer, budget.max_seq_length)
    assert evaluate(model, dev, task, tokenizer.pad_token_id, 32, torch.device("cpu")) == pytest.approx(result.metrics)
    run = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(
        log_training(result, exp, budget, False, f"sqlite:///{tmp_path / 'mlflow.db'}"))
    assert run.data.tags["autopeft.eval_split"] == "dev" and run.data.tags["autopeft.select_split"] == "holdout"
    assert "holdout_accuracy" in run.data.metrics and "dev_accuracy" not in run.data.metrics
    assert run.data.metrics["accuracy"] == pytest.approx(result.metric)


@pytest.mark.parametrize("full_finetune", [False, True], ids=["peft", "full"])
def test_trained_regression_model_predicts_on_the_task_scale(tiny_bert, tiny_regression_task, tmp_path,
                                                              full_finetune):
    """`autopeft train` stores the target mean/std beside the head; the reloaded model maps back."""
    from autopeft.config import PeftConfig
    from autopeft.export import ExportedConfig
    from autopeft.finetune import TRAIN_CONFIG, _load_weights
    from autopeft.methods.lora import LoRAConfig
    from autopeft.tasks import load_split, load_task
    from autopeft.train import TargetScale, evaluate, predict, subsample, tokenize

    exp = ExportedConfig(tiny_bert, tiny_regression_task, PeftConfig((LoRAConfig((0, 1, 2), 4, 8, ("query", "value")),)))
    budget = TrainBudget(train_examples=64, eval_examples=48, batch_size=16, epochs=1, seed=0)
    result = train_exported(exp, budget, tmp_path / "trained", full_finetune=full_finetune)
    task = load_task(tiny_regression_task)
    expected = TargetScale.fit(subsample(load_split(task, "train"), 64, 0).labels)
    assert result.target_scale == pytest.approx(expected.to_dict())
    info = json.loads((tmp_path / "trained" / TRAIN_CONFIG).read_text())
    assert info["target_scale"] == pytest.approx(expected.to_dict())

    model, tokenizer, _ = load_trained(tmp_path / "trained")
    dev = tokenize(subsample(load_split(task, "dev"), 48, 0), tokenizer, budget.max_seq_length)
    cpu = torch.device("cpu")
    on_task_scale = predict(model, dev, task, tokenizer.pad_token_id, 32, cpu)
    raw, _ = _load_weights(tmp_path / "trained", info)  # the same weights without the mapping
    z_scores = predict(raw.eval(), dev, task, tokenizer.pad_token_id, 32, cpu)
    assert on_task_scale == pytest.approx([z * expected.std + expected.mean for z in z_scores], abs=1e-4)
    assert abs(sum(on_task_scale) / len(on_task_scale) - expected.mean) < 1.0  # ~3.5, not ~0
    again = evaluate(model, dev, task, tokenizer.pad_token_id, 32, cpu)
    # The barely trained tiny model's predictions spread little, so float noise of the rebuilt
    # model moves its correlation in the 4th decimal.
    assert again["pearson"] == pytest.approx(result.metrics["pearson"], abs=2e-3)


def test_full_finetune_trains_everything(search, tmp_path):
    record = load_search("tiny-after", search["uri"])
    exp = to_export(record, pick(record.front)[0])
    result = train_exported(exp, full_budget(exp.budget, epochs=1), tmp_path / "full", full_finetune=True)
    assert result.trainable_percent == pytest.approx(100.0)
    model, _, _ = load_trained(tmp_path / "full")
    assert sum(p.numel() for p in model.parameters()) == result.trainable_params


def test_search_logs_the_html_report(search):
    client = MlflowClient(search["uri"])
    paths = {a.path for a in client.list_artifacts(search["result"].parent_run_id, "pareto")}
    assert REPORT_HTML in paths


# ---------------------------------------------------------------------------- in a real browser

def browser(fn):
    """In the default run (CI installs chromium); skipped only where no chromium is installed."""
    fn = pytest.mark.browser(fn)
    return pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium "
                                                       "chromium-driver)")(fn)


def _chromium(tmp_path: Path, url: str, budget_ms: int, screenshot: Path | None = None) -> str:
    profile = tmp_path / f"chrome-{time.monotonic_ns()}"
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", "--window-size=1400,900", f"--virtual-time-budget={budget_ms}"]
    if screenshot is not None:
        subprocess.run(args + [f"--screenshot={screenshot}", url], capture_output=True, timeout=120)
    return subprocess.run(args + ["--dump-dom", url], capture_output=True, text=True, timeout=120).stdout


@browser
def test_report_renders_points_in_chromium(search, tmp_path):
    record = load_search("tiny-after", search["uri"])
    html = tmp_path / "report.html"
    from autopeft.report import write_report
    write_report(record.trials, record.objectives, record.metric_name, html, "tiny report")
    shot = tmp_path / "pareto_report.png"
    dom = _chromium(tmp_path, html.as_uri(), 5000, shot)
    done = sum(t["status"] == "COMPLETE" for t in record.trials)
    picks = sum(hp.measured for hp in hand_picks(record.trials, record.directions))
    assert picks == 1, "the hybrid space's warm start, ringed"
    # plotly draws each marker as an SVG path of class "point"; the trade-off panel's (the rings
    # round the warm starts too) carry the trial number as customdata, the hypervolume panel's do not
    assert dom.count('class="point plotly-customdata"') == done + picks
    assert dom.count('class="point"') == done
    assert "tiny report" in dom
    assert shot.exists() and shot.stat().st_size > 10_000
    _keep_screenshot(shot)


@browser
def test_report_lists_the_front_as_a_table_in_chromium(search, tmp_path, monkeypatch):
    """The front as rows a reader can act on: each row's export command works as printed."""
    import shlex

    from autopeft.report import write_report

    record = load_search("tiny-after", search["uri"])
    page = tmp_path / "report.html"
    write_report(record.trials, record.objectives, record.metric_name, page, "tiny report", record.name,
                 record.tracking_uri)
    driver = _webdriver(tmp_path)
    try:
        driver.get(page.as_uri())
        # The table follows several MB of inlined plotly.js: on a loaded machine Chromium has been seen
        # to hand the page back before it had parsed that far (CI, 2026-11-29), so wait for it.
        _wait_for(driver, lambda: driver.find_elements("css selector", "table.front tbody tr"))
        header = [th.text for th in driver.find_elements("css selector", "table.front th")]
        rows = [(row.is_displayed(), [td.text for td in row.find_elements("tag name", "td")])
                for row in driver.find_elements("css selector", "table.front tbody tr")]
        shot = tmp_path / "pareto_table.png"
        driver.save_screenshot(str(shot))
        _keep_screenshot(shot)
    finally:
        driver.quit()
    from autopeft.objectives import get_objective

    memory = get_objective("peak_memory_mb").title  # the registry names the column
    assert header == ["trial", record.metric_name, "trainable params", memory, "beats hand-picks", "configuration",
                      "next step"]
    assert [int(cells[0]) for _, cells in rows] == [t["trial"] for t in record.front]  # best metric first
    (warm,) = hand_picks(record.trials, record.directions)  # the hybrid space's one warm start
    for (shown, cells), t in zip(rows, record.front):
        assert shown
        assert cells[1] == f"{t['metric']:.4f}" and cells[2].startswith(f"{t['trainable_params']:,}")
        assert cells[4] == (str(warm.trial.trial) if t["trial"] in {b.trial for b in warm.beaten_by} else "-")
        assert cells[5] == t["peft_words"] and t["peft_words"]  # the configuration in words
        assert cells[6].startswith(f"autopeft export tiny-after --pick {t['trial']} ")
    monkeypatch.chdir(tmp_path)
    args = shlex.split(rows[-1][1][6])[1:]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    assert load_export(tmp_path / "autopeft_best.json").source["trial"] == record.front[-1]["trial"]


def test_study_names_its_objectives_for_optuna_dashboard(search, tmp_path):
    """The README's optuna-dashboard line, run on loopback: the study shows the objectives by name."""
    import optuna
    import urllib.request

    storage = f"sqlite:///{search['root'] / 'runs' / 'optuna.db'}"
    study = optuna.load_study(study_name="tiny-after", storage=storage)
    assert study.metric_names == ["accuracy", "trainable_params"]
    params = {k for t in study.trials for k in t.params}
    assert params and all(re.fullmatch(r"[a-z0-9_]+(/[a-z0-9_*]+)*", k) for k in params), params

    command = readme_block("deploy-recipe-optuna-dashboard", "bash").strip()
    assert command.startswith("optuna-dashboard sqlite:///autopeft_runs/optuna.db ")
    port = free_port()
    argv = [str(Path(sys.executable).parent / "optuna-dashboard"), storage,
            *command.split()[2:]]
    argv[argv.index("--port") + 1] = str(port)
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            try:
                studies = json.loads(urllib.request.urlopen(base + "/api/studies", timeout=2).read())["study_summaries"]
                break
            except OSError:
                assert time.monotonic() < deadline, "optuna-dashboard did not answer in 60 s"
                time.sleep(0.5)
        (summary,) = [s for s in studies if s["study_name"] == "tiny-after"]
        detail = json.loads(urllib.request.urlopen(f"{base}/api/studies/{summary['study_id']}", timeout=10).read())
        assert detail["objective_names"] == ["accuracy", "trainable_params"]
        assert {p["name"] for p in detail["union_search_space"]} == params
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)


CHROMEDRIVER = shutil.which("chromedriver")


def _webdriver(tmp_path: Path):
    pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[test]')")
    if CHROMEDRIVER is None:
        pytest.skip("chromedriver is not installed (apt-get install chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1400,900", f"--user-data-dir={tmp_path / 'chrome-profile'}"):
        options.add_argument(arg)
    options.binary_location = CHROMIUM
    # An explicit driver path: Selenium Manager would otherwise try to download one.
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def _wait_for(driver, condition, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"the page did not get there in {timeout_s:.0f} s: {driver.find_element('tag name', 'body').text[:500]}")


@browser
def test_dashboard_opens_on_the_trials_in_chromium(search, tmp_path):
    """The first screen of `autopeft dashboard`: the search's trials, best metric first, objective columns."""
    import urllib.request

    record = load_search("tiny-after", search["uri"])
    proc = subprocess.Popen([sys.executable, "-m", "autopeft.cli", "dashboard", "--tracking-uri", search["uri"]],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    driver = None
    try:
        line = proc.stdout.readline()  # printed once /health answers
        match = re.search(r"(http://127\.0\.0\.1:\d+)(\S*)", line)
        assert match, (line, proc.stderr.read() if proc.poll() is not None else "")
        base = match.group(1)
        assert "/runs?viewStateShareKey=" in match.group(2)
        driver = _webdriver(tmp_path)
        driver.get(match.group(1) + match.group(2))  # as printed: nothing to click
        body = lambda: driver.find_element("tag name", "body").text  # noqa: E731
        trials = {f"tiny-after-t{t['trial']:03d}": t for t in record.trials if t["status"] == "COMPLETE"}
        _wait_for(driver, lambda: all(n in body() for n in trials))
        text = body()
        # the model-training menu (Runs, Models, Model registry), not GenAI's overview, judges and traces
        assert "Model registry" in text and "Judges" not in text and "No data available" not in text
        for column in ("metric", "trainable_params", "peak_memory_mb"):  # the objective columns' headers
            assert f"\n{column}\n" in text, f"column {column} is not shown: {text[:1500]}"
        for t in trials.values():  # the configuration column
            assert t["peft"] in text
        listed = sorted(trials, key=text.index)
        assert [trials[n]["metric"] for n in listed] == sorted((t["metric"] for t in trials.values()), reverse=True)
        shot = tmp_path / "mlflow_ui.png"
        driver.save_screenshot(str(shot))
        _keep_screenshot(shot)
    finally:
        if driver is not None:
            driver.quit()
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        rc = proc.wait(30)
    assert rc == 0, proc.stderr.read()
    with pytest.raises(OSError):  # the server went with it
        urllib.request.urlopen(base + "/health", timeout=2)
    experiment = MlflowClient(search["uri"]).get_experiment_by_name("autopeft")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def _keep_screenshot(path: Path) -> None:
    # For humans reviewing a run; the tests never read it back.
    target = Path("/tmp/issue3_shots")
    try:
        target.mkdir(exist_ok=True)
        shutil.copy(path, target / path.name)
    except OSError:
        pass
