"""The triage and escalation policy file: categories, severities, chains, conflicts.

Durations are written `30s`, `5m`, `1h`, `7d` (or `5y`, 365 days a year) and held as
seconds.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
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
CONFLICT_RULES = ("accused", "accused_management_chain", "named_in_report", "reporter")


class Level(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    role: str = Field(min_length=1)
    acknowledge_within: Duration


class Severity(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    chain: list[Level] = Field(min_length=1)
    repeat_last_every: Duration
    feedback_within: Duration


class Conflicts(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    exclude: list[str] = Field(default_factory=lambda: list(CONFLICT_RULES))
    independent_roles: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _known(self) -> Conflicts:
        unknown = set(self.exclude) - set(CONFLICT_RULES)
        if unknown:
            raise ValueError(f"unknown conflict rules {sorted(unknown)}; known: {CONFLICT_RULES}")
        return self


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
