"""The report's HTML: one file, styles and pictures inline, nothing fetched.

A Content-Security-Policy forbids every fetch, so a report that tried to load
anything from the network would fail visibly in the browser rather than work
only online. A small inline script records script errors, console errors and
policy violations into the page and marks it rendered once every chart has a
size; the browser test (and a curious reader, via the hidden element
``#render-status``) reads both back.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping
from html import escape
from typing import Any

from ttg.report import charts
from ttg.report.aggregate import STATUSES, Aggregate, ErrorGroup

#: Distinct errors listed in each failures table.
TOP_ERRORS = 20
#: Problems listed in the verdict header before "and N more".
HEADER_PROBLEMS = 8
#: List items shown per field in the verify detail.
DETAIL_LIST_ITEMS = 20

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

# Runs before anything else so that it sees every error the page raises.
_WATCH = """
(function () {
  var errors = [];
  function show() {
    var st = document.getElementById('render-status');
    if (!st) return;
    st.setAttribute('data-errors', String(errors.length));
    var list = document.getElementById('render-errors');
    list.textContent = errors.join('\\n');
    list.hidden = errors.length === 0;
  }
  function record(text) { errors.push(String(text)); show(); }
  window.addEventListener('error', function (e) {
    var what = e.message || ((e.target && e.target.tagName) + ' failed to load');
    record('error: ' + what);
  }, true);
  window.addEventListener('unhandledrejection', function (e) { record('rejection: ' + e.reason); });
  document.addEventListener('securitypolicyviolation', function (e) {
    record('blocked by the page policy: ' + e.blockedURI + ' (' + e.violatedDirective + ')');
  });
  var consoleError = console.error;
  console.error = function () {
    record('console.error: ' + Array.prototype.join.call(arguments, ' '));
    consoleError.apply(console, arguments);
  };
  window.addEventListener('load', function () {
    var charts = document.querySelectorAll('figure.chart');
    var drawn = 0;
    charts.forEach(function (f) {
      var svg = f.querySelector('svg');
      var box = svg ? svg.getBoundingClientRect() : null;
      if (box && box.width > 0 && box.height > 0) { drawn += 1; }
      else { record('chart ' + f.id + ' did not render'); }
    });
    var st = document.getElementById('render-status');
    st.setAttribute('data-charts', String(charts.length));
    st.setAttribute('data-drawn', String(drawn));
    show();
    if (drawn === charts.length) { st.setAttribute('data-rendered', 'yes'); }
  });
})();
"""

_CSS = """
:root { --ok: #1b7a3a; --bad: #b00020; --ink: #1d2330; --muted: #5b6473; --line: #e3e6eb; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 "DejaVu Sans", system-ui, sans-serif; color: var(--ink);
       background: #f6f7f9; }
main { max-width: 1180px; margin: 0 auto; padding: 0 20px 40px; }
header.verdict { padding: 22px 28px 18px; color: white; }
header.verdict.ok { background: linear-gradient(90deg, #14632e, #1f8a45); }
header.verdict.bad { background: linear-gradient(90deg, #8a0019, #c0392b); }
.run { font-size: 15px; opacity: .92; }
.badge { font-size: 34px; font-weight: bold; letter-spacing: .04em; margin: 4px 0 6px; }
.problems { margin: 4px 0 10px; padding-left: 20px; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin-top: 12px; }
.card { background: rgba(255,255,255,.95); color: var(--ink); border-radius: 8px;
        padding: 8px 14px; min-width: 128px; }
.card .v { font-size: 22px; font-weight: bold; }
.card .k { font-size: 12px; color: var(--muted); text-transform: uppercase; letter-spacing: .03em; }
.card.warn .v { color: #c25e00; } .card.alarm .v { color: var(--bad); }
.card.note .v { color: #6c3483; }
nav { margin: 14px 0 0; font-size: 14px; } nav a { margin-right: 14px; color: #2c5aa0; }
section { background: white; border: 1px solid var(--line); border-radius: 10px;
          margin: 18px 0; padding: 14px 20px 18px; }
h2 { font-size: 19px; margin: 4px 0 6px; }
.hint { color: var(--muted); margin: 0 0 10px; font-size: 14px; }
figure.chart { margin: 0; } figure.chart svg { width: 100%; height: auto; display: block; }
.empty { color: var(--muted); font-style: italic; }
table { border-collapse: collapse; width: 100%; font-size: 14px; }
th, td { text-align: left; padding: 6px 8px; border-bottom: 1px solid var(--line);
         vertical-align: top; }
th { color: var(--muted); font-weight: normal; }
td.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td code, .detail code { font-size: 13px; word-break: break-word; }
.tag { display: inline-block; border-radius: 4px; padding: 0 6px; font-size: 12px; color: white; }
.tag.dead { background: #e45756; } .tag.errors { background: #f58518; }
.tag.failed { background: #7f8c8d; }
.lost { color: var(--bad); font-weight: bold; }
#render-errors { color: var(--bad); white-space: pre-wrap; }
footer { color: var(--muted); font-size: 13px; }
"""


def _num(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return json.dumps(v)  # as `ttg verify --json` prints them: true, false, null
    return f"{v:,}" if isinstance(v, int) else escape(str(v))


def _card(label: str, value: str, level: str = "") -> str:
    return (
        f'<div class="card {level}"><div class="v">{value}</div>'
        f'<div class="k">{escape(label)}</div></div>'
    )


def _count(verify: Mapping[str, Any], key: str, fallback: int) -> int:
    v = verify.get(key)
    return v if isinstance(v, int) and not isinstance(v, bool) else fallback


def _header(run: str, verify: Mapping[str, Any], agg: Aggregate) -> str:
    ok = bool(verify.get("ok"))
    problems = [str(p) for p in verify.get("problems") or []]
    done = _count(verify, "done", agg.statuses["ok"])
    dead = _count(verify, "dead", agg.statuses["dead"])
    errors = _count(verify, "errors", agg.statuses["errors"])
    dups = _count(verify, "duplicates", agg.event_kinds["duplicate"])
    redelivered = _count(verify, "redelivered", agg.event_kinds["redelivered"])
    total = verify.get("total_chunks")
    params = _count(verify, "done_params", agg.params_computed)
    total_params = verify.get("total_params")
    lost = agg.lost_workers()
    chunks = f"{done:,}" + (f" / {total:,}" if isinstance(total, int) else "")
    param_text = f"{params:,}" + (f" / {total_params:,}" if isinstance(total_params, int) else "")
    cards = [
        _card("chunks done", chunks),
        _card("dead-lettered", f"{dead:,}", "alarm" if dead else ""),
        _card("chunks with errors", f"{errors:,}", "warn" if errors else ""),
        _card("duplicates absorbed", f"{dups:,}", "note" if dups else ""),
        _card("redelivered", f"{redelivered:,}", "note" if redelivered else ""),
        _card("parameters computed", param_text),
        _card("workers (lost)", f"{len(agg.lanes):,} ({len(lost)})", "alarm" if lost else ""),
    ]
    shown = "".join(f"<li>{escape(p)}</li>" for p in problems[:HEADER_PROBLEMS])
    if len(problems) > HEADER_PROBLEMS:
        shown += f"<li>and {len(problems) - HEADER_PROBLEMS:,} more (see Verification)</li>"
    written = charts.utc_text(time.time())
    return (
        f'<header class="verdict {"ok" if ok else "bad"}">'
        f'<div class="run">TTG run <b>{escape(run)}</b> · state '
        f"<b>{escape(str(verify.get('state', 'unknown')))}</b> · report written {written}</div>"
        f'<div class="badge">{"VERIFIED" if ok else "NOT VERIFIED"}</div>'
        + (f'<ul class="problems">{shown}</ul>' if shown else "")
        + f'<div class="cards">{"".join(cards)}</div></header>'
    )


def _section(ident: str, title: str, hint: str, body: str) -> str:
    return (
        f'<section id="{ident}"><h2>{escape(title)}</h2><p class="hint">{hint}</p>{body}</section>'
    )


def _chart(ident: str, svg: str) -> str:
    return f'<figure class="chart" id="chart-{ident}">{svg}</figure>'


def _empty(text: str) -> str:
    return f'<p class="empty">{escape(text)}</p>'


def _progress(agg: Aggregate, axis: charts.TimeAxis | None, verify: Mapping[str, Any]) -> str:
    hint = "Finished chunks over time, coloured by outcome, and how many finished per second."
    if axis is None or agg.chunks == 0:
        return _section(
            "progress",
            "Progress and throughput",
            hint,
            _empty("No chunk has finished yet: nothing to draw."),
        )
    total = verify.get("total_chunks")
    wall = agg.grid.t_max - agg.grid.t_min
    rate = ""
    if wall:
        rate = f"; {agg.chunks / wall:,.1f} chunks/s, {agg.params / wall:,.0f} parameters/s"
    hint += f" Wall time {charts.seconds_text(wall)}{rate} on average."
    fig = charts.progress_figure(agg, axis, total if isinstance(total, int) else None)
    return _section(
        "progress",
        "Progress and throughput",
        hint,
        _chart("progress", charts.to_svg(fig, "progress")),
    )


def _timeline(agg: Aggregate, axis: charts.TimeAxis | None) -> str:
    if agg.bars_kept:
        how = (
            "Each bar is one chunk, from when the worker started it to when its outcome was "
            "recorded, coloured by outcome (a red tick: dead without running)."
        )
    else:
        how = (
            "Too many chunks to draw one by one: the shade of each time slice is the share of "
            "it the worker spent computing, and the red strip under it the share of that "
            "slice's chunks that died or had parameter errors."
        )
    hint = (
        f"One lane per worker. {how} Purple triangles are redeliveries the worker received. "
        "A lost worker (its chunks were redelivered and it recorded nothing after) is marked "
        "with a red cross where it was last seen."
    )
    if axis is None or not agg.lanes:
        return _section("workers", "Workers", hint, _empty("No worker has recorded anything yet."))
    lanes = charts.pick_lanes(agg)
    notes = []
    for lane in lanes:
        if lane.lost_at is not None:
            seen = lane.last_outcome if math.isfinite(lane.last_outcome) else lane.lost_at
            notes.append(
                f'<span class="lost">{escape(lane.name)} lost</span>: last outcome at '
                f"+{charts.seconds_text(seen - axis.t0)}, its chunks redelivered at "
                f"+{charts.seconds_text(lane.lost_at - axis.t0)}."
            )
    hidden = len(agg.lanes) - len(lanes)
    if hidden:
        rest = sum(ln.chunks for ln in agg.lanes.values()) - sum(ln.chunks for ln in lanes)
        notes.append(f"{hidden:,} more workers not drawn ({rest:,} chunks).")
    body = _chart("workers", charts.to_svg(charts.timeline_figure(agg, axis, lanes), "workers"))
    if notes:
        body += f'<p class="hint">{" ".join(notes)}</p>'
    return _section("workers", "Workers", hint, body)


def _durations(agg: Aggregate) -> str:
    hint = "How long chunks took from start to recorded outcome (chunks that never ran excluded)."
    if agg.durations.n == 0:
        return _section("durations", "Chunk durations", hint, _empty("No chunk has run yet."))
    svg = charts.to_svg(charts.duration_figure(agg), "durations")
    return _section("durations", "Chunk durations", hint, _chart("durations", svg))


def _error_rows(groups: Iterable[ErrorGroup], params_label: bool) -> str:
    rows = []
    for g in groups:
        tag = {"dead": "dead", "errors": "errors", "failed": "failed"}.get(g.kind, "dead")
        name = {"errors": "parameter errors", "failed": "retried"}.get(g.kind, g.kind)
        sample = ", ".join(str(c) for c in g.sample)
        if g.chunks > len(g.sample):
            sample += ", …"
        params = f'<td class="n">{g.params:,}</td>' if params_label else ""
        rows.append(
            f'<tr><td><span class="tag {tag}">{escape(name)}</span></td>'
            f'<td class="n">{g.chunks:,}</td>{params}<td><code>{escape(g.text)}</code></td>'
            f"<td>{escape(sample)}</td></tr>"
        )
    return "".join(rows)


def _failures(agg: Aggregate) -> str:
    hint = (
        "Dead-lettered chunks and chunks where some parameters raised, grouped by error "
        f"(the {TOP_ERRORS} most frequent), with the first chunk ids of each."
    )
    groups = agg.failures.top(TOP_ERRORS)
    if not groups and not agg.failures.untracked:
        body = _empty("No chunk died and no parameter raised.")
    else:
        body = (
            "<table><tr><th>outcome</th><th>chunks</th><th>parameters failed</th>"
            "<th>error</th><th>first chunks</th></tr>"
            f"{_error_rows(groups, True)}</table>"
        )
        more = len(agg.failures.groups) - len(groups)
        extra = []
        if more > 0:
            extra.append(f"{more:,} more distinct errors not listed.")
        if agg.failures.untracked:
            extra.append(
                f"{agg.failures.untracked:,} chunks with further distinct errors "
                "were counted but not grouped."
            )
        if extra:
            body += f'<p class="hint">{" ".join(extra)}</p>'
    retried = agg.retried.top(TOP_ERRORS)
    if retried:
        body += (
            "<h3>Failed attempts that were retried</h3>"
            "<table><tr><th>kind</th><th>attempts</th><th>error</th><th>first chunks</th></tr>"
            f"{_error_rows(retried, False)}</table>"
        )
    if agg.event_kinds:
        kinds = ", ".join(f"{n:,} {escape(k)}" for k, n in sorted(agg.event_kinds.items()))
        body += f'<p class="hint">Events recorded: {kinds}.</p>'
    return _section("failures", "Failures", hint, body)


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


def _verification(verify: Mapping[str, Any], agg: Aggregate) -> str:
    ok = bool(verify.get("ok"))
    hint = (
        "What <code>ttg verify</code> found reading the whole ledger: every chunk must have "
        "exactly one counted outcome covering its whole range, and the counters must agree."
    )
    problems = [str(p) for p in verify.get("problems") or []]
    verdict = "VERIFIED" if ok else "NOT VERIFIED"
    body = f'<p><b class="{"" if ok else "lost"}">{verdict}</b>'
    body += " — no problems found.</p>" if not problems else f" — {len(problems):,} problems:</p>"
    if problems:
        body += "<ul>" + "".join(f"<li>{escape(p)}</li>" for p in problems) + "</ul>"
    rows = "".join(
        f"<tr><th>{escape(str(k))}</th>"
        f"<td>{charts.utc_text(v) if k == 'ts' and isinstance(v, float) else _value(v)}</td></tr>"
        for k, v in verify.items()
        if k != "problems"
    )
    seen = ", ".join(f"{agg.statuses[s]:,} {s}" for s in STATUSES)
    rows += (
        f"<tr><th>ledger rows read by the report</th><td>{agg.chunks:,} ({seen}); "
        f"{agg.reattempted:,} on a later delivery (max attempt {agg.max_attempt}); "
        f"{agg.never_ran:,} never ran</td></tr>"
    )
    body += f'<table class="detail">{rows}</table>'
    return _section("verification", "Verification", hint, body)


def render(run: str, verify: Mapping[str, Any], agg: Aggregate) -> str:
    """The whole report as one HTML document."""
    axis = None
    if math.isfinite(agg.grid.t_min):
        axis = charts.TimeAxis.fit(agg.grid.t_min, agg.grid.t_max)
    with charts.style():
        sections = [
            _progress(agg, axis, verify),
            _timeline(agg, axis),
            _durations(agg),
            _failures(agg),
            _verification(verify, agg),
        ]
    nav = " ".join(
        f'<a href="#{i}">{t}</a>'
        for i, t in (
            ("progress", "Progress"),
            ("workers", "Workers"),
            ("durations", "Durations"),
            ("failures", "Failures"),
            ("verification", "Verification"),
        )
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>TTG report: {escape(run)}</title>"
        f"<script>{_WATCH}</script><style>{_CSS}</style></head><body>"
        f"{_header(run, verify, agg)}<main><nav>{nav}</nav>{''.join(sections)}"
        '<div id="render-status" hidden data-rendered="no"></div>'
        '<pre id="render-errors" hidden></pre>'
        "<footer>Written by <code>ttg report</code>; one self-contained file, works offline."
        "</footer></main></body></html>\n"
    )
