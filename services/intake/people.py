"""The people search: `GET /v1/people/search?q=`, for picking the accused and the people
named in a report (the API's clients and the console's report form).

Open to anonymous reporters, so it shows only what a picker needs (id, display name,
unit), answers at most `SEARCH_RESULTS` people, is rate-limited per client, and leaves
no trace of who searched for whom: the route is untraced (see `app.py`), nothing is
logged, and no event is written. See docs/people-and-names.md.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from services.infra.http import Problem, problem_response
from services.intake.api import NO_STORE, problem
from services.intake.principals import OptionalCallerId
from services.intake.service import (
    SEARCH_MIN_CHARS,
    SEARCH_RESULTS,
    BadSearch,
    IntakeService,
    PersonFound,
    TooManyAttempts,
)

router = APIRouter(prefix="/v1", tags=["people"])


class PersonHit(BaseModel):
    """A person found: what a picker shows."""

    id: str = Field(description="The person id to send in `accused` / `named`.")
    name: str | None = Field(description="Display name.")
    unit: str | None = Field(description="Business unit.")


class PeopleFound(BaseModel):
    people: list[PersonHit] = Field(
        description=f"At most {SEARCH_RESULTS}, by display name; empty when nobody matches."
    )


def _service(request: Request) -> IntakeService:
    service: IntakeService = request.app.state.intake
    return service


def hits(found: list[PersonFound]) -> list[dict[str, str | None]]:
    return [{"id": p.id, "name": p.name, "unit": p.unit} for p in found]


def search_client(request: Request, caller: str | None) -> str:
    """The rate-limit key of this request's caller (see `IntakeService.search_client`)."""
    address = request.client.host if request.client is not None else None
    return _service(request).search_client(caller, address)


def too_many_searches(exc: TooManyAttempts) -> JSONResponse:
    answer = problem_response(429, "Too many searches", f"Try again in {exc.retry_after} seconds.")
    answer.headers["Retry-After"] = str(exc.retry_after)
    return answer


@router.get(
    "/people/search",
    summary="Find people to name in a report",
    response_model=PeopleFound,
    responses={
        401: problem("A bearer token was sent and is not valid."),
        422: problem(
            f"`q` is missing, has fewer than {SEARCH_MIN_CHARS} letters or digits, is over"
            " 200 characters, or has control characters."
        ),
        429: problem(
            "Too many searches from this client; wait `Retry-After` seconds.",
            **{"Retry-After": "Seconds until the next search is taken."},
        ),
    },
)
async def people_search(
    request: Request,
    caller: OptionalCallerId,
    q: Annotated[
        str,
        Query(
            max_length=200,
            description="Words to find, normalised as names are (case, accents, full-width"
            " forms, punctuation and word order do not matter). Every word must be the"
            " start of a word of one of the person's names (display name or an"
            " alternative name). `%`, `_`, `*` and quotes are not wildcards.",
        ),
    ],
) -> JSONResponse:
    """People whose names start with the words of `q`: id, display name and unit only.

    Anonymous callers may search (a reporter picks the accused without an account).
    At most 10 people, by display name. Rate-limited per client in memory (per
    instance): a signed-in caller by principal, an anonymous one by a keyed digest
    of the client address (so every anonymous caller behind one proxy shares a
    bucket), a burst of 30 then one search a second; 429 with `Retry-After` beyond
    (a query refused with 422 counts too).
    Nothing about the search is logged, traced or recorded.
    """
    try:
        found = await _service(request).search_people(q, search_client(request, caller))
    except BadSearch as exc:
        raise Problem(422, "Invalid search", str(exc)) from exc
    except TooManyAttempts as exc:
        return too_many_searches(exc)
    return JSONResponse({"people": hits(found)}, headers=dict(NO_STORE))
