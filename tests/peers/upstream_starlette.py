"""Starlette/uvicorn upstream for the path-bypass tests.

Routes on the percent-decoded path (as real Starlette apps do) and answers
with the handler name and the path it saw:
  /api/admin, /api/admin/...  -> 200 "ADMIN <path>"
  /api, /api/...              -> 200 "API <path>"
  /health                     -> 200 "HEALTH"
  anything else               -> 404 (Starlette default)

Run: python upstream_starlette.py --port N   (binds 127.0.0.1, prints "ready")
"""

import argparse

import uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]  # Starlette adds HEAD for GET


def tagged(tag):
    async def handler(request):
        return PlainTextResponse(f"{tag} {request.scope['path']}")

    return handler


async def health(request):
    return PlainTextResponse("HEALTH")


app = Starlette(
    routes=[
        Route("/api/admin", tagged("ADMIN"), methods=METHODS),
        Route("/api/admin/{rest:path}", tagged("ADMIN"), methods=METHODS),
        Route("/api", tagged("API"), methods=METHODS),
        Route("/api/{rest:path}", tagged("API"), methods=METHODS),
        Route("/health", health, methods=METHODS),
    ]
)


class Server(uvicorn.Server):
    async def startup(self, sockets=None):
        await super().startup(sockets=sockets)
        print("ready", flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False
    )
    Server(config).run()


if __name__ == "__main__":
    main()
