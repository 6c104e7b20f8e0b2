"""Routers imported when first asked for, not before the first answer.

The Hugging Face protocol, OCR and the dashboard's routes are not on the path to a spin-up's first
`POST /analyze`, and importing them (their modules and pydantic models, the routes' validators) is
~0.035 s of CPU at full speed: ~0.35 s of waiting at Render's 0.1 CPU. `include_later` puts a
stand-in where the router would be, with the paths its routes are under; the first request for
one of those (or the OpenAPI document, or a URL lookup) imports the router and puts its routes in
the stand-in's place, in the order `include_router` would have given them, so routing, 405s, slash
redirects and `/openapi.json` are what they were. A request for any other path (`/health`, polled
while the model loads) passes the stand-in by without importing anything. Requests are matched on
the event loop's thread only, which is the one that swaps.
"""

import threading
from collections.abc import Callable
from importlib import import_module
from typing import Any

from fastapi import FastAPI
from starlette._utils import get_route_path
from starlette.routing import BaseRoute, Match, NoMatchFound
from starlette.types import Receive, Scope, Send


class DeferredRouter(BaseRoute):
    """Stands where the `router` attribute of `module` is included once something needs it; its
    routes' paths are each one of `paths` ("/" is that path only) or under one of them."""

    def __init__(self, app: FastAPI, module: str, paths: tuple[str, ...]) -> None:
        self.app, self.module, self.paths = app, module, paths
        self.routes: list[BaseRoute] | None = None
        self._lock = threading.Lock()

    def covers(self, path: str) -> bool:
        """Whether `path` is one of this router's paths or under one of them."""
        return any(path == p or (p != "/" and path.startswith(p.rstrip("/") + "/")) for p in self.paths)

    def include(self) -> list[BaseRoute]:
        """Import the router and put its routes where this stand-in is (once); its routes."""
        with self._lock:
            if self.routes is None:
                app_routes = self.app.router.routes
                before = len(app_routes)
                self.app.include_router(import_module(self.module).router)
                self.routes = app_routes[before:]
                del app_routes[before:]
                if self in app_routes:
                    at = app_routes.index(self)
                    app_routes[at : at + 1] = self.routes
                    self.app.openapi_schema = None  # a schema built without them is stale
            return self.routes

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if not self.covers(get_route_path(scope)):
            return Match.NONE, {}
        partial: tuple[Match, Scope] | None = None
        for route in self.include():
            match, child_scope = route.matches(scope)
            if match is Match.FULL:
                return match, {**child_scope, "route": route}
            if match is Match.PARTIAL and partial is None:
                partial = (match, {**child_scope, "route": route})
        return partial or (Match.NONE, {})

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await scope["route"].handle(scope, receive, send)  # the route `matches` chose

    def url_path_for(self, name: str, /, **path_params: Any) -> Any:
        for route in self.include():
            try:
                return route.url_path_for(name, **path_params)
            except NoMatchFound:
                pass
        raise NoMatchFound(name, path_params)


def include_later(app: FastAPI, module: str, paths: tuple[str, ...]) -> None:
    """Include `module`'s `router`, whose routes are all at or under `paths`, in `app` here, in
    order, when it is first needed."""
    app.router.routes.append(DeferredRouter(app, module, paths))
    if not getattr(app.openapi, "includes_deferred", False):
        app.openapi = _including_deferred(app, app.openapi)  # type: ignore[method-assign]


def include_deferred(app: FastAPI) -> None:
    """Every deferred router of `app` included now."""
    for route in list(app.router.routes):
        if isinstance(route, DeferredRouter):
            route.include()


def _including_deferred(app: FastAPI, build: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
    def openapi() -> dict[str, Any]:
        include_deferred(app)
        return build()

    openapi.includes_deferred = True  # type: ignore[attr-defined]
    return openapi
