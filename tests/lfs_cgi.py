"""A Git LFS server as a CGI program of the tests' web server (``HttpServer(lfs=True)``).

It answers where git-lfs looks by default, ``<repository URL>/info/lfs``, behind the
same basic authentication as the repositories, so a worker reaches it with the
password it already holds, as on GitHub or GitLab.  The contents themselves are sent
and fetched at ``/lfs-content/<token>/<oid>``, outside the authentication (like the
signed storage URLs hosts hand out), with a per-server token instead.

Implements the batch API's ``basic`` transfer (git-lfs's docs/api/batch.md): the
server answers which objects to upload or where to download them; an upload is
checked against its SHA-256 and size before it is kept.  Each request is logged as
one line (``batch upload <oid>``, ``put <oid>``, ``get <oid>``) to ``LFS_LOG`` so
that tests can tell which objects were sent and downloaded.

Environment (set by the web server): ``LFS_STORE`` (a folder), ``LFS_TOKEN``,
``LFS_LOG``, and the CGI variables.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import tempfile
from pathlib import Path

BATCH = re.compile(r"^/.+/info/lfs/objects/batch$")
CONTENT = re.compile(r"^/lfs-content/([0-9a-f]+)/([0-9a-f]{64})$")
JSON_TYPE = "application/vnd.git-lfs+json"


def reply(status: str, body: bytes = b"", content_type: str = JSON_TYPE) -> None:
    head = f"Status: {status}\r\nContent-Type: {content_type}\r\n"
    head += f"Content-Length: {len(body)}\r\n\r\n"
    sys.stdout.buffer.write(head.encode("ascii") + body)
    sys.stdout.buffer.flush()


def log(line: str) -> None:
    with open(os.environ["LFS_LOG"], "a", encoding="ascii") as out:
        out.write(line + "\n")


def stored(store: Path, oid: str) -> Path:
    return store / oid[:2] / oid[2:4] / oid


def read_body() -> bytes:
    length = int(os.environ.get("CONTENT_LENGTH") or 0)
    return sys.stdin.buffer.read(length)


def batch(store: Path, token: str) -> None:
    request = json.loads(read_body())
    operation = request.get("operation")
    base = f"http://{os.environ['HTTP_HOST']}/lfs-content/{token}"
    objects = []
    for item in request.get("objects", []):
        oid, size = str(item["oid"]), int(item["size"])
        log(f"batch {operation} {oid}")
        answer: dict[str, object] = {"oid": oid, "size": size, "authenticated": True}
        path = stored(store, oid)
        have = path.is_file() and path.stat().st_size == size
        if operation == "upload":
            if not have:
                answer["actions"] = {"upload": {"href": f"{base}/{oid}"}}
        elif have:
            answer["actions"] = {"download": {"href": f"{base}/{oid}"}}
        else:
            answer["error"] = {"code": 404, "message": f"object {oid} is not here"}
        objects.append(answer)
    reply("200 OK", json.dumps({"transfer": "basic", "objects": objects}).encode())


def content(store: Path, oid: str) -> None:
    path = stored(store, oid)
    method = os.environ.get("REQUEST_METHOD")
    if method == "PUT":
        data = read_body()
        if hashlib.sha256(data).hexdigest() != oid:
            reply("422 Unprocessable Entity", b'{"message": "content does not match oid"}')
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as part:
            part.write(data)
        os.replace(part.name, path)
        log(f"put {oid}")
        reply("200 OK")
    elif method == "GET":
        if not path.is_file():
            reply("404 Not Found", b'{"message": "no such object"}')
            return
        log(f"get {oid}")
        reply("200 OK", path.read_bytes(), "application/octet-stream")
    else:
        reply("405 Method Not Allowed")


def main() -> None:
    store, token = Path(os.environ["LFS_STORE"]), os.environ["LFS_TOKEN"]
    where = os.environ.get("PATH_INFO", "")
    found = CONTENT.match(where)
    if BATCH.match(where) and os.environ.get("REQUEST_METHOD") == "POST":
        batch(store, token)
    elif found and found.group(1) == token:
        content(store, found.group(2))
    else:
        reply("404 Not Found", b'{"message": "not an LFS path"}')


if __name__ == "__main__":
    main()
