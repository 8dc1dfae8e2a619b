"""`mdpo-train`: one flag per TrainConfig field, generated from the dataclass (one source of truth,
`mdpo_data.config.options`, as for `mdpo-data build`).

Precedence: defaults < --config YAML < flags. Config problems exit with status 2 and the whole
list; model/data problems found later (spot check, non-finite loss) exit 1 with one message.
"""

from __future__ import annotations

import click

from mdpo_data.config.options import OptionsCommand, dataclass_options, given
from mdpo_train.config import ConfigError, TrainConfig, load_config


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


def _train_classes():
    return (TrainConfig,)


# Flags that do not follow from a field's type alone.
ODD_FLAGS = {
    "loss_weights": {"multiple": True, "callback": _parse_weights, "metavar": "TERM=W", "default": (),
                     "type": str},
    "resume": {"is_flag": False, "flag_value": "latest", "metavar": "[latest|CHECKPOINT]"},
}


@click.command(cls=OptionsCommand, context_settings={"help_option_names": ["-h", "--help"],
                                                     "max_content_width": 110})
@click.version_option(package_name="mdpo-toolkit")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="YAML of the same keys (dashes or underscores); flags override it.")
@dataclass_options(_train_classes, negatable=True, overrides=ODD_FLAGS)
@click.pass_context
def main(ctx, config_path: str | None, **_) -> None:
    """Train MDPO (or DPO and the paper's ablations) with LoRA from scored mdpo-data shards,
    without ever loading the reference model.

    Quick start (no network):

    \b
    mdpo-data build --source demo --n 48 --ref-model tiny --out out/demo
    mdpo-train --shards out/demo --output-dir out/run --config pipelines/train_demo.yaml

    Multi-GPU: accelerate launch -m mdpo_train.cli ... (docs/training.md).
    """
    from mdpo_data.format.folder import FolderError
    from mdpo_data.scoring.models import ModelLoadError
    from mdpo_train.data import DataError
    from mdpo_train.loop import MDPORecipe, NonFiniteLossError
    from mdpo_train.verify import SpotCheckError

    try:  # every config, data-folder and run-folder problem, before any model loads
        flags = {k: v for k, v in given(ctx).items() if k != "config_path"}  # typed flags win
        recipe = MDPORecipe(load_config(config_path, flags))
    except ConfigError as error:
        raise click.UsageError(str(error)) from None
    try:
        recipe.setup()
        recipe.train()
        out = recipe.save()
    except (DataError, SpotCheckError, NonFiniteLossError, ModelLoadError, FolderError) as error:
        raise click.ClickException(str(error)) from None
    except OSError as error:  # an unwritable run folder, a full disk: one line
        where = f" ({error.filename})" if getattr(error, "filename", None) else ""
        raise click.ClickException(f"{error.strerror or error}{where}") from None
    except Exception as error:
        from mdpo_train.checkpoint import is_write_failure, one_line

        if not is_write_failure(error):
            raise
        raise click.ClickException(f"cannot write the run's outputs in {recipe.cfg.output_dir}: "
                                   f"{one_line(error)}") from None
    recipe.accelerator.print(f"done: adapter, processor, metrics and model card in {out}")


if __name__ == "__main__":
    main()
