"""What a search's parent run shows for review: front plots, tables, its summary, the runs table's default columns.

Called by the tracker when a search ends; everything here reads a ``SearchRecord`` and
writes MLflow artifacts or experiment tags (or returns the text it would write), nothing else.
"""
from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter
from typing import Any

from ..record import (
    COST_METRICS,
    DELTA_M,
    FAMILY,
    NEGATIVE_TRANSFER,
    PARAMS,
    PARENT,
    PARETO,
    ROLE,
    ROLE_TRIAL,
    STRATEGY,
    TEST,
    TEST_DELTA_M,
    VAL,
    VIEW,
    WORST_GAIN,
    Objective,
    TrialRecord,
)
from . import pareto
from .records import SearchRecord, format_value, metric_label, trial_table

# The runs table's view of a search is stored on its experiment (tag ``record.VIEW``) as MLflow 3
# stores a shared view (``#/experiments/ID/runs?viewStateShareKey=mtl_search`` opens it as one); the
# page at ``REVIEW_PATH`` on ``mtl-search ui``'s server opens it as the browser's own view (``ui_server``).
REVIEW_PATH = "/mtl-search/latest"
EXPERIMENT_KIND_VALUE = "custom_model_development"  # MLflow 3 opens such an experiment on its runs table, not the GenAI overview
HEADER_CHAR_WIDTH, HEADER_PADDING = 7, 40  # pixels: a tag column wide enough for its whole name in MLflow's header font


def csv_text(rows: list[dict[str, Any]]) -> str:
    """Rows as CSV, the columns in order of first appearance."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def front_data(record: SearchRecord) -> Any:
    """The plots' input (``plots.FrontData``): trials with finite objective values; None when there are none."""
    from .plots import FrontData

    scored = [(t, t.objective_values(record.objectives)) for t in record.trials if t.status == "finished"]
    scored = [(t, v) for t, v in scored if v is not None]
    if not scored:
        return None
    directions = [o.direction for o in record.objectives]
    on_family_front = [False] * len(scored)
    for family in {t.family for t, _ in scored}:
        members = [k for k, (t, _) in enumerate(scored) if t.family == family and not t.violations]  # infeasible: on no front
        for index in pareto.pareto_front([scored[k][1] for k in members], directions):
            on_family_front[members[index]] = True
    return FrontData(
        values=[v for _, v in scored], names=[metric_label(o.name, record.task_metrics) for o in record.objectives], directions=directions,
        labels=[t.run_name for t, _ in scored], families=[t.family or t.strategy for t, _ in scored],
        on_front=[t.pareto for t, _ in scored], on_family_front=on_family_front,
        hover=[_hover(t, record) for t, _ in scored],
        infeasible=[bool(t.violations) for t, _ in scored] if any(t.violations is not None for t, _ in scored) else None,
    )


def _hover(trial: Any, record: SearchRecord) -> str:
    values = "<br>".join(f"{metric_label(o.name, record.task_metrics)} = {format_value(float(v))}"
                         for o, v in zip(record.objectives, trial.objective_values(record.objectives)))
    knobs = ", ".join(f"{k.split('.', 1)[1]}={v}" for k, v in trial.params.items() if k.startswith(trial.strategy + "."))
    infeasible = f"<br>infeasible: {'; '.join(trial.violations)}" if trial.violations else ""
    return f"<b>{trial.run_name}</b><br>{trial.strategy} ({trial.family})<br>{values}" + (f"<br>{knobs}" if knobs else "") + infeasible


def log_search_review(client: Any, run_id: str, record: SearchRecord, history: list[tuple[float, int]]) -> None:
    """Tables (JSON + CSV, all trials and the front) and plots (fronts PNG + HTML, hypervolume history) on the search run."""
    import matplotlib.pyplot as plt

    from .plots import (
        front_plotly,
        front_png,
        fronts_per_family,
        hypervolume_figure,
        plotly_page,
        trials_by_family,
    )

    client.log_dict(run_id, record.to_json(), "front/search.json")
    client.log_dict(run_id, [t.to_json() for t in sorted(record.front, key=lambda t: t.number)], "front/front.json")
    client.log_text(run_id, csv_text(trial_table(record, detailed=True)), "front/trials.csv")
    client.log_text(run_id, csv_text(trial_table(record, only_front=True, detailed=True)), "front/front.csv")
    data = front_data(record)
    if data is not None:
        views = [(trials_by_family(data), "Trials by strategy family and the Pareto front (validation)", "front/front.png"),
                 (fronts_per_family(data), "The front of each family and the global front (validation)", "front/front_by_family.png")]
        for series, title, path in views:
            figure = front_png(data, series, title)
            client.log_figure(run_id, figure, path)
            plt.close(figure)
        page = plotly_page([front_plotly(data, series, title) for series, title, _ in views], f"Pareto fronts of {record.experiment}")
        client.log_text(run_id, page, "front/front.html")
    if history and record.reference_point is not None:
        figure = hypervolume_figure(history, record.reference_point, [o.name for o in record.objectives])
        client.log_figure(run_id, figure, "front/hypervolume.png")
        plt.close(figure)


def runs_table_view(record: SearchRecord) -> dict[str, Any]:
    """The runs table's stored view for a search: its trials, front first, left to right after the run name.

    The pareto tag, the objectives, Δm and the worst gain (with single-task references), every
    task's validation value (objectives or not: with more than four tasks they are not), the
    parameter count (unless an objective), the strategy tag (the run name names it too: it comes after the metrics,
    so that the metrics of six tasks fit a 1600-pixel screen), the searched knobs, then the
    family and negative-transfer tags, per-task test values, the test Δm and the other costs.
    MLflow orders columns by ``columnOrder``; ``columnWidths`` fits each tag column to its name.
    The filter lists this search's trials as rows of their own (a filter that leaves out
    their parent run shows them unnested), so a ``groups`` run or an earlier search in the
    experiment does not hide them; the front (``mtl_search.pareto`` = ``true``) sorts first.
    Per-task gains (``gain/<task>``) are logged but not default columns: they would push the
    per-task metrics off-screen.
    """
    tasks = sorted({k for t in record.trials for k in t.val} | {k for t in record.trials for k in t.test})
    knobs = sorted({name for t in record.trials for name in t.params if "." in name})
    tags = [PARETO, STRATEGY, FAMILY] + ([NEGATIVE_TRANSFER] if record.references else [])
    first = [o.key for o in record.objectives] + ([DELTA_M, WORST_GAIN] if record.references else []) + [VAL + t for t in tasks]
    columns = [f"tags.`{tags[0]}`"] + [f"metrics.`{key}`" for key in dict.fromkeys(first + [PARAMS])] + [f"tags.`{tags[1]}`"]
    columns += [f"params.`{name}`" for name in knobs] + [f"tags.`{key}`" for key in tags[2:]]
    rest = [TEST + t for t in tasks] + ([TEST_DELTA_M] if record.references else []) + list(COST_METRICS)
    columns += [f"metrics.`{key}`" for key in dict.fromkeys(rest) if f"metrics.`{key}`" not in columns]
    return {"selectedColumns": columns, "columnOrder": columns,
            "columnWidths": {f"tags.`{key}`": HEADER_PADDING + HEADER_CHAR_WIDTH * len(key) for key in tags},
            "groupBy": None,  # rows of their own, whatever grouping the browser had
            # its multi-task trials: the single-task reference trials and the repeats (roles reference, repeat) are left out
            "searchFilter": f"tags.`{PARENT}` = '{record.search_run_id}' and tags.`{ROLE}` = '{ROLE_TRIAL}'",
            "orderByKey": f"tags.`{PARETO}`", "orderByAsc": False}


def set_review_view(client: Any, experiment_id: str, record: SearchRecord) -> None:
    """Store the runs table view of ``record`` on its experiment (the page at ``REVIEW_PATH`` opens it)."""
    client.set_experiment_tag(experiment_id, VIEW, json.dumps(runs_table_view(record)))


def review_url(base: str) -> str:
    """The link ``mtl-search ui`` prints: its server's page that opens the store's latest search (``ui_server``)."""
    return base.rstrip("/") + REVIEW_PATH


def runs_table_path(experiment_id: str, view: dict[str, Any]) -> str:
    """The experiment's runs table (not its charts) in the MLflow UI, filtered and sorted as ``view`` says; from the server's root.

    MLflow 3.17's UI picks GenAI or model-training pages from a global switch (the
    ``workflowType`` URL parameter, else the browser's last choice, else GenAI), so the link
    names it; the ``mlflow.experimentKind`` tag covers the UIs that read the tag instead.
    """
    from urllib.parse import quote, urlencode

    facets = {"searchFilter": view.get("searchFilter", ""), "orderByKey": view.get("orderByKey", "attributes.start_time"),
              "orderByAsc": str(view.get("orderByAsc", False)).lower()}
    query = urlencode({"workflowType": "machine_learning", "compareRunsMode": "TABLE", **facets}, quote_via=quote)
    return f"/#/experiments/{experiment_id}/runs?{query}"


def summary_markdown(record: SearchRecord) -> str:
    """The search run's description: trial counts by status, best value per objective, per-family best, the front."""
    counts = Counter(t.status for t in record.trials)
    hv = f"{record.hypervolume:.6g}" if record.hypervolume is not None else "n/a"
    lines = [f"## Search `{record.experiment}`", "",
             f"{len(record.trials)} trials: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) +
             f"; front: {len(record.front)} trials; hypervolume: {hv}", ""]
    if record.interrupted:
        lines += ["**Interrupted** (Ctrl-C): `mtl-search run SPACE --resume` continues this search.", ""]
    names = [o.name for o in record.objectives]
    lines += ["| objective | best | trial | strategy |", "|---|---|---|---|"]
    for obj in record.objectives:
        best = _best(record.trials, obj)
        if best:
            lines.append(f"| {obj.name} ({obj.direction}) | {best[0]:.4g} | {best[1].run_name} | {best[1].strategy} |")
    lines += ["", "### Best per family", "", "| family | trials | on the front | " + " | ".join(f"best {n}" for n in names) + " |",
              "|---|---|---|" + "---|" * len(names)]
    for family in sorted({t.family for t in record.trials}):
        members = [t for t in record.trials if t.family == family]
        bests = [_best(members, obj) for obj in record.objectives]
        cells = [f"{b[0]:.4g} ({b[1].run_name})" if b else "n/a" for b in bests]
        lines.append(f"| {family or '?'} | {len(members)} | {sum(t.pareto for t in members)} | " + " | ".join(cells) + " |")
    gains = bool(record.references)
    extra = ["Δm %", "worst gain %", "negative transfer"] if gains else []
    lines += ["", "### Front", "", "| trial | strategy | " + " | ".join(names + extra) + " |", "|---|---|" + "---|" * len(names + extra)]
    for t in sorted(record.front, key=lambda t: t.number):
        values = t.objective_values(record.objectives) or []
        cells = [f"{v:.4g}" for v in values]
        if gains:
            cells += [_number(t.metrics.get(DELTA_M)), _number(t.metrics.get(WORST_GAIN)), "yes" if t.negative_transfer else "no"]
        lines.append(f"| {t.run_name} | {t.strategy} | " + " | ".join(cells) + " |")
    if record.gbdt:
        tasks = list(record.gbdt["val"])
        lines += ["", "### GBDT comparison (HistGradientBoosting per task; gains of the front's trials over it, validation %)", "",
                  "| | " + " | ".join(f"{t} {record.task_metrics.get(t, '')}".strip() for t in tasks) + " |", "|---|" + "---|" * len(tasks),
                  "| gbdt val | " + " | ".join(f"{record.gbdt['val'][t]:.4g}" for t in tasks) + " |",
                  "| gbdt test | " + " | ".join(f"{record.gbdt['test'].get(t, math.nan):.4g}" for t in tasks) + " |"]
        for t in sorted(record.front, key=lambda t: t.number):
            gains = record.gbdt_gains(t)
            lines.append(f"| {t.run_name} | " + " | ".join(_number(gains.get(task)) for task in tasks) + " |")
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return f"{value:+.2f}" if isinstance(value, float) and math.isfinite(value) else "n/a"


def _best(trials: list[TrialRecord], objective: Objective) -> tuple[float, TrialRecord] | None:
    """The best finished value of one objective and the trial that reached it."""
    scored = [(values[0], t) for t in trials if t.status == "finished" and (values := t.objective_values([objective]))]
    if not scored:
        return None
    pick = min if objective.direction == "min" else max
    return pick(scored, key=lambda pair: pair[0])
