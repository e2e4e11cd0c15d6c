"""The report's HTML: one file, styles and pictures inline, nothing fetched.

A Content-Security-Policy forbids every fetch, so a report that tried to load
anything from the network would fail visibly in the browser rather than work
only online. A small inline script records script errors, console errors and
policy violations into the page and marks it rendered once every chart has a
size; the browser test (and a curious reader, via the hidden element
``#render-status``) reads both back.
"""

from __future__ import annotations

import math
from html import escape

from ttg.report import charts, verdict
from ttg.report.aggregate import Aggregate
from ttg.run import RunSpec
from ttg.verify import VerifyReport

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
header.verdict.warn { background: linear-gradient(90deg, #8a4b00, #c77800); }
.lines { font-size: 16px; margin: 2px 0 6px; } .lines .bad, .lines .warn { font-weight: bold; }
pre.tb { white-space: pre-wrap; font-size: 12px; background: #f6f7f9; padding: 6px;
         max-width: 560px; overflow-x: auto; }
details summary { cursor: pointer; color: #2c5aa0; }
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


def _section(ident: str, title: str, hint: str, body: str) -> str:
    return (
        f'<section id="{ident}"><h2>{escape(title)}</h2><p class="hint">{hint}</p>{body}</section>'
    )


def _chart(ident: str, svg: str) -> str:
    return f'<figure class="chart" id="chart-{ident}">{svg}</figure>'


def _empty(text: str) -> str:
    return f'<p class="empty">{escape(text)}</p>'


def _progress(agg: Aggregate, axis: charts.TimeAxis | None, verify: VerifyReport) -> str:
    hint = "Finished chunks over time, coloured by outcome, and how many finished per second."
    if axis is None or agg.chunks == 0:
        return _section(
            "progress",
            "Progress and throughput",
            hint,
            _empty("No chunk has finished yet: nothing to draw."),
        )
    wall = agg.grid.t_max - agg.grid.t_min
    rate = ""
    if wall:
        rate = f"; {_rate(agg.chunks / wall, 'chunk')}, {_rate(agg.params / wall, 'parameter')}"
    hint += f" Wall time {charts.seconds_text(wall)}{rate} on average."
    fig = charts.progress_figure(agg, axis, verify.total_chunks)
    return _section(
        "progress",
        "Progress and throughput",
        hint,
        _chart("progress", charts.to_svg(fig, "progress")),
    )


def _rate(per_second: float, what: str) -> str:
    """``12.5 chunks/s``, ``1 parameter/s``: as many digits as the number needs."""
    text = f"{per_second:,.0f}" if per_second >= 100 else f"{per_second:,.3g}"
    return f"{text} {what}{'' if text == '1' else 's'}/s"


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


def render(run: str, verify: VerifyReport, agg: Aggregate, spec: RunSpec | None = None) -> str:
    """The whole report as one HTML document."""
    axis = None
    if math.isfinite(agg.grid.t_min):
        axis = charts.TimeAxis.fit(agg.grid.t_min, agg.grid.t_max)
    with charts.style():
        sections = [
            _progress(agg, axis, verify),
            _timeline(agg, axis),
            _durations(agg),
            verdict.failures(agg, spec, _section),
            verdict.verification(verify, agg, _section),
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
        f"{verdict.header(run, verify, agg)}<main><nav>{nav}</nav>{''.join(sections)}"
        '<div id="render-status" hidden data-rendered="no"></div>'
        '<pre id="render-errors" hidden></pre>'
        "<footer>Written by <code>ttg report</code>; one self-contained file, works offline."
        "</footer></main></body></html>\n"
    )
