"""The run report: one self-contained HTML page that shows what a run did.

Everything the page shows is inlined (plots and thumbnails as base64 data URIs, CSS in a style
tag), so the file can be mailed, attached to a ticket or opened from object storage without the
table or the network. A Content-Security-Policy forbids scripts and any fetch: text from the
table (ids, captions, URIs) is escaped, and even if something slipped through it could not run.

Numbers come from the run manifest; the only table read is the run's flagged rows, for the
thumbnail grids. Summary plots use matplotlib's Agg canvas on bare `Figure`s (no pyplot global
state); the per-category score histograms, one per category, are SVG drawn directly.
"""

from __future__ import annotations

import base64
import html
import io
import math
import textwrap
from dataclasses import dataclass
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from clipline.reports.thumbnails import Thumbnail, load_thumbnails
from clipline.schemas.config import SourceConfig
from clipline.schemas.storage import StorageConfig
from clipline.table.store import sql_literal

MAX_THUMBNAILS = 48
FLAGGED_COLUMNS = ["id", "decision", "reasons", "labels", "source", "image_uri", "text", "thumbnail"]
DECISION_COLOURS = {"allow": "#43a047", "review": "#fb8c00", "block": "#e53935"}
TOPIC_COLOUR = "#5c6bc0"
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def policy_label(policy: dict) -> str:
    if policy["hash"] is None:
        return "none (embedding only)"
    return f"{esc(policy['name'])} v{esc(policy['version'])} <code>{esc(policy['hash'][:16])}</code>"


def esc(value: Any) -> str:
    """Every piece of text that reaches the page goes through here."""
    return html.escape("" if value is None else str(value), quote=True)


# --- plots ----------------------------------------------------------------------------------------


def new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def data_uri(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def plot_decisions(manifest: dict) -> str:
    """Rows per decision, and per category: review/block for moderation, labelled for topics."""
    figure = new_figure(10, 3.4)
    overall, per_category = figure.subplots(1, 2, width_ratios=[1, 2])
    decisions = manifest["decisions"]
    names = ["allow", "review", "block"]
    counts = [decisions.get(name, 0) for name in names]
    bars = overall.bar(names, counts, color=[DECISION_COLOURS[name] for name in names])
    overall.bar_label(bars)
    overall.set_title("rows per decision")
    overall.margins(y=0.15)
    categories = manifest["policy"]["categories"]
    labels = [category["name"] for category in categories]
    left = [0] * len(categories)
    for action in ("review", "block"):
        values = [manifest["flagged"].get(c["name"], {}).get(action, 0) for c in categories]
        per_category.barh(labels, values, left=left, color=DECISION_COLOURS[action], label=action)
        left = [a + b for a, b in zip(left, values, strict=True)]
    topic = [manifest["labels"].get(c["name"], 0) if c["kind"] == "topic" else 0 for c in categories]
    per_category.barh(labels, topic, color=TOPIC_COLOUR, label="labelled (topic)")
    for index, total in enumerate(a + b for a, b in zip(left, topic, strict=True)):
        per_category.text(total, index, f" {total}", va="center")
    per_category.invert_yaxis()
    per_category.xaxis.set_major_locator(MaxNLocator(integer=True))
    per_category.set_title("flagged rows per category")
    per_category.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncols=3, fontsize="small", frameon=False)
    per_category.margins(x=0.15)
    return data_uri(figure)


def log_ticks(top: float) -> list[float]:
    """1, 3, 10, 30, ... up to `top`: the counts a reader can place on a log axis."""
    ticks, decade = [], 1
    while decade <= top:
        ticks.extend(tick for tick in (decade, 3 * decade) if tick <= top)
        decade *= 10
    return ticks


@dataclass(frozen=True)
class HistogramAxes:
    """Score (0..1, linear) across, row count (log) up, inside fixed margins of a 500x280 SVG."""

    tallest: float
    width: int = 500
    height: int = 280
    left: int = 52
    right: int = 12
    top: int = 46
    bottom: int = 40

    @property
    def plot_width(self) -> int:
        return self.width - self.left - self.right

    @property
    def plot_height(self) -> int:
        return self.height - self.top - self.bottom

    def x(self, score: float) -> float:
        return self.left + score * self.plot_width

    def y(self, count: float) -> float:
        low, high = math.log10(0.7), math.log10(self.tallest * 3)
        return self.top + self.plot_height * (1 - (math.log10(max(count, 0.7)) - low) / (high - low))


def svg_bars(axes: HistogramAxes, edges: list[float], counts: list[int]) -> list[str]:
    return [
        f'<rect x="{axes.x(left):.1f}" y="{axes.y(count):.1f}" width="{axes.x(right) - axes.x(left):.1f}" '
        f'height="{axes.y(0.7) - axes.y(count):.1f}" fill="#90a4ae"/>'
        for left, right, count in zip(edges, edges[1:], counts, strict=False)
        if count
    ]


def svg_stairs(axes: HistogramAxes, edges: list[float], counts: list[float]) -> str:
    points = []
    for left, right, count in zip(edges, edges[1:], counts, strict=False):
        points += [f"{axes.x(left):.1f},{axes.y(count):.1f}", f"{axes.x(right):.1f},{axes.y(count):.1f}"]
    return f'<polyline points="{" ".join(points)}" fill="none" stroke="#37474f" stroke-width="1.2"/>'


def svg_frame(axes: HistogramAxes, title: str) -> list[str]:
    """Box, tick labels, axis labels and title."""
    bottom, middle = axes.top + axes.plot_height, axes.top + axes.plot_height / 2
    parts = [
        f'<rect x="{axes.left}" y="{axes.top}" width="{axes.plot_width}" height="{axes.plot_height}" '
        'fill="none" stroke="#999"/>',
        f'<text x="{axes.x(0.5)}" y="{axes.height - 6}" text-anchor="middle">score</text>',
        f'<text transform="translate(14 {middle}) rotate(-90)" text-anchor="middle">rows (log)</text>',
        f'<text x="{axes.width / 2}" y="18" text-anchor="middle" font-size="14">{esc(title)}</text>',
    ]
    parts += [
        f'<text x="{axes.x(tick):.1f}" y="{bottom + 16}" text-anchor="middle">{tick:g}</text>'
        for tick in (0, 0.2, 0.4, 0.6, 0.8, 1.0)
    ]
    parts += [
        f'<text x="{axes.left - 6}" y="{axes.y(tick) + 4:.1f}" text-anchor="end">{tick:g}</text>'
        for tick in log_ticks(axes.tallest * 3)
    ]
    return parts


def svg_legend(axes: HistogramAxes, entries: list[tuple[str, str]]) -> list[str]:
    parts = []
    for index, (colour, label) in enumerate(entries):
        left = axes.left + 8 + index * 118
        parts.append(f'<rect x="{left}" y="{axes.top - 16}" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{left + 14}" y="{axes.top - 7}" font-size="11">{esc(label)}</text>')
    return parts


def plot_scores(category: dict, edges: list[float], now: dict | None, before: dict | None) -> str:
    """One category's score histogram, its thresholds, and the previous run's shape for comparison.

    Drawn as SVG directly rather than with matplotlib: a policy has dozens of categories, and a
    matplotlib figure each cost 0.2 s, seconds added to every moderation run. Counts are on a
    log axis: most rows sit near 0, and the few near a threshold are the ones worth seeing.
    """
    n = now["n"] if now else 0
    axes = HistogramAxes(tallest=max([*(now["counts"] if now else []), *(before["counts"] if before else []), 1]))
    parts, legend = svg_frame(axes, f"{category['name']} ({category['kind']})"), []
    if n:
        parts += svg_bars(axes, edges, now["counts"])
        legend.append(("#90a4ae", f"this run (n={n})"))
    else:
        parts.append(
            f'<text x="{axes.x(0.5)}" y="{axes.top + axes.plot_height / 2}" text-anchor="middle">no scored rows</text>'
        )
    if before and before["n"] and n:
        parts.append(svg_stairs(axes, edges, [count * n / before["n"] for count in before["counts"]]))
        legend.append(("#37474f", "previous run (scaled)"))
    for action, key in (("review", "review_threshold"), ("block", "block_threshold")):
        if category.get(key) is not None:
            at = axes.x(category[key])
            parts.append(
                f'<line x1="{at:.1f}" x2="{at:.1f}" y1="{axes.top}" y2="{axes.top + axes.plot_height}" '
                f'stroke="{DECISION_COLOURS[action]}" stroke-dasharray="5,3"/>'
            )
            legend.append((DECISION_COLOURS[action], action))
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{axes.width}" height="{axes.height}" '
        f'font-family="sans-serif" font-size="12">{"".join(parts + svg_legend(axes, legend))}</svg>'
    )
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode()


def plot_errors(failed_by_code: dict[str, int]) -> str:
    figure = new_figure(6, 0.6 + 0.45 * max(1, len(failed_by_code)))
    axes = figure.subplots()
    codes = sorted(failed_by_code, key=failed_by_code.get, reverse=True)
    bars = axes.barh(codes, [failed_by_code[code] for code in codes], color=DECISION_COLOURS["block"])
    axes.bar_label(bars, padding=2)
    axes.invert_yaxis()
    axes.margins(x=0.15)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("failed rows")
    return data_uri(figure)


def plot_stages(timing: dict, rows_written: int) -> str:
    """Rows per second of each Ray Data stage and of the run end to end, wall time on each bar."""
    stages = [*timing["stages"], {"name": "end to end", "wall_s": timing["wall_s"], "rows": rows_written}]
    figure = new_figure(10, 0.8 + 0.6 * len(stages))
    axes = figure.subplots()
    names = ["\n".join(textwrap.wrap(stage["name"].replace("->", "→ "), 48)) for stage in stages]
    rates = [stage["rows"] / stage["wall_s"] if stage["wall_s"] else 0.0 for stage in stages]
    bars = axes.barh(names, rates, color=["#26a69a"] * (len(stages) - 1) + ["#455a64"])
    axes.bar_label(bars, [f" {s['wall_s']:.1f} s, {s['rows']} rows" for s in stages], padding=2, fontsize="small")
    axes.invert_yaxis()
    axes.margins(x=0.35)
    axes.set_xlabel("rows / s")
    return data_uri(figure)


# --- flagged rows ---------------------------------------------------------------------------------


def flagged_rows(table: Any, run_id: str, per_decision: int = MAX_THUMBNAILS) -> dict[str, dict]:
    """The run's blocked and review rows, highest score first: {decision: {total, rows}}."""
    table.checkout_latest()
    rows = (
        table.search()
        .where(f"run_id = {sql_literal(run_id)} AND decision IN ('block', 'review')")
        .select([name for name in FLAGGED_COLUMNS if name in table.schema.names])  # older tables: no thumbnail
        .limit(None)
        .to_arrow()
        .to_pylist()
    )
    grouped: dict[str, dict] = {}
    for decision in ("block", "review"):
        chosen = [row for row in rows if row["decision"] == decision]
        chosen.sort(key=lambda row: max((r["score"] for r in row["reasons"] or []), default=0.0), reverse=True)
        grouped[decision] = {"total": len(chosen), "rows": chosen[:per_decision]}
    return grouped


# --- HTML -----------------------------------------------------------------------------------------

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px; color: #212121; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { margin-top: 32px; border-bottom: 1px solid #ddd; }
.muted { color: #757575; font-size: 13px; }
.tiles { display: flex; flex-wrap: wrap; gap: 10px; margin: 16px 0; }
.tile { border: 1px solid #e0e0e0; border-radius: 6px; padding: 8px 14px; min-width: 90px; }
.tile b { display: block; font-size: 22px; } .tile span { color: #757575; font-size: 12px; }
.tile.block b { color: #e53935; } .tile.review b { color: #fb8c00; } .tile.allow b { color: #43a047; }
table { border-collapse: collapse; font-size: 13px; } td, th { padding: 3px 10px; text-align: left; }
tr:nth-child(even) td { background: #fafafa; } th { background: #eeeeee; }
.plots { display: flex; flex-wrap: wrap; gap: 8px; } img.plot { max-width: 100%; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(180px, 1fr)); gap: 10px; }
.card { border: 1px solid #e0e0e0; border-radius: 6px; padding: 6px; font-size: 12px; overflow-wrap: anywhere; }
.card.block { border-top: 4px solid #e53935; } .card.review { border-top: 4px solid #fb8c00; }
.card img, .card .none { width: 160px; height: 160px; object-fit: contain; display: block; margin: 0 auto 4px; }
.card .none { background: #f5f5f5; color: #757575; display: flex; align-items: center; justify-content: center;
  text-align: center; font-size: 11px; padding: 4px; box-sizing: border-box; }
.drifted { color: #e53935; font-weight: bold; } code { font-size: 12px; }
"""


def table_html(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{esc(cell)}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def tiles_html(manifest: dict) -> str:
    rows, decisions, timing = manifest["rows"], manifest["decisions"], manifest["timing"]
    tiles = [
        ("", rows["in"], "rows in"),
        ("", rows["ok"], "ok"),
        ("block" if rows["failed"] else "", rows["failed"], "failed"),
        ("allow", decisions.get("allow", 0), "allowed"),
        ("review", decisions.get("review", 0), "to review"),
        ("block", decisions.get("block", 0), "blocked"),
        ("", f"{timing['wall_s']:.1f} s", "wall time"),
        ("", f"{timing['rows_per_s']:.1f}", "rows / s"),
    ]
    cells = "".join(
        f'<div class="tile {kind}"><b>{esc(value)}</b><span>{esc(label)}</span></div>' for kind, value, label in tiles
    )
    return f'<div class="tiles">{cells}</div>'


def hash_list_label(spec: dict, flagged: dict) -> str:
    """One list of the policy: its settings, the sha256 of the contents matched against, rows it flagged."""
    matched = sum(flagged.get(f"hash:{spec['name']}", {}).values())
    dihedral = ", with rotations and mirrors" if spec["dihedral"] else ""
    return (
        f"<b>{esc(spec['name'])}</b> ({esc(spec['entries'])} entries, sha256 <code>{esc(spec['sha256'][:16])}</code>): "
        f"{esc(spec['action'])} within {esc(spec['max_distance'])} bits at quality ≥ {esc(spec['min_quality'])}"
        f"{dihedral}; {matched} rows matched"
    )


def run_info_html(manifest: dict) -> str:
    policy, model, files = manifest["policy"], manifest["model"], manifest["input"]
    dedup, version = manifest["dedup"], manifest["table_version"]
    info = [
        ("run id", f"<code>{esc(manifest['run_id'])}</code>"),
        ("table", f"<code>{esc(manifest['table_uri'])}</code> :: {esc(manifest['table'])}"),
        ("finished", esc(manifest["finished_at"])),
        (
            "table rows / version",
            f"{esc(manifest['rows']['table_rows'])} rows, version {esc(version['before'])} → {esc(version['after'])}",
        ),
        ("model", f"{esc(model['arch'])} ({esc(model['weights'])}, precision {esc(model['precision'])})"),
        ("policy", policy_label(policy)),
        *(("hash list", hash_list_label(spec, manifest["flagged"])) for spec in policy.get("hash_lists", [])),
        ("config hash", f"<code>{esc(manifest['config_hash'][:16])}</code>"),
        (
            "input files",
            f"{esc(files['files_total'])} ({len(files['processed'])} processed, "
            f"{len(files['skipped_already_committed'])} already in the table, "
            f"{len(files['claimed_elsewhere'])} claimed by a concurrent run)",
        ),
        (
            "dedup",
            f"{esc(dedup['rows_with_dup_of'])} rows marked duplicate in {esc(dedup['clusters'])} clusters, "
            f"{esc(dedup['duplicate_ids'])} repeated input ids",
        ),
    ]
    return table_html(["", ""], [[f"<b>{esc(k)}</b>", v] for k, v in info])


def drift_html(manifest: dict) -> str:
    drift = manifest.get("drift") or {}
    if not drift.get("previous_run_id"):
        return '<p class="muted">No previous run of this table to compare with.</p>'
    rows = []
    for name, item in drift["categories"].items():
        if item.get("wasserstein") is None:
            rows.append([esc(name), "—", "—", "—", "—", "no scores on one side"])
            continue
        status = '<span class="drifted">drifted</span>' if item["drifted"] else "stable"
        rows.append(
            [
                esc(name),
                f"{esc(item['n_before'])} → {esc(item['n_now'])}",
                f"{item['mean_before']:.3f} → {item['mean_now']:.3f}",
                f"{item['wasserstein']:.4f}",
                f"{item['js_distance']:.4f}",
                status,
            ]
        )
    note = (
        '<p class="drifted">The policy changed since the previous run: score changes are expected.</p>'
        if drift.get("policy_changed")
        else ""
    )
    return (
        f"<p>Compared with run <code>{esc(drift['previous_run_id'])}</code>. A category is flagged when its "
        f"score distribution moved by more than {esc(drift['threshold'])} (Wasserstein-1 distance on the "
        "histograms, in score units); the Jensen–Shannon distance is shown for shape changes.</p>"
        + note
        + table_html(["category", "scored rows", "mean score", "Wasserstein", "Jensen–Shannon", ""], rows)
    )


def image_type(data: bytes) -> str:
    """Stored thumbnails are WebP, thumbnails re-read from the input JPEG."""
    return "image/webp" if data[8:12] == b"WEBP" else "image/jpeg"


def card_html(row: dict, thumbnail: Thumbnail | None) -> str:
    if thumbnail and thumbnail.jpeg:
        encoded = base64.b64encode(thumbnail.jpeg).decode()
        source = f"data:{image_type(thumbnail.jpeg)};base64,{encoded}"
        picture = f'<img class="thumb" alt="{esc(row["id"])}" src="{source}">'
    else:
        picture = f'<div class="none">{esc(thumbnail.missing if thumbnail else "no image")}</div>'
    reasons = "<br>".join(
        f"<b>{esc(r['category'])}</b> {esc(r['action'])} {r['score']:.2f} ≥ {r['threshold']:.2f}"
        for r in row["reasons"] or []
    )
    labels = ", ".join(row["labels"] or [])
    text = row["text"] or ""
    source = row["source"] or ""
    return (
        f'<div class="card {esc(row["decision"])}" data-id="{esc(row["id"])}">{picture}'
        f"<div>{reasons or esc(row['decision'])}</div>"
        + (f'<div class="muted">labels: {esc(labels)}</div>' if labels else "")
        + (f"<div>“{esc(textwrap.shorten(text, 120))}”</div>" if text else "")
        + f'<div class="muted" title="{esc(source)}">{esc(source.rsplit("/", 1)[-1])}</div></div>'
    )


def grid_html(decision: str, group: dict, thumbnails: dict[str, Thumbnail]) -> str:
    if not group["total"]:
        return f'<p class="muted">No {esc(decision)} rows in this run.</p>'
    shown = len(group["rows"])
    note = f"{group['total']} rows" + (f", the {shown} with the highest scores shown" if shown < group["total"] else "")
    cards = "".join(card_html(row, thumbnails.get(row["id"])) for row in group["rows"])
    return f'<p class="muted">{esc(note)}</p><div class="grid" id="grid-{esc(decision)}">{cards}</div>'


def render_html(
    manifest: dict, previous: dict | None, flagged: dict[str, dict], thumbnails: dict[str, Thumbnail]
) -> str:
    """The page; `previous` is the previous run's manifest (for the histogram overlays) or None."""
    edges = manifest["scores"]["edges"]
    now = manifest["scores"]["categories"]
    before = (previous or {}).get("scores", {}).get("categories", {})
    if previous and previous.get("scores", {}).get("edges") != edges:
        before = {}
    histograms = "".join(
        f'<img class="plot" id="plot-scores-{esc(c["name"])}" alt="score histogram: {esc(c["name"])}" '
        f'src="{plot_scores(c, edges, now.get(c["name"]), before.get(c["name"]))}">'
        for c in manifest["policy"]["categories"]
    )
    failed = manifest["failed_by_code"]
    errors = (
        f'<img class="plot" id="plot-errors" alt="failed rows by error code" src="{plot_errors(failed)}">'
        + table_html(["error code", "rows"], [[esc(code), esc(count)] for code, count in sorted(failed.items())])
        if failed
        else '<p class="muted">No failed rows.</p>'
    )
    stage_rows = [
        [
            esc(s["name"]),
            f"{s['wall_s']:.2f}",
            esc(s["rows"]),
            f"{s['rows_per_s']:.1f}",
            f"{s['task_s']:.2f}",
            f"{s['cpu_s']:.2f}",
        ]
        for s in manifest["timing"]["stages"]
    ]
    stages = (
        table_html(["stage", "wall s", "rows out", "rows / s", "task s (sum)", "cpu s (sum)"], stage_rows)
        + '<p class="muted">Ray Data operators, source first: wall s runs from the first task\'s start to the last '
        "one's end; task and cpu s are summed over tasks. The first operator emits read tasks (one per row "
        "group), not rows. End to end includes planning, Ray start-up and the table commit.</p>"
        if stage_rows
        else '<p class="muted">No per-stage stats were recorded for this run.</p>'
    )
    throughput = plot_stages(manifest["timing"], manifest["rows"]["written"])
    title = f"clipline run {manifest['run_id']}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title><style>{STYLE}</style></head>
<body>
<h1>{esc(title)}</h1>
<div class="muted">{esc(manifest["table_uri"])} :: {esc(manifest["table"])} · {esc(manifest["finished_at"])}</div>
{tiles_html(manifest)}
<section id="decisions"><h2>Decisions</h2>
<img class="plot" id="plot-decisions" alt="decisions per category" src="{plot_decisions(manifest)}"></section>
<section id="scores"><h2>Score distributions</h2>
<p class="muted">Dashed lines: the policy's review and block thresholds. Outline: the previous run.</p>
<div class="plots">{histograms}</div></section>
<section id="drift"><h2>Drift since the previous run</h2>{drift_html(manifest)}</section>
<section id="blocked"><h2>Blocked</h2>{grid_html("block", flagged["block"], thumbnails)}</section>
<section id="review"><h2>Sent to review</h2>{grid_html("review", flagged["review"], thumbnails)}</section>
<section id="errors"><h2>Errors</h2>{errors}</section>
<section id="throughput"><h2>Throughput</h2>
<img class="plot" id="plot-throughput" alt="throughput per stage" src="{throughput}">
{stages}</section>
<section id="run"><h2>Run</h2>{run_info_html(manifest)}</section>
</body></html>
"""


def build_report(
    table: Any,
    manifest: dict,
    previous: dict | None,
    storage: StorageConfig | None = None,
    max_thumbnails: int = MAX_THUMBNAILS,
) -> str:
    """Query the run's flagged rows, take their stored thumbnails (re-read the rest from the input), render."""
    source = SourceConfig.model_validate(manifest["config"]["source"])
    flagged = flagged_rows(table, manifest["run_id"], max_thumbnails)
    rows = flagged["block"]["rows"] + flagged["review"]["rows"]
    stored = {row["id"]: Thumbnail(jpeg=row["thumbnail"]) for row in rows if row.get("thumbnail")}
    thumbnails = stored | load_thumbnails([row for row in rows if row["id"] not in stored], source, storage)
    return render_html(manifest, previous, flagged, thumbnails)
