"""Placeholder: the jobs pages (being written)."""

from fastapi import APIRouter

router = APIRouter()
