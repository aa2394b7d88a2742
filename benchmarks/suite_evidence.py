"""The figures the suite's README readings quote that no table prints: each search's trials (from
its Optuna study, benchmarks/results/suite/svb/optuna.db, which stays local) written to a committed
CSV, and how much sharing a core with outside work inflated the baselines' per-run CPU-seconds.

    .venv/bin/python benchmarks/suite_evidence.py

Writes (merging, per search) benchmarks/results/suite/search_trials.csv (task, search, trial,
holdout metric, params, learning rate, how many trials had finished when it was asked, config key,
under successive halving its rung-0 metric and what a constant prediction scores there, the share of
the full budget its values were measured at) and prints, per task, the best trials on the holdout,
which trials the sampler drew in its random start-up phase, how often full-budget trials above and
at or below a learning rate of 1e-2 ended within 0.05 of the majority class (why the `small` space
stops at 1e-2), and the CPU inflation of contended runs (wall/CPU above 1.3) against runs of the
same configuration that had a core to themselves (wall/CPU below 1.1), and per task how large one
run's seed noise is against the spread of the configurations' 3-seed means (baselines and found
configurations, on dev).
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

from autopeft.samplers import _startup  # noqa: E402
from autopeft.reuse import CONFIG_KEY_ATTR  # noqa: E402
from autopeft.study import CPU_SECONDS_ATTR, FIDELITY_ATTR, RUNG_VALUES_ATTR, SETTINGS_ATTR, STARTUP_ATTR  # noqa: E402


def search_trials() -> list[dict]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = f"sqlite:///{common.SUITE_RESULTS / 'svb' / 'optuna.db'}"
    rows = []
    for summary in optuna.get_all_study_summaries(storage):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        task = summary.study_name.split("-")[3]  # svb-SPACE-SAMPLER-TASK-TRIALS[-variant]
        ends = [t.datetime_complete for t in study.trials if t.values and t.datetime_complete]
        floor = _rung0_floor(study, task)
        for t in study.trials:
            if t.values:
                # The sampler sees only finished trials: with fewer than its start-up count finished
                # (recorded per trial), it samples at random, with the same seed in every search.
                rows.append({"task": task, "search": summary.study_name, "trial": t.number,
                             "holdout_metric": t.values[0], "trainable_params": int(t.values[1]),
                             "learning_rate": t.params.get("train/learning_rate"),
                             "finished_when_asked": sum(e <= t.datetime_start for e in ends),
                             # Recorded since 2026-11-27; older searches sized it from their target.
                             "sampler_startup": t.user_attrs.get(STARTUP_ATTR,
                                                                 _startup(int(summary.study_name.split("-")[4]))),
                             "config": t.user_attrs.get(CONFIG_KEY_ATTR, ""),
                             # successive halving: the metric at rung 0, and the rung-0 no-skill level
                             "rung0_metric": t.user_attrs.get(f"{RUNG_VALUES_ATTR}0", {}).get("metric", ""),
                             "rung0_no_skill": floor,
                             # the share of the full budget its values were measured at (1 unless halving stopped it)
                             "fidelity": float(t.user_attrs.get(FIDELITY_ATTR, 1.0)),
                             "cpu_seconds": t.user_attrs.get(CPU_SECONDS_ATTR, "")})
    return rows


def _rung0_floor(study, task: str) -> float | str:
    """What a constant prediction scores on a halving search's rung-0 rows ("" without halving), from
    the settings the search stored."""
    from autopeft.fidelity import rung_fractions

    settings = study.user_attrs.get(SETTINGS_ATTR, {})
    if settings.get("scheduler") != "sh":
        return ""
    budget = settings["budget"]
    return round(common.no_skill_at_rung(task, settings["data_dir"], budget["holdout_size"], budget["holdout_seed"],
                                         budget["seed"], rung_fractions(settings["rungs"], settings["reduction_factor"])[0]), 4)


def contention(rows: list[dict]) -> dict[str, list[float]]:
    """task -> per configuration: mean CPU-s of contended runs / mean CPU-s of uncontended ones."""
    out: dict[str, list[float]] = {}
    for task in sorted({r["task"] for r in rows}):
        by: dict[str, dict[str, list[float]]] = {}
        for r in (r for r in rows if r["task"] == task and r["cpu_seconds"]):
            cpu, wall = float(r["cpu_seconds"]), float(r["wall_seconds"])
            kind = "alone" if wall / cpu < 1.1 else "shared" if wall / cpu > 1.3 else None
            if kind:
                by.setdefault(r["name"], {"alone": [], "shared": []})[kind].append(cpu)
        out[task] = [statistics.fmean(d["shared"]) / statistics.fmean(d["alone"])
                     for d in by.values() if d["alone"] and d["shared"]]
    return out


# A trial "collapsed" when its holdout metric ends within this of the majority class (dev split's,
# from the search-vs-baselines CSVs; 0 for Pearson): it learned nothing the class prior lacks.
COLLAPSE_MARGIN = 0.05
RATE_SPLIT = 1e-2


def collapse_by_rate(rows: list[dict], majority: dict[str, float]) -> dict[str, tuple[int, int]]:
    """"above" / "at or below" RATE_SPLIT -> (trials, collapsed trials), over the tasks in ``majority``
    and the trials trained to their full budget: a trial halving stopped holds a rung's metric, which
    sits near the majority class for every rate early on. Rows from halving searches written before
    the CSV kept ``fidelity`` cannot tell, and are left out."""
    out = {"above": [0, 0], "at or below": [0, 0]}
    for r in rows:
        fidelity = r.get("fidelity") or ("1" if r.get("rung0_metric", "") == "" else "")
        full = fidelity != "" and float(fidelity) >= 1.0
        if full and r["task"] in majority and r["learning_rate"] not in (None, ""):
            side = out["above" if float(r["learning_rate"]) > RATE_SPLIT else "at or below"]
            side[0] += 1
            side[1] += float(r["holdout_metric"]) <= majority[r["task"]] + COLLAPSE_MARGIN
    return {k: (n, c) for k, (n, c) in out.items()}


def seed_noise(runs: list[dict], majority: dict[str, float]) -> dict[str, dict[str, float]]:
    """task -> ``_common.variance_split`` of the dev metric over the configurations a search would
    choose between: every (configuration, learning rate) with 3 or more seeds whose mean on the
    selection split (holdout) is within COLLAPSE_MARGIN of the task's best there, so the subset is
    not chosen on the split the noise is read on. ``split_seeds``: configurations (any mean) where
    one seed's dev metric stayed within COLLAPSE_MARGIN of the majority class and another learned."""
    groups: dict[tuple, list[tuple[float, float]]] = {}
    for r in runs:
        groups.setdefault((r["task"], r["source"], r["name"], r["lr"]), []).append(
            (float(r["metric"]), float(r["dev_metric"])))
    out = {}
    for task in sorted({k[0] for k in groups}):
        seeded = [g for k, g in groups.items() if k[0] == task and len(g) >= 3]
        if not seeded:
            continue
        top = max(statistics.fmean(h for h, _ in g) for g in seeded)
        kept = [[d for _, d in g] for g in seeded if statistics.fmean(h for h, _ in g) >= top - COLLAPSE_MARGIN]
        floor = majority.get(task, 0.0) + COLLAPSE_MARGIN
        split = sum(min(d for _, d in g) <= floor < max(d for _, d in g) for g in seeded)
        if len(kept) >= 3:
            out[task] = {"configs": len(kept), **common.variance_split(kept), "split_seeds": split, "of": len(seeded)}
    return out


def main() -> None:
    trials = search_trials()
    path = common.SUITE_RESULTS / "search_trials.csv"
    # The local database holds the searches run on this checkout; the CSV keeps the others' rows.
    fresh = {r["search"] for r in trials}
    common.write_csv(path, [r for r in common.read_csv(path) if r["search"] not in fresh] + trials)
    for search in sorted({r["search"] for r in trials}):
        # Full-budget trials only: a stopped trial's values are a rung's, on a share of the rows.
        best = sorted((r for r in trials if r["search"] == search and r["fidelity"] >= 1.0),
                      key=lambda r: -r["holdout_metric"])[:3]
        print(f"{search}: best on the holdout (full budget) " + ", ".join(
            f"t{r['trial']} {r['holdout_metric']:.3f} ({r['trainable_params']:,} params)" for r in best))
        mine = [r for r in trials if r["search"] == search]
        ended = {f: sum(r["fidelity"] == f for r in mine) for f in sorted({r["fidelity"] for r in mine})}
        print("  trials by the fidelity their values are at (successive halving: the rung each ended at): "
              + ", ".join(f"{f:.3g}: {n}" for f, n in ended.items())
              + f"; trials' CPU-s {sum(float(r['cpu_seconds'] or 0) for r in mine):,.0f}")
        startup = sorted(r["trial"] for r in trials if r["search"] == search
                         and r["finished_when_asked"] < r["sampler_startup"])
        modelled = [r for r in mine if r["finished_when_asked"] >= r["sampler_startup"]]
        print(f"  the sampler's own proposals: {len(modelled)}, at a learning rate of {RATE_SPLIT:g} or more: "
              f"{sum(float(r['learning_rate'] or 0) >= RATE_SPLIT * 0.99 for r in modelled)}")
        print("  asked before the sampler's model took over (fewer trials finished than its start-up count; "
              "the warm starts, then random draws): " + ", ".join(f"t{n}" for n in startup))
        rung0 = [r for r in trials if r["search"] == search and r["rung0_metric"] != ""]
        if rung0:
            floor = rung0[0]["rung0_no_skill"]
            print(f"  rung 0: {sum(r['rung0_metric'] <= floor + 1e-9 for r in rung0)} of {len(rung0)} trials no "
                  f"better than a constant prediction on its rows ({floor})")
    majority = {r["task"]: float(r["majority_metric"]) for f in sorted(common.SUITE_RESULTS.glob(
        "search_vs_baselines_small_*.csv")) for r in common.read_csv(f)}
    all_rows = common.read_csv(path)
    for side, (n, collapsed) in collapse_by_rate(all_rows, majority).items():
        print(f"learning rate {side} {RATE_SPLIT:g}: {collapsed} of {n} trials ended within {COLLAPSE_MARGIN} "
              f"of the majority class ({len({r['search'] for r in all_rows})} searches)")
    found = [{**r, "source": f.stem} for f in sorted(common.SUITE_RESULTS.glob("search_vs_baselines_runs_small_*.csv"))
             for r in common.read_csv(f)]
    baseline_runs = [{**r, "source": "baselines"} for r in common.read_csv(common.SUITE_RESULTS / "baselines_runs.csv")]
    print(f"seed noise on dev (3 seeds each; configurations whose holdout mean is within {COLLAPSE_MARGIN} of the task's best): "
          "one run's std | std of the configurations' means | what noise alone gives the means | share of one run's "
          "variance the configuration explains | configurations where one seed collapsed and another learned")
    for which, rows in (("baselines (nine hand-picks at their rates)", baseline_runs),
                        ("found configurations (small space, every pass)", found)):
        for task, n in seed_noise(rows, majority).items():
            print(f"  {which}, {task}: {n['configs']} configs, {n['seed_std']:.4f} | {n['means_std']:.4f} | "
                  f"{n['noise_only']:.4f} | {n['config_share']:.2f} | {n['split_seeds']} of {n['of']}")
    for task, ratios in contention(common.read_csv(common.SUITE_RESULTS / "baselines_runs.csv")).items():
        if ratios:
            print(f"{task}: contended / uncontended CPU-s per run, {len(ratios)} configurations: "
                  f"{min(ratios):.2f}-{max(ratios):.2f}, mean {statistics.fmean(ratios):.2f}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
