"""How a build runs, apart from what it writes: output folder, workers, the scoring model's
settings. Typed like BuildConfig (flags, YAML keys and help come from these fields, see
`mdpo_data.config.options`), but not part of the build key: changing them keeps resume markers."""

from __future__ import annotations

from dataclasses import dataclass

import click

from mdpo_data.config.options import names_from, setting

BPO_BATCH_SIZE = 8  # generation batch of --rejected-response when --batch-size is not given


@dataclass(frozen=True)
class Runtime:
    out: str | None = setting(None, "Output folder.", click_args={"type": click.Path(file_okay=False)})
    workers: int = setting(1, "Image worker processes.", min=1)
    overwrite: bool = setting(False, "Replace a different build in --out.")
    ref_model: str | None = setting(
        None, "Score with this reference model after building ('tiny': smoke-test model; 'demo': "
        "small model trained on the demo source, built on first use).")
    dtype: str = setting("auto", "Scoring dtype.", choices=names_from("mdpo_data.scoring.models", "DTYPES"))
    attention: str = setting("auto", "Scoring attention kernel (flex_attention: packed rows as a BlockMask).",
                             choices=names_from("mdpo_data.scoring.models", "ATTENTION"))
    batch_size: int | None = setting(None, "Scoring batch size (BPO generation: 8).", min=1,
                                     shown="automatic")
    device: str = setting("auto", "Scoring device.")
    max_length: int = setting(2048, "Scoring: longest sequence in tokens; longer examples are "
                              "counted skips.", min=1)
    no_image_logps: bool = setting(False, "Also store log-probs with the image removed.")
    trust_remote_code: bool = setting(False, "Allow model code from the Hub.")
    revision: str | None = setting(None, "Model revision for --ref-model.")

    @property
    def bpo_batch_size(self) -> int:
        return self.batch_size or BPO_BATCH_SIZE
