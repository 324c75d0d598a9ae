"""Real tables: per task, the training mean (class prior), a linear/logistic model, HistGradientBoosting, the tuned reference and a small search.

Two tables that ship inside scikit-learn (nothing is downloaded), each written to a CSV and
searched as a user's table would be (``data: {csv: ...}``, every regression target
standardised by the search, metrics in the target's units):

- ``diabetes`` (442 patients, the raw units: ``load_diabetes(scaled=False)``): from age,
  sex, body-mass index and blood pressure, predict the disease progression after a year
  (mean ≈ 152, std ≈ 77) and three blood serum measures (HDL ``s3``, log triglycerides
  ``s5``, glucose ``s6``); total cholesterol, LDL and the cholesterol ratio are left out,
  since HDL follows from them;
- ``wine`` (178 wines): from ten chemical measures, predict the cultivar (3 classes), the
  alcohol content and the proline content (mean ≈ 747, std ≈ 314).

Every predictor sees the same train / val / test rows (the search's split). The baselines
fit on the training rows; the search's trials (run one after another in this process,
Optuna's TPE over the space's strategies, no Ray, no MLflow: ``common.run_trials_in_process``)
train on them with early stopping on val. Reported on the test rows: each baseline; the
search's trial that is best on validation for that task; the median and the worst trial
(the worst over the mean predictor, for regression, says whether any trial is far off the
target's scale); the project's tuned single-task reference per task (its reference trials,
searched as the search's reference phase does but in this process:
``common.run_references_in_process``; the best on validation, that model's test metric); and
the one trial with the best mean validation gain over those references, the search's Δm
(its per-task test metrics and gains over the references, its Δm on test: a single model
for every task). The same
search is run again with every regression target left in its units (``scale: false``),
for the median and worst trial without standardisation.

    python -m benchmarks.real_tables            # 12 trials per table and arm (a few minutes on 2 cores)
    python -m benchmarks.real_tables --quick    # 2 trials of 2 epochs, for a smoke run

Writes ``real_tables.md`` and ``real_tables.json`` to ``--out`` (default benchmarks/results).
"""
from __future__ import annotations

import math
import statistics
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import common

STRATEGIES = {"hard_sharing": {}, "mmoe": {}, "ple": {}, "cross_stitch": {}, "task_groups": {}}
FULL = {"trials": 12, "epochs": 60, "patience": 8}
QUICK = {"trials": 2, "epochs": 2, "patience": 2}
BASELINES = ("mean", "linear", "hgb")


def diabetes() -> tuple[dict[str, np.ndarray], dict[str, dict[str, str]]]:
    from sklearn.datasets import load_diabetes

    data = load_diabetes(scaled=False)
    columns = dict(zip(data.feature_names, data.data.T))
    table = {name: columns[name] for name in ("age", "sex", "bmi", "bp", "s3", "s5", "s6")}
    table["progression"] = data.target
    tasks = {name: {"kind": "regression", "metric": "mae"} for name in ("progression", "s3", "s5", "s6")}
    return table, tasks


def wine() -> tuple[dict[str, np.ndarray], dict[str, dict[str, str]]]:
    from sklearn.datasets import load_wine

    data = load_wine()
    table = {name.replace("/", "_"): values for name, values in zip(data.feature_names, data.data.T)}
    table["cultivar"] = np.array([f"c{int(c)}" for c in data.target])
    tasks = {"cultivar": {"kind": "multiclass", "metric": "accuracy"}, "alcohol": {"kind": "regression", "metric": "mae"},
             "proline": {"kind": "regression", "metric": "mae"}}
    return table, tasks


TABLES = {"diabetes": diabetes, "wine": wine}


STRATIFY = {"wine": "cultivar"}  # a classification task's classes kept in proportion in every split


def make_space(folder: Path, name: str, settings: dict[str, int], scaled: bool = True) -> Any:
    """The table as a CSV in ``folder`` and the parsed space that searches it (``scaled=False``: every regression target in its units)."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    from mtl_search.search.space import parse_space

    table, tasks = TABLES[name]()
    if not scaled:
        tasks = {t: {**spec, "scale": False} if spec["kind"] == "regression" else spec for t, spec in tasks.items()}
    pcsv.write_csv(pa.table(table), folder / f"{name}.csv")
    raw = {
        "experiment": f"real-{name}",
        "data": {"csv": f"{name}.csv", "split": {"val": 0.15, "test": 0.15, "seed": 0, "stratify": STRATIFY.get(name)}},
        "tasks": tasks,
        "backbone": {"kind": "mlp", "depth": {"int": [1, 3]}, "width": {"choice": [32, 64, 128]}, "dropout": 0.0},
        "strategies": STRATEGIES,
        "training": {"epochs": settings["epochs"], "patience": settings["patience"], "batch_size": 32,
                     "lr": {"loguniform": [3e-4, 1e-2]}},
        "search": {"trials": settings["trials"], "sampler": "tpe", "seed": 0},
        "baseline": False,
    }
    return parse_space(raw, folder / "space.yaml")


def model_scale(task: Any, output: np.ndarray) -> torch.Tensor:
    """A baseline's output (a value in units, P(y=1), class probabilities) as the model's output the task's metric reads."""
    value = torch.as_tensor(output, dtype=torch.float32)
    if task.kind == "regression":
        return task.standardise(value)
    eps = 1e-7
    if task.kind == "binary":
        value = value.clamp(eps, 1 - eps)
        return torch.log(value / (1 - value))
    return torch.log(value.clamp_min(eps))


def baseline_metrics(dataset: Any) -> dict[str, dict[str, dict[str, float]]]:
    """``{predictor: {split: {task: metric}}}`` of the baselines fit on the training rows (val and test)."""
    from sklearn.dummy import DummyClassifier, DummyRegressor
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def fit(kind: str, predictor: str) -> Any:
        regression = kind == "regression"
        if predictor == "mean":
            return DummyRegressor() if regression else DummyClassifier(strategy="prior")
        if predictor == "linear":
            return make_pipeline(StandardScaler(), LinearRegression() if regression else LogisticRegression(max_iter=2000))
        return HistGradientBoostingRegressor(random_state=0) if regression else HistGradientBoostingClassifier(random_state=0)

    def rows(split: Any, task: Any) -> tuple[np.ndarray, torch.Tensor]:
        mask = split.labelled(task.name)
        x, y = split.x, split.y[task.name]
        if mask is not None:
            x, y = x[mask], y[mask]
        return x.numpy(), y

    out: dict[str, dict[str, dict[str, float]]] = {p: {"val": {}, "test": {}} for p in BASELINES}
    for task in dataset.problem.tasks:
        x_train, y_train = rows(dataset.train, task)
        target = task.to_units(y_train).numpy() if task.kind == "regression" else y_train.numpy()
        for predictor in BASELINES:
            model = fit(task.kind, predictor).fit(x_train, target)
            for name, split in (("val", dataset.val), ("test", dataset.test)):
                x, y = rows(split, task)
                output = model.predict(x) if task.kind == "regression" else model.predict_proba(x)
                if task.kind == "binary":
                    output = output[:, 1]
                out[predictor][name][task.name] = task.evaluate(model_scale(task, output), y)
    return out


def mean_gain(metrics: dict[str, float], reference: dict[str, float], directions: dict[str, str]) -> float:
    from mtl_search.results.metrics import relative_gain

    gains = [relative_gain(metrics[t], reference[t], d) for t, d in directions.items()]
    return statistics.fmean(gains) if all(math.isfinite(g) for g in gains) else math.nan


def measure(name: str, settings: dict[str, int]) -> dict[str, Any]:
    """The baselines, the tuned references and the search's trials on one table."""
    from mtl_search.results.metrics import relative_gain
    from mtl_search.search.prepare import prepare

    with tempfile.TemporaryDirectory() as tmp:
        space = make_space(Path(tmp), name, settings)
        plan, dataset, _ = prepare(space)
        baselines = baseline_metrics(dataset)
        references, reference_runs = common.run_references_in_process(space)
        trials = common.run_trials_in_process(space)
        raw_trials = common.run_trials_in_process(make_space(Path(tmp), name, settings, scaled=False))
    tasks = {t.name: t for t in plan.problem.tasks}
    directions = {t.name: t.direction for t in plan.problem.tasks}
    def done(runs: list) -> list:
        return [t for t in runs if all(math.isfinite(t.result.get(f"val/{n}", math.nan)) for n in tasks)]

    finished, raw_finished = done(trials), done(raw_trials)
    per_task = {}
    for task_name, task in tasks.items():
        sign = 1 if task.direction == "min" else -1
        best = min(finished, key=lambda t: sign * t.result[f"val/{task_name}"])
        tests = [t.result[f"test/{task_name}"] for t in finished]
        worst = max(tests, key=lambda v: sign * v)
        raw = [t.result[f"test/{task_name}"] for t in raw_finished]
        per_task[task_name] = {
            "metric": task.metric, "direction": task.direction,
            **{p: baselines[p]["test"][task_name] for p in BASELINES}, "reference": references["test"][task_name],
            "search_best": best.result[f"test/{task_name}"], "search_best_strategy": best.config["strategy"],
            "search_median": statistics.median(tests), "search_worst": worst,
            "raw_median": statistics.median(raw), "raw_worst": max(raw, key=lambda v: sign * v),
        }
    one = max(finished, key=lambda t: mean_gain({n: t.result[f"val/{n}"] for n in tasks}, references["val"], directions))
    one_test = {n: one.result[f"test/{n}"] for n in tasks}
    for task_name in tasks:
        per_task[task_name]["one_model"] = one_test[task_name]
        per_task[task_name]["one_model_gain"] = relative_gain(one_test[task_name], references["test"][task_name], directions[task_name])
    return {"rows": {"train": len(dataset.train), "val": len(dataset.val), "test": len(dataset.test)},
            "trials": len(trials), "finished": len(finished), "raw_finished": len(raw_finished),
            "reference_trials": {t: len(r) for t, r in reference_runs.items()}, "one_model_strategy": one.config["strategy"],
            "one_model_val_delta_m": mean_gain({n: one.result[f"val/{n}"] for n in tasks}, references["val"], directions),
            "one_model_test_delta_m": mean_gain(one_test, references["test"], directions),
            "one_model_test_gain_over_hgb": mean_gain(one_test, baselines["hgb"]["test"], directions),
            "tasks": per_task}


def markdown(data: dict[str, Any]) -> str:
    lines = [f"Machine: {data['machine']} (other jobs shared it).", "",
             f"{data['settings']['trials']} trials per table ({', '.join(STRATEGIES)}), up to {data['settings']['epochs']} epochs, "
             "test metrics (MAE in the target's units, accuracy); baselines fit on the training rows; "
             "the search's trials early-stop on val; tuned reference: the project's single-task reference, the best on val of "
             "the task's reference trials (searched as the search does), its test metric; best: the trial best on val for that task; "
             "one model: the trial with the best mean validation gain over the tuned references (the search's Δm), its test "
             "metric and test gain over the tuned reference; raw units: the same search with every regression target left in "
             "its units (`scale: false`).", "",
             "| table | task (metric) | mean / prior | linear / logistic | HistGB | tuned reference | search best (strategy) | search median "
             "| search worst | one model | one model: gain over reference | raw units: median | raw units: worst |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for table, result in data["tables"].items():
        for task, row in result["tasks"].items():
            lines.append(f"| {table} | {task} ({row['metric']}) | {row['mean']:.4g} | {row['linear']:.4g} | {row['hgb']:.4g} | "
                         f"{row['reference']:.4g} | {row['search_best']:.4g} ({row['search_best_strategy']}) | {row['search_median']:.4g} | "
                         f"{row['search_worst']:.4g} | {row['one_model']:.4g} | {row['one_model_gain']:+.1f} % | {row['raw_median']:.4g} | "
                         f"{row['raw_worst']:.4g} |")
    lines.append("")
    for table, result in data["tables"].items():
        lines.append(f"- {table}: {result['rows']['train']} / {result['rows']['val']} / {result['rows']['test']} rows "
                     f"(train / val / test), {result['finished']} of {result['trials']} trials finished "
                     f"({result['raw_finished']} in raw units), {sum(result['reference_trials'].values())} reference trials "
                     f"({', '.join(f'{t} {n}' for t, n in result['reference_trials'].items())}); one model: "
                     f"{result['one_model_strategy']}, Δm over the tuned references {result['one_model_test_delta_m']:+.1f} % on test "
                     f"({result['one_model_val_delta_m']:+.1f} % on val), mean test gain over HistGB {result['one_model_test_gain_over_hgb']:+.1f} %")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = common.parser(__doc__).parse_args(argv)
    settings = QUICK if args.quick else FULL
    torch.set_num_threads(1)
    data = {"machine": common.machine(), "settings": settings, "tables": {name: measure(name, settings) for name in TABLES}}
    print(common.write("real_tables", markdown(data), data, args.out))


if __name__ == "__main__":
    main()
