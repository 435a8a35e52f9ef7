"""The one YAML reader for files a user hands nbtl (spaces, rules, configs, saved search state).

``yaml.safe_load`` never builds arbitrary objects, but it still expands aliases: a 1.2 KB file of nine anchors,
each a list of nine aliases of the one before, becomes 9**9 strings once anything walks or prints it (a search
space's ``name:`` did, and hung `nbtl search` at 1.5 GB and rising). No nbtl file needs an alias, so this loader
refuses them before anything is built, and refuses files over :data:`MAX_YAML_BYTES`.
"""

from __future__ import annotations

from typing import Any

import yaml

from nbtl.errors import ConfigError

#: Spaces, rules and configs are a few KB; a file past this is a mistake or an attack.
MAX_YAML_BYTES = 1_000_000


class _NoAliasLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that stops at the first alias (``*name``)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.events.AliasEvent):
            event = self.peek_event()
            raise ConfigError(
                f"{self.name}: line {event.start_mark.line + 1}: YAML aliases (*{event.anchor}) are not accepted; "
                "write the value out in full"
            )
        return super().compose_node(parent, index)


def load_yaml(text: str, where: str) -> Any:
    """Parse ``text`` (the content of ``where``, for messages) like ``yaml.safe_load``, refusing aliases and texts
    over :data:`MAX_YAML_BYTES`.

    Raises
    ------
    ConfigError
        One line naming ``where``: too large, or an alias (its line).
    yaml.YAMLError
        Not valid YAML (callers turn it into their own one-line error).
    """
    size = len(text.encode("utf-8", errors="replace"))
    if size > MAX_YAML_BYTES:
        raise ConfigError(
            f"{where}: {size:,} bytes, over the {MAX_YAML_BYTES:,} nbtl reads in a YAML file; give the right file"
        )
    loader = _NoAliasLoader(text)
    loader.name = where
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
