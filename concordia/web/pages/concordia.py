"""Placeholder: the concordia pages (being written)."""

from fastapi import APIRouter

router = APIRouter()
