"""A trial's model as one self-contained file for a runtime without this package: ONNX or TorchScript.

The file takes one named input ``x`` (float32, rows x input shape) and has one named output per
task output, in the terms of :func:`mtl_search.results.saved_models.predict`: a regression value,
P(y=1), a multiclass task's class probabilities (rows x classes), and ``task.joint`` for a funnel
task. For a model trained on a table, ``x`` is the table's raw layout (numeric values with NaN
where missing, then category codes) and the graph holds the rest of the preprocessing (the
training split's standardisation, imputation, missing indicators, one-hot or embedded
categories); ``preprocessing.json`` beside it says how a server builds ``x`` from raw rows:
column order, each category's code (0 for a blank or unseen category), the missing-value
marker, and the statistics the graph applies.

An export is verified before it is kept: the runtime's predictions on rows other than the
ones it was traced on, at other batch sizes, must equal ``predict`` within ``TOLERANCE``. A
model whose graph cannot express it (its ``export_refusal()`` names the reason, or the check
fails) is refused with the reason.
"""
from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from ..errors import MtlSearchError
from ..nn.model import MultiTaskModel
from .saved_models import predict, task_predictions

FORMATS = {"onnx": "model.onnx", "torchscript": "model.pt"}
PREPROCESSING_FILE = "preprocessing.json"
INPUT_NAME = "x"
TOLERANCE = 1e-5
OPSET = 17
_TRACE_ROWS, _CHECK_ROWS = 3, (1, 7, 64)  # traced on 3 rows; checked on others, at other batch sizes


class _Predictions(nn.Module):
    """The model followed by ``task_predictions``: ``x`` -> a tuple of the outputs named in ``names``."""

    def __init__(self, model: MultiTaskModel, names: list[str]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, x: torch.Tensor) -> Any:
        predictions = task_predictions(self.model.problem, self.model(x))
        return tuple(predictions[name] for name in self.names)


def export_model(model: MultiTaskModel, directory: str | Path, fmt: str) -> list[Path]:
    """Write ``model`` as ``fmt`` (onnx or torchscript) into ``directory``, with ``preprocessing.json`` for a table model; returns the files.

    MtlSearchError when the model cannot be exported faithfully (the reason named), or ``onnx``/``onnxruntime`` are missing.
    """
    if fmt not in FORMATS:
        raise MtlSearchError(f"export format {fmt!r}: expected one of {', '.join(FORMATS)}")
    refusal = model.export_refusal()
    if refusal:
        raise MtlSearchError(f"cannot export {type(model).__name__}: {refusal}")
    if fmt == "onnx":
        _require_onnx()
        _register_onnx_symbolics()
    model = model.eval()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / FORMATS[fmt]
    rows = example_rows(model, _TRACE_ROWS + sum(_CHECK_ROWS), seed=0)
    names = list(predict(model, rows[:1]))
    graph = _Predictions(model, names)
    with warnings.catch_warnings():  # the tracer's notes on Python values it records as constants; the check below is what decides
        warnings.simplefilter("ignore")
        with torch.no_grad(), _refused_on_failure(model, fmt):
            if fmt == "onnx":
                # through TorchScript: the ONNX exporter's own tracing cannot read a module's extra state (the table input layer's)
                torch.onnx.export(torch.jit.trace(graph, rows[:_TRACE_ROWS]), (rows[:_TRACE_ROWS],), str(target), input_names=[INPUT_NAME],
                                  output_names=names, dynamic_axes={name: {0: "rows"} for name in [INPUT_NAME, *names]},
                                  opset_version=OPSET, dynamo=False)
            else:
                torch.jit.trace(_Named(graph), rows[:_TRACE_ROWS], strict=False).save(str(target))
    try:
        _verify(model, target, fmt, names, rows[_TRACE_ROWS:])
    except MtlSearchError:
        target.unlink()
        raise
    written = [target]
    if model.problem.features is not None:
        path = directory / PREPROCESSING_FILE
        path.write_text(json.dumps(preprocessing(model, names), indent=2))
        written.append(path)
    return written


class _Named(nn.Module):
    """TorchScript's outputs by name: a dict of the task outputs."""

    def __init__(self, graph: _Predictions):
        super().__init__()
        self.graph = graph

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip(self.graph.names, self.graph(x)))


def _verify(model: MultiTaskModel, target: Path, fmt: str, names: list[str], rows: torch.Tensor) -> None:
    run = run_exported(target, fmt)
    start = 0
    for size in _CHECK_ROWS:
        batch = rows[start:start + size]
        start += size
        expected = predict(model, batch)
        try:
            got = run(batch.numpy())
        except Exception as exc:  # the runtime rejects the graph at another batch size: a shape baked in by tracing
            raise MtlSearchError(f"cannot export {type(model).__name__} as {fmt}: the exported graph fails on {size} rows "
                                 f"({str(exc).splitlines()[0][:200]}); its computation depends on the batch in a way tracing cannot record") from None
        for name in names:
            error = float((torch.as_tensor(got[name]) - expected[name]).abs().max())
            if not error <= TOLERANCE:
                raise MtlSearchError(f"cannot export {type(model).__name__} as {fmt}: the exported graph's {name!r} differs from predict "
                                     f"by {error:.2g} on {size} rows (tolerance {TOLERANCE:g}); its computation depends on the data "
                                     "in a way tracing cannot record")


def run_exported(target: str | Path, fmt: str) -> Any:
    """A function ``rows (numpy float32) -> {output name: numpy array}`` running the exported file in its runtime (one thread)."""
    if fmt == "onnx":
        _require_onnx()
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(str(target), options, providers=["CPUExecutionProvider"])
        outputs = [o.name for o in session.get_outputs()]
        return lambda x: dict(zip(outputs, session.run(outputs, {INPUT_NAME: x})))
    module = torch.jit.load(str(target), map_location="cpu").eval()

    def run(x: Any) -> dict[str, Any]:
        with torch.no_grad():
            return {k: v.numpy() for k, v in module(torch.from_numpy(x)).items()}
    return run


def example_rows(model: MultiTaskModel, count: int, seed: int) -> torch.Tensor:
    """``count`` plausible model inputs: for a table, numeric values around the training means with some missing, and every category code (unknown included)."""
    g = torch.Generator().manual_seed(seed)
    features = model.problem.features
    if features is None:
        return torch.randn(count, *model.problem.input_shape, generator=g)
    columns = []
    for f in features.numeric:
        values = f.mean + f.std * torch.randn(count, generator=g)
        columns.append(torch.where(torch.rand(count, generator=g) < 0.2, torch.full_like(values, float("nan")), values))
    for f in features.categorical:
        columns.append(torch.randint(0, f.levels, (count,), generator=g).float())
    return torch.stack(columns, dim=1)


def preprocessing(model: MultiTaskModel, outputs: list[str]) -> dict[str, Any]:
    """How a server builds the input ``x`` of a table model from raw rows, and what the graph does with it."""
    features = model.problem.features
    return {
        "input": INPUT_NAME,
        "dtype": "float32",
        "layout": "one row per record; the columns in this order: numeric values, then category codes",
        "columns": [{"name": f.name, "kind": "numeric", "missing": "NaN",
                     "in_graph": {"standardise": {"mean": f.mean, "std": f.std}, "missing_filled_with": "the mean (0 after standardising)",
                                  "missing_indicator": f.indicator}} for f in features.numeric]
                   + [{"name": f.name, "kind": "categorical", "codes": {c: i + 1 for i, c in enumerate(f.categories)},
                       "missing_or_unseen": 0} for f in features.categorical],
        "outputs": {name: _describe(model, name) for name in outputs},
    }


def _describe(model: MultiTaskModel, name: str) -> str:
    task = next((t for t in model.problem.tasks if t.name == name), None)
    if task is None:
        return "joint probability: this funnel task and every task above it positive (product of the conditionals)"
    return {"binary": "P(y=1)" + (f", given {task.after}" if task.after else ""), "multiclass": f"class probabilities (rows x {task.classes})",
            "regression": "the predicted value"}[task.kind]


@contextlib.contextmanager
def _refused_on_failure(model: MultiTaskModel, fmt: str) -> Iterator[None]:
    """An exporter's failure (an operator the format lacks, a construct tracing cannot follow) as a refusal naming it."""
    try:
        yield
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise MtlSearchError(f"cannot export {type(model).__name__} as {fmt}: the exporter failed: {reason}") from None


def _register_onnx_symbolics() -> None:
    """ONNX has no expm1 (a funnel's log(1 - p)): exp(x) - 1, within the export's check like every other operator."""
    from torch.onnx import register_custom_op_symbolic

    def expm1(g: Any, x: Any) -> Any:
        return g.op("Sub", g.op("Exp", x), g.op("Constant", value_t=torch.tensor(1.0)))

    register_custom_op_symbolic("aten::expm1", expm1, OPSET)


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise MtlSearchError("ONNX export needs onnx and onnxruntime: pip install 'mtl-search[export]'") from None
