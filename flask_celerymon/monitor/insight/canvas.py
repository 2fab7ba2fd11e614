"""The canvas a task belongs to (chain, group, chord) as a graph, from parent/child links.

Celery's events give each task its ``root_id`` and ``parent_id``; the monitor adds the
``children`` it saw (from the window and the history store). From any task this walks up to
the root, then down through the children, breadth first: ``depth`` is the distance from the
root. Tasks that name the root without being anyone's child (the other header tasks of a
chord) come from the insight engine's record of canvas members. Pure function over a ``get_task(uuid) -> task dict | None`` callable.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

#: Nodes drawn at most (a huge fan-out is cut, and ``truncated`` says so).
MAX_NODES = 200
FINAL = frozenset({"SUCCESS", "FAILURE", "REVOKED", "REJECTED", "IGNORED"})


def canvas_graph(
    get_task: Callable[[str], Mapping[str, Any] | None],
    uuid: str,
    max_nodes: int = MAX_NODES,
    members: Callable[[str], list[str]] | None = None,
) -> dict[str, Any] | None:
    """``{"root", "task", "nodes": [{"id", "name", "state", "parent", "depth", "known"}],
    "edges": [[parent, child]], "truncated", "final"}`` or None when ``uuid`` is unknown.

    ``known`` is False for a task only named by another (a child not seen yet); ``final`` is
    True when every known node has finished. ``members(root)`` lists the other tasks seen
    with that root id: those not reached through children (a chord's other header tasks)
    hang from their parent when it is drawn, else from the root.
    """
    start = get_task(uuid)
    if start is None:
        return None
    cache: dict[str, Mapping[str, Any] | None] = {uuid: start}

    def get(i: str) -> Mapping[str, Any] | None:
        if i not in cache:
            cache[i] = get_task(i)
        return cache[i]

    root, seen = uuid, {uuid}
    for _ in range(100):  # climb the parents
        parent = (get(root) or {}).get("parent_id")
        if not parent or parent in seen:
            break
        seen.add(parent)
        root = parent
        if get(parent) is None:
            break
    rid = start.get("root_id")
    if rid and rid not in seen and get(rid) is not None and root != rid:
        root = rid
    nodes: dict[str, dict[str, Any]] = {}
    edges: list[list[str]] = []
    queue: deque[tuple[str, str | None, int]] = deque([(root, None, 0)])
    truncated = False
    while queue:
        node, parent, depth = queue.popleft()
        if node in nodes:
            continue
        if len(nodes) >= max_nodes:
            truncated = True
            break
        t = get(node)
        nodes[node] = {
            "id": node,
            "name": (t or {}).get("name") or "",
            "state": (t or {}).get("state") or "",
            "parent": parent,
            "depth": depth,
            "known": t is not None,
        }
        if parent is not None:
            edges.append([parent, node])
        for child in (t or {}).get("children") or ():
            if child not in nodes:
                queue.append((child, node, depth + 1))
    for m in members(root) if members is not None else ():
        if m in nodes:
            continue
        if len(nodes) >= max_nodes:
            truncated = True
            break
        t = get(m)
        parent = (t or {}).get("parent_id")
        parent = parent if parent in nodes else root
        nodes[m] = {"id": m, "name": (t or {}).get("name") or "", "state": (t or {}).get(
            "state") or "", "parent": parent, "depth": nodes[parent]["depth"] + 1,
            "known": t is not None}  # fmt: skip
        edges.append([parent, m])
    if uuid not in nodes and not truncated:  # reached no further than a missing parent
        nodes[uuid] = {"id": uuid, "name": start.get("name") or "", "state": start.get("state")
                       or "", "parent": None, "depth": 0, "known": True}  # fmt: skip
    known = [n for n in nodes.values() if n["known"]]
    return {
        "root": root,
        "task": uuid,
        "nodes": list(nodes.values()),
        "edges": edges,
        "truncated": truncated,
        "final": all(n["state"] in FINAL for n in known),
    }


def layout(graph: Mapping[str, Any], dx: int = 210, dy: int = 46) -> dict[str, Any]:
    """Positions for drawing: each node gets ``x``/``y`` (depth columns, rows in order);
    returns ``{"nodes", "edges": [(x1, y1, x2, y2)], "width", "height"}``."""
    rows: dict[int, int] = {}
    pos: dict[str, tuple[int, int]] = {}
    out = []
    for n in graph["nodes"]:
        d = n["depth"]
        r = rows.get(d, 0)
        rows[d] = r + 1
        x, y = 8 + d * dx, 8 + r * dy
        pos[n["id"]] = (x, y)
        out.append({**n, "x": x, "y": y})
    lines = [
        (pos[a][0] + dx - 30, pos[a][1] + 16, pos[b][0], pos[b][1] + 16)
        for a, b in graph["edges"]
        if a in pos and b in pos
    ]
    width = 8 + (max(rows) + 1) * dx if rows else dx
    height = 16 + max(rows.values(), default=1) * dy
    return {"nodes": out, "edges": lines, "width": width, "height": height}
