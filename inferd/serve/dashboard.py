"""Live dashboard: `GET /dashboard` serves one HTML page plus its JS/CSS from `serve/static/`.

The page itself polls the server's Prometheus `GET /metrics` once a second and charts TTFT, ITL,
tokens/s, running/waiting requests and KV-cache use; this module only serves files (no state, no
engine access). Include `router` in the FastAPI app next to the `/metrics` route.
"""

from __future__ import annotations

import html
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, Response

STATIC_DIR = Path(__file__).parent / "static"
# Served assets by name; a fixed table rather than a directory mount keeps paths from escaping.
ASSETS = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "linechart.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}

router = APIRouter()


@router.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
async def dashboard(request: Request) -> HTMLResponse:
    # root_path keeps asset and /metrics URLs right when the app is mounted under a prefix.
    root = html.escape(request.scope.get("root_path", "").rstrip("/"), quote=True)
    page = (STATIC_DIR / "dashboard.html").read_text(encoding="utf-8").replace("{{ROOT}}", root)
    return HTMLResponse(page, headers={"Cache-Control": "no-cache"})


@router.get("/dashboard/static/{name}", include_in_schema=False)
async def dashboard_asset(name: str) -> Response:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise HTTPException(status_code=404, detail=f"no dashboard asset {name!r}")
    body = (STATIC_DIR / name).read_bytes()
    return Response(body, media_type=media_type, headers={"Cache-Control": "no-cache"})
