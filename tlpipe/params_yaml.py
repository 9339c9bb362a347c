"""Reading params.yaml text as DVC reads it: duplicate keys are an error, YAML 1.2 numbers."""

import re

import yaml

from tlpipe.errors import TlpipeError


class _Loader(yaml.SafeLoader):
    """YAML as DVC reads params.yaml: duplicate keys are an error, and numbers follow YAML 1.2
    (`1e-4` is a float, as DVC and people write it; PyYAML's YAML 1.1 reads it as a string)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise TlpipeError(f"duplicate key '{key}' (line {key_node.start_mark.line + 1}); DVC refuses "
                                  "such a file. Keep one.")
            seen.add(key)
        return super().construct_mapping(node, deep)


_Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def parse(text: str, where: str):
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except TlpipeError as error:
        raise TlpipeError(f"{where}: {error}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise TlpipeError(f"{where}: not valid YAML{at}: {problem}. Fix that line (a missing quote, colon "
                          "or bracket is the usual cause).") from None
