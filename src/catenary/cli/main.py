"""Entry point of the ``catenary`` command.

Sub-commands live in their own modules and are imported only when used, so
``catenary status`` does not pay for importing the simulator or the server.
"""

from __future__ import annotations

import importlib
import sys

import click

# name -> "module:attribute" of a click command or group.
_COMMANDS: dict[str, str] = {
    "server": "catenary.cli.server:server",
    "dev": "catenary.cli.dev:dev",
    "provision": "catenary.cli.admin:provision",
    "status": "catenary.cli.admin:status",
    "nodes": "catenary.cli.admin:nodes",
    "metadata": "catenary.cli.metadata:metadata",
    "logs": "catenary.cli.logs:logs",
    "metadata-server": "catenary.cli.admin:metadata_server",
    "bench": "catenary.cli.bench:bench",
    "sim": "catenary.cli.sim:sim",
    "faults": "catenary.cli.faults:faults",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name in _COMMANDS if self._load(name) is not None)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return self._load(cmd_name)

    @staticmethod
    def _load(name: str) -> click.Command | None:
        target = _COMMANDS.get(name)
        if target is None:
            return None
        module_name, _, attr = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            # Only a command whose own module is absent is hidden; a missing
            # dependency inside it is a real error and must surface.
            if exc.name == module_name:
                return None
            raise
        command = getattr(module, attr)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=_LazyGroup)
@click.version_option(package_name="catenary")
def cli() -> None:
    """catenary: a replicated log and a replicated metadata service."""


def main() -> None:
    try:
        cli()
    except KeyboardInterrupt:
        sys.exit(130)
