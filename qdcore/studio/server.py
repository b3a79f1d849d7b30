"""The studio server: a Starlette app on uvicorn that puts session.py's Studio on the web.

Safety at the door: requests carrying a foreign `Origin` are refused, and when bound to
loopback so are requests for any host name but a loopback one (DNS rebinding); bodies are
size-limited; every error is a 4xx (or 500) JSON body `{"error": "Error: ..."}` with one
line, never a traceback.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
import threading
import traceback
from pathlib import Path
from typing import Optional

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .. import paths, sources
from ..errors import InputError, NotFound, QdError, TooLarge
from ..limits import load_json, shown
from ..registry import KINDS
from ..schema import recipe_schema
from .session import Studio, one_line

STATIC = Path(__file__).parent / "static"
MAX_BODY = 8 << 20  # a request body (JSON, an image as a data URL)


def _error(status: int, message: str) -> JSONResponse:
    line = one_line(message)
    return JSONResponse({"error": line if line.startswith("Error:") else f"Error: {line}"}, status_code=status)


async def _json(request: Request) -> dict:
    size = request.headers.get("content-length")
    if size is not None and size.isdigit() and int(size) > MAX_BODY:
        raise TooLarge(f"the request is {int(size) / 1e6:.1f} MB; the limit is {MAX_BODY >> 20} MB")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise TooLarge(f"the request is over {MAX_BODY >> 20} MB")
    data = load_json(body, "the request body", MAX_BODY)
    if not isinstance(data, dict):
        raise InputError("the request body must be a JSON object")
    return data


def _same_origin(request: Request) -> bool:
    """A browser names the page that sent a request in `Origin`; only our own page may
    drive the server (a site open in another tab must not start jobs or read results)."""
    origin = request.headers.get("origin")
    if origin is None:
        return True  # not a cross-site browser request (curl, the page's own GETs)
    host = request.headers.get("host", "")
    return origin in (f"http://{host}", f"https://{host}")


def _host_name(request: Request) -> str:
    host = request.headers.get("host", "")
    return host.rsplit(":", 1)[0].strip("[]") if not host.endswith("]") else host.strip("[]")


def _guarded(fn, hosts: Optional[set]):
    """The door every route goes through: the host and origin checks, then `fn`, whose
    errors become one-line JSON answers with their status."""

    async def endpoint(request: Request):
        if hosts is not None and _host_name(request) not in hosts:
            return _error(
                403,
                f"requests for host {request.headers.get('host')!r} are refused: open the address qd studio printed",
            )
        if not _same_origin(request):
            return _error(403, f"requests from another site ({request.headers.get('origin')}) are refused")
        try:
            return await fn(request)
        except QdError as e:  # each kind of error carries its status (errors.py)
            return _error(e.status, str(e))
        except Exception as e:  # noqa: BLE001 - the edge: one line, never a traceback
            # A bug (a plugin's, or qd's), not bad input: the terminal running qd studio
            # gets the traceback; the page one line, with object reprs cut out (one_line).
            traceback.print_exc(file=sys.stderr)
            return _error(500, f"unexpected {type(e).__name__}: {e}")

    return endpoint


class _Endpoints:
    """One handler per route: each reads the request, asks the Studio, answers JSON (or a file)."""

    def __init__(self, studio: Studio):
        self.studio = studio

    async def index(self, request):
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    async def schema(self, request):
        return JSONResponse(recipe_schema(self.studio.registry))

    async def plugins(self, request):
        studio = self.studio
        rows = []
        for name, info in sorted(studio.plugins.info.items()):
            rows.append(
                {
                    "name": name,
                    "version": info.version,
                    "error": info.error,
                    "provides": studio.registry.provided_by(name),
                }
            )
        kinds = {
            kind: [
                {
                    "name": n,
                    "description": studio.registry.get(kind, n).description,
                    "plugin": studio.registry.get(kind, n).plugin,
                }
                for n in studio.registry.names(kind)
            ]
            for kind in KINDS
        }
        return JSONResponse({"plugins": rows, "kinds": kinds})

    async def recipe(self, request):
        studio = self.studio
        return JSONResponse(
            {
                "recipe": studio.base_data,
                "file": None if studio.base_path.parent == studio.tmp else str(studio.base_path),
            }
        )

    async def validate(self, request):
        body = await _json(request)
        return JSONResponse(await run_in_threadpool(self.studio.check, body.get("recipe")))

    async def upload(self, request):
        body = await _json(request)
        r, _ = self.studio.intake(body.get("recipe", self.studio.base_data))
        return JSONResponse(
            await run_in_threadpool(self.studio.upload, body.get("image"), (r.model.height, r.model.width))
        )

    async def upload_file(self, request):
        uid = request.path_params["name"].removesuffix(".png")
        return FileResponse(self.studio.upload_path(uid), media_type="image/png")

    async def models(self, request):
        return JSONResponse(
            {
                "models": sources.cached_models(),
                "packs": sources.available_packs(self.studio.registry),
                "cache": str(paths.cache_dir() / "models"),
            }
        )

    async def generate(self, request):
        body = await _json(request)
        n = body.get("n")
        if n is not None and (isinstance(n, bool) or not isinstance(n, int)):
            raise InputError(f"n must be a whole number, got {shown(n)}")
        return JSONResponse(await run_in_threadpool(self.studio.generate, body.get("recipe"), n))

    async def download(self, request):
        gid, kind = request.path_params["gid"], request.path_params["kind"]
        blob, filename = await run_in_threadpool(self.studio.download, gid, kind)
        return Response(
            blob, media_type=f"image/{kind}", headers={"Content-Disposition": f'attachment; filename="{filename}"'}
        )

    async def as_yaml(self, request):
        body = await _json(request)
        return JSONResponse(self.studio.as_yaml(body.get("recipe")))

    async def train(self, request):
        body = await _json(request)
        return JSONResponse(await run_in_threadpool(self.studio.start_training, body.get("recipe")), status_code=202)

    async def jobs(self, request):
        with self.studio.lock:
            listed = [j.as_json() for j in self.studio.jobs.values()]
        return JSONResponse({"jobs": listed})

    async def cancel(self, request):
        body = await _json(request)
        return JSONResponse(self.studio.cancel(str(body.get("key"))))

    async def not_found(self, request):
        raise NotFound(f"no endpoint {request.method} {request.url.path}")


def create_app(studio: Studio, hosts: Optional[set] = None) -> Starlette:
    """`hosts`: the host names requests may address (serve() passes the loopback names when
    bound to loopback). A page on another site that rebinds its own DNS name to 127.0.0.1
    sends its own name in `Host`, so it is refused even though its `Origin` matches."""
    api = _Endpoints(studio)

    def route(path: str, fn, methods=None) -> Route:
        return Route(path, _guarded(fn, hosts), methods=methods)

    routes = [
        route("/", api.index),
        route("/api/schema", api.schema),
        route("/api/plugins", api.plugins),
        route("/api/recipe", api.recipe),
        route("/api/validate", api.validate, methods=["POST"]),
        route("/api/upload", api.upload, methods=["POST"]),
        route("/api/uploads/{name}", api.upload_file),
        route("/api/models", api.models),
        route("/api/generate", api.generate, methods=["POST"]),
        route("/api/generations/{gid}.{kind}", api.download),
        route("/api/recipe.yaml", api.as_yaml, methods=["POST"]),
        route("/api/train", api.train, methods=["POST"]),
        route("/api/jobs", api.jobs),
        route("/api/jobs/cancel", api.cancel, methods=["POST"]),
        Mount("/static", app=StaticFiles(directory=STATIC)),
        route("/api/{rest:path}", api.not_found, methods=["GET", "POST", "PUT", "DELETE"]),
    ]
    app = Starlette(routes=routes)
    app.state.studio = studio
    return app


LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1"}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(recipe: Optional[Path], *, host: str, port: int, open_browser: bool, plugins) -> None:
    """`qd studio`: bind, print the address, open a browser, serve until Ctrl+C."""
    import uvicorn

    studio = Studio(plugins, recipe)
    app = create_app(studio, LOOPBACK_NAMES if is_loopback(host) else None)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port} ({e.strerror}): choose another --port") from None
    # Listening before the address is printed: a browser that comes at once waits in the
    # backlog until uvicorn accepts, instead of being refused.
    sock.listen(128)
    port = sock.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    url = f"http://{shown}:{port}/"
    if not is_loopback(host):
        print(
            f"Warning: qd studio is listening on {host}, reachable from other machines: anyone who can "
            "reach it can train and generate. Use --host 127.0.0.1 to keep it on this machine.",
            file=sys.stderr,
        )
    print(f"qd studio: {url}  (Ctrl+C to stop)", flush=True)
    if open_browser:
        import webbrowser

        threading.Timer(0.5, webbrowser.open, args=(url,)).start()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    try:
        server.run(sockets=[sock])
    finally:
        studio.close()
