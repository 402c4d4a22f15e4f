"""The triage and escalation policy file: categories, severities, chains, conflicts.

Durations are written `30s`, `5m`, `1h`, `7d` (or `5y`, 365 days a year) and held as
seconds.

`conflicts` (docs/conflicts.md):

- `exclude`: the rules on for every category (default: all of them; `accused`,
  `accused_management_chain` and `accused_reports` can never be left out);
- `categories: {<category>: {exclude: [...]}}`: rules turned on for one category in
  addition (a category can add rules, never remove one); `rules_for(category)`;
- `independent_roles`: managers above the accused holding one of these stay eligible,
  and they are the only chain of a conflict-unresolved report;
- `reassign_roles`: who may order a reassignment (default `[chief_ethics_officer]`).

Keys added later are written out only when set (`model_dump`), so a policy file that
does not use them records, and compares, exactly as before.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdy])\s*$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "y": 365 * 86400}


def parse_duration(value: object) -> int:
    """Seconds in a duration like `30s`, `5m`, `1h` or `7d`."""
    if isinstance(value, bool):
        raise ValueError("a duration is written like 30s, 5m, 1h or 7d")
    if isinstance(value, int) and value > 0:
        return value
    match = _DURATION.match(str(value))
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"{value!r} is not a duration like 30s, 5m, 1h or 7d")
    return int(match.group(1)) * _UNIT[match.group(2)]


Duration = Annotated[int, BeforeValidator(parse_duration)]
CONFLICT_RULES = (
    "accused",
    "accused_management_chain",
    "named_in_report",
    "reporter",
    "accused_reports",
)
"""The conflict rules a policy may turn on, in the order a person's first rule is chosen."""
DEFAULT_EXCLUDE = CONFLICT_RULES
"""`conflicts.exclude` when the policy is silent: every rule."""
MANDATORY_EXCLUDE = ("accused", "accused_management_chain", "accused_reports")
"""Rules no policy may leave out of `conflicts.exclude`: a report never reaches the
accused, his management line, or anyone who answers to him (SPEC invariant 3), in any
category."""
DEFAULT_REASSIGN_ROLES = ("chief_ethics_officer",)
"""`conflicts.reassign_roles` when the policy is silent."""


class Level(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    role: str = Field(min_length=1)
    acknowledge_within: Duration


class Severity(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    chain: list[Level] = Field(min_length=1)
    repeat_last_every: Duration
    feedback_within: Duration


def _located(
    kind: str,
    message: str,
    loc: tuple[str | int, ...],
    value: object,
    context: dict[str, Any],
) -> ValidationError:
    """A validation error at `loc`, so a config loader can point at that line."""
    return ValidationError.from_exception_data(
        "Policy",
        [
            InitErrorDetails(
                type=PydanticCustomError(kind, message, context),
                loc=loc,
                input=value,
            )
        ],
    )


def _unknown_rules(rules: list[str]) -> list[str]:
    return sorted(set(rules) - set(CONFLICT_RULES))


class CategoryConflicts(BaseModel):
    """Conflict rules turned on for one category, on top of `conflicts.exclude`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    exclude: list[str] = Field(
        default_factory=list,
        description="Rules added for this category (never removed: exclusions only grow).",
    )


class Conflicts(BaseModel):
    """Who is never routed a report (`exclude`), who stays eligible although above the
    accused (`independent_roles`), per-category additions (`categories`) and who may order
    a reassignment (`reassign_roles`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    exclude: list[str] = Field(default_factory=lambda: list(DEFAULT_EXCLUDE))
    independent_roles: list[str] = Field(default_factory=list)
    categories: dict[str, CategoryConflicts] = Field(
        default_factory=dict,
        description="Per category, rules in addition to `exclude` (e.g. accused_reports).",
    )
    reassign_roles: list[str] = Field(
        default_factory=lambda: list(DEFAULT_REASSIGN_ROLES),
        description="Roles whose holders may order a reassignment.",
    )

    @model_validator(mode="after")
    def _known(self) -> Conflicts:
        unknown = _unknown_rules(self.exclude)
        if unknown:
            raise ValueError(f"unknown conflict rules {unknown}; known: {CONFLICT_RULES}")
        missing = [rule for rule in MANDATORY_EXCLUDE if rule not in self.exclude]
        if missing:
            raise _located(
                "mandatory_conflict_rule",
                "conflicts.exclude must hold {missing}: a report never reaches the accused,"
                " his management line or anyone who answers to him, in any category",
                ("exclude",),
                self.exclude,
                {"missing": missing},
            )
        for category, extra in self.categories.items():
            unknown = _unknown_rules(extra.exclude)
            if unknown:
                raise _located(
                    "unknown_conflict_rule",
                    "unknown conflict rules {unknown} for category '{category}'; known: {known}",
                    ("categories", category, "exclude"),
                    extra.exclude,
                    {"unknown": unknown, "category": category, "known": CONFLICT_RULES},
                )
        return self

    @model_serializer(mode="wrap")
    def _without_new_defaults(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # A policy without the later keys records as before (triage compares the stored
        # body of a version with the file's), so they are written only when set.
        body: dict[str, Any] = handler(self)
        if not self.categories:
            body.pop("categories", None)
        if tuple(self.reassign_roles) == DEFAULT_REASSIGN_ROLES:
            body.pop("reassign_roles", None)
        return body

    def rules_for(self, category: str | None) -> tuple[str, ...]:
        """The rules on for `category`: `exclude` plus the category's, in canonical order."""
        extra = self.categories.get(category) if category is not None else None
        on = set(self.exclude) | set(extra.exclude if extra else ())
        return tuple(rule for rule in CONFLICT_RULES if rule in on)


DEFAULT_RETENTION = 5 * 365 * 86400
"""How long an incident's content is kept after it was closed, when the policy is silent."""


class Retention(BaseModel):
    """How long content is kept after closure, before its key is destroyed (erasure)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    after_closure: Duration = Field(DEFAULT_RETENTION, description="Default: 5y.")
    categories: dict[str, Duration] = Field(
        default_factory=dict, description="Per category, overriding after_closure."
    )

    def of(self, category: str | None) -> int:
        """Seconds to keep an incident of `category` after it was closed."""
        if category is not None and category in self.categories:
            return self.categories[category]
        return self.after_closure


class Policy(BaseModel):
    """The `INCIDENTS_POLICY_FILE` document."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str = Field(min_length=1)
    categories: dict[str, str] = Field(min_length=1)
    severities: dict[str, Severity] = Field(min_length=1)
    reporter_acknowledgement_within: Duration
    conflicts: Conflicts = Field(default_factory=Conflicts)
    retention: Retention | None = Field(
        None, description="Retention after closure; absent: 5 years for every category."
    )

    def retention_of(self, category: str | None) -> int:
        """Seconds an incident of `category` is kept after closure (then erased)."""
        return (self.retention or Retention()).of(category)

    @classmethod
    def recorded(cls, body: Mapping[str, Any]) -> Policy:
        """A version recorded before (an incident keeps the version it started under), as
        its stored body says, with every mandatory rule (`MANDATORY_EXCLUDE`) added to its
        `exclude` where an older version lacked one: a file is refused without them, but
        a version recorded before they became mandatory is read with them on, so its
        incidents never reach anyone who answers to the accused either, and triage still
        starts after the upgrade."""
        conflicts = body.get("conflicts")
        if isinstance(conflicts, Mapping) and isinstance(conflicts.get("exclude"), list):
            exclude = list(conflicts["exclude"])
            exclude += [rule for rule in MANDATORY_EXCLUDE if rule not in exclude]
            body = {**body, "conflicts": {**conflicts, "exclude": exclude}}
        return cls.model_validate(body)

    @model_validator(mode="after")
    def _conflict_categories_exist(self) -> Policy:
        for category in self.conflicts.categories:
            if category not in self.categories:
                raise _located(
                    "unknown_category",
                    "conflicts are set for category '{category}', which the policy does not have",
                    ("conflicts", "categories", category),
                    category,
                    {"category": category},
                )
        return self

    @model_validator(mode="after")
    def _severities_exist(self) -> Policy:
        for category, severity in self.categories.items():
            if severity not in self.severities:
                # A located error, so a config loader can point at the category's line.
                raise ValidationError.from_exception_data(
                    "Policy",
                    [
                        InitErrorDetails(
                            type=PydanticCustomError(
                                "unknown_severity",
                                "category '{category}' maps to severity '{severity}', "
                                "which has no chain",
                                {"category": category, "severity": severity},
                            ),
                            loc=("categories", category),
                            input=severity,
                        )
                    ],
                )
        return self
