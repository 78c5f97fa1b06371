"""Reading YAML written by people: pyyaml's safe loader, except that
- a key given twice in one mapping is an error naming the key and both lines (plain
  YAML keeps the last one silently, so `lr:` written twice hid the first);
- an integer longer than MAX_DIGITS digits is an error at its line (Python refuses
  to convert over 4300 digits, with a message naming neither file nor line);
- a document that expands, through aliases, to more than MAX_VALUES values is refused
  (nine levels of nine aliases are 387 million values from 100 lines)."""
from __future__ import annotations

from typing import Any

import yaml
from yaml.constructor import ConstructorError

_MERGE = "tag:yaml.org,2002:merge"
MAX_DIGITS = 40
MAX_VALUES = 2_000_000  # a 100,000-job file is about a million


class TooLarge(yaml.YAMLError):
    """The document expands to more than MAX_VALUES values."""

    def __init__(self, limit: int):
        self.problem = (f"expands to more than {limit:,} values (YAML aliases, `*name`, repeat whole parts); "
                        "write the values out or use fewer aliases")
        self.problem_mark = None
        super().__init__(self.problem)


# libyaml's parser where pyyaml was built with it: parsing was 3/4 of loading a job file
# (100,000 jobs took minutes in pure Python). The constructor, and so every check below,
# stays in Python.
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class Loader(_SAFE_LOADER):
    """The safe loader, refusing duplicate mapping keys, huge integers and alias bombs."""

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

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        digits = sum(c.isdigit() for c in str(node.value))
        if digits > MAX_DIGITS:
            raise ConstructorError(None, None, f"an integer of {digits} digits; at most {MAX_DIGITS}",
                                   node.start_mark)
        return super().construct_yaml_int(node)


Loader.add_constructor("tag:yaml.org,2002:int", Loader.construct_yaml_int)


def check_size(data: Any, limit: int = MAX_VALUES) -> None:
    """Raise TooLarge when `data`, with every alias expanded, holds more than `limit` values.
    Stops counting at the limit, so a bomb is refused in well under a second."""
    count, stack = 0, [data]
    while stack:
        node = stack.pop()
        count += 1
        if count > limit:
            raise TooLarge(limit)
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)


def load(text: str) -> Any:
    """Like yaml.safe_load, refusing duplicate keys, huge integers and alias bombs
    (yaml.YAMLError; a problem_mark where there is a line to name)."""
    data = yaml.load(text, Loader=Loader)
    check_size(data)
    return data
