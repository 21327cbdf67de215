"""A validation report as Markdown and as one self-contained HTML page: what KFP shows for the validate components,
what MLflow keeps, and what a person reads first.

The HTML page carries its styles inline and loads nothing (no scripts, fonts or stylesheets from a CDN), so it renders
on an air-gapped cluster; Great Expectations' Data Docs, which load theirs from CDNs, sit beside it for the details.
"""

from __future__ import annotations

import html


def _engine(result: dict) -> str:
    """Who evaluated a check: Great Expectations (table-level) or Spark (row rules, counted in one pass)."""
    return "Spark" if result.get("checked_by") == "spark" else "Great Expectations"


def report_markdown(stage: str, report: dict) -> str:
    verdict = "PASSED" if report["passed"] else "STOPPED"
    lines = [f"# {stage}: {verdict}", ""]
    if report["reasons"]:
        lines += ["## Why it stopped", ""] + [f"- {r}" for r in report["reasons"]] + [""]
    for table in report["tables"]:
        lines += [f"## {table['table']}: {table['rows_in']:,} rows in, {table['rows_out']:,} out, "
                  f"{table['rows_quarantined']:,} quarantined", ""]
        lines += [f"- schema: {p}" for p in table["schema_problems"]]
        lines += ["| check | level | checked by | result | unexpected rows | quarantined | share |",
                  "|---|---|---|---|---|---|---|"]
        for r in table["results"]:
            unexpected = "" if r["unexpected_count"] is None else f"{r['unexpected_count']:,}"
            quarantined = table["quarantine_by_check"].get(r["name"], "")
            share = f"{quarantined / table['rows_in']:.2%}" if quarantined != "" and table["rows_in"] else ""
            result = "pass" if r["success"] else ("error: " + r["error"] if r["error"] else "FAIL")
            lines.append(f"| {r['name']}: {r['description']} | {r['level']} | {_engine(r)} | {result} | {unexpected} | "
                         f"{quarantined} | {share} |")
        lines.append("")
        if table.get("automated_users"):
            lines += [f"Likely automated traffic: {table['rows_automated']:,} rows, by user (most first):", "",
                      "| user_id | events | requests | days |", "|---|---|---|---|"]
            lines += [f"| {u['user_id']} | {u['events']:,} | {u['requests']:,} | {u['days']} |" for u in table["automated_users"]]
            lines.append("")
    lines.append(f"Data Docs: `{report['data_docs']}`")
    return "\n".join(lines) + "\n"


_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #1f2328; }
h1 .verdict { padding: 0.1em 0.5em; border-radius: 4px; color: #fff; }
.PASSED { background: #1a7f37; } .STOPPED { background: #cf222e; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #d0d7de; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
td.pass { background: #dafbe1; color: #1a7f37; font-weight: bold; }
td.fail { background: #ffebe9; color: #cf222e; font-weight: bold; }
td.quarantined { background: #fff8c5; }
td.num { text-align: right; }
"""


def report_html(stage: str, report: dict) -> str:
    """The report as one HTML page with inline styles and nothing to fetch."""
    esc = html.escape
    verdict = "PASSED" if report["passed"] else "STOPPED"
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(stage)}: {verdict}</title>",
             f"<style>{_STYLE}</style></head><body>",
             f"<h1>{esc(stage)}: <span class='verdict {verdict}'>{verdict}</span></h1>"]
    if report["reasons"]:
        parts.append("<h2>Why it stopped</h2><ul>" + "".join(f"<li>{esc(r)}</li>" for r in report["reasons"]) + "</ul>")
    for table in report["tables"]:
        parts.append(f"<h2>{esc(table['table'])}: {table['rows_in']:,} rows in, {table['rows_out']:,} out, "
                     f"{table['rows_quarantined']:,} quarantined</h2>")
        parts += [f"<p class='schema'>schema: {esc(p)}</p>" for p in table["schema_problems"]]
        rows = []
        for r in table["results"]:
            quarantined = table["quarantine_by_check"].get(r["name"])
            result = "pass" if r["success"] else ("error: " + r["error"] if r["error"] else "FAIL")
            share = f"{quarantined / table['rows_in']:.2%}" if quarantined and table["rows_in"] else ""
            unexpected = "" if r["unexpected_count"] is None else f"{r['unexpected_count']:,}"
            rows.append(f"<tr><td>{esc(r['name'])}</td><td>{esc(r['description'])}</td><td>{r['level']}</td>"
                        f"<td>{_engine(r)}</td>"
                        f"<td class='{'pass' if r['success'] else 'fail'}'>{esc(result)}</td>"
                        f"<td class='num'>{unexpected}</td>"
                        f"<td class='num{' quarantined' if quarantined else ''}'>{'' if quarantined is None else f'{quarantined:,}'}</td>"
                        f"<td class='num'>{share}</td></tr>")
        parts.append("<table><tr><th>check</th><th>rule</th><th>level</th><th>checked by</th><th>result</th>"
                     "<th>unexpected rows</th>"
                     "<th>quarantined</th><th>share</th></tr>" + "".join(rows) + "</table>")
        if table.get("automated_users"):
            parts.append(f"<p>Likely automated traffic: {table['rows_automated']:,} rows, by user (most first):</p>"
                         "<table><tr><th>user_id</th><th>events</th><th>requests</th><th>days</th></tr>" +
                         "".join(f"<tr><td>{u['user_id']}</td><td class='num'>{u['events']:,}</td>"
                                 f"<td class='num'>{u['requests']:,}</td><td class='num'>{u['days']}</td></tr>"
                                 for u in table["automated_users"]) + "</table>")
    parts.append(f"<p>Details (Great Expectations Data Docs; their styles load from CDNs): "
                 f"<code>{esc(str(report['data_docs']))}</code></p></body></html>")
    return "\n".join(parts)
