"""A small fake of the Hugging Face Hub HTTP endpoints, bound to 127.0.0.1, for tests (never the internet).

Serves what `huggingface_hub` 2.x calls: `HEAD/GET /{repo}/resolve/{rev}/{path}` (ETag = git blob sha1 for small
files, sha256 for "LFS" files, X-Repo-Commit, Range requests), `GET /api/models/{repo}/revision/{rev}`,
`GET /api/models/{repo}/tree/{rev}`, and the upload path with every file committed as a "regular" (base64) file:
`POST /api/repos/create`, `/api/validate-yaml`, `.../preupload/{rev}`, `.../commit/{rev}`. Plain files for URL downloads live under
`GET /files/{name}`. Faults for tests: `truncate_once` (first GET of a path closes the connection half way),
`corrupt` (same size, one byte flipped), `wrong_size` (advertised size off by 7), `hits` counts GETs per path.
"""
from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

LFS_THRESHOLD = 1024  # bytes: larger files are served as LFS (ETag = sha256)


def oid(data: bytes) -> str:
    """The Hub's object id: sha256 for LFS-sized files, the git blob sha1 otherwise."""
    if len(data) >= LFS_THRESHOLD:
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    """`with FakeHub() as hub:` starts the server on a free port of 127.0.0.1 (`hub.endpoint`), stops it on exit."""

    def __init__(self) -> None:
        self.repos: dict[str, dict] = {}
        self.files: dict[str, bytes] = {}
        self.truncate_once: set[str] = set()
        self.corrupt: set[str] = set()
        self.wrong_size: set[str] = set()
        self.hits: dict[str, int] = {}
        self.ranges: list[str] = []
        self.validated: list[str] = []  # model cards sent to /api/validate-yaml
        self.lock = threading.Lock()

    def add_repo(self, repo_id: str, files: dict[str, bytes]) -> str:
        commit = hashlib.sha1(json.dumps(sorted((k, oid(v)) for k, v in files.items())).encode()).hexdigest()
        self.repos[repo_id] = {"commit": commit, "files": dict(files)}
        return commit

    def __enter__(self) -> "FakeHub":
        hub = self

        class Handler(_Handler):
            fake = hub

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def _json(self, status: int, doc, headers: dict | None = None) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        for k, v in {"Content-Type": "application/json", "Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, code: str, headers: dict | None = None) -> None:
        self._json(status, {"error": code}, {"X-Error-Code": code, "X-Error-Message": code, **(headers or {})})

    def _send_bytes(self, key: str, data: bytes, headers: dict) -> None:
        hub = self.fake
        start = 0
        rng = self.headers.get("Range")
        if self.command == "GET":
            with hub.lock:
                hub.hits[key] = hub.hits.get(key, 0) + 1
            if rng:
                hub.ranges.append(f"{key} {rng}")
                start = int(rng.split("=")[1].split("-")[0])
        if key in hub.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        size = len(data)
        advertised = size + 7 if key in hub.wrong_size else size
        self.send_response(206 if start else 200)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("X-Linked-Size", str(advertised))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.send_header("Content-Length", str(size - start))
        self.end_headers()
        if self.command == "HEAD":
            return
        body = data[start:]
        if key in hub.truncate_once and self.command == "GET":
            hub.truncate_once.discard(key)
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            import socket

            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        hub = self.fake
        parts = [unquote(p) for p in urlparse(self.path).path.strip("/").split("/")]
        if parts[0] == "files":
            name = "/".join(parts[1:])
            if name not in hub.files:
                return self._error(404, "NotFound")
            return self._send_bytes(name, hub.files[name], {"ETag": f'"{oid(hub.files[name])}"'})
        if parts[0] == "api" and parts[1] == "models":
            repo_id, kind = "/".join(parts[2:4]), parts[4] if len(parts) > 4 else ""
            repo = hub.repos.get(repo_id)
            if repo is None:
                return self._error(404, "RepoNotFound")
            if kind == "revision":
                return self._json(200, {"id": repo_id, "sha": repo["commit"],
                                        "siblings": [{"rfilename": p} for p in sorted(repo["files"])]})
            if kind == "tree":
                entries = []
                for p, data in sorted(repo["files"].items()):
                    entry = {"type": "file", "path": p, "size": len(data), "oid": oid(data)}
                    if len(data) >= LFS_THRESHOLD:
                        entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 130}
                    entries.append(entry)
                return self._json(200, entries)
            return self._error(404, "NotFound")
        if len(parts) >= 5 and parts[2] == "resolve":
            repo_id, rev, path = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
            repo = hub.repos.get(repo_id)
            if repo is None:
                return self._error(404, "RepoNotFound")
            if rev not in ("main", repo["commit"]):
                return self._error(404, "RevisionNotFound")
            if path not in repo["files"]:
                return self._error(404, "EntryNotFound", {"X-Repo-Commit": repo["commit"]})
            data = repo["files"][path]
            return self._send_bytes(f"{repo_id}/{path}", data, {"ETag": f'"{oid(data)}"',
                                                                "X-Repo-Commit": repo["commit"]})
        return self._error(404, "NotFound")

    def do_POST(self) -> None:
        hub = self.fake
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        parts = [unquote(p) for p in urlparse(self.path).path.strip("/").split("/")]
        if parts[:2] == ["api", "validate-yaml"]:
            hub.validated.append(json.loads(body)["content"])
            return self._json(200, {"warnings": [], "errors": []})
        if parts[:3] == ["api", "repos", "create"]:
            doc = json.loads(body)
            repo_id = f"{doc['organization']}/{doc['name']}" if doc.get("organization") else doc["name"]
            if "/" not in repo_id:
                repo_id = f"user/{repo_id}"
            if repo_id in hub.repos:
                return self._error(409, "RepoExists")
            hub.add_repo(repo_id, {})
            return self._json(200, {"url": f"{hub.endpoint}/{repo_id}"})
        if parts[:2] == ["api", "models"] and len(parts) >= 6:
            repo_id, kind = "/".join(parts[2:4]), parts[4]
            repo = hub.repos.get(repo_id)
            if repo is None:
                return self._error(404, "RepoNotFound")
            if kind == "preupload":
                files = json.loads(body)["files"]
                return self._json(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                                                   "oid": None} for f in files]})
            if kind == "commit":
                files = dict(repo["files"])
                for line in body.splitlines():
                    item = json.loads(line)
                    if item["key"] == "file":
                        files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                    elif item["key"] == "deletedFile":
                        files.pop(item["value"]["path"], None)
                commit = hub.add_repo(repo_id, files)
                return self._json(200, {"commitUrl": f"{hub.endpoint}/{repo_id}/commit/{commit}",
                                        "commitOid": commit, "pullRequestUrl": None})
        return self._error(404, "NotFound")
