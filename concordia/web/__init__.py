"""The web layer: the FastAPI app, the JSON API (/api/v1) and, later, the pages."""
