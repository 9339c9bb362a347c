"""Writing values into params.yaml in place, comments kept, validated before anything is written."""

import io
from pathlib import Path

from tlpipe import params
from tlpipe.atomic import atomic_path
from tlpipe.errors import TlpipeError


def _round_trip_yaml():
    from ruamel.yaml import YAML  # only the writers need it; every stage imports this module

    rt = YAML()
    rt.preserve_quotes = True
    rt.width = 4096
    rt.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    return rt


def merge_values(changes: dict[str, object], params_path: str | Path, what: str) -> dict[str, tuple]:
    """Write {'section.key': value} into params.yaml in place (comments kept), validated before
    anything is written; `what` names the source in errors. Returns {key: (old, new)} of what changed."""
    params_path = Path(params_path)
    if not params_path.is_file():
        raise TlpipeError(f"{params_path}: not found. Run from the project folder (where dvc.yaml is).")
    original = params_path.read_text(encoding="utf-8")
    params.parse(original, str(params_path))  # a YAML slip: one line naming the file, line and column
    rt = _round_trip_yaml()
    document = rt.load(original)
    changed = {}
    for dotted, value in changes.items():
        section, key = dotted.split(".")
        if section not in document or key not in document[section]:
            raise TlpipeError(f"{what} sets '{dotted}', which {params_path} does not have; "
                              "update params.yaml from the project's template.")
        if document[section][key] != value:
            changed[dotted] = (document[section][key], value)
            document[section][key] = value
    text = io.StringIO()
    rt.dump(document, text)
    where = f"{params_path} with {what}"
    params.validate(params.parse(text.getvalue(), where), where)
    with atomic_path(params_path) as tmp:
        tmp.write_text(text.getvalue())
        tmp.chmod(params_path.stat().st_mode)
    return changed
