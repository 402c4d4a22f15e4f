"""Anonymous reporters' receipts: status view and follow-up messages (issue 3)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/v1", tags=["reporters"])
