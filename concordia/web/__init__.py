"""The web layer: the FastAPI app, the JSON API (/api/v1) and the pages (Jinja2 and htmx)."""
