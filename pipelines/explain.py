"""Explain a profile: why each identifier belongs to it, as the chain of edges from the one asked about.

A profile holds at most ``identity.max_component_size`` identifiers, so its edges are collected to the
driver and walked breadth-first: the path to each identifier is a shortest chain of evidence.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipelines.normalize import e164


@dataclass
class Link:
    identifier: str
    parent: str | None
    rule: str | None = None
    source_table: str | None = None
    source_record: str | None = None
    first_seen: Any = None
    evidence_count: int | None = None
    depth: int = 0
    score: float | None = None


@dataclass
class Explanation:
    identifier: str
    profile_id: str | None
    status: str  # "resolved", or why not: "unknown", "oversized_component"
    profile: dict[str, Any] = field(default_factory=dict)
    links: list[Link] = field(default_factory=list)
    cut_edges: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)


def normalize_identifier(text: str, normalizers: dict[str, str], default_region: str) -> str:
    """``type:value`` with the value normalised like the pipeline does (``email:Ann@X.com`` -> lower)."""
    if ":" not in text:
        raise ValueError(f"expected type:value, e.g. email:ann@example.com; got {text!r}")
    id_type, value = text.split(":", 1)
    how, value = normalizers.get(id_type, "trim"), value.strip()
    if how in ("lower", "email"):
        value = "".join(value.split()).lower() if how == "email" else value.lower()
    elif how == "phone":
        value = e164(value, default_region) or value
    return f"{id_type}:{value}"


def _paths(start: str, members: set[str], edges: list[dict[str, Any]]) -> list[Link]:
    adjacent: dict[str, list[tuple[str, dict[str, Any]]]] = {m: [] for m in members}
    for e in sorted(edges, key=lambda e: (str(e["first_seen"]), e["src"], e["dst"])):
        if e["src"] in members and e["dst"] in members:
            adjacent[e["src"]].append((e["dst"], e))
            adjacent[e["dst"]].append((e["src"], e))
    links = {start: Link(start, None)}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for other, e in adjacent[node]:
            if other not in links:
                links[other] = Link(
                    other,
                    node,
                    e["rule"],
                    e["source_table"],
                    e["source_record"],
                    e["first_seen"],
                    e["evidence_count"],
                    links[node].depth + 1,
                    e.get("score"),
                )
                queue.append(other)
    return list(links.values())


def explain(
    identifier: str,
    graph: DataFrame,
    edges: DataFrame,
    profiles: DataFrame | None = None,
    cut_edges: DataFrame | None = None,
    merges: DataFrame | None = None,
    oversized: DataFrame | None = None,
) -> Explanation:
    """Everything that ties ``identifier`` (already normalised) to its profile."""
    hit = graph.filter(F.col("identifier") == identifier).select("profile_id").collect()
    if not hit:
        if (
            oversized is not None
            and oversized.filter(F.array_contains("most_connected_identifiers", identifier)).limit(1).count()
        ):
            return Explanation(identifier, None, "oversized_component")
        return Explanation(identifier, None, "unknown")
    pid = hit[0][0]
    members = {r[0] for r in graph.filter(F.col("profile_id") == pid).select("identifier").collect()}
    touching = edges.filter(F.col("src").isin(list(members)) | F.col("dst").isin(list(members)))
    result = Explanation(
        identifier,
        pid,
        "resolved",
        links=_paths(identifier, members, [r.asDict() for r in touching.collect()]),
    )
    if profiles is not None:
        row = profiles.filter(F.col("profile_id") == pid).limit(1).collect()
        result.profile = row[0].asDict() if row else {}
    if cut_edges is not None:
        result.cut_edges = [
            r.asDict()
            for r in cut_edges.filter(
                F.col("src").isin(list(members)) | F.col("dst").isin(list(members))
            ).collect()
        ]
    if merges is not None:
        result.history = [
            r.asDict()
            for r in merges.filter((F.col("into_profile_id") == pid) | (F.col("from_profile_id") == pid))
            .orderBy("at")
            .collect()
        ]
    return result


def render(ex: Explanation) -> str:
    """A readable tree: each identifier under the one it was linked through, with the evidence."""
    if ex.profile_id is None:
        why = {
            "unknown": "no profile holds it (never seen, blocklisted, or not yet resolved)",
            "oversized_component": "it is in a component above the size bound (quarantine.identity_components)",
        }[ex.status]
        return f"{ex.identifier}: {why}"
    p = ex.profile
    name = f"{p.get('first_name') or ''} {p.get('last_name') or ''}".strip()
    lines = [
        f"profile {ex.profile_id}" + (f": {name}" if name else ""),
        f"  email {p.get('email')}, phone {p.get('phone')}, {p.get('order_count', 0)} orders, "
        f"{p.get('event_count', 0)} events, {len(ex.links)} identifiers"
        if p
        else f"  {len(ex.links)} identifiers",
        "",
    ]
    children: dict[str | None, list[Link]] = {}
    for link in ex.links:
        children.setdefault(link.parent, []).append(link)

    def walk(node: Link, prefix: str) -> None:
        kids = sorted(children.get(node.identifier, []), key=lambda k: k.identifier)
        for i, k in enumerate(kids):
            last = i == len(kids) - 1
            seen = str(k.first_seen)[:19] if k.first_seen is not None else "?"
            lines.append(
                f"{prefix}{'└─' if last else '├─'} {k.identifier}   via {k.rule} ({k.source_record}, first seen {seen}, "
                f"{k.evidence_count} record{'s' if k.evidence_count != 1 else ''}"
                + (f", score {k.score:.4f})" if k.score is not None and k.score < 1 else ")")
            )
            walk(k, prefix + ("   " if last else "│  "))

    root = next(link for link in ex.links if link.parent is None)
    lines.append(root.identifier)
    walk(root, "")
    for c in ex.cut_edges:
        lines.append(f"cut: {c['src']} -- {c['dst']} ({c['rule']}, {c['source_record']}): {c['reason']}")
    for h in ex.history:
        lines.append(
            f"{h['event']}: {h['from_profile_id']} -> {h['into_profile_id']} at {str(h['at'])[:19]}"
            + (
                f" by {h['edge_src']} -- {h['edge_dst']} ({h['edge_rule']}, {h['edge_source_record']})"
                if h.get("edge_src")
                else ""
            )
        )
    return "\n".join(lines)
