"""`mdpo-train`: one flag per TrainConfig field, generated from the dataclass (one source of truth).

Precedence: defaults < --config YAML < flags. Config problems exit with status 2 and the whole
list; model/data problems found later (spot check, non-finite loss) exit 1 with one message.
"""

from __future__ import annotations

import dataclasses
import typing

import click

from mdpo_train.config import FIELDS, ConfigError, TrainConfig, field_help, flag, load_config


def _parse_weights(ctx, param, values):
    weights = {}
    for value in values:
        term, sep, weight = value.partition("=")
        try:
            weights[term.strip()] = float(weight)
        except ValueError:
            sep = ""
        if not sep:
            raise click.BadParameter(f"{value!r} is not TERM=WEIGHT, e.g. conditional=0.5")
    return weights or None


def _option(name: str):
    """A click option for one config field; default None so only given flags override."""
    hint = typing.get_type_hints(TrainConfig)[name]
    base = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
    default = FIELDS[name].default
    default = None if default is dataclasses.MISSING else default
    help_text = field_help().get(name, "")
    if default not in (None, False, ""):
        help_text += f" [default: {default}]"
    if name == "loss_weights":
        return click.option("--loss-weight", "loss_weights", multiple=True, callback=_parse_weights,
                            metavar="TERM=W", help=help_text)
    if name == "resume":
        return click.option("--resume", is_flag=False, flag_value="latest", default=None,
                            metavar="[latest|CHECKPOINT]", help=help_text)
    if base is bool:
        return click.option(f"{flag(name)}/--no-{name.replace('_', '-')}", name, default=None, help=help_text)
    kind = {int: int, float: float}.get(base, str)
    return click.option(flag(name), name, type=kind, default=None, help=help_text)


def _command(function):
    for name in reversed(list(FIELDS)):
        function = _option(name)(function)
    return click.option("--config", "config_path", type=click.Path(dir_okay=False),
                        help="YAML of the same keys (dashes or underscores); flags override it.")(function)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="mdpo-toolkit")
@_command
def main(config_path: str | None, **flags) -> None:
    """Train MDPO (or DPO and the paper's ablations) with LoRA from scored mdpo-data shards,
    without ever loading the reference model.

    Quick start (no network):

    \b
    mdpo-data build --source demo --n 48 --ref-model tiny --out out/demo
    mdpo-train --shards out/demo --output-dir out/run --config pipelines/train_demo.yaml

    Multi-GPU: accelerate launch -m mdpo_train.cli ... (docs/training.md).
    """
    from mdpo_data.models import ModelLoadError
    from mdpo_train.data import DataError
    from mdpo_train.loop import MDPORecipe, NonFiniteLossError
    from mdpo_train.verify import SpotCheckError

    try:  # every config, data-folder and run-folder problem, before any model loads
        recipe = MDPORecipe(load_config(config_path, flags))
    except ConfigError as error:
        raise click.UsageError(str(error)) from None
    try:
        recipe.setup()
        recipe.train()
        out = recipe.save()
    except (DataError, SpotCheckError, NonFiniteLossError, ModelLoadError) as error:
        raise click.ClickException(str(error)) from None
    except OSError as error:  # an unwritable run folder, a full disk: one line
        where = f" ({error.filename})" if getattr(error, "filename", None) else ""
        raise click.ClickException(f"{error.strerror or error}{where}") from None
    recipe.accelerator.print(f"done: adapter, processor, metrics and model card in {out}")


if __name__ == "__main__":
    main()
