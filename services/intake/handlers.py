"""Handlers' actions on incidents routed to them: view, acknowledge, status, comments (issue 3)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/v1", tags=["handlers"])
