"""``daqbridge catalog serve``: a data directory's catalog behind a stock Tiled HTTP server.

Why not ``tiled serve catalog DIR/catalog.db``: the Bluesky layer of the client (``c[-1]``, scan id
lookups, ``run.primary``) comes from the ``CatalogOfBlueskyRuns`` spec on the catalog's root, and
that spec is not stored in ``catalog.db``: the embedded catalog passes it to
``tiled.catalog.from_uri`` at each open (``_embedded.CATALOG_SPECS``). Served by the stock command
the root is a plain container. So this builds the same adapter as the embedded catalog (same
storage, same spec) and serves it with Tiled's own ``build_app`` and uvicorn.

The socket is bound here, before the server starts, so ``--port 0`` works and the printed URL is
the port actually listened on; the URL is printed once the app has started, so a client that reads
it never meets a half-started server.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import socket
import sys
from pathlib import Path
from typing import Any

from daqbridge.errors import CatalogError

#: Tiled's own variable for the key of a single-user server.
API_KEY_ENV = "TILED_SINGLE_USER_API_KEY"


def register(sub: argparse._SubParsersAction, where: argparse.ArgumentParser) -> None:
    serve = sub.add_parser(
        "serve",
        parents=[where],
        help="serve the catalog over HTTP with a stock Tiled server",
        description="Serve a data directory's runs with a Tiled server, so that "
        "tiled.client.from_uri(URL, api_key=KEY)[-1] works from another machine "
        "(see docs/catalog.md).",
    )
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1, this machine only; 0.0.0.0 for the network)",
    )
    serve.add_argument(
        "--port", type=int, default=8000, help="TCP port (default 8000; 0 picks a free one)"
    )
    serve.add_argument(
        "--api-key",
        dest="serve_api_key",
        default=os.environ.get(API_KEY_ENV),
        help=f"key clients must present (default ${API_KEY_ENV}, else a random one, printed)",
    )
    serve.set_defaults(func=serve_catalog)


def serve_catalog(args: argparse.Namespace) -> int:
    from daqbridge.config import locate_data

    where = locate_data(args.profile, args.data)
    if where.uri and not args.data and not os.environ.get("DAQBRIDGE_DATA"):
        raise CatalogError(
            f"the profile's runs are already on a Tiled server ({where.uri}); there is no local "
            "catalog to serve.",
            resource=where.uri,
            fix="give clients that URI, or serve a data directory with --data DIR.",
        )
    if not 0 <= args.port <= 65535:
        raise CatalogError(
            f"--port must be 0-65535, got {args.port}.", fix="pass --port 8000, for example."
        )
    api_key = args.serve_api_key or secrets.token_hex(32)
    if not api_key.isascii() or not api_key.isalnum():
        # Tiled refuses it only once the server starts, with a traceback.
        raise CatalogError(
            "the API key must be letters and digits only (clients send it in URLs).",
            fix="omit --api-key for a random one, or make one with "
            "`python -c 'import secrets; print(secrets.token_hex(32))'`.",
        )
    app = _app(where.catalog_dir, api_key)
    listener = _listen(args.host, args.port)
    port = listener.getsockname()[1]
    url = f"http://{_client_host(args.host)}:{port}"
    banner = [
        f"serving the catalog in {where.catalog_dir} ({where.source}) at {url}/api",
        f"api key: {api_key}",
        "a client opens it with:",
        f"    from tiled.client import from_uri; c = from_uri({url!r}, api_key={api_key!r})",
    ]
    if args.host in ("127.0.0.1", "localhost", "::1"):
        banner.append("(loopback only: pass --host 0.0.0.0 to serve other machines)")
    _run(app, listener, banner)
    return 0


def _app(catalog_dir: Path, api_key: str) -> Any:
    """The Tiled app on the catalog, opened exactly as the embedded catalog opens it."""
    # Tiled's server module sets its logger's level at import; quiet it after the import.
    from tiled.catalog import from_uri
    from tiled.config import Authentication
    from tiled.server.app import build_app

    from daqbridge.catalog._embedded import (
        CATALOG_DB,
        CATALOG_SPECS,
        STORAGE_DB,
        is_initialized,
    )
    from daqbridge.catalog._sqlite import LOCK_TIMEOUT, describe, wait_for_locks

    logging.getLogger("tiled.server.app").setLevel(logging.WARNING)
    db = catalog_dir / CATALOG_DB
    if not is_initialized(db):
        raise CatalogError(
            f"there is no catalog in {catalog_dir} to serve: no run has been written there yet.",
            resource=str(catalog_dir),
            fix="check --data, --profile, $DAQBRIDGE_DATA, or write a first run with "
            "`daqbridge run count sim_meter`.",
        )
    try:
        adapter = from_uri(
            f"sqlite:///{db}",
            writable_storage=[catalog_dir / "data", f"sqlite:///{catalog_dir / STORAGE_DB}"],
            readable_storage=[catalog_dir / "frames"],
            specs=CATALOG_SPECS,
        )
        wait_for_locks(adapter.context.engine.sync_engine, LOCK_TIMEOUT)
        return build_app(adapter, Authentication(single_user_api_key=api_key))
    except Exception as exc:
        raise CatalogError(
            f"cannot open the catalog to serve it: {describe(exc)}.",
            resource=str(db),
            fix="check that the data directory is readable; if catalog.db was damaged, restore "
            "it from a backup.",
        ) from None


def _listen(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        listener = socket.socket(family, kind, proto)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(128)
    except OSError as exc:
        raise CatalogError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}.",
            resource=f"{host}:{port}",
            fix="choose another --port (0 picks a free one) or stop the program using it.",
        ) from None
    return listener


def _client_host(host: str) -> str:
    """The host a client types: a wildcard address is not one, this machine's name is."""
    if host in ("0.0.0.0", "::", ""):
        return socket.getfqdn()
    return f"[{host}]" if ":" in host else host


def _run(app: Any, listener: socket.socket, banner: list[str]) -> None:
    import uvicorn

    class _Announcing(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if not self.should_exit:
                print("\n".join(banner), flush=True)

    server = _Announcing(uvicorn.Config(app, log_level="warning", lifespan="on"))
    try:
        server.run(sockets=[listener])
    finally:
        listener.close()
    if not server.started:
        print("daqbridge: the Tiled server did not start (see above).", file=sys.stderr)
