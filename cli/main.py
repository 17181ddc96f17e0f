"""The ``geodet`` command group."""

from __future__ import annotations

import importlib
import logging

import click

from geodet import __version__

#: command name -> "module:attribute" of its click command (loaded on demand).
COMMANDS = {
    "tile": "geodet_cli.tile_cmd:tile_cmd",
    "anchors": "geodet_cli.anchors_cmd:anchors_cmd",
    "train": "geodet_cli.train_cmd:train_cmd",
    "detect": "geodet_cli.detect_cmd:detect_cmd",
    "evaluate": "geodet_cli.evaluate_cmd:evaluate_cmd",
    "export": "geodet_cli.export_cmd:export_cmd",
    "info": "geodet_cli.info_cmd:info_cmd",
}


class LazyGroup(click.Group):
    """A group that imports a command's module only when it is used."""

    def list_commands(self, ctx):
        return sorted(name for name in COMMANDS if self._load(name) is not None)

    def get_command(self, ctx, name):
        return self._load(name)

    @staticmethod
    def _load(name):
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                return None  # command not built yet
            raise
        return getattr(module, attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="geodet")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """geodet: find small, dense objects in aerial and satellite imagery."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s")
    from geodet.io.sources import RedactingFilter

    for handler in logging.getLogger().handlers:  # every line printed, whichever library logged it
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())


def main() -> None:  # pragma: no cover - console entry point
    cli()


if __name__ == "__main__":  # pragma: no cover
    main()
