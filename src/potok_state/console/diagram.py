"""A type's state machine as an SVG diagram (docs/console.md, "Diagram").

Statuses are boxes with the number of states in each now; transitions are
arrows; a dot points at the initial statuses (a virtual start vertex, so the
layout puts it on top); final statuses have a double border. Statuses that hold
states but are not in the table (a type without one accepts any status) are
dashed. The layout is grandalf's layered (Sugiyama) layout, pure Python; two
transitions between the same pair of statuses are drawn apart.

The SVG carries one constant <style> block (light and dark colours), allowed by
its own Content-Security-Policy through the block's hash.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from xml.sax.saxutils import escape

from grandalf.graphs import Edge, Graph, Vertex
from grandalf.layouts import SugiyamaLayout
from grandalf.routing import route_with_lines

from potok_state.states.machine_schemas import StateMachineView

START = "\x00start"  # never a status name (statuses are [a-z][a-z0-9_]*)
NODE_HEIGHT = 52
START_SIZE = 14
MARGIN = 24
LAYER_SPACE = 56
SIBLING_SPACE = 36
COMPONENT_SPACE = 48
PARALLEL_OFFSET = 7.0

STYLE = """
svg{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1b1f24}
.box{fill:#f6f8fa;stroke:#57606a;stroke-width:1.5}
.final .box{stroke-width:1.5}
.final .inner{fill:none;stroke:#57606a;stroke-width:1.5}
.extra .box{stroke-dasharray:5 4}
.name{font-size:14px;font-weight:600;fill:#1b1f24}
.count{font-size:13px;fill:#424a53}
.edge{fill:none;stroke:#57606a;stroke-width:1.5}
.arrow{fill:#57606a}
.start{fill:#1b1f24}
@media (prefers-color-scheme:dark){
svg{color:#e6edf3}
.box{fill:#161b22;stroke:#8b949e}
.final .inner{stroke:#8b949e}
.name{fill:#e6edf3}
.count{fill:#c9d1d9}
.edge{stroke:#8b949e}
.arrow{fill:#8b949e}
.start{fill:#e6edf3}
}
""".strip()

STYLE_HASH = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
CONTENT_SECURITY_POLICY = f"default-src 'none'; style-src 'sha256-{STYLE_HASH}'"

Point = tuple[float, float]


@dataclass(slots=True)
class _Box:
    """grandalf's view of a vertex: its size in, its centre out."""

    w: float
    h: float
    xy: Point = (0.0, 0.0)


@dataclass(slots=True)
class _Route:
    """grandalf's view of an edge: the points it is drawn through."""

    points: list[Point] = field(default_factory=list)

    def setpath(self, points: list[Point]) -> None:
        self.points = [(float(x), float(y)) for x, y in points]


@dataclass(frozen=True, slots=True)
class Diagram:
    svg: str
    statuses: tuple[str, ...]


def _width(name: str) -> float:
    return max(96.0, 8.2 * len(name) + 36)


def machine_diagram(
    entity: str, machine: StateMachineView | None, counts: Mapping[str, int]
) -> Diagram:
    statuses = list(machine.statuses) if machine is not None else []
    extra = sorted(status for status in counts if status not in statuses)
    shown = [*statuses, *extra]
    vertices = {status: Vertex(status) for status in shown}
    for status, vertex in vertices.items():
        vertex.view = _Box(_width(status), NODE_HEIGHT)
    edges: list[Edge] = []
    pairs: set[tuple[str, str]] = set()
    if machine is not None:
        vertices[START] = Vertex(START)
        vertices[START].view = _Box(START_SIZE, START_SIZE)
        for status in machine.initial:
            edges.append(Edge(vertices[START], vertices[status]))
        for source, targets in machine.transitions.items():
            for target in targets:
                if target != source:
                    pairs.add((source, target))
                    edges.append(Edge(vertices[source], vertices[target]))
    for edge in edges:
        edge.view = _Route()
    _layout(Graph(list(vertices.values()), edges))

    final = set(machine.final) if machine is not None else set()
    parts: list[str] = []
    for edge in edges:
        source, target = edge.v[0].data, edge.v[1].data
        points = edge.view.points or [edge.v[0].view.xy, edge.v[1].view.xy]
        if (target, source) in pairs:
            points = _offset(points, PARALLEL_OFFSET)
        if source == START:
            kind, label, origin = "edge initial", f"initial status: {target}", ""
        else:
            kind, label = "edge", f"transition from {source} to {target}"
            origin = f' data-from="{escape(source)}"'
        parts.append(
            f'<path class="{kind}"{origin} data-to="{escape(target)}" d="{_path(points)}" '
            f'marker-end="url(#arrow)"><title>{escape(label)}</title></path>'
        )
    for status in shown:
        parts.append(
            _node(
                status,
                vertices[status].view,
                counts.get(status, 0),
                status in final,
                status in extra,
            )
        )
    if machine is not None:
        x, y = vertices[START].view.xy
        parts.append(
            f'<circle class="start" cx="{x:.1f}" cy="{y:.1f}" r="{START_SIZE / 2:.1f}">'
            "<title>start</title></circle>"
        )
    return Diagram(_document(entity, shown, counts, parts, vertices, edges), tuple(shown))


def _layout(graph: Graph) -> None:
    """Lay out each connected component with grandalf, then set them side by
    side, every coordinate moved so the drawing starts at the margin."""
    left = float(MARGIN)
    # The machine first (it holds the start vertex), then statuses outside it.
    components = sorted(graph.C, key=lambda c: not any(v.data == START for v in c.sV))
    for component in components:
        layout = SugiyamaLayout(component)
        layout.xspace = SIBLING_SPACE
        layout.yspace = LAYER_SPACE
        layout.route_edge = route_with_lines
        roots = [v for v in component.sV if v.data == START]
        layout.init_all(roots=roots or None)
        layout.draw()
        boxes = [vertex.view for vertex in component.sV]
        min_x = min(box.xy[0] - box.w / 2 for box in boxes)
        min_y = min(box.xy[1] - box.h / 2 for box in boxes)
        dx, dy = left - min_x, MARGIN - min_y
        for box in boxes:
            box.xy = (box.xy[0] + dx, box.xy[1] + dy)
        for edge in component.sE:
            edge.view.points = [(x + dx, y + dy) for x, y in edge.view.points]
        left = max(box.xy[0] + box.w / 2 for box in boxes) + COMPONENT_SPACE


def _offset(points: Sequence[Point], distance: float) -> list[Point]:
    """The polyline moved sideways (to the right of its direction), so two
    opposite transitions between the same statuses do not cover each other."""
    (x0, y0), (x1, y1) = points[0], points[-1]
    length = max(((x1 - x0) ** 2 + (y1 - y0) ** 2) ** 0.5, 1e-9)
    nx, ny = -(y1 - y0) / length * distance, (x1 - x0) / length * distance
    return [(x + nx, y + ny) for x, y in points]


def _path(points: Sequence[Point]) -> str:
    first, *rest = points
    return f"M{first[0]:.1f},{first[1]:.1f} " + " ".join(f"L{x:.1f},{y:.1f}" for x, y in rest)


def _node(status: str, box: _Box, count: int, final: bool, extra: bool) -> str:
    x, y = box.xy[0] - box.w / 2, box.xy[1] - box.h / 2
    classes = "status" + (" final" if final else "") + (" extra" if extra else "")
    noun = "state" if count == 1 else "states"
    notes = (", final" if final else "") + (", not in the transition table" if extra else "")
    inner = (
        f'<rect class="inner" x="{x + 4:.1f}" y="{y + 4:.1f}" width="{box.w - 8:.1f}" '
        f'height="{box.h - 8:.1f}" rx="6"/>'
        if final
        else ""
    )
    name = escape(status)
    return (
        f'<g class="{classes}" data-status="{name}" data-count="{count}">'
        f"<title>{name}: {count} {noun}{notes}</title>"
        f'<rect class="box" x="{x:.1f}" y="{y:.1f}" width="{box.w:.1f}" height="{box.h:.1f}" '
        f'rx="9"/>{inner}'
        f'<text class="name" x="{box.xy[0]:.1f}" y="{box.xy[1] - 4:.1f}" '
        f'text-anchor="middle">{name}</text>'
        f'<text class="count" x="{box.xy[0]:.1f}" y="{box.xy[1] + 14:.1f}" '
        f'text-anchor="middle">{count}</text></g>'
    )


def _document(
    entity: str,
    shown: Sequence[str],
    counts: Mapping[str, int],
    parts: Sequence[str],
    vertices: Mapping[str, Vertex],
    edges: Sequence[Edge],
) -> str:
    boxes = [vertex.view for vertex in vertices.values()]
    xs = [box.xy[0] + box.w / 2 for box in boxes] + [
        x for edge in edges for x, _ in edge.view.points
    ]
    ys = [box.xy[1] + box.h / 2 for box in boxes] + [
        y for edge in edges for _, y in edge.view.points
    ]
    width = (max(xs) if xs else 0) + MARGIN
    height = (max(ys) if ys else 0) + MARGIN
    summary = ", ".join(f"{status} {counts.get(status, 0)}" for status in shown) or "no statuses"
    name = escape(entity)
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" role="img" '
        f'aria-labelledby="title desc" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" data-entity="{name}">'
        f'<title id="title">State machine of {name}</title>'
        f'<desc id="desc">States per status: {escape(summary)}.</desc>'
        f"<style>{STYLE}</style>"
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="8" '
        'markerHeight="8" orient="auto-start-reverse"><path class="arrow" d="M0,0 L10,5 L0,10 z"/>'
        "</marker></defs>" + "".join(parts) + "</svg>"
    )
