"""Presets: named, documented params overlays for the data sets our users come with.

`tlpipe preset NAME` merges a preset's params into params.yaml in place, keeping its comments;
`--set-args` prints the same values as `dvc exp run -S` arguments instead.
"""

import difflib
from importlib import resources
from pathlib import Path

import yaml

from tlpipe.errors import TlpipeError
from tlpipe.data.tracking import resolved
from tlpipe.params import track_for
from tlpipe.params_edit import merge_values


def names() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in resources.files("tlpipe.preset_files").iterdir()
                  if p.name.endswith(".yaml"))


def load(name: str) -> dict:
    if name not in names():
        close = difflib.get_close_matches(name, names(), n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise TlpipeError(f"preset '{name}' does not exist.{hint} Available: {', '.join(names())}.")
    preset = yaml.safe_load(resources.files("tlpipe.preset_files").joinpath(f"{name}.yaml").read_text())
    return preset


def overlay(name: str, source: str | None = None) -> dict[str, object]:
    """The preset's params as {'section.key': value}; `source` replaces its data.source."""
    flat = {f"{section}.{key}": value
            for section, keys in load(name)["params"].items() for key, value in keys.items()}
    if source is not None:
        flat["data.source"] = resolved(source, pin_kaggle=False)
        flat["data.sha256"] = None
    flat["data.track"] = track_for(flat["data.source"])
    return flat


def apply(name: str, params_path: str | Path = "params.yaml", source: str | None = None) -> dict[str, tuple]:
    """Merge the preset into params.yaml (comments kept), validated first; returns {key: (old, new)}."""
    return merge_values(overlay(name, source), params_path, f"preset '{name}'")


def set_args(name: str, source: str | None = None) -> list[str]:
    """`dvc exp run` arguments that apply the preset to one experiment only."""
    return [f"-S '{dotted}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}'"
            for dotted, value in overlay(name, source).items()]


def describe(name: str) -> str:
    preset = load(name)
    lines = [f"{name}: {preset['title']}", f"  kaggle:  kaggle:{preset['kaggle']}",
             f"  on disk: {preset['path_example']}", "  " + preset["notes"].strip().replace("\n", "\n  "),
             "  published:"]
    lines += [f"    - {figure}" for figure in preset["published"]]
    return "\n".join(lines)
