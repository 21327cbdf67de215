"""The gate: decide from validation reports whether a stage may continue, and say why not."""

from __future__ import annotations

from genrec.validation.runner import TableValidation


def gate_reasons(reports: list[TableValidation], max_quarantine_fraction: float,
                 max_automated_fraction: float = 1.0) -> list[str]:
    """Reasons to stop, one line each; an empty list means continue (possibly with quarantined rows).

    Rows quarantined as likely automated traffic are judged by their own share: bots are expected in real logs,
    a broken logger is not."""
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
        if rep.rows_in and rep.rows_defective / rep.rows_in > max_quarantine_fraction:
            detail = ", ".join(f"'{k}' on {v:,} rows" for k, v in sorted(rep.quarantine_by_check.items()) if v)
            reasons.append(
                f"{rep.table}: {rep.rows_defective:,} of {rep.rows_in:,} rows ({rep.rows_defective / rep.rows_in:.2%}) "
                f"fail row-level expectations ({detail}); that is above validation.max_quarantine_fraction="
                f"{max_quarantine_fraction}")
        if rep.rows_in and rep.rows_automated / rep.rows_in > max_automated_fraction:
            users = ", ".join(f"{u['user_id']} ({u['events']:,} events)" for u in rep.automated_users[:5])
            reasons.append(
                f"{rep.table}: {rep.rows_automated:,} of {rep.rows_in:,} rows ({rep.rows_automated / rep.rows_in:.2%}) "
                f"look like automated traffic (top users: {users}); that is above "
                f"validation.max_automated_fraction={max_automated_fraction}")
    return reasons
