"""The organisation: people, managers and roles, as the directory file and events describe it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError


class Person(BaseModel):
    """One person of the directory file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
    name: str | None = None
    alternative_names: list[str] = Field(
        default_factory=list,
        description="Other names the person is known by (a name in another script, a"
        " maiden name); free-text names in reports are matched against these too.",
    )
    email: str | None = None
    unit: str | None = None
    manager: str | None = None
    roles: list[str] = Field(default_factory=list)


class DirectoryFile(BaseModel):
    """The `INCIDENTS_DIRECTORY_FILE` document."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    people: list[Person] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> DirectoryFile:
        seen: set[str] = set()
        for index, person in enumerate(self.people):
            if person.id in seen:
                # A located error, so a config loader can point at the duplicate's line.
                raise ValidationError.from_exception_data(
                    "DirectoryFile",
                    [
                        InitErrorDetails(
                            type=PydanticCustomError(
                                "duplicate_id",
                                "person id '{id}' appears twice",
                                {"id": person.id},
                            ),
                            loc=("people", index, "id"),
                            input=person.id,
                        )
                    ],
                )
            seen.add(person.id)
        return self

    def roles_of(self, principal: str) -> frozenset[str]:
        for person in self.people:
            if person.id == principal:
                return frozenset(person.roles)
        return frozenset()
