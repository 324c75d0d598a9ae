"""``mtl-search new-plugin NAME``: an installable strategy plugin package that already meets the contract."""
from __future__ import annotations

import re
from pathlib import Path

from .errors import MtlSearchError

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")

PYPROJECT = '''[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "mtl-search-{dash}"
version = "0.1.0"
description = "The {name} sharing strategy for mtl-search"
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["mtl-search"]

[project.optional-dependencies]
test = ["pytest>=8"]

# mtl-search finds plugins through this entry-point group.
[project.entry-points.mtl_search]
{name} = "{package}.strategy"

[tool.setuptools]
packages = ["{package}"]
'''

STRATEGY = '''"""The {name} strategy: a trunk shared by all tasks and a residual private adapter per task.

Replace the model with your method; keep the contract (``mtl_search.testing.check_strategy``).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mtl_search import Backbone, Float, Int, MultiTaskModel, Problem, SharingMap, Strategy, hookimpl, make_tower


class {cls}Model(MultiTaskModel):
    def __init__(self, problem: Problem, backbone: Backbone, tower_width: int, adapter_scale: float):
        super().__init__(problem)
        self.trunk = nn.Sequential(backbone.new_stem(), *backbone.new_blocks(), backbone.new_features())
        width = backbone.out_features
        self.adapters = nn.ModuleDict({{t.name: nn.Linear(width, width) for t in problem.tasks}})
        self.towers = nn.ModuleDict({{t.name: make_tower(width, t.output_dim, [tower_width]) for t in problem.tasks}})
        self.adapter_scale = adapter_scale

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.trunk(x)
        return {{t: self.towers[t](h + self.adapter_scale * self.adapters[t](h)) for t in self.towers}}

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.trunk.parameters())

    def sharing_map(self, x: torch.Tensor) -> dict[str, SharingMap]:
        # how much of each task's tower input comes from the shared trunk
        h = self.trunk(x)
        shares = [h.norm() / (h.norm() + self.adapter_scale * self.adapters[t](h).norm() + 1e-12) for t in self.towers]
        return {{"trunk_share": SharingMap(torch.stack(shares).view(-1, 1), list(self.towers), ["trunk"])}}


class {cls}(Strategy):
    name = "{name}"
    family = "{name}"
    description = "shared trunk with a residual private adapter per task"
    # its models list the trunk in shared_parameters(): weightings that act on the shared
    # gradients (gradnorm, gradient aggregators) may train it; without this they refuse it
    declares_shared_parameters = True
    knobs = {{"tower_width": Int(4, 64, log=True, minimum=1), "adapter_scale": Float(0.0, 1.0, minimum=0.0)}}

    def build(self, problem: Problem, backbone: Backbone, params: dict[str, Any]) -> MultiTaskModel:
        return {cls}Model(problem, backbone, params["tower_width"], params["adapter_scale"])


@hookimpl
def register_strategies(register):
    register({cls}())
'''

TEST = '''from mtl_search.testing import check_strategy

from {package}.strategy import {cls}


def test_{name}_meets_the_mtl_search_contract():
    check_strategy({cls}())
'''

README = '''# mtl-search-{dash}

The `{name}` sharing strategy for [mtl-search](https://github.com/), as a plugin.

```bash
pip install -e ".[test]"      # registers the strategy through the `mtl_search` entry point
mtl-search plugins            # lists `{name}`
pytest -q                     # the contract check
```

Search it by naming it in a space:

```yaml
strategies:
  {name}: {{tower_width: {{int: [8, 32]}}}}
```
'''


def scaffold_plugin(name: str, directory: Path) -> Path:
    """Write the package ``mtl-search-NAME`` under ``directory``; return its root."""
    if not NAME_PATTERN.match(name):
        raise MtlSearchError(f"plugin name {name!r}: use lower-case letters, digits and underscores, starting with a letter")
    root = directory / f"mtl-search-{name.replace('_', '-')}"
    if root.exists():
        raise MtlSearchError(f"{root} already exists; choose another name or --dir")
    package = f"mtl_search_{name}"
    values = {"name": name, "dash": name.replace("_", "-"), "package": package,
              "cls": "".join(part.capitalize() for part in name.split("_"))}
    files = {
        "pyproject.toml": PYPROJECT,
        f"{package}/__init__.py": '"""The {name} strategy plugin for mtl-search."""\n',
        f"{package}/strategy.py": STRATEGY,
        f"tests/test_{name}.py": TEST,
        "README.md": README,
    }
    for relative, template in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.format(**values))
    return root
