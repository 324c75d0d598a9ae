"""The command line: ``mtl-search run | validate | plugins | report | ui``.

Bad input (space, arguments, plugins, data) exits with status 2 and a one-line message, no traceback.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from .errors import MtlSearchError

EXIT_BAD_INPUT = 2
EXIT_ABORTED = 1  # search.max_failures exceeded; the front of what finished is still written


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

    sub.add_parser("plugins", help="list plugins, where they come from and what they provide")

    report = sub.add_parser("report", help="print the latest search's trials and front")
    report.add_argument("--experiment", help="experiment name (default: the latest search in the store)")
    report.add_argument("--format", choices=["table", "json", "csv"], default="table")
    report.add_argument("--tracking-uri")

    ui = sub.add_parser("ui", help="open the MLflow UI on the tracking store (bound to 127.0.0.1)")
    ui.add_argument("--port", type=_positive, default=5000)
    ui.add_argument("--host", default="127.0.0.1")
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


def cmd_run(args: argparse.Namespace) -> int:
    from .search import RunOptions, run_search
    from .space import load_space

    space = load_space(args.space)
    record = run_search(space, RunOptions(args.trials, args.concurrency, args.address, args.tracking_uri, args.experiment, args.resume))
    return EXIT_ABORTED if record.aborted else 0


def cmd_validate(args: argparse.Namespace) -> int:
    from .search import prepare
    from .space import load_space

    space = load_space(args.space)
    plan, dataset, _ = prepare(space)
    print(f"{args.space}: ok — data set {space.dataset!r} ({len(dataset.train)} train / {len(dataset.val)} val / {len(dataset.test)} test rows), "
          f"tasks {', '.join(plan.problem.task_names)}; strategies {', '.join(plan.strategies)}; "
          f"objectives {', '.join(o.name for o in plan.objectives)}")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from .plugins import load_registry

    registry = load_registry()
    for info in registry.plugins:
        status = f"BROKEN: {info.error}" if info.error else ", ".join(info.hooks)
        print(f"{info.name}  [{info.source}]  {status}")
        for kind, names in info.provides.items():
            print(f"    {kind}: {', '.join(names)}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .results import format_table, trial_table
    from .tracking import load_search, resolve_tracking_uri

    record = load_search(resolve_tracking_uri(args.tracking_uri), args.experiment)
    if args.format == "json":
        print(json.dumps(record.to_json(), indent=2))
    elif args.format == "csv":
        rows = trial_table(record)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)
        print(buffer.getvalue(), end="")
    else:
        print(f"experiment {record.experiment!r}, search run {record.search_run_id}, hypervolume {record.hypervolume}")
        print(format_table(trial_table(record)))
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from .tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    print(f"MLflow UI on http://{args.host}:{args.port} (store {uri}); Ctrl-C to stop")
    return subprocess.call([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host, "--port", str(args.port)])


COMMANDS = {"run": cmd_run, "validate": cmd_validate, "plugins": cmd_plugins, "report": cmd_report, "ui": cmd_ui}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except MtlSearchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
