"""Module versions, rollback and artifact provenance (control plane)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
