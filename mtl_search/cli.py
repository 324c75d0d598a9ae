"""The command line: ``mtl-search run | validate | plugins | report | pick | predict | register | export | groups | ui``.

Bad input (space, arguments, plugins, data) exits with status 2 and a one-line message, no traceback.

This module imports only the standard library: ``--help`` and argument errors answer at
once, and each command imports what it needs (``validate`` no Ray or MLflow, ``report``
no torch or Ray). Reading commands (``report``, ``pick``, ``ui``, ``predict``) never create or
migrate a tracking store.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Callable, Sequence

from .errors import MtlSearchError

EXIT_BAD_INPUT = 2
EXIT_ABORTED = 1  # search.max_failures exceeded; the front of what finished is still written
UI_PORT = 5000  # `mtl-search ui`'s default port (the link `run` prints names it)
EXIT_INTERRUPTED = 130  # Ctrl-C (or SIGTERM): what finished is recorded; `run --resume` continues a search


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 too; keep the message short
        self.print_usage(sys.stderr)
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mtl-search", description="Search over how tasks share parameters in multi-task learning.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run the search of a space.yaml")
    run.add_argument("space", type=Path)
    run.add_argument("--trials", type=_positive, help="number of trials (overrides search.trials)")
    run.add_argument("--concurrency", type=_positive, help="trials run at once (overrides search.concurrency)")
    run.add_argument("--address", help="Ray cluster address (auto, host:port, ray://host:10001); default: a local instance")
    run.add_argument("--tracking-uri", help="MLflow tracking URI; default sqlite:///<cwd>/mlflow/mlflow.db")
    run.add_argument("--experiment", help="MLflow experiment name (overrides experiment)")
    run.add_argument("--resume", action="store_true",
                     help="continue the experiment's interrupted search: finished trials are kept, unfinished ones run again")

    validate = sub.add_parser("validate", help="check a space and the plugins it needs")
    validate.add_argument("space", type=Path)

    plugins = sub.add_parser("plugins", help="list plugins, where they come from and what they provide")
    plugins.add_argument("--verbose", action="store_true", help="also show each strategy's knobs and default ranges")

    new_plugin = sub.add_parser("new-plugin", help="scaffold an installable strategy plugin package")
    new_plugin.add_argument("name", help="strategy name (lower-case letters, digits, underscores)")
    new_plugin.add_argument("--dir", type=Path, default=Path("."), help="where to create the package (default: here)")

    report = sub.add_parser("report", help="print the latest search's front (or every trial)")
    report.add_argument("--experiment", help="experiment name (default: the latest search in the store)")
    report.add_argument("--format", choices=["table", "json", "csv"], default="table")
    report.add_argument("--family", help="only this strategy family's trials, with the family's own front and hypervolume")
    report.add_argument("--all", action="store_true", help="every trial, not only the front (table and csv; json always lists every trial)")
    report.add_argument("--tracking-uri")

    pick = sub.add_parser("pick", help="choose one trial of the latest search's front: the knee, a weighted sum, within bounds")
    rule = pick.add_mutually_exclusive_group()
    rule.add_argument("--knee", action="store_true", help="the front's knee: farthest from the hyperplane through its extremes (default)")
    rule.add_argument("--weights", metavar="NAME=W,...", help="the best weighted sum of the min-max normalised objectives")
    pick.add_argument("--min", action="append", default=[], metavar="NAME=V,...", help="only trials with this objective or task's value >= V")
    pick.add_argument("--max", action="append", default=[], metavar="NAME=V,...", help="only trials with this objective or task's value <= V")
    pick.add_argument("--experiment", help="experiment name (default: the latest search in the store)")
    pick.add_argument("--tracking-uri")

    predict = sub.add_parser("predict", help="predict with a trial's model (trials on the front carry one)")
    predict.add_argument("run_id", help="the trial's MLflow run id")
    predict.add_argument("data", type=Path, help="the rows to predict: for a model trained on a table, a CSV or Parquet file with its feature columns (raw, as in the training table); otherwise a numeric CSV of input features (header row optional)")
    predict.add_argument("--output", type=Path, help="write the predictions CSV here (default: stdout)")
    predict.add_argument("--tracking-uri")

    groups = sub.add_parser("groups", help="train once with task affinity measured and propose groupings of the tasks (TAG)")
    groups.add_argument("space", type=Path)
    groups.add_argument("--groups", type=_positive, help="only partitions into this many groups (default: every number 1..T)")
    groups.add_argument("--top", type=_positive, default=3, help="partitions listed per number of groups, best first (default 3)")
    groups.add_argument("--format", choices=["table", "json"], default="table")
    groups.add_argument("--tracking-uri")

    register = sub.add_parser("register", help="register a front trial's model in the MLflow Model Registry (then `mlflow models serve -m models:/NAME/VERSION`)")
    register.add_argument("run_id", help="the trial's MLflow run id")
    register.add_argument("--name", required=True, help="the registered model's name (a new version when it exists)")
    register.add_argument("--tracking-uri")

    export = sub.add_parser("export", help="export a front trial's model as one ONNX or TorchScript file (with the table's preprocessing as JSON)")
    export.add_argument("run_id", help="the trial's MLflow run id")
    export.add_argument("--format", choices=["onnx", "torchscript"], required=True)
    export.add_argument("--output", type=Path, required=True, help="the folder to write model.onnx or model.pt (and preprocessing.json) into")
    export.add_argument("--tracking-uri")

    ui = sub.add_parser("ui", help="open the MLflow UI on the tracking store (bound to 127.0.0.1)")
    ui.add_argument("--port", type=_port, default=UI_PORT)
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--workers", type=_positive, default=1, help="server worker processes (MLflow's default of 4 is slow to start on a laptop)")
    ui.add_argument("--tracking-uri")
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _port(text: str) -> int:
    value = _positive(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a port is 1 to 65535, got {text!r}")
    return value


def cmd_run(args: argparse.Namespace) -> int:
    from .console import quiet_ray_auth_notice, send_library_logs_to_file
    from .search.space import load_space

    space = load_space(args.space)
    quiet_ray_auth_notice(connecting=bool(args.address or space.ray.address))
    from .results.records import final_summary
    from .results.review import review_url
    from .results.store import resolve_tracking_uri, store_folder
    from .search.run import RunOptions, run_search

    log = send_library_logs_to_file(store_folder(resolve_tracking_uri(args.tracking_uri or space.tracking_uri)))
    options = RunOptions(args.trials, args.concurrency, args.address, args.tracking_uri, args.experiment, args.resume,
                         epoch_progress=sys.stdout.isatty())  # on a terminal, a line per trained epoch too
    record = run_search(space, options, progress=print)
    print("\n" + final_summary(record))
    print(f"review: mtl-search ui, then {review_url(f'http://127.0.0.1:{UI_PORT}')}   |   mtl-search report   |   "
          "mtl-search predict RUN_ID ROWS.csv")
    if log.exists():
        print(f"notices of Ray, Tune and MLflow: {log}")
    return EXIT_ABORTED if record.aborted else EXIT_INTERRUPTED if record.interrupted else 0


def cmd_validate(args: argparse.Namespace) -> int:
    from .search.prepare import PREFLIGHT_ROWS, prepare
    from .search.space import load_space

    space = load_space(args.space)
    plan, dataset, _ = prepare(space)
    print(f"{args.space}: ok — data set {space.dataset!r} ({len(dataset.train)} train / {len(dataset.val)} val / {len(dataset.test)} test rows), "
          f"tasks {', '.join(plan.problem.task_names)}; strategies {', '.join(plan.strategies)}; "
          f"objectives {', '.join(o.name for o in plan.objectives)}")
    counts = dataset.labelled_counts()
    print("labelled rows per task: " + "; ".join(
        f"{task} {'/'.join(str(counts[split][task]) for split in counts)}" for task in plan.problem.task_names) + " (train/val/test)")
    if dataset.problem.features is not None:  # a table: what each column in use became
        from .data.tables import describe_columns

        print("columns:\n" + "\n".join(f"  {line}" for line in describe_columns(plan.problem, dataset.train.x)))
    print(f"each strategy built and run on {PREFLIGHT_ROWS} rows at the smallest configuration of its ranges")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from .registry import load_registry

    registry = load_registry()
    for info in registry.plugins:
        status = f"BROKEN: {info.error}" if info.error else ", ".join(info.hooks)
        print(f"{info.name}  [{info.source}]  {status}")
        for kind, names in info.provides.items():
            print(f"    {kind}: {', '.join(names)}")
            if args.verbose:
                for name in names:
                    _print_knobs(kind, name, registry)
    return 0


def _print_knobs(kind: str, name: str, registry) -> None:
    item = getattr(registry, kind)[name]
    if kind == "datasets":
        knobs = {k: repr(v) for k, v in item.options.items()}
    else:
        knobs = {k: knob.describe() for k, knob in getattr(item, "knobs", {}).items()}
    detail = f" — {item.description}" if getattr(item, "description", "") else ""
    print(f"      {name}{detail}")
    for knob, text in knobs.items():
        print(f"        {knob}: {text}")


def cmd_new_plugin(args: argparse.Namespace) -> int:
    from .scaffold import scaffold_plugin

    root = scaffold_plugin(args.name, args.dir)
    print(f"created {root}\nnext: pip install -e '{root}[test]' && pytest {root} && mtl-search plugins")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .results.load import load_search
    from .results.records import (
        best_per_strategy,
        family_record,
        format_table,
        format_value,
        gbdt_row,
        reference_table,
        trial_table,
    )
    from .results.review import csv_text
    from .results.store import require_store, resolve_tracking_uri

    record = load_search(require_store(resolve_tracking_uri(args.tracking_uri)), args.experiment)
    if args.family:
        record = family_record(record, args.family)
    if args.format == "json":
        print(json.dumps(record.to_json(), indent=2))
        return 0
    rows = trial_table(record, only_front=not args.all)
    if args.format == "csv":
        print(csv_text(rows), end="")
        return 0
    scope = f"family {args.family!r}, " if args.family else ""
    hv = format_value(float(record.hypervolume)) if record.hypervolume is not None else "n/a"
    print(f"experiment {record.experiment!r}, search run {record.search_run_id}, {scope}"
          f"{'every trial' if args.all else 'Pareto front'} ({len(record.front)} of {len(record.trials)} trials on the front), hypervolume {hv}")
    print(format_table(rows + gbdt_row(record), task_metrics=record.task_metrics))
    if record.references:
        print("\nSingle-task references (Δm is measured against them):")
        print(format_table(reference_table(record)))
    print("\nBest per strategy (validation):")
    print(format_table(best_per_strategy(record)))
    return 0


def cmd_pick(args: argparse.Namespace) -> int:
    from .results.load import load_search
    from .results.pick import parse_assignments, pick, pick_line
    from .results.store import require_store, resolve_tracking_uri

    weights = parse_assignments(args.weights, "--weights") if args.weights else None
    bounds = {option: {k: v for text in texts for k, v in parse_assignments(text, option).items()}
              for option, texts in (("--min", args.min), ("--max", args.max))}
    record = load_search(require_store(resolve_tracking_uri(args.tracking_uri)), args.experiment)
    print(pick_line(pick(record, weights, bounds["--min"], bounds["--max"]), record, args.tracking_uri))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .console import quiet_artifact_downloads
    from .results.review import csv_text
    from .results.saved_models import load_model, prediction_rows, read_inputs
    from .results.store import require_store, resolve_tracking_uri

    quiet_artifact_downloads()
    model = load_model(args.run_id, require_store(resolve_tracking_uri(args.tracking_uri)))
    x = read_inputs(args.data, model.problem, warn=lambda line: print(line, file=sys.stderr))
    text = csv_text(prediction_rows(model, x))
    if args.output:
        try:
            args.output.write_text(text)
        except OSError as exc:
            raise MtlSearchError(f"--output {args.output}: cannot write the predictions there: {exc.strerror or exc}") from None
        print(f"{len(x)} predictions written to {args.output}")
    else:
        print(text, end="")
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    from .console import quiet_artifact_downloads
    from .results.pyfunc import register_model
    from .results.store import require_store, resolve_tracking_uri

    quiet_artifact_downloads()
    uri = require_store(resolve_tracking_uri(args.tracking_uri))
    version = register_model(args.run_id, args.name, uri)
    print(f"registered run {args.run_id}'s model as models:/{args.name}/{version}; serve it with\n"
          f"  MLFLOW_TRACKING_URI={uri} mlflow models serve -m models:/{args.name}/{version} --env-manager local --host 127.0.0.1 --port 5001")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .console import quiet_artifact_downloads
    from .results.export import export_model
    from .results.saved_models import load_model
    from .results.store import require_store, resolve_tracking_uri

    quiet_artifact_downloads()
    model = load_model(args.run_id, require_store(resolve_tracking_uri(args.tracking_uri)))
    for path in export_model(model, args.output, args.format):
        print(path)
    return 0


def cmd_groups(args: argparse.Namespace) -> int:
    from .search.grouping import format_groups, task_groups
    from .search.space import load_space

    space = load_space(args.space)
    result = task_groups(space, args.groups, args.top, args.tracking_uri)
    print(json.dumps(result, indent=2) if args.format == "json" else format_groups(result))
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from .results.load import latest_search_run
    from .results.review import review_url
    from .results.store import require_store, resolve_tracking_uri
    from .results.ui_server import APP_NAME

    uri = require_store(resolve_tracking_uri(args.tracking_uri))
    check_port_free(args.host, args.port)
    base = f"http://{args.host}:{args.port}"
    has_search = latest_search_run(uri) is not None
    print(f"starting the MLflow UI on {base} (store {uri}) ...", flush=True)

    def answering() -> None:  # the links, once a browser can open them
        print(f"MLflow UI on {base}; Ctrl-C to stop", flush=True)
        if has_search:
            print(f"latest search: {review_url(base)}", flush=True)

    return serve([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host, "--port", str(args.port),
                  "--workers", str(args.workers), "--app-name", APP_NAME], (args.host, args.port), answering)


def check_port_free(host: str, port: int) -> None:
    """Raise MtlSearchError when nothing can listen on ``host:port`` (a server already does, or the address is not ours)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise MtlSearchError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: a port in TIME_WAIT is free
        try:
            probe.bind(address)
        except OSError as exc:
            raise MtlSearchError(f"cannot serve the UI on {host}:{port}: {exc.strerror or exc}; "
                                 f"another server (an earlier `mtl-search ui`?) holds it: stop it or pick another port with --port") from None


STOP_GRACE_SECONDS = 10  # after SIGTERM, how long the server's process group has before SIGKILL


def serve(command: list[str], address: tuple[str, int] | None = None, answering: Callable[[], None] = lambda: None) -> int:
    """Run a server in a process group of its own until it exits, or until SIGTERM / SIGINT stops the whole group.

    The MLflow UI is a server with worker processes of its own: signalling only the first
    process would leave the workers serving. ``answering()`` is called once the server accepts
    connections at ``address``. Returns 0 when stopped here, 2 when the server exited by itself
    with an error (before it answered: it could not listen there).
    """
    process = subprocess.Popen(command, start_new_session=True)
    stopping: list[int] = []
    answered = address is None

    def stop(signum: int, frame: object) -> None:
        stopping.append(signum)
        _signal_group(process.pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while True:
            try:
                code = process.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if not answered and not stopping and _answers(*address):
                    answered = True
                    answering()
        if stopping:
            _stop_group(process.pid)
            return 0
        _stop_group(process.pid)  # the server died: leave none of its workers behind
        if code != 0:
            where = "" if answered else f" before it listened on {address[0]}:{address[1]}"
            print(f"error: the MLflow server exited with status {code}{where}", file=sys.stderr)
            return EXIT_BAD_INPUT
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _answers(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def _signal_group(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _stop_group(pgid: int) -> None:
    """SIGTERM then, after ``STOP_GRACE_SECONDS``, SIGKILL what is left of the process group ``pgid``."""
    import time

    if not _signal_group(pgid, signal.SIGTERM):
        return
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    while time.monotonic() < deadline:
        if not _signal_group(pgid, 0):
            return
        time.sleep(0.1)
    _signal_group(pgid, signal.SIGKILL)


COMMANDS = {"run": cmd_run, "validate": cmd_validate, "plugins": cmd_plugins, "new-plugin": cmd_new_plugin, "report": cmd_report, "pick": cmd_pick,
            "predict": cmd_predict, "groups": cmd_groups, "register": cmd_register, "export": cmd_export, "ui": cmd_ui}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except MtlSearchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
