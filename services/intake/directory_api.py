"""Directory administration: `PUT /v1/directory/people/{person_id}` for admins (issue 3)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/v1", tags=["directory"])
