"""Is the loaded model the one that scored the data? Recompute a few stored reference log-probs.

The trainer never runs the reference model, so a wrong model, dtype or processor would
silently train against meaningless rewards. Before any LoRA is added, the policy IS the
reference: its log-probs on a few rows (all three columns) must match the stored ones within
a tolerance that fits the dtype (`config.SPOT_CHECK_TOLERANCE`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mdpo_data.format import schema


class SpotCheckError(RuntimeError):
    pass


@dataclass(frozen=True)
class Mismatch:
    example_id: str
    column: str
    stored: float
    recomputed: float | None
    tolerance: float

    def __str__(self) -> str:
        got = "too long for max_length" if self.recomputed is None else f"{self.recomputed:.4f}"
        return (f"{self.example_id} {self.column}: stored {self.stored:.4f}, recomputed {got} "
                f"(tolerance {self.tolerance:.4g})")


def tolerance(stored: float, atol: float, rtol: float) -> float:
    return atol + rtol * abs(stored)


def compare(rows: list[dict[str, Any]], recomputed: list, atol: float,
            rtol: float) -> tuple[list[Mismatch], float]:
    """Mismatches and the largest absolute difference; `recomputed` is row-major over
    schema.REF_LOGP_COLUMNS, as `sequence_logps` returns it ((logp, tokens) or None)."""
    columns = schema.REF_LOGP_COLUMNS
    bad, worst = [], 0.0
    for i, row in enumerate(rows):
        for j, column in enumerate(columns):
            stored, got = row[column], recomputed[i * len(columns) + j]
            tol = tolerance(stored, atol, rtol)
            value = None if got is None else got[0]
            if value is not None:
                worst = max(worst, abs(value - stored))
            if value is None or abs(value - stored) > tol:
                bad.append(Mismatch(row["example_id"], column, stored, value, tol))
    return bad, worst


def identity_differences(processor, fingerprint: dict[str, Any]) -> list[str]:
    """Cheap identity checks against the scorer's fingerprint (no weight hashing)."""
    from mdpo_data.scoring.models import chat_template_sha256, processor_sha256

    found = []
    if fingerprint.get("processor_sha256") not in (None, processor_sha256(processor)):
        found.append("the processor (tokenizer/image processor) differs from the scorer's")
    if fingerprint.get("chat_template_sha256") not in (None, chat_template_sha256(processor)):
        found.append("the chat template differs from the scorer's")
    return found


def spot_check(model, processor, rows: list[dict[str, Any]], fingerprint: dict[str, Any], *,
               dtype: str, max_length: int | None, atol: float, rtol: float) -> dict[str, Any]:
    """Recompute every reference column of `rows`; raise SpotCheckError naming each mismatch."""
    from mdpo_data.scoring.logprobs import row_sequences, sequence_logps

    seqs = [row_sequences(row)[column] for row in rows for column in schema.REF_LOGP_COLUMNS]
    recomputed = sequence_logps(model, processor, seqs, max_length=max_length, batch_size=3)
    bad, worst = compare(rows, recomputed, atol, rtol)
    report = {"rows": len(rows), "values": len(seqs), "max_abs_diff": worst, "atol": atol, "rtol": rtol}
    if bad:
        causes = identity_differences(processor, fingerprint)
        scored = (f"{fingerprint.get('model')!r} in {fingerprint.get('dtype')} with max_length "
                  f"{fingerprint.get('max_length')}")
        raise SpotCheckError(
            f"the stored reference log-probs do not match this model ({len(bad)} of {len(seqs)} "
            f"values off; now {dtype}):\n  " + "\n  ".join(str(m) for m in bad[:6])
            + f"\nThey were scored by {scored}."
            + (f" Found: {'; '.join(causes)}." if causes else "")
            + " Train that exact model/dtype (omit --model/--dtype), rescore the data with "
            "`mdpo-data score DIR --ref-model MODEL --force`, or pass --spot-check-tolerance if "
            "the difference is numerical noise (e.g. another GPU kernel)."
        )
    return report
