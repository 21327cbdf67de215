"""The evaluation gate: thresholds from the config decide pass or fail; a passing challenger is promoted
when it is strictly better than the champion on the promotion metric (or there is no champion).

Metrics are addressed as "method/metric" (rows and columns of evaluate's table, e.g. genrec/hr@10), on the split
gate.split names (validation by default: the test figures stay a report, never a decision).
A lift check requires the judged method to beat a baseline (e.g. most-popular) on a metric.
A bound on a metric that is missing fails the gate: a gate that cannot check must not pass.
Regression is relative: (champion - challenger) / |champion| must not exceed the allowed fraction.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from genrec.config import GateConfig


@dataclass
class Check:
    name: str  # e.g. "min genrec/hr@10"
    value: float | None
    bound: float | None
    passed: bool
    note: str = ""


@dataclass
class GateDecision:
    passed: bool
    promote: bool
    checks: list[Check] = field(default_factory=list)
    champion_version: str | None = None
    reason: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def flatten_metrics(rows: dict[str, dict[str, float]]) -> dict[str, float]:
    """{method: {metric: v}} -> {"method/metric": v}."""
    return {f"{m}/{k}": float(v) for m, r in rows.items() for k, v in r.items()}


def lift_check(metrics: dict[str, float], method: str, baseline_key: str, lift: float) -> Check:
    """`method` must beat the baseline: method/metric > (1 + lift) * baseline/metric (both must be present)."""
    baseline, _, metric = baseline_key.partition("/")
    v, b = metrics.get(f"{method}/{metric}"), metrics.get(baseline_key)
    name = f"lift {method}/{metric} over {baseline}"
    if v is None or b is None:
        return Check(name, v, b, False, f"missing {f'{method}/{metric}' if v is None else baseline_key}")
    bound = (1 + lift) * b
    return Check(name, v, bound, v > bound, f"{baseline} {b:.4f}: lift {v / b - 1:+.1%}, required above {lift:+.1%}"
                 if b else f"{baseline} 0")


def decide(metrics: dict[str, float], champion: dict[str, float] | None, cfg: GateConfig,
           champion_version: str | None = None) -> GateDecision:
    """Apply the bounds, the regression limits against `champion` (None: no champion yet) and the promotion rule."""
    checks: list[Check] = []
    for key, bound in cfg.min_metrics.items():
        v = metrics.get(key)
        checks.append(Check(f"min {key}", v, bound, v is not None and v >= bound, "" if v is not None else "missing"))
    for key, bound in cfg.max_metrics.items():
        v = metrics.get(key)
        checks.append(Check(f"max {key}", v, bound, v is not None and v <= bound, "" if v is not None else "missing"))
    for key, lift in cfg.min_lift.items():
        checks.append(lift_check(metrics, cfg.method, key, lift))
    if champion is not None:
        for key, allowed in cfg.max_regression.items():
            v, c = metrics.get(key), champion.get(key)
            if v is None:
                checks.append(Check(f"regression {key}", None, c, False, "missing"))
            elif c is None:
                checks.append(Check(f"regression {key}", v, None, True, "the champion has no such metric"))
            else:
                drop = (c - v) / abs(c) if c else (0.0 if v >= c else float("inf"))
                checks.append(Check(f"regression {key}", v, c, drop <= allowed,
                                    f"relative drop {drop:+.4f}, allowed {allowed:.4f}"))
    passed = all(c.passed for c in checks)
    if not passed:
        failed = ", ".join(c.name for c in checks if not c.passed)
        return GateDecision(False, False, checks, champion_version, f"rejected: failed {failed}")
    if champion is None:
        return GateDecision(True, True, checks, None, "passed; no champion yet: promoted to champion")
    v, c = metrics.get(cfg.promote_metric), champion.get(cfg.promote_metric)
    if v is None:
        return GateDecision(True, False, checks, champion_version,
                            f"passed; not promoted: {cfg.promote_metric} is missing")
    if c is None or v > c:
        return GateDecision(True, True, checks, champion_version,
                            f"passed; {cfg.promote_metric} {v:.4f} beats the champion's {c}: promoted to champion")
    return GateDecision(True, False, checks, champion_version,
                        f"passed; {cfg.promote_metric} {v:.4f} does not beat the champion's {c:.4f}: stays challenger")


def decision_markdown(d: GateDecision, metrics_note: str = "") -> str:
    lines = ["# gate", "", f"**{'PASS' if d.passed else 'FAIL'}**: {d.reason}", ""]
    if d.champion_version:
        lines += [f"Compared with the champion, version {d.champion_version}.", ""]
    lines += ["| check | value | bound | result | note |", "|---|---|---|---|---|"]
    fmt = lambda x: "-" if x is None else f"{x:.4f}"  # noqa: E731
    lines += [f"| {c.name} | {fmt(c.value)} | {fmt(c.bound)} | {'pass' if c.passed else 'FAIL'} | {c.note} |"
              for c in d.checks]
    if metrics_note:
        lines += ["", metrics_note]
    return "\n".join(lines) + "\n"


def decision_html(d: GateDecision, extra: str = "") -> str:
    """The same report as a small self-contained HTML page (KFP's HTML viewer, the MLflow artifact view)."""
    import html

    fmt = lambda x: "-" if x is None else f"{x:.4f}"  # noqa: E731
    rows = "".join(f"<tr><td>{html.escape(c.name)}</td><td>{fmt(c.value)}</td><td>{fmt(c.bound)}</td>"
                   f"<td style='color:{'green' if c.passed else 'red'}'>{'pass' if c.passed else 'FAIL'}</td>"
                   f"<td>{html.escape(c.note)}</td></tr>" for c in d.checks)
    colour = "green" if d.passed else "red"
    return (f"<html><body><h2>gate: <span style='color:{colour}'>{'PASS' if d.passed else 'FAIL'}</span></h2>"
            f"<p>{html.escape(d.reason)}</p><p>{html.escape(extra)}</p>"
            "<table border='1' cellpadding='4'><tr><th>check</th><th>value</th><th>bound</th><th>result</th>"
            f"<th>note</th></tr>{rows}</table></body></html>")
