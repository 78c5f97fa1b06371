"""Reading YAML written by people: pyyaml's safe loader, except that a key
given twice in one mapping is an error naming the key and both lines (plain
YAML keeps the last one silently, so `lr:` written twice hid the first)."""
from __future__ import annotations

from typing import Any

import yaml
from yaml.constructor import ConstructorError

_MERGE = "tag:yaml.org,2002:merge"


class Loader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses duplicate mapping keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE:  # `<<: *base` keys may be overridden on purpose
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if first is not None:
                    raise ConstructorError(
                        None, None,
                        f"duplicate key {key!r} (first on line {first + 1}, again on line "
                        f"{key_node.start_mark.line + 1}); keep one",
                        key_node.start_mark)
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def load(text: str) -> Any:
    """Like yaml.safe_load, refusing duplicate keys (yaml.YAMLError with a problem_mark)."""
    return yaml.load(text, Loader=Loader)
