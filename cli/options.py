"""Options and helpers shared by several commands."""

from __future__ import annotations

import contextlib
import os

import click
import yaml
from tqdm.auto import tqdm

from geodet.config import ChipConfig, DetectConfig


def parse_bands_option(ctx, param, value):
    """Click callback: ``"1,2,3"`` -> (1, 2, 3); None stays None."""
    if value is None:
        return None
    from geodet.errors import GeodetError
    from geodet.io.raster import parse_bands

    try:
        return parse_bands(value)
    except GeodetError as exc:
        raise click.BadParameter(str(exc)) from exc


chip_size_option = click.option(
    "--chip-size", type=click.IntRange(min=8), default=ChipConfig.size, show_default=True,
    help="Chip side in pixels.",
)
overlap_option = click.option(
    "--overlap", type=click.IntRange(min=0), default=ChipConfig.overlap, show_default=True,
    help="Overlap between chips in pixels.",
)
bands_option = click.option(
    "--bands", callback=parse_bands_option, default=None, help="Bands to read, 1-based, e.g. 1,2,3 (default: all)."
)


def auto_class_fields_text() -> str:
    """``"class, label, category"``: the columns tried, in order, when no class field is named."""
    from geodet.io.vector import AUTO_CLASS_FIELDS

    return ", ".join(AUTO_CLASS_FIELDS)


class LazyHelpOption(click.Option):
    """An option whose help is ``help_fn()``, called only when help is shown
    (so a constant of a heavy module can be read without importing it for every command)."""

    def __init__(self, *args, help_fn, **kwargs):
        super().__init__(*args, **kwargs)
        self.help_fn = help_fn

    def get_help_record(self, ctx):
        self.help = self.help_fn()
        return super().get_help_record(ctx)


class_field_option = click.option(
    "--class-field", default=None, cls=LazyHelpOption,
    help_fn=lambda: f"Label column holding class names (default: the first of {auto_class_fields_text()} "
                    "present, else one class).",
)
overwrite_option = click.option("--overwrite", is_flag=True, help="Replace an existing output.")
asset_option = click.option(
    "--asset", default=None, metavar="KEY",
    help="STAC inputs: the asset to read from each item (default: 'visual', else the asset with role visual, "
         "else the only RGB GeoTIFF).",
)

allow_local_hrefs_option = click.option(
    "--allow-local-hrefs", is_flag=True,
    help="Follow local paths, file:// URLs, GDAL virtual paths (/vsi...), other URL kinds and addresses of this "
         "machine or its private network when a STAC catalog read from a URL names them (refused by default: a "
         "remote catalog could make geodet read local files or reach internal services). Local catalogs are "
         "always followed.",
)

#: What a scene argument may be (help text of every command that takes scenes).
SCENES_HELP = (
    "A scene is a GeoTIFF or VRT path, a glob pattern (quoted), @LIST.txt (one per line, # comments), "
    "a URL (https://, s3://, gs://, az://) or GDAL path (/vsicurl/, /vsis3/, ...), or a STAC Item, "
    "ItemCollection or Catalog JSON (one scene per item)."
)


@contextlib.contextmanager
def user_errors():
    """Turn geodet's user-input errors (:class:`GeodetError`) into one-sentence click errors.

    Any other exception, a plain ValueError included, is a bug and keeps its traceback.
    """
    from geodet.errors import GeodetError
    from geodet.io.sources import redact

    try:
        yield
    except GeodetError as exc:  # ConfigError included: a bad setting
        raise click.ClickException(redact(str(exc))) from None


#: Failed scenes named one by one at the end of a run; the others are counted.
FAILED_SCENES_LISTED = 20


def exit_on_failed_scenes(failed: dict, n_scenes: int, where: str = "") -> None:
    """After a many-scene run: name the scenes that failed (path -> reason), the first
    :data:`FAILED_SCENES_LISTED` of them, and exit with status 1. ``where``: where all of them are kept."""
    if not failed:
        return
    click.echo(f"{len(failed)} of {n_scenes} scene(s) failed and were left out:", err=True)
    from geodet.io.sources import redact

    for path, reason in list(failed.items())[:FAILED_SCENES_LISTED]:
        click.echo(f"  {redact(path)}: {redact(reason)}", err=True)
    if len(failed) > FAILED_SCENES_LISTED:
        click.echo(f"  ... and {len(failed) - FAILED_SCENES_LISTED} more{where}.", err=True)
    raise SystemExit(1)


def load_config_file(ctx, param, value):
    """Eager ``--config FILE`` callback: YAML or TOML values become defaults.

    Top-level keys name command options (``chip-size`` or ``chip_size``);
    a ``model:`` table sets any ModelConfig field. Flags on the command line
    win over the file.
    """
    if not value:
        return value
    if not os.path.exists(value):
        raise click.BadParameter(f"{value} does not exist.", ctx=ctx, param=param)
    try:
        if value.lower().endswith(".toml"):
            import tomllib

            with open(value, "rb") as fh:
                data = tomllib.load(fh)
        else:
            with open(value) as fh:
                data = yaml.safe_load(fh) or {}
    except Exception as exc:
        raise click.BadParameter(f"{value} is not valid YAML or TOML ({exc}).", ctx=ctx, param=param) from None
    if not isinstance(data, dict):
        raise click.BadParameter(f"{value} must hold a mapping of option names to values.", ctx=ctx, param=param)
    known = {p.name for p in ctx.command.params}
    defaults = dict(ctx.default_map or {})
    for key, val in data.items():
        name = str(key).replace("-", "_")
        if name == "model":
            defaults["_model_overrides"] = dict(val or {})
            continue
        if name not in known:
            raise click.BadParameter(f"{value}: unknown setting {key!r}.", ctx=ctx, param=param)
        if isinstance(val, list) and name not in ("imagery",):
            val = ",".join(str(v) for v in val)
        defaults[name] = val
    ctx.default_map = defaults
    return value


config_option = click.option(
    "--config",
    type=click.Path(dir_okay=False),
    is_eager=True,
    expose_value=False,
    callback=load_config_file,
    help="YAML or TOML file setting any option (and a 'model:' table of model knobs).",
)

device_option = click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default=DetectConfig.device, show_default=True,
    help="Where the model runs (auto = CUDA when available).",
)


def parse_floats(text, what: str):
    """``"8,16,32"`` -> (8.0, 16.0, 32.0); None stays None."""
    if text is None:
        return None
    try:
        return tuple(float(v) for v in str(text).replace(" ", "").split(",") if v)
    except ValueError:
        raise click.BadParameter(f"{what} must be comma-separated numbers, got {text!r}.") from None


class ProgressBar:
    """A tqdm bar driven by ``(done, total)`` callbacks (stderr)."""

    def __init__(self, desc: str, enabled: bool = True):
        self.desc, self.enabled, self.bar = desc, enabled, None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None or self.bar.total != total or done < self.bar.n:
            self.close()
            self.bar = tqdm(total=total, desc=self.desc, unit="chip", leave=False, dynamic_ncols=True)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
