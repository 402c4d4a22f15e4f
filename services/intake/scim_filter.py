"""SCIM filters (RFC 7644 §3.4.2.2) on Users as SQL over intake's `people` table.

`scim2-models` parses the filter (`ScimFilter.ast`); this module turns the tree into a
WHERE clause with numbered parameters, so a search over 254,000 people is one indexed
or scanned statement instead of a Python loop. Pure: it builds text, it runs nothing.

Attributes (case-insensitive names, the enterprise URN optional where it applies):
`id`, `userName` (both the person id), `externalId`, `displayName`, `name.formatted`,
`emails`/`emails.value`, `department`, `organization` (both the unit), `manager.value`,
`groups`/`groups.value` (roles), `active` and `meta.lastModified`. `id`, `externalId`
and `manager.value` compare exactly (caseExact true); `userName` and the other strings
case-insensitively, as RFC 7643 declares them (caseExact false, §4.1.1).

Indexes (intake migration 0010): `lower(...)` of the person id, name, e-mail and unit,
with `text_pattern_ops`, serve `eq` and `sw` on userName, displayName, emails and
department/organization; `manager_id` serves `manager.value eq`. `co` and `ew` (and
`gt`/`lt` on strings) scan `people`: they are searches, not the provisioning lookups.
Anything else is `invalidFilter`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from scim2_models import InvalidFilterException
from scim2_models.path.expressions import (
    AttrPath,
    CompareOperator,
    Comparison,
    FilterNode,
    LogicalExpr,
    LogicalOperator,
    Not,
    Present,
    ValuePath,
)

from services.domain.directory_sync import ENTERPRISE_SCHEMA, USER_SCHEMA

# attribute path (lower case, without URN) -> (SQL expression, kind)
_COLUMNS: dict[str, tuple[str, str]] = {
    "id": ("p.person_id", "id"),
    "username": ("p.person_id", "text"),
    "externalid": ("s.external_id", "id"),
    "displayname": ("p.name", "text"),
    "name.formatted": ("p.name", "text"),
    "emails": ("p.email", "text"),
    "emails.value": ("p.email", "text"),
    "department": ("p.unit", "text"),
    "organization": ("p.unit", "text"),
    "manager.value": ("p.manager_id", "id"),
    "manager": ("p.manager_id", "id"),
    "groups": ("p.roles", "roles"),
    "groups.value": ("p.roles", "roles"),
    "active": ("TRUE", "bool"),
    "meta.lastmodified": ("p.updated_at", "time"),
}
_URNS = (USER_SCHEMA.lower(), ENTERPRISE_SCHEMA.lower())
_SQL_OPS = {"eq": "=", "ne": "<>", "gt": ">", "ge": ">=", "lt": "<", "le": "<="}


@dataclass
class SqlFilter:
    """A WHERE clause and its parameters ($1.. in order)."""

    params: list[Any] = field(default_factory=list)

    def bind(self, value: Any) -> str:
        self.params.append(value)
        return f"${len(self.params)}"


def user_filter_sql(node: FilterNode | None, params: SqlFilter) -> str:
    """The WHERE condition of a Users filter (`TRUE` without a filter)."""
    if node is None:
        return "TRUE"
    return _node(node, params, prefix=None)


def _node(node: FilterNode, params: SqlFilter, prefix: str | None) -> str:
    if isinstance(node, LogicalExpr):
        joiner = " AND " if node.op == LogicalOperator.and_ else " OR "
        return "(" + joiner.join(_node(t, params, prefix) for t in node.terms) + ")"
    if isinstance(node, Not):
        return f"(NOT coalesce({_node(node.expr, params, prefix)}, FALSE))"
    if isinstance(node, ValuePath):
        name = _name(node.attr_path)
        if name not in ("emails", "groups"):
            raise InvalidFilterException(detail=f"{node.attr_path} cannot be filtered here")
        return _node(node.val_filter, params, name)
    if isinstance(node, Present):
        column, kind = _column(node.attr_path, prefix)
        if kind == "roles":
            return f"(cardinality({column}) > 0)"
        return f"({column} IS NOT NULL)" if kind != "bool" else "TRUE"
    if isinstance(node, Comparison):
        return _comparison(node, params, prefix)
    raise InvalidFilterException(detail="unsupported filter expression")


def _name(path: AttrPath) -> str:
    if path.uri is not None and path.uri.lower() not in _URNS:
        raise InvalidFilterException(detail=f"unknown schema {path.uri}")
    return path.attr.lower() + (f".{path.sub_attr.lower()}" if path.sub_attr else "")


def _column(path: AttrPath, prefix: str | None) -> tuple[str, str]:
    name = _name(path)
    if prefix is not None:
        # inside emails[...] or groups[...]: value, and type/primary/display as constants
        if name in ("type", "primary", "display"):
            return {
                ("emails", "type"): ("'work'", "text"),
                ("emails", "primary"): ("TRUE", "bool"),
                ("emails", "display"): ("p.email", "text"),
                ("groups", "display"): ("p.roles", "roles"),
                ("groups", "type"): ("'direct'", "text"),
            }.get((prefix, name), ("NULL", "text"))
        name = f"{prefix}.{name}"
    found = _COLUMNS.get(name)
    if found is None:
        raise InvalidFilterException(detail=f"{path} cannot be filtered on")
    return found


def _like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _comparison(node: Comparison, params: SqlFilter, prefix: str | None) -> str:
    column, kind = _column(node.attr_path, prefix)
    op = node.op.value
    value = node.value
    if kind == "bool":
        if op not in ("eq", "ne") or not isinstance(value, bool):
            raise InvalidFilterException(detail=f"{node.attr_path} compares with eq or ne true")
        return f"({column} {'=' if op == 'eq' else '<>'} {params.bind(value)}::boolean)"
    if kind == "time":
        if op not in _SQL_OPS or not isinstance(value, str):
            raise InvalidFilterException(detail=f"{node.attr_path} compares with a dateTime")
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as exc:
            raise InvalidFilterException(detail=f"{value!r} is not a dateTime") from exc
        return f"({column} {_SQL_OPS[op]} {params.bind(moment)})"
    if not isinstance(value, str):
        raise InvalidFilterException(detail=f"{node.attr_path} compares with a string")
    if kind == "roles":
        if op == "eq":
            return f"({params.bind(value)} = ANY({column}))"
        if op == "ne":
            return f"(NOT {params.bind(value)} = ANY({column}))"
        raise InvalidFilterException(detail="groups compare with eq or ne")
    exact = kind == "id"
    left = column if exact else f"lower({column})"
    right = value if exact else value.lower()
    if op in _SQL_OPS:
        return f"({left} {_SQL_OPS[op]} {params.bind(right)})"
    pattern = {
        CompareOperator.co: f"%{_like(right)}%",
        CompareOperator.sw: f"{_like(right)}%",
        CompareOperator.ew: f"%{_like(right)}",
    }[node.op]
    return f"({left} LIKE {params.bind(pattern)})"
