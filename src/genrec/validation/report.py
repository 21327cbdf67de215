"""A validation report as Markdown: what KFP shows for the validate components and what a person reads first."""

from __future__ import annotations


def report_markdown(stage: str, report: dict) -> str:
    verdict = "PASSED" if report["passed"] else "STOPPED"
    lines = [f"# {stage}: {verdict}", ""]
    if report["reasons"]:
        lines += ["## Why it stopped", ""] + [f"- {r}" for r in report["reasons"]] + [""]
    for table in report["tables"]:
        lines += [f"## {table['table']}: {table['rows_in']:,} rows in, {table['rows_out']:,} out, "
                  f"{table['rows_quarantined']:,} quarantined", ""]
        lines += [f"- schema: {p}" for p in table["schema_problems"]]
        lines += ["| expectation | level | result | unexpected rows | quarantined | share |", "|---|---|---|---|---|---|"]
        for r in table["results"]:
            unexpected = "" if r["unexpected_count"] is None else f"{r['unexpected_count']:,}"
            quarantined = table["quarantine_by_check"].get(r["name"], "")
            share = f"{quarantined / table['rows_in']:.2%}" if quarantined != "" and table["rows_in"] else ""
            result = "pass" if r["success"] else ("error: " + r["error"] if r["error"] else "FAIL")
            lines.append(f"| {r['name']}: {r['description']} | {r['level']} | {result} | {unexpected} | {quarantined} | {share} |")
        lines.append("")
        if table.get("automated_users"):
            lines += [f"Likely automated traffic: {table['rows_automated']:,} rows, by user (most first):", "",
                      "| user_id | events | requests | days |", "|---|---|---|---|"]
            lines += [f"| {u['user_id']} | {u['events']:,} | {u['requests']:,} | {u['days']} |" for u in table["automated_users"]]
            lines.append("")
    lines.append(f"Data Docs: `{report['data_docs']}`")
    return "\n".join(lines) + "\n"
