"""Presets: named, documented params overlays for the data sets our users come with.

`tlpipe preset NAME` merges a preset's params into params.yaml in place, keeping its comments;
`--set-args` prints the same values as `dvc exp run -S` arguments instead.
"""

import difflib
import io
from importlib import resources
from pathlib import Path

import yaml
from ruamel.yaml import YAML

from tlpipe import params
from tlpipe.atomic import atomic_path
from tlpipe.errors import TlpipeError


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
        flat["data.source"] = source
    return flat


def _round_trip_yaml() -> YAML:
    rt = YAML()
    rt.preserve_quotes = True
    rt.width = 4096
    rt.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    return rt


def apply(name: str, params_path: str | Path = "params.yaml", source: str | None = None) -> dict[str, tuple]:
    """Merge the preset into params.yaml (comments kept), validated first; returns {key: (old, new)}."""
    params_path = Path(params_path)
    rt = _round_trip_yaml()
    document = rt.load(params_path.read_text())
    changes = {}
    for dotted, value in overlay(name, source).items():
        section, key = dotted.split(".")
        if section not in document or key not in document[section]:
            raise TlpipeError(f"preset '{name}' sets '{dotted}', which {params_path} does not have; "
                              "update params.yaml from the project's template.")
        if document[section][key] != value:
            changes[dotted] = (document[section][key], value)
            document[section][key] = value
    text = io.StringIO()
    rt.dump(document, text)
    where = f"{params_path} with preset '{name}'"
    params.validate(params.parse(text.getvalue(), where), where)
    with atomic_path(params_path) as tmp:
        tmp.write_text(text.getvalue())
        tmp.chmod(params_path.stat().st_mode)
    return changes


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
