"""The gate: decide from validation reports whether a stage may continue, and say why not."""

from __future__ import annotations

from genrec.validation.runner import TableValidation


def gate_reasons(reports: list[TableValidation], max_quarantine_fraction: float) -> list[str]:
    """Reasons to stop, one line each; an empty list means continue (possibly with quarantined rows)."""
    reasons: list[str] = []
    for rep in reports:
        reasons.extend(rep.schema_problems)
        for r in rep.results:
            if r.success or r.level != "table":
                continue
            detail = f"observed {r.observed}" if r.observed is not None else (r.error or "failed")
            if r.unexpected_count:
                detail = f"{r.unexpected_count:,} of {r.element_count:,} rows"
            reasons.append(f"{rep.table}: expectation '{r.name}' ({r.description}) failed: {detail}")
        if rep.rows_in and rep.rows_quarantined / rep.rows_in > max_quarantine_fraction:
            detail = ", ".join(f"'{k}' on {v:,} rows" for k, v in sorted(rep.quarantine_by_check.items()) if v)
            reasons.append(
                f"{rep.table}: {rep.rows_quarantined:,} of {rep.rows_in:,} rows ({rep.rows_quarantined / rep.rows_in:.2%}) "
                f"fail row-level expectations ({detail}); that is above validation.max_quarantine_fraction="
                f"{max_quarantine_fraction}")
    return reasons
