"""The report's words: the verdict header, the failures, the verification detail.

They speak the vocabulary of ``ttg.verify`` (chunks finished / with errors /
dead; parameters ok / failed / dead; events), and keep two questions apart
that one red banner used to merge: does "exactly once" hold (every chunk one
counted outcome, nothing disagreeing), and did every parameter succeed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from html import escape
from typing import Any

from ttg.failures import ErrorGroup, param_text
from ttg.report import charts
from ttg.report.aggregate import STATUSES, Aggregate
from ttg.run import RunSpec
from ttg.verify import VerifyReport

#: Distinct errors listed in each failures table.
TOP_ERRORS = 20
#: Problems listed in the verdict header before "and N more".
HEADER_PROBLEMS = 8
#: List items shown per field in the verify detail.
DETAIL_LIST_ITEMS = 20
#: Event kinds in the report's words (the vocabulary of ``ttg.verify``): one, many.
EVENT_WORDS = {
    "failed": ("failed attempt", "failed attempts"),
    "redelivered": ("redelivery", "redeliveries"),
    "released": ("chunk given back", "chunks given back"),
    "malformed": ("unreadable task message", "unreadable task messages"),
    "retry": ("chunk re-queued by ttg retry", "chunks re-queued by ttg retry"),
}


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 parameter``, ``2 parameters`` (never "1 parameters")."""
    return f"{n:,} {word if n == 1 else (many or word + 's')}"


def _num(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return json.dumps(v)  # as `ttg verify --json` prints them: true, false, null
    return f"{v:,}" if isinstance(v, int) else escape(str(v))


def _card(label: str, value: str, level: str = "") -> str:
    return (
        f'<div class="card {level}"><div class="v">{value}</div>'
        f'<div class="k">{escape(label)}</div></div>'
    )


def exactly_once(v: VerifyReport) -> tuple[str, str]:
    """The first verdict line and its level: ok, bad, or pending."""
    if not v.complete:
        return f"not known yet: {plural(v.missing, 'chunk')} without an outcome", "pending"
    if v.verified:
        return "holds", "ok"
    return f"does NOT hold: {plural(len(v.problems), 'problem')}", "bad"


def parameters_line(v: VerifyReport) -> tuple[str, str]:
    """The second verdict line and its level."""
    failed = v.failed_params if v.failed_params is not None else v.param_errors
    if failed:
        return (
            f"{plural(failed, 'parameter')} failed ({v.param_errors:,} raised, "
            f"{v.params_dead or 0:,} in dead chunks) of {v.total_params:,}",
            "warn",
        )
    if v.complete:
        return f"all {v.total_params:,} ok", "ok"
    return f"{v.done_params:,} of {v.total_params:,} ok so far", "pending"


def header(run: str, v: VerifyReport, agg: Aggregate) -> str:
    once, once_level = exactly_once(v)
    params, params_level = parameters_line(v)
    if v.ok:
        level, badge = "ok", "VERIFIED"
    elif once_level == "ok":
        level, badge = "warn", "EXACTLY ONCE · WITH FAILURES"
    else:
        level, badge = "bad", "NOT VERIFIED"
    lost = agg.lost_workers()
    cards = [
        _card("chunks finished", f"{v.finished:,} / {v.total_chunks:,}"),
        _card("chunks with errors", f"{v.errors:,}", "warn" if v.errors else ""),
        _card("chunks dead", f"{v.dead:,}", "alarm" if v.dead else ""),
        _card("parameters ok", f"{v.done_params:,} / {v.total_params:,}"),
        *(
            [
                _card(
                    "computed / reused",
                    f"{v.total_params - v.reused_params:,} / {v.reused_params:,}",
                    "note",
                )
            ]
            if v.reused_params
            else []
        ),
        _card("parameters failed", f"{v.param_errors:,}", "warn" if v.param_errors else ""),
        _card("parameters dead", f"{v.params_dead or 0:,}", "alarm" if v.params_dead else ""),
        _card("redelivered", f"{v.redelivered:,}", "note" if v.redelivered else ""),
        _card("duplicates absorbed", f"{v.duplicates:,}", "note" if v.duplicates else ""),
        _card("workers (lost)", f"{len(agg.lanes):,} ({len(lost)})", "alarm" if lost else ""),
    ]
    problems = v.problems
    shown = "".join(f"<li>{escape(p)}</li>" for p in problems[:HEADER_PROBLEMS])
    if len(problems) > HEADER_PROBLEMS:
        shown += f"<li>and {len(problems) - HEADER_PROBLEMS:,} more (see Verification)</li>"
    written = charts.utc_text(time.time())
    return (
        f'<header class="verdict {level}">'
        f'<div class="run">TTG run <b>{escape(run)}</b> · state '
        f"<b>{escape(v.state)}</b> · report written {written}</div>"
        f'<div class="badge">{badge}</div>'
        f'<div class="lines"><div id="verdict-once" class="{once_level}">Exactly once: '
        f"<b>{escape(once)}</b></div>"
        f'<div id="verdict-params" class="{params_level}">Parameters: <b>{escape(params)}</b>'
        "</div></div>"
        + (f'<ul class="problems">{shown}</ul>' if shown else "")
        + f'<div class="cards">{"".join(cards)}</div></header>'
    )


def _example(g: ErrorGroup, spec: RunSpec | None) -> str:
    ex = g.example
    if ex is None:
        return ""
    if ex.index is None and ex.chunk is not None and spec is not None:
        ex.index = spec.bounds(ex.chunk)[0]  # a dead chunk's reason names no parameter
    if ex.index is None:
        return ""
    param = ex.param
    if param is None and spec is not None and 0 <= ex.index < spec.total_params:
        param = spec.parameter_space.value(ex.index)
    text = f"parameter {ex.index}"
    if ex.chunk is not None:
        text += f" (chunk {ex.chunk})"
    value = f"<br><code>{escape(param_text(param))}</code>" if param is not None else ""
    return escape(text) + value


def _traceback(g: ErrorGroup) -> str:
    tb = g.example.traceback if g.example is not None else None
    if not tb:
        return '<span class="empty">none kept</span>'
    return f'<details><summary>show</summary><pre class="tb">{escape(tb)}</pre></details>'


def _rows(groups: Iterable[ErrorGroup], spec: RunSpec | None, *, retried: bool) -> str:
    rows = []
    for g in groups:
        tag = "failed" if retried else ("dead" if g.kind == "dead" else "errors")
        name = "replaced" if retried else ("chunk dead" if g.kind == "dead" else "raised")
        count = f'<td class="n">{g.params:,}</td>' + (
            "" if retried else f'<td class="n">{g.chunks:,}</td>'
        )
        example = "" if retried else f"<td>{_example(g, spec)}</td><td>{_traceback(g)}</td>"
        rows.append(
            f'<tr class="error-group"><td><span class="tag {tag}">{escape(name)}</span></td>'
            f"<td><code>{escape(g.type or '—')}</code></td>{count}"
            f"<td><code>{escape(g.error)}</code></td>{example}</tr>"
        )
    return "".join(rows)


def failures(agg: Aggregate, spec: RunSpec | None, section: Any) -> str:
    """Failed parameters grouped by exception type and message, then replaced attempts."""
    hint = (
        "Parameters whose compute raised, and parameters of dead chunks, grouped by exception "
        f"type and message (the {TOP_ERRORS} largest groups), each with an example parameter "
        "and, when the worker kept it, its traceback."
    )
    groups = agg.failures.top(TOP_ERRORS)
    if not groups and not agg.failures.untracked:
        body = '<p class="empty">No chunk died and no parameter raised.</p>'
    else:
        body = (
            '<table id="error-groups"><tr><th>what</th><th>type</th><th>parameters</th>'
            "<th>chunks</th><th>error</th><th>example</th><th>traceback</th></tr>"
            f"{_rows(groups, spec, retried=False)}</table>"
        )
        extra = []
        more = len(agg.failures) - len(groups)
        if more > 0:
            extra.append(f"{plural(more, 'more distinct error')} not listed.")
        if agg.failures.untracked:
            extra.append(
                f"{plural(agg.failures.untracked, 'parameter')} with further distinct errors "
                "counted but not grouped."
            )
        if extra:
            body += f'<p class="hint">{" ".join(extra)}</p>'
    retried = agg.retried.top(TOP_ERRORS)
    if retried:
        body += (
            "<h3>Failed attempts that a later attempt replaced</h3>"
            '<p class="hint">A chunk retried with backoff after a transient error, or re-run '
            "by <code>ttg retry</code>: these attempts' outcomes were not counted.</p>"
            '<table id="retried"><tr><th>what</th><th>type</th><th>attempts</th><th>error</th>'
            f"</tr>{_rows(retried, spec, retried=True)}</table>"
        )
    if agg.event_kinds:
        kinds = ", ".join(
            escape(plural(n, *EVENT_WORDS.get(k, (k, k))))
            for k, n in sorted(agg.event_kinds.items())
        )
        body += f'<p class="hint">Events recorded: {kinds}.</p>'
    out: str = section("failures", "Failures", hint, body)
    return out


def _value(v: Any) -> str:
    if isinstance(v, list):
        shown = ", ".join(json.dumps(x, default=str) for x in v[:DETAIL_LIST_ITEMS])
        if len(v) > DETAIL_LIST_ITEMS:
            shown += f", … ({len(v) - DETAIL_LIST_ITEMS:,} more)"
        return f"<code>[{escape(shown)}]</code>"
    if isinstance(v, dict):
        text = json.dumps(v, default=str)
        return f"<code>{escape(text[:500] + ('…' if len(text) > 500 else ''))}</code>"
    return _num(v)


def verification(v: VerifyReport, agg: Aggregate, section: Any) -> str:
    hint = (
        "What <code>ttg verify</code> found reading the whole ledger: every chunk must have "
        "exactly one counted outcome covering its whole range, and the counters must agree."
    )
    once, level = exactly_once(v)
    params, _ = parameters_line(v)
    body = (
        f'<p>Exactly once: <b class="{"" if level == "ok" else "lost"}">{escape(once)}</b>. '
        f"Parameters: <b>{escape(params)}</b>.</p>"
    )
    if v.problems:
        body += "<ul>" + "".join(f"<li>{escape(p)}</li>" for p in v.problems) + "</ul>"
    fields = {k: x for k, x in v.to_dict().items() if k not in ("problems", "error_groups")}
    rows = "".join(
        f"<tr><th>{escape(str(k))}</th>"
        f"<td>{charts.utc_text(x) if k == 'ts' and isinstance(x, float) else _value(x)}</td></tr>"
        for k, x in fields.items()
    )
    seen = ", ".join(f"{agg.statuses[s]:,} {s}" for s in STATUSES)
    rows += (
        f"<tr><th>ledger rows read by the report</th><td>{agg.chunks:,} ({seen}); "
        f"{agg.reattempted:,} on a later delivery (max attempt {agg.max_attempt}); "
        f"{agg.never_ran:,} never ran</td></tr>"
    )
    body += f'<table class="detail">{rows}</table>'
    out: str = section("verification", "Verification", hint, body)
    return out
