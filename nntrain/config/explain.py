"""Every config key, from the same declarations that validate it: `nntrain print-config --explain` and
docs/config.md (which a test keeps equal to this output)."""

from __future__ import annotations

import json
from typing import Any

from nntrain.config.schema import SECTIONS, TOP_OPTIONS
from nntrain.data.augment import AUGMENTATIONS
from nntrain.nn.layers import LAYERS
from nntrain.nn.losses import LOSSES
from nntrain.nn.optim import OPTIMIZERS
from nntrain.nn.schedulers import SCHEDULERS
from nntrain.options import Option, plain
from nntrain.registry import Registry
from nntrain.tables import format_table

_INTRO = """\
# Config reference

Every key nntrain accepts in a training config, with its type, default and allowed range. Generated
from the declarations that also validate a config (`nntrain print-config --explain`), so it is always
current. A key without a default is required. `nntrain print-config CONFIG` shows a config with every
default filled in.

Sections: `name`, `seed`, `data`, `model` (a list of layers), `loss`, `optimizer`, `scheduler`
(optional; null keeps the learning rate constant), `train`.
"""


def _cell(text: Any) -> str:
    return str(text).replace("\n", " ")


def _yaml(value: Any) -> str:
    """A default as YAML writes it (null, true, [3, 3])."""
    return json.dumps(plain(value))


def _options_table(options: dict[str, Option], prefix: str = "") -> str:
    rows = [(f"`{prefix}{key}`", opt.kind, "required" if opt.required else f"`{_yaml(opt.default)}`",
             _cell(opt.describe()), _cell(opt.doc)) for key, opt in options.items()]
    if not rows:
        return "No options."
    return format_table(["key", "type", "default", "valid", "meaning"], rows, align="lllll", markdown=True)


def _registry_section(title: str, registry: Registry, where: str) -> list[str]:
    out = [f"## {title}", "", f"`{where}: {{type: NAME, ...options}}`, NAME one of: "
           + ", ".join(f"`{name}`" for name in registry) + ".", ""]
    for name, doc, options in registry.explain():
        out += [f"### `{name}`", "", doc, "", _options_table(dict(options)), ""]
    return out


def explain() -> str:
    """The config reference as Markdown."""
    out = [_INTRO, "## Top level", "", _options_table(TOP_OPTIONS), ""]
    for path, (options, nested) in SECTIONS.items():
        out += [f"## `{path}`", "", _options_table(options, f"{path}."), ""]
        if nested:
            out += ["Nested: " + ", ".join(f"`{path}.{n}`" for n in nested) + " (below).", ""]
    out += _registry_section("Layers", LAYERS, "model[i]")
    out += _registry_section("Augmentations", AUGMENTATIONS, "data.augment[i]")
    out += _registry_section("Loss", LOSSES, "loss")
    out += _registry_section("Optimizers", OPTIMIZERS, "optimizer")
    out += _registry_section("Learning-rate schedules", SCHEDULERS, "scheduler")
    return "\n".join(out).rstrip() + "\n"
