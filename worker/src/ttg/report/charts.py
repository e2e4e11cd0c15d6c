"""The report's pictures, drawn with matplotlib as inline SVG.

Why matplotlib and SVG: the report must be one small file that works offline.
Plotly embeds its JavaScript bundle in every file (4.8 MB as of plotly 7),
over the size a 10^7-chunk report is allowed on its own, and its pictures
need a script to appear. Matplotlib's SVG is text the browser draws with no
script at all; axes and labels stay crisp vector text, and the one dense layer
(the worker timeline's chunk bars) is rasterized into a PNG inside the SVG, so
the file's size does not grow with the number of bars.

Only :mod:`ttg.report` imports this module, after checking the extra is there.
"""

from __future__ import annotations

import io
import math
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import matplotlib as mpl
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from ttg.report.aggregate import STATUSES, Aggregate, Lane

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType

#: Colours of outcomes and marks (Tableau 10: tell-apart for most colour vision).
COLOURS = {
    "ok": "#4c78a8",
    "errors": "#f58518",
    "dead": "#e45756",
    "redelivered": "#8e44ad",
    "lost": "#b00020",
}
#: Legend names of the statuses.
STATUS_LABELS = {"ok": "ok", "errors": "with parameter errors", "dead": "dead-lettered"}
#: Worker lanes drawn at most; lost workers first, then the busiest.
MAX_LANES = 40
#: Most bars in the throughput chart (time bins are merged down to it).
THROUGHPUT_BINS = 150
#: Resolution of the rasterized timeline layer, dots per inch.
RASTER_DPI = 144
#: Bars per lane up to which each chunk is outlined so neighbours stay apart.
FEW_BARS = 80
#: Chart width, inches (the page scales it to the window).
WIDTH = 11.0

_STYLE: dict[RcKeyType, Any] = {
    # Text stays <text> (small, selectable) instead of one path per glyph.
    "svg.fonttype": "none",
    # Stable ids: the same data gives the same file.
    "svg.hashsalt": "ttg-report",
    "font.family": "DejaVu Sans",
    "font.size": 10,
    "axes.titlesize": 12,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e6e6e6",
    "grid.linewidth": 0.8,
    "axes.axisbelow": True,
    "legend.frameon": False,
}


@dataclass(frozen=True)
class TimeAxis:
    """Maps Unix seconds to the x axis: time since the run's first mark, in a readable unit."""

    t0: float
    scale: float
    unit: str

    @classmethod
    def fit(cls, t_min: float, t_max: float) -> TimeAxis:
        """Seconds for short runs, minutes up to three hours, hours beyond."""
        span = t_max - t_min
        if span <= 180:
            return cls(t_min, 1.0, "s")
        if span <= 3 * 3600:
            return cls(t_min, 60.0, "min")
        return cls(t_min, 3600.0, "h")

    def x(self, t: float) -> float:
        """Position of Unix time ``t``."""
        return (t - self.t0) / self.scale

    def label(self) -> str:
        """The x axis label, with the wall-clock start."""
        start = utc_text(self.t0)
        return f"time since start ({self.unit}); start {start}"


def seconds_text(s: float) -> str:
    """A duration for people: 850 µs, 12.5 ms, 3.2 s, 4.5 min, 2.1 h (rounded first, so
    999.9 µs reads 1 ms)."""
    for below, per_second, unit in ((1e-3, 1e6, "µs"), (1, 1e3, "ms"), (120, 1, "s"),
                                    (7200, 1 / 60, "min")):  # fmt: skip
        shown = float(f"{s * per_second:.3g}")
        if shown < below * per_second:
            return f"{shown:g} {unit}"
    return f"{float(f'{s / 3600:.3g}'):g} h"


def utc_text(t: float) -> str:
    """A wall-clock time for people, in UTC."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def _thousands(v: float, _pos: object = None) -> str:
    return f"{v:,.0f}" if abs(v) >= 10 or v == int(v) else f"{v:.2g}"


@contextmanager
def style() -> Iterator[None]:
    """The report's matplotlib settings, without touching the caller's."""
    with mpl.rc_context(_STYLE):
        yield


def to_svg(fig: Figure, prefix: str) -> str:
    """``fig`` as an ``<svg>`` element to inline in HTML.

    Several SVGs in one page share one id space, so every id and reference is
    prefixed with ``prefix``.
    """
    buf = io.StringIO()
    fig.savefig(buf, format="svg", dpi=RASTER_DPI, bbox_inches="tight", metadata={"Date": None})
    text = buf.getvalue()
    text = text[text.index("<svg") :]
    text = re.sub(r'\bid="', f'id="{prefix}-', text)
    text = text.replace("url(#", f"url(#{prefix}-").replace('href="#', f'href="#{prefix}-')
    return text


def _edges(agg: Aggregate, axis: TimeAxis) -> list[float]:
    lo, hi = agg.grid.span() or (0, -1)
    w = agg.grid.width
    return [axis.x(i * w) for i in range(lo, hi + 2)]


def progress_figure(agg: Aggregate, axis: TimeAxis, total_chunks: int | None) -> Figure:
    """Cumulative finished chunks over time, and throughput per time bin, sharing x."""
    fig = Figure(figsize=(WIDTH, 6.2), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 2))
    edges = _edges(agg, axis)
    per_bin = {s: agg.finished[s].dense() for s in STATUSES}
    drawn = [s for s in STATUSES if any(per_bin[s])]

    cumulative: list[list[float]] = []
    for s in drawn:
        run, acc = 0.0, [0.0]
        for v in per_bin[s]:
            run += v
            acc.append(run)
        cumulative.append(acc)
    top.stackplot(
        edges,
        *cumulative,
        colors=[COLOURS[s] for s in drawn],
        labels=[STATUS_LABELS[s] for s in drawn],
        alpha=0.9,
    )
    if total_chunks:
        top.axhline(total_chunks, color="#333333", linestyle="--", linewidth=1)
        top.annotate(
            f"all {total_chunks:,} chunks",
            (1, total_chunks),
            xycoords=("axes fraction", "data"),
            xytext=(0, 3),
            textcoords="offset points",
            ha="right",
            color="#333333",
        )
        top.set_ylim(0, total_chunks * 1.1)
    top.set_title("Progress: chunks finished so far")
    top.set_ylabel("chunks finished")
    top.yaxis.set_major_formatter(FuncFormatter(_thousands))
    top.legend(loc="upper left", bbox_to_anchor=(0, 0.9))

    # Rates over a few chunks are noise: merge bins down to at most THROUGHPUT_BINS.
    factor = 1
    while len(per_bin["ok"]) > factor * THROUGHPUT_BINS:
        factor *= 2
    lo, _hi = agg.grid.span() or (0, 0)
    width = agg.grid.width * factor
    starts = [(lo * agg.grid.width) + k * width for k in range(-(-len(per_bin["ok"]) // factor))]
    # The first and last bins stick out past the run: a rate is over the part inside it.
    seconds = [
        max(min(t + width, agg.grid.t_max) - max(t, agg.grid.t_min), width / 1000) for t in starts
    ]
    coarse_edges = [axis.x(t) for t in starts] + [axis.x(starts[-1] + width)]
    baseline = [0.0] * len(starts)
    for s in drawn:
        values = per_bin[s]
        sums = [sum(values[i : i + factor]) for i in range(0, len(values), factor)]
        rates = [b + v / d for b, v, d in zip(baseline, sums, seconds, strict=True)]
        bottom.stairs(rates, coarse_edges, baseline=baseline, fill=True, color=COLOURS[s])
        baseline = rates
    bottom.set_title(f"Throughput: chunks finished per second ({seconds_text(width)} bins)")
    bottom.set_ylabel("chunks / s")
    bottom.set_xlabel(axis.label())
    bottom.yaxis.set_major_formatter(FuncFormatter(_thousands))
    bottom.set_xlim(0, max(axis.x(agg.grid.t_max), 1e-9))
    return fig


def pick_lanes(agg: Aggregate) -> list[Lane]:
    """The lanes to draw, in order of first activity: lost ones always, then the busiest."""
    lanes = sorted(agg.lanes.values(), key=lambda ln: (ln.lost_at is None, -ln.chunks, ln.name))
    chosen = lanes[:MAX_LANES]
    return sorted(chosen, key=lambda ln: (ln.first, ln.name))


def timeline_figure(agg: Aggregate, axis: TimeAxis, lanes: Sequence[Lane]) -> Figure:
    """One lane per worker: chunk bars (or busy bins), redeliveries and lost workers."""
    fig = Figure(figsize=(WIDTH, 1.6 + 0.42 * len(lanes)), layout="constrained")
    ax = fig.subplots()
    few = max((len(ln.bar_kind) for ln in lanes), default=0) <= FEW_BARS
    for y, lane in enumerate(lanes):
        if agg.bars_kept:
            _draw_bars(ax, y, lane, axis, few)
        else:
            _draw_bins(ax, y, lane, agg, axis)
        _draw_redeliveries(ax, y, lane, agg, axis)
        if lane.lost_at is not None:
            _draw_lost(ax, y, lane, lane.lost_at, axis)

    ax.set_yticks(range(len(lanes)))
    # Worker names are anyone's text: "$x$" must not be read as mathtext (or fail as it).
    ax.set_yticklabels(
        [ln.name + ("  LOST" if ln.lost_at is not None else "") for ln in lanes], parse_math=False
    )
    for tick, lane in zip(ax.get_yticklabels(), lanes, strict=True):
        if lane.lost_at is not None:
            tick.set_color(COLOURS["lost"])
            tick.set_fontweight("bold")
    ax.set_ylim(len(lanes) - 0.4, -0.75)
    ax.grid(axis="y", visible=False)
    ax.set_xlim(0, max(axis.x(agg.grid.t_max), 1e-9) * 1.01)
    ax.set_xlabel(axis.label())
    ax.set_ylabel("worker")
    how = "each bar one chunk" if agg.bars_kept else "shade = share of time busy"
    ax.set_title(f"Workers: one lane per worker, chunks from start to finish ({how})")
    handles: list[Artist] = [Patch(color=COLOURS[s], label=STATUS_LABELS[s]) for s in STATUSES]
    handles += [
        Patch(
            facecolor="white",
            edgecolor=COLOURS["redelivered"],
            linewidth=1.5,
            label="chunk on a later delivery",
        ),
        Line2D(
            [],
            [],
            color=COLOURS["redelivered"],
            marker="v",
            linestyle="none",
            markersize=7,
            label="redelivery received",
        ),
        Line2D(
            [],
            [],
            color=COLOURS["lost"],
            marker="X",
            linestyle="none",
            markersize=9,
            label="worker lost (killed)",
        ),
    ]
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncols=6,
        fontsize=9,
        handlelength=1.4,
        columnspacing=1.4,
    )
    return fig


def _draw_bars(ax: Axes, y: int, lane: Lane, axis: TimeAxis, few: bool) -> None:
    spans: dict[int, list[tuple[float, float]]] = {i: [] for i in range(len(STATUSES))}
    again: list[tuple[float, float]] = []
    never_ran: list[float] = []
    for start, end, status, redelivered in lane.bars():
        x0, x1 = axis.x(start), axis.x(end)
        if end == start:
            never_ran.append(x0)
            continue
        spans[status].append((x0, x1 - x0))
        if redelivered:
            again.append((x0, x1 - x0))
    # A thin white edge separates chunks while they are wide enough to tell apart.
    edge = "white" if few else "none"
    for status, bars in spans.items():
        if bars:
            ax.broken_barh(
                bars,
                (y - 0.32, 0.64),
                facecolors=COLOURS[STATUSES[status]],
                edgecolor=edge,
                linewidth=0.4,
                rasterized=True,
            )
    if again:
        ax.broken_barh(
            again,
            (y - 0.32, 0.64),
            facecolors="none",
            edgecolor=COLOURS["redelivered"],
            linewidth=1.4,
            rasterized=True,
        )
    if never_ran:
        ax.plot(
            never_ran,
            [y] * len(never_ran),
            linestyle="none",
            marker="|",
            markersize=12,
            color=COLOURS["dead"],
            rasterized=True,
        )


def _draw_bins(ax: Axes, y: int, lane: Lane, agg: Aggregate, axis: TimeAxis) -> None:
    edges = _edges(agg, axis)
    width = agg.grid.width
    bars: list[tuple[float, float]] = []
    shades: list[tuple[float, float, float, float]] = []
    r, g, b = mpl.colors.to_rgb(COLOURS["ok"])
    for i, busy in enumerate(lane.busy.dense()):
        if busy > 0:
            bars.append((edges[i], edges[i + 1] - edges[i]))
            shades.append((r, g, b, min(1.0, 0.15 + 0.85 * busy / width)))
    if bars:
        ax.broken_barh(bars, (y - 0.32, 0.64), facecolors=shades, linewidth=0, rasterized=True)
    # Failed share of each bin's chunks as a strip under the lane: a few failures
    # among many chunks stay faint, a bin where everything failed is solid red.
    strip: list[tuple[float, float]] = []
    reds: list[tuple[float, float, float, float]] = []
    r, g, b = mpl.colors.to_rgb(COLOURS["dead"])
    for i, (done, bad) in enumerate(zip(lane.done.dense(), lane.problems.dense(), strict=True)):
        if bad:
            strip.append((edges[i], edges[i + 1] - edges[i]))
            reds.append((r, g, b, min(1.0, 0.1 + math.sqrt(bad / done))))
    if strip:
        ax.broken_barh(strip, (y + 0.2, 0.12), facecolors=reds, linewidth=0, rasterized=True)


def _draw_redeliveries(ax: Axes, y: int, lane: Lane, agg: Aggregate, axis: TimeAxis) -> None:
    if len(lane.markers) < sum(lane.redeliveries.bins.values()):
        # More than were kept one by one: one marker per bin that had any.
        edges = _edges(agg, axis)
        xs = [(edges[i] + edges[i + 1]) / 2 for i, n in enumerate(lane.redeliveries.dense()) if n]
    else:
        xs = [axis.x(t) for t in lane.markers]
    if xs:
        ax.plot(
            xs,
            [y - 0.5] * len(xs),
            linestyle="none",
            marker="v",
            markersize=7,
            color=COLOURS["redelivered"],
            markeredgecolor="white",
            markeredgewidth=0.5,
        )


def _draw_lost(ax: Axes, y: int, lane: Lane, lost_at: float, axis: TimeAxis) -> None:
    seen = lane.last_outcome if math.isfinite(lane.last_outcome) else lost_at
    x0, x1 = axis.x(seen), axis.x(lost_at)
    # From its last outcome until its chunks went elsewhere: when it died.
    ax.broken_barh(
        [(x0, max(x1 - x0, 0.0))],
        (y - 0.32, 0.64),
        facecolors="#fde0e0",
        edgecolor=COLOURS["lost"],
        hatch="////",
        linewidth=0.8,
    )
    ax.plot(
        [x0],
        [y],
        marker="X",
        markersize=13,
        color=COLOURS["lost"],
        markeredgecolor="white",
        markeredgewidth=1,
    )
    ax.annotate(
        f"lost: its chunks redelivered {seconds_text(lost_at - seen)} after its last outcome",
        (x1, y),
        xytext=(10, 0),
        textcoords="offset points",
        va="center",
        color=COLOURS["lost"],
        fontweight="bold",
        fontsize=9,
        bbox={
            "boxstyle": "round,pad=0.2",
            "facecolor": "white",
            "edgecolor": "none",
            "alpha": 0.85,
        },
    )


def duration_figure(agg: Aggregate) -> Figure:
    """Histogram of chunk durations on a log scale, with median and p95 marked."""
    h = agg.durations
    fig = Figure(figsize=(WIDTH, 3.6), layout="constrained")
    ax = fig.subplots()
    lo, hi = min(h.counts), max(h.counts)
    counts = [h.counts.get(i, 0) for i in range(lo, hi + 1)]
    edges = [h.edges(i)[0] for i in range(lo, hi + 1)] + [h.edges(hi)[1]]
    ax.stairs(counts, edges, fill=True, color=COLOURS["ok"], alpha=0.9)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: seconds_text(v)))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ymax = max(counts)
    marks = {name: v for q, name in ((0.5, "median"), (0.95, "p95"))
             if (v := h.quantile(q)) is not None}  # fmt: skip
    if len(marks) == 2 and seconds_text(marks["median"]) == seconds_text(marks["p95"]):
        marks = {"median ≈ p95": marks["median"]}  # one line, one label: they would overlap
    for row, (name, v) in enumerate(marks.items()):
        ax.axvline(v, color="#333333", linestyle="--", linewidth=1)
        ax.annotate(
            f"{name} ≈ {seconds_text(v)}",
            (v, ymax),
            xytext=(4, -14 * row),  # a row each: close values' labels stay apart
            textcoords="offset points",
            va="top",
            fontsize=9,
        )
    ax.set_title(
        f"Chunk durations (started → finished): {h.n:,} chunks, "
        f"mean {seconds_text(h.total / h.n)}, max {seconds_text(h.max)}"
    )
    ax.set_xlabel("chunk duration (log scale)")
    ax.set_ylabel("chunks")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_formatter(FuncFormatter(_thousands))
    return fig
