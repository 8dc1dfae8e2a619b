"""The score stage: reference log-probs computed once, offline, and written into the shards.

This module is the stage (which shards, resume markers, the manifest's `reference`, ranks
under `accelerate launch`); the engine that turns rows into log-probs is `mdpo_data.scoring.scorer`.

Per row it fills (column names in `mdpo_data.format.schema`):
    ref_chosen_logps                 log pi_ref(y_w | m_w, q)
    ref_rejected_logps               log pi_ref(y_l | m_w, q)
    ref_chosen_rejected_image_logps  log pi_ref(y_w | m_l, q)
    chosen_tokens, rejected_tokens   response tokens of y_w, y_l
    (+ ref_chosen_noimage_logps, ref_rejected_noimage_logps with no_image_logps=True)
from the EXACT stored image bytes, through `mdpo_data.scoring.logprobs` (the trainer's code path).

Too-long rows (`SKIP_RULE`): a row any of whose sequences exceeds max_length keeps the row
with ALL reference columns null, and is counted in manifest["reference"]["skipped"]
["too_long"]. The trainer drops rows whose reference columns are null.

Resume: after a shard is rewritten (atomically), its stage marker (`mdpo_data.format.markers`,
DIR/.state/score-<shard>.json) records the fingerprint key, the no-image flag, the shard's new
sha256, rows and skips; a re-run skips shards whose marker matches, so re-scoring with the
same model is a no-op, and the manifest's hashes and `reference` counts come from the markers.
Scoring data already scored by another fingerprint needs force=True. Under `accelerate
launch`, rank r scores the shards i % world_size == r, and rank 0 writes the manifest after a
barrier.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from mdpo_data.format import schema

from mdpo_data.format import markers as stage_state
from mdpo_data.format.folder import DATA, check_target, hold
from mdpo_data.format.integrity import IntegrityError, verify_entry
from mdpo_data.scoring.logprobs import RESPONSE_RULE, TRUNCATION_RULE
from mdpo_data.config.typecheck import from_json
from mdpo_data.format.manifest import Fingerprint, Manifest, Reference, dumps, load_manifest, write_manifest
from mdpo_data.format.markers import ScoreMarker
from mdpo_data.scoring.memory import peak_memory, reset_peak
from mdpo_data.scoring.models import fingerprint, load_model
from mdpo_data.scoring.scorer import Scorer, ScoreError, auto_batch_size, score_table
from mdpo_data.format.shards import read_shard, sha256_file, write_shard

__all__ = ["Scorer", "ScoreError", "auto_batch_size", "marker_path", "score_build", "score_table",
           "unscored_rows"]  # the engine lives in mdpo_data.scoring.scorer; re-exported for callers

SKIP_RULE = (
    "rows with any sequence longer than max_length keep null reference columns and are counted "
    "in skipped.too_long; the trainer drops rows whose reference columns are null"
)


@dataclass
class _Job:
    index: int  # global position over all splits: rank r takes index % world == r
    split: str
    path: Path
    sha256: str  # of the shard as found, before this run rewrites it


@dataclass
class _Totals:
    rows: int = 0
    too_long: int = 0
    shards_scored: int = 0
    shards_skipped: int = 0
    sequences: int = 0
    tokens: int = 0
    seconds: float = 0.0
    methods: set = field(default_factory=set)


def marker_path(directory: Path, shard: Path) -> Path:
    return stage_state.marker_path(directory, "score", shard.name)


def _read_marker(directory: Path, shard: Path) -> ScoreMarker | None:
    return stage_state.read_marker(directory, "score", shard.name)


def _marker_done(marker: ScoreMarker | None, shard: Path, key: str, no_image: bool,
                 digest: str | None = None) -> bool:
    """The shard's score marker is for this key and these bytes (`digest`: the shard's sha256
    when the caller already has it)."""
    return (
        stage_state.is_complete(marker, key)
        and marker.no_image_logps == no_image
        and shard.is_file()
        and marker.sha256 == (digest or sha256_file(shard))
    )


def _jobs(directory: Path, manifest: Manifest) -> list[_Job]:
    """One job per listed shard, each checked against the manifest's sha256 first: a shard
    changed after the build is refused, never re-scored and blessed with a new hash. (A
    shard this scorer already rewrote is vouched for by its score marker.)"""
    jobs = []
    for split, entry in manifest.entries():
        path = directory / entry.file
        marker = _read_marker(directory, path)
        try:  # a shard this scorer already rewrote is vouched for by its marker
            current = verify_entry(directory, entry, also=marker.sha256 if marker else None)
        except IntegrityError as error:
            raise ScoreError(str(error)) from None
        jobs.append(_Job(len(jobs), split, path, current))
    if not jobs:
        raise ScoreError(f"{directory}: the manifest lists no shards to score")
    return jobs


def _check_previous(directory: Path, manifest: Manifest, jobs: list[_Job], fp: dict, force: bool) -> None:
    """Refuse to overwrite reference values from another fingerprint unless forced."""
    if force:
        return
    previous = manifest.fingerprint or Fingerprint(model="unknown model")
    keys = {previous.key}
    keys |= {m.key for m in (_read_marker(directory, j.path) for j in jobs) if m is not None}
    other = keys - {None, fp["key"]}
    if other:
        raise ScoreError(
            f"{directory} is (partly) scored with another reference fingerprint "
            f"({previous.model}, dtype {previous.dtype}, max_length "
            f"{previous.max_length}); this run is {fp['model']} dtype {fp['dtype']} "
            f"max_length {fp['max_length']}. Pass force=True (--force) to rescore everything."
        )


def _check_system_prompt(directory: Path, manifest: Manifest, ref_model: str) -> None:
    """`--system-prompt auto` decided at build time without a model: rows stored with no
    system prompt would be scored (and trained) without the one `ref_model` was trained with.
    Refuse before loading anything, naming the build command that stores it."""
    from mdpo_data.build.system_prompts import FAMILIES, unapplied_family

    family = unapplied_family(manifest.system_prompt, ref_model)
    if family is None:
        return
    command = (manifest.command or "mdpo-data build ... --out OUT").replace(
        " OUT", f" {directory}")
    raise ScoreError(
        f"{directory} was built with --system-prompt auto but no --ref-model, so its rows carry no "
        f"system prompt, while {ref_model} ({family}) was trained with {FAMILIES[family][0]!r}. "
        f"Rebuild with the model to store it: `{command} --ref-model {ref_model} --overwrite` "
        f"(or rebuild with --system-prompt none to score without one)")


def _distributed():
    """(rank, world size, barrier): accelerate's state under `accelerate launch`, else trivial."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, lambda: None
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())  # gloo on CPU-only machines
    return state.process_index, state.num_processes, state.wait_for_everyone


def _score_shard(directory: Path, job: _Job, scorer: Scorer, key: str, no_image: bool) -> ScoreMarker:
    before = scorer.batches.copy()
    table, too_long = score_table(read_shard(job.path), scorer, no_image=no_image)
    write_shard(job.path, [table])
    marker = ScoreMarker(shard=job.path.name, split=job.split, key=key, no_image_logps=no_image,
                         sha256=sha256_file(job.path), rows=table.num_rows, skipped={"too_long": too_long},
                         method=scorer.method_since(before), batch_size=scorer.batch_size)
    stage_state.record(directory, marker, job.path.name)
    return marker


# --------------------------------------------------------------------------- the stage


def score_build(
    directory: str | Path,
    ref_model: str,
    *,
    dtype: str = "auto",
    batch_size: int | None = None,
    device: str = "auto",
    max_length: int = 2048,
    no_image_logps: bool = False,
    trust_remote_code: bool = False,
    revision: str | None = None,
    progress: bool = True,
    force: bool = False,
    prefix_reuse: str = "auto",
    attention: str = "auto",
) -> dict[str, Any]:
    """Score every shard of a build folder with `ref_model`; update the manifest; return stats.

    dtype "auto" is float32 on CPU and bf16 (else fp16) on GPU; batch_size None picks one
    (see `scoring.auto_batch_size`); prefix_reuse "auto" runs the image+question prefix once
    for y_w and y_l (one packed forward, no KV cache) where the architecture allows it and a first-batch check agrees.
    """
    directory = Path(directory)
    if max_length is not None and max_length < 1:
        raise ScoreError(f"max_length must be positive, got {max_length}")
    check_target(directory, "score", DATA)  # ours, of the right kind, no linked bookkeeping
    manifest = load_manifest(directory)
    _check_system_prompt(directory, manifest, ref_model)
    rank, world, barrier = _distributed()
    with hold(directory) if rank == 0 else contextlib.nullcontext():
        return _score_locked(directory, manifest, ref_model, dtype=dtype, batch_size=batch_size,
                             device=device, max_length=max_length, no_image_logps=no_image_logps,
                             trust_remote_code=trust_remote_code, revision=revision,
                             progress=progress, force=force, prefix_reuse=prefix_reuse,
                             attention=attention, distributed=(rank, world, barrier))


def _score_locked(directory: Path, manifest: Manifest, ref_model: str, *, dtype, batch_size, device,
                  max_length, no_image_logps, trust_remote_code, revision, progress, force,
                  prefix_reuse, attention, distributed) -> dict[str, Any]:
    import torch

    rank, world, barrier = distributed
    jobs = _jobs(directory, manifest)
    model, processor = load_model(
        ref_model, dtype=dtype, device=device, trust_remote_code=trust_remote_code, revision=revision,
        attention=attention,
    )
    resolved_dtype = str(model.dtype).removeprefix("torch.")
    fp = fingerprint(ref_model, model, processor, dtype=resolved_dtype, max_length=max_length,
                     truncation_rule=TRUNCATION_RULE, revision=revision,
                     response_rule=RESPONSE_RULE, system_prompt=manifest.system_prompt)
    _check_previous(directory, manifest, jobs, fp, force)
    batch_size = batch_size or auto_batch_size(model, max_length)
    scorer = Scorer(model, processor, batch_size=batch_size, max_length=max_length,
                    prefix_reuse=prefix_reuse)
    totals = _Totals()
    reset_peak(model.device)
    mine = [job for job in jobs if job.index % world == rank]
    bar = _progress(mine, progress and rank == 0)
    with torch.inference_mode():
        for job in bar:
            if _marker_done(_read_marker(directory, job.path), job.path, fp["key"], no_image_logps, job.sha256):
                totals.shards_skipped += 1
                continue
            start = time.perf_counter()
            marker = _score_shard(directory, job, scorer, fp["key"], no_image_logps)
            totals.seconds += time.perf_counter() - start
            totals.shards_scored += 1
            totals.rows += marker.rows
            totals.too_long += marker.skipped["too_long"]
            totals.methods.add(marker.method)
    totals.sequences, totals.tokens = scorer.sequences, scorer.tokens
    barrier()
    if rank == 0:
        _write_reference(directory, jobs, fp, no_image_logps)
    barrier()
    return _stats(totals, scorer, fp, jobs, world, batch_size, resolved_dtype)


def _progress(jobs, enabled: bool):
    if not enabled:
        return jobs
    from tqdm.auto import tqdm

    return tqdm(jobs, desc="score", unit="shard")


def _write_reference(directory: Path, jobs: list[_Job], fp: dict, no_image: bool) -> None:
    """Rank 0, after the barrier: every shard's marker -> manifest checksums and reference."""
    manifest = load_manifest(directory)
    markers = {}
    for job in jobs:
        marker = _read_marker(directory, job.path)
        if not _marker_done(marker, job.path, fp["key"], no_image):
            raise ScoreError(f"shard {job.path.name} was not scored (no valid marker after the barrier)")
        markers[job.path.name] = marker
    splits = {split: [dataclasses.replace(e, sha256=stage_state.shard_sha256(directory, e.file) or e.sha256)
                      for e in entries] for split, entries in manifest.splits.items()}
    columns = list(schema.REF_LOGP_COLUMNS) + (list(schema.NO_IMAGE_COLUMNS) if no_image else [])
    skipped = stage_state.merge_skips(markers.values())
    reference = Reference(
        scored=True,
        fingerprint=from_json(Fingerprint, fp),
        no_image_logps=no_image,
        columns=columns + list(schema.TOKEN_COLUMNS),
        rows_scored=sum(m.rows for m in markers.values()) - skipped["too_long"],
        batch_size=_one_or_all(m.batch_size for m in markers.values()),
        skipped=skipped,
        skip_rule=SKIP_RULE,
    )
    manifest = dataclasses.replace(manifest, splits=splits, reference=reference)
    try:
        unchanged = (directory / "manifest.json").read_bytes() == dumps(manifest)
    except OSError:
        unchanged = False
    if not unchanged:
        write_manifest(directory, manifest)


def _one_or_all(values) -> Any:
    """The shards' common value, or the sorted distinct values when runs differed."""
    distinct = sorted({v for v in values if v is not None})
    return distinct[0] if len(distinct) == 1 else distinct or None


def _stats(totals: _Totals, scorer: Scorer, fp: dict, jobs, world, batch_size, dtype) -> dict:
    return {
        "shards": len(jobs),
        "world_size": world,
        "shards_scored": totals.shards_scored,
        "shards_skipped": totals.shards_skipped,
        "rows_scored": totals.rows - totals.too_long,
        "skipped": {"too_long": totals.too_long},
        "sequences": totals.sequences,
        "tokens": totals.tokens,
        "seconds": round(totals.seconds, 3),
        "tokens_per_second": round(totals.tokens / totals.seconds, 1) if totals.seconds else None,
        "prefix_reuse": scorer.prefix_reuse,
        "prefix_reuse_reason": scorer.prefix_reason,
        "method": scorer.method,
        "responses_too_long_untokenized": scorer.unencoded,
        "batch_size": batch_size,
        **peak_memory(scorer.device),
        "dtype": dtype,
        "device": str(scorer.device),
        "fingerprint_key": fp["key"],
    }


def unscored_rows(table: pa.Table) -> int:
    """Rows the trainer must drop: any of the three reference log-probs is null."""
    import pyarrow.compute as pc

    null = pc.is_null(table.column(schema.REF_CHOSEN))
    for name in schema.REF_LOGP_COLUMNS[1:]:
        null = pc.or_(null, pc.is_null(table.column(name)))
    return int(pc.sum(null.cast(pa.int64())).as_py() or 0)
