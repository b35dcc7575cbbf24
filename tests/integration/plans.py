"""PostgreSQL query plans as the ledger's statements get them: `explained` EXPLAINs each statement as an
engine sends it (its parameters bound), `Plan` reads the scans out of the plan tree. Shared by the plan
tests at scale (test_query_plans.py) and mid-run (test_query_plans_midrun.py)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, event

_DML = re.compile(r"^\s*(SELECT|UPDATE|INSERT|DELETE|WITH)\b", re.I)
# The index names of each table the plans are read for (a scan of one names the index, not the table).
INDEX_PREFIXES = {
    "jobs": ("ix_jobs_", "jobs_pkey", "uq_jobs_"),
    "results": ("ix_results_", "results_pkey", "uq_results_"),
}


@dataclass(frozen=True)
class Plan:
    sql: str
    tree: dict[str, Any]

    def nodes(self) -> Iterator[dict[str, Any]]:
        stack = [self.tree]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.get("Plans", []))

    def scans_of_jobs(self) -> list[str]:
        """The scan nodes reading `jobs`: their type and index."""
        return [
            f"{node['Node Type']}:{node.get('Index Name', '')}"
            for node in self.nodes()
            if "Scan" in node["Node Type"]
            and (node.get("Relation Name") == "jobs" or node.get("Index Name", "").startswith(INDEX_PREFIXES["jobs"]))
        ]

    def scans(self, node: dict[str, Any] | None = None, *, tables: tuple[str, ...] = ("jobs", "results")) -> list[str]:
        """`type:relation-or-index` of the scans of `tables` under `node` (the whole plan by default)."""
        found = []
        stack = [node or self.tree]
        while stack:
            current = stack.pop()
            stack.extend(current.get("Plans", []))
            if "Scan" not in current["Node Type"]:
                continue
            relation, index = current.get("Relation Name", ""), current.get("Index Name", "")
            if relation in tables or any(index.startswith(INDEX_PREFIXES[t]) for t in tables):
                found.append(f"{current['Node Type']}:{index or relation}")
        return found


@contextmanager
def explained(engine: Engine, *, about: re.Pattern[str] | None = None) -> Iterator[list[Plan]]:
    """EXPLAIN every single-parameter-set statement the engine sends (those matching `about`, when given),
    as it is sent."""
    plans: list[Plan] = []

    def explain(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if executemany or not _DML.match(statement) or (about is not None and not about.search(statement)):
            return
        with conn.connection.dbapi_connection.cursor() as probe:
            probe.execute("EXPLAIN (FORMAT JSON) " + statement, parameters)
            plans.append(Plan(statement, probe.fetchone()[0][0]["Plan"]))

    event.listen(engine, "before_cursor_execute", explain)
    try:
        yield plans
    finally:
        event.remove(engine, "before_cursor_execute", explain)
