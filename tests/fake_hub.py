"""A small stand-in for the Hugging Face Hub on 127.0.0.1, for tests that run huggingface_hub's real client.

It serves the HTTP endpoints huggingface_hub 2.x calls to download and to publish a model repository:

- download: model info per revision (`/api/models/{repo}[/revision/{rev}]`), the tree listing
  (`/api/models/{repo}/tree/{rev}`), `HEAD`/`GET /{repo}/resolve/{rev}/{file}` (regular files inline with
  `ETag`/`X-Repo-Commit`; LFS files answered with a 302 to a separate "CDN" origin carrying `X-Linked-Etag` and
  `X-Linked-Size`, as the real Hub does), byte ranges for resumed downloads;
- client housekeeping: `/api/agent-harnesses` (the registry huggingface_hub uses for its user agent);
- publish: `/api/repos/create`, `/api/validate-yaml`, `/api/models/{repo}/preupload/{rev}`, the LFS batch /
  upload / verify protocol, `/api/models/{repo}/commit/{rev}` (ndjson) and `/api/models/{repo}/tag/{rev}`.

Errors carry the `X-Error-Code` header (RepoNotFound, RevisionNotFound, EntryNotFound, GatedRepo) the client uses
to pick its exception class. Every request is recorded in `calls`; requests no route knows land in `unhandled`.
Faults can be injected on file bodies: a connection dropped halfway through (optionally taking the CDN down with
it), or one byte corrupted in transit.

Point the client at it with `HF_ENDPOINT` (in-process: `huggingface_hub.constants.ENDPOINT` and
`HUGGINGFACE_CO_URL_TEMPLATE`, which the library reads at import time). Uploads of LFS files need
`HF_HUB_DISABLE_XET` so the client uses the LFS protocol rather than Xet storage, which this server does not speak.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import yaml

# File types the Hub's default .gitattributes stores with git-lfs (a subset: what a model repo holds).
LFS_SUFFIXES = (".h5", ".bin", ".safetensors", ".npz", ".npy", ".pt", ".pth", ".zip", ".tar.gz")
GITATTRIBUTES = b"".join(b"*%s filter=lfs diff=lfs merge=lfs -text\n" % s.encode() for s in LFS_SUFFIXES)

_API_REPO = re.compile(
    r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/(?P<action>revision|tree|preupload|commit|tag)/(?P<rev>[^/]+)(?P<rest>/.*)?)?$"
)
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")
_LFS = re.compile(r"^/(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/(?P<op>batch|verify)$")
_CDN_BLOB = re.compile(r"^/blobs/(?P<oid>[0-9a-f]{64})$")
_CDN_UPLOAD = re.compile(r"^/upload/(?P<oid>[0-9a-f]{64})$")
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


def git_blob_sha1(data: bytes) -> str:
    """Return git's object id for a blob (what the Hub sends as the ETag of a regular file)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def sha256_hex(data: bytes) -> str:
    """Return the hex sha256 of some bytes (the LFS object id)."""
    return hashlib.sha256(data).hexdigest()


def is_lfs(path: str, sample: bytes) -> bool:
    """Whether the Hub would store this file with git-lfs: an LFS file type, or binary content."""
    return path.endswith(LFS_SUFFIXES) or b"\0" in sample[:512]


@dataclass
class Call:
    """One HTTP request the server received."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def ndjson(self) -> list[dict]:
        return [json.loads(line) for line in self.body.splitlines() if line.strip()]

    @property
    def token(self) -> str | None:
        auth = self.headers.get("authorization", "")
        return auth[len("Bearer ") :] if auth.lower().startswith("bearer ") else None


@dataclass
class Fault:
    """A fault applied to the next `times` GET bodies whose path ends with `path_suffix`."""

    path_suffix: str
    kind: str  # "drop": send half the body, then close the connection; "corrupt": flip one byte
    then_down: bool = False  # after a drop, stop the CDN so that retries are refused
    times: int = 1


@dataclass
class Repo:
    """A model repository: commits (full file sets), branches, tags and access rules."""

    repo_id: str
    private: bool = False
    gated: bool = False
    readers: set[str] = field(default_factory=set)  # users let through the gate or into a private repo
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def owner(self) -> str:
        return self.repo_id.split("/")[0]

    def resolve(self, revision: str) -> str | None:
        """Return the commit a branch, tag or full commit id points to, or None."""
        if revision in self.branches:
            return self.branches[revision]
        if revision in self.tags:
            return self.tags[revision]
        return revision if revision in self.commits else None


@dataclass
class _Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    fault: Fault | None = None


def _json(status: int, payload: object, headers: Mapping[str, str] | None = None) -> _Response:
    return _Response(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})


def _error(status: int, message: str, code: str | None = None, **headers: str) -> _Response:
    extra = {"X-Error-Message": message, **headers}
    if code:
        extra["X-Error-Code"] = code
    return _json(status, {"error": message}, extra)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep test output clean

    def _dispatch(self) -> None:
        self.server.fake._handle(self, self.server.role)  # type: ignore[attr-defined]

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a handler may stop its own server (fault "then_down")


class FakeHub:
    """The fake Hub: a hub origin (API + resolve) and a CDN origin (LFS blobs), both on 127.0.0.1."""

    def __init__(self, tokens: Mapping[str, str] | None = None) -> None:
        self.tokens = dict(tokens or {})  # token -> user name
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}  # LFS store: sha256 -> content
        self.calls: list[Call] = []
        self.unhandled: list[Call] = []
        self.faults: list[Fault] = []
        self._lock = threading.RLock()
        self._ports = {"hub": 0, "cdn": 0}
        self._servers: dict[str, tuple[_Server, threading.Thread]] = {}
        self._counter = 0

    # ---- lifecycle -------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._ports['hub']}"

    @property
    def cdn_url(self) -> str:
        return f"http://127.0.0.1:{self._ports['cdn']}"

    def start(self, roles: Iterable[str] = ("hub", "cdn")) -> FakeHub:
        """Start (or restart, on the same ports) the given origins."""
        for role in roles:
            if role in self._servers:
                continue
            server = _Server(("127.0.0.1", self._ports[role]), _Handler)
            server.fake, server.role = self, role  # type: ignore[attr-defined]
            self._ports[role] = server.server_address[1]
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
            thread.start()
            self._servers[role] = (server, thread)
        return self

    def stop(self, roles: Iterable[str] = ("hub", "cdn")) -> None:
        """Stop the given origins: new connections are refused until `start`."""
        for role in roles:
            entry = self._servers.pop(role, None)
            if entry is not None:
                server, thread = entry
                server.shutdown()
                server.server_close()
                if thread is not threading.current_thread():
                    thread.join(timeout=5)

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- repository state (server side, no HTTP) -------------------------------------------------------------
    def create_repo(
        self, repo_id: str, *, private: bool = False, gated: bool = False, readers: Iterable[str] = ()
    ) -> Repo:
        """Create an empty repository whose `main` holds only `.gitattributes`, as the Hub does."""
        with self._lock:
            repo = Repo(repo_id, private=private, gated=gated, readers=set(readers))
            self.repos[repo_id] = repo
            self._new_commit(repo, {".gitattributes": GITATTRIBUTES}, "main", "initial commit")
            return repo

    def commit(self, repo_id: str, files: Mapping[str, bytes], *, branch: str = "main", message: str = "") -> str:
        """Add or replace files on top of `branch` (creating the repo if needed); return the new commit id."""
        with self._lock:
            repo = self.repos.get(repo_id) or self.create_repo(repo_id)
            head = repo.commits[repo.branches[branch]] if branch in repo.branches else {}
            return self._new_commit(repo, {**head, **files}, branch, message or "Upload files")

    def tag(self, repo_id: str, tag: str, revision: str = "main") -> str:
        """Point a tag at a revision; return the commit id."""
        with self._lock:
            repo = self.repos[repo_id]
            sha = repo.resolve(revision)
            if sha is None:
                raise KeyError(revision)
            repo.tags[tag] = sha
            return sha

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """Return the files of a repository at a revision."""
        repo = self.repos[repo_id]
        sha = repo.resolve(revision)
        if sha is None:
            raise KeyError(revision)
        return dict(repo.commits[sha])

    def inject(self, fault: Fault) -> None:
        """Apply a fault to upcoming file downloads."""
        with self._lock:
            self.faults.append(fault)

    def requests(self, method: str | None = None, pattern: str | None = None) -> list[Call]:
        """Recorded calls, filtered by method and by a regex searched in the path."""
        with self._lock:
            calls = list(self.calls)
        return [
            c
            for c in calls
            if (method is None or c.method == method) and (pattern is None or re.search(pattern, c.path))
        ]

    def _new_commit(self, repo: Repo, files: dict[str, bytes], branch: str, message: str) -> str:
        self._counter += 1
        parent = repo.branches.get(branch, "")
        digest = hashlib.sha1(f"{repo.repo_id}\n{parent}\n{message}\n{self._counter}".encode())
        for path in sorted(files):
            digest.update(f"{path}\0{sha256_hex(files[path])}\n".encode())
        sha = digest.hexdigest()
        repo.commits[sha] = dict(files)
        repo.branches[branch] = sha
        for path, data in files.items():
            if is_lfs(path, data):
                self.lfs[sha256_hex(data)] = data
        return sha

    # ---- HTTP --------------------------------------------------------------------------------------------------
    def _handle(self, handler: _Handler, role: str) -> None:
        split = urlsplit(handler.path)
        call = Call(
            method=handler.command,
            path=split.path,
            query=dict(parse_qsl(split.query)),
            headers={k.lower(): v for k, v in handler.headers.items()},
            body=_read_body(handler),
        )
        with self._lock:
            self.calls.append(call)
            route = self._route_cdn if role == "cdn" else self._route_hub
            response = route(call)
            if response is None:
                self.unhandled.append(call)
                response = _error(404, f"No route for {call.method} {call.path}")
        self._send(handler, call, response)

    def _send(self, handler: _Handler, call: Call, response: _Response) -> None:
        body = response.body
        fault = response.fault
        if fault is not None and fault.kind == "corrupt" and body:
            middle = len(body) // 2
            body = body[:middle] + bytes([body[middle] ^ 0xFF]) + body[middle + 1 :]
        handler.send_response(response.status)
        headers = {"Content-Length": str(len(body)), **response.headers, "Connection": "close"}
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.close_connection = True
        if call.method == "HEAD" or not body:
            return
        if fault is not None and fault.kind == "drop":
            handler.wfile.write(body[: len(body) // 2])
            handler.wfile.flush()
            if fault.then_down:
                self.stop(("cdn",))
            handler.connection.shutdown(socket.SHUT_RDWR)
            return
        handler.wfile.write(body)

    def _take_fault(self, call: Call) -> Fault | None:
        if call.method != "GET":
            return None
        for fault in self.faults:
            if fault.times > 0 and call.path.endswith(fault.path_suffix):
                fault.times -= 1
                return fault
        return None

    def _file(self, call: Call, data: bytes, headers: dict[str, str]) -> _Response:
        """A file body, honouring `Range: bytes=N-[M]` as a resumed download sends it."""
        headers = {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream", **headers}
        match = _RANGE.match(call.headers.get("range", ""))
        if match is None:
            return _Response(200, data, headers, fault=self._take_fault(call))
        start = int(match.group(1))
        end = int(match.group(2)) if match.group(2) else len(data) - 1
        if start >= len(data):
            return _Response(416, b"", {"Content-Range": f"bytes */{len(data)}"})
        headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        return _Response(206, data[start : end + 1], headers, fault=self._take_fault(call))

    def _user(self, call: Call) -> str | None:
        return self.tokens.get(call.token) if call.token else None

    def _bad_token(self, call: Call) -> _Response | None:
        if call.token is not None and self._user(call) is None:
            return _error(401, "Invalid credentials in Authorization header")
        return None

    def _read_denied(self, repo: Repo, call: Call, *, files: bool) -> _Response | None:
        if (bad := self._bad_token(call)) is not None:
            return bad
        user = self._user(call)
        allowed = user is not None and (user == repo.owner or user in repo.readers)
        if repo.private and not allowed:
            # The Hub does not reveal that a private repository exists.
            return _error(401 if user is None else 404, "Repository not found", "RepoNotFound")
        if repo.gated and files and not allowed:
            if user is None:
                return _error(
                    401,
                    f"Access to model {repo.repo_id} is restricted. You must have access to it and be "
                    "authenticated to access it. Please log in.",
                    "GatedRepo",
                )
            return _error(
                403,
                f"Access to model {repo.repo_id} is restricted and you are not in the authorized list. "
                f"Visit {self.url}/{repo.repo_id} to ask for access.",
                "GatedRepo",
            )
        return None

    def _write_denied(self, namespace: str | None, call: Call) -> _Response | None:
        if (bad := self._bad_token(call)) is not None:
            return bad
        user = self._user(call)
        if user is None:
            return _error(401, "Invalid username or password.")
        if namespace is not None and user != namespace:
            return _error(403, f'You don\'t have the rights to create a model under the namespace "{namespace}"')
        return None

    def _repo(self, repo_id: str) -> Repo | _Response:
        repo = self.repos.get(repo_id)
        return repo if repo is not None else _error(404, "Repository not found", "RepoNotFound")

    def _commit_of(self, repo: Repo, revision: str) -> str | _Response:
        sha = repo.resolve(revision)
        return sha if sha is not None else _error(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def _route_hub(self, call: Call) -> _Response | None:
        path = call.path
        if call.method == "POST" and path == "/api/repos/create":
            return self._create_repo(call)
        if call.method == "POST" and path == "/api/validate-yaml":
            return _validate_yaml(call)
        if call.method == "GET" and path == "/api/agent-harnesses":
            # huggingface_hub fetches this registry (once a day) to describe its caller in the user agent.
            return _json(200, {"standardEnvVars": [], "harnesses": {}})
        if m := _API_REPO.match(path):
            repo = self._repo(unquote(m["repo"]))
            if isinstance(repo, _Response):
                return repo
            action, rev = m["action"], unquote(m["rev"] or "main")
            handlers = {
                ("GET", None): self._info,
                ("GET", "revision"): self._info,
                ("GET", "tree"): self._tree,
                ("POST", "preupload"): self._preupload,
                ("POST", "commit"): self._commit,
                ("POST", "tag"): self._tag,
            }
            handle = handlers.get((call.method, action))
            return handle(repo, rev, call) if handle is not None else None
        if call.method in ("HEAD", "GET") and (m := _RESOLVE.match(path)):
            return self._resolve(unquote(m["repo"]), unquote(m["rev"]), unquote(m["file"]), call)
        if call.method == "POST" and (m := _LFS.match(path)):
            return self._lfs(unquote(m["repo"]), m["op"], call)
        return None

    def _route_cdn(self, call: Call) -> _Response | None:
        if call.method in ("HEAD", "GET") and (m := _CDN_BLOB.match(call.path)):
            data = self.lfs.get(m["oid"])
            if data is None:
                return _Response(404, b"NoSuchKey")
            return self._file(call, data, {"ETag": f'"{m["oid"]}"'})
        if call.method == "PUT" and (m := _CDN_UPLOAD.match(call.path)):
            if sha256_hex(call.body) != m["oid"]:
                return _Response(400, b"BadDigest: content does not match its sha256")
            self.lfs[m["oid"]] = call.body
            return _Response(200, b"", {"ETag": f'"{m["oid"]}"'})
        return None

    # ---- download endpoints ------------------------------------------------------------------------------------
    def _info(self, repo: Repo, rev: str, call: Call) -> _Response:
        if (denied := self._read_denied(repo, call, files=False)) is not None:
            return denied
        sha = self._commit_of(repo, rev)
        if isinstance(sha, _Response):
            return sha
        return _json(
            200,
            {
                "_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24],
                "id": repo.repo_id,
                "modelId": repo.repo_id,
                "author": repo.owner,
                "sha": sha,
                "private": repo.private,
                "gated": "manual" if repo.gated else False,
                "disabled": False,
                "tags": [],
                "siblings": [{"rfilename": p} for p in sorted(repo.commits[sha])],
                "lastModified": "2026-01-01T00:00:00.000Z",
            },
        )

    def _tree(self, repo: Repo, rev: str, call: Call) -> _Response:
        if (denied := self._read_denied(repo, call, files=False)) is not None:
            return denied
        sha = self._commit_of(repo, rev)
        if isinstance(sha, _Response):
            return sha
        entries = []
        for p, data in sorted(repo.commits[sha].items()):
            entry: dict[str, object] = {"type": "file", "oid": git_blob_sha1(data), "size": len(data), "path": p}
            if is_lfs(p, data):
                entry["lfs"] = {"oid": sha256_hex(data), "size": len(data), "pointerSize": 134}
            entries.append(entry)
        return _json(200, entries)

    def _resolve(self, repo_id: str, rev: str, filename: str, call: Call) -> _Response:
        repo = self._repo(repo_id)
        if isinstance(repo, _Response):
            return repo
        if (denied := self._read_denied(repo, call, files=True)) is not None:
            return denied
        sha = self._commit_of(repo, rev)
        if isinstance(sha, _Response):
            return sha
        data = repo.commits[sha].get(filename)
        if data is None:
            return _error(404, "Entry not found", "EntryNotFound", **{"X-Repo-Commit": sha})
        if is_lfs(filename, data):
            oid = sha256_hex(data)
            return _Response(
                302,
                b"",
                {
                    "Location": f"{self.cdn_url}/blobs/{oid}",
                    "X-Repo-Commit": sha,
                    "X-Linked-Etag": f'"{oid}"',
                    "X-Linked-Size": str(len(data)),
                    "ETag": f'"{git_blob_sha1(oid.encode())}"',
                },
            )
        return self._file(call, data, {"ETag": f'"{git_blob_sha1(data)}"', "X-Repo-Commit": sha})

    # ---- upload endpoints --------------------------------------------------------------------------------------
    def _create_repo(self, call: Call) -> _Response:
        payload = call.json()
        namespace = payload.get("organization") or self._user(call)
        if (denied := self._write_denied(namespace, call)) is not None:
            return denied
        repo_id = f"{namespace}/{payload['name']}"
        if repo_id in self.repos:
            return _json(409, {"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"})
        self.create_repo(repo_id, private=payload.get("visibility") == "private" or payload.get("private") is True)
        return _json(200, {"url": f"{self.url}/{repo_id}", "name": repo_id, "id": repo_id})

    def _preupload(self, repo: Repo, rev: str, call: Call) -> _Response:
        if (denied := self._write_denied(repo.owner, call)) is not None:
            return denied
        sha = self._commit_of(repo, rev)
        if isinstance(sha, _Response):
            return sha
        payload = call.json()
        head = repo.commits[sha]
        answers = []
        for item in payload["files"]:
            lfs = is_lfs(item["path"], base64.b64decode(item["sample"]))
            existing = head.get(item["path"])
            oid = None
            if existing is not None:
                oid = sha256_hex(existing) if lfs else git_blob_sha1(existing)
            answers.append(
                {"path": item["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid}
            )
        return _json(200, {"files": answers, "commitOid": sha})

    def _lfs(self, repo_id: str, op: str, call: Call) -> _Response:
        repo = self._repo(repo_id)
        if isinstance(repo, _Response):
            return repo
        if (denied := self._write_denied(repo.owner, call)) is not None:
            return denied
        payload = call.json()
        if op == "verify":
            data = self.lfs.get(payload["oid"])
            if data is None or len(data) != payload["size"]:
                return _error(404, f"LFS object {payload['oid']} was not uploaded")
            return _json(200, {"success": True})
        objects = []
        for obj in payload["objects"]:
            entry: dict[str, object] = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.lfs:
                entry["actions"] = {
                    "upload": {"href": f"{self.cdn_url}/upload/{obj['oid']}"},
                    "verify": {"href": f"{self.url}/{repo.repo_id}.git/info/lfs/objects/verify"},
                }
            objects.append(entry)
        return _json(200, {"transfer": "basic", "objects": objects})

    def _commit(self, repo: Repo, rev: str, call: Call) -> _Response:
        if (denied := self._write_denied(repo.owner, call)) is not None:
            return denied
        if rev not in repo.branches:
            return _error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        lines = call.ndjson()
        if not lines or lines[0].get("key") != "header":
            return _error(400, "The first line of a commit must be its header")
        files = dict(repo.commits[repo.branches[rev]])
        for item in lines[1:]:
            key, value = item["key"], item["value"]
            if key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "lfsFile":
                if value["oid"] not in self.lfs:
                    return _error(400, f"LFS object {value['oid']} for {value['path']} was not uploaded")
                files[value["path"]] = self.lfs[value["oid"]]
            elif key == "deletedFile":
                files.pop(value["path"], None)
            else:
                return _error(400, f"Unsupported commit operation {key}")
        sha = self._new_commit(repo, files, rev, lines[0]["value"]["summary"])
        return _json(
            200,
            {
                "success": True,
                "commitOid": sha,
                "commitUrl": f"{self.url}/{repo.repo_id}/commit/{sha}",
                "hookOutput": "",
                "pullRequestUrl": None,
            },
        )

    def _tag(self, repo: Repo, rev: str, call: Call) -> _Response:
        if (denied := self._write_denied(repo.owner, call)) is not None:
            return denied
        sha = self._commit_of(repo, rev)
        if isinstance(sha, _Response):
            return sha
        payload = call.json()
        tag = payload["tag"]
        if tag in repo.tags or tag in repo.branches:
            return _error(409, f"Tag {tag} already exists")
        repo.tags[tag] = sha
        return _json(200, {})


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    """Read a request body sent with Content-Length or chunked transfer encoding."""
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while handler.rfile.readline().strip():
                    pass  # trailers
                return b"".join(chunks)
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
    length = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(length) if length else b""


def _validate_yaml(call: Call) -> _Response:
    """Check a README's YAML front matter, and the shape of its model-index, like the Hub's validator."""
    payload = call.json()
    match = re.match(r"^---\n(.*?)\n---\n", payload["content"], re.S)
    if match is None:
        return _json(200, {"errors": [], "warnings": [{"message": "empty or missing yaml metadata in repo card"}]})
    try:
        meta = yaml.safe_load(match.group(1))
    except yaml.YAMLError as e:
        return _json(400, {"errors": [{"message": f"Invalid YAML: {e}"}]})
    problems = _model_index_problems(meta) if isinstance(meta, dict) else ["metadata must be a mapping"]
    if problems:
        return _json(400, {"errors": [{"message": p} for p in problems]})
    return _json(200, {"errors": [], "warnings": []})


def _model_index_problems(meta: dict) -> list[str]:
    problems = []
    for entry in meta.get("model-index", []) or []:
        if not isinstance(entry, dict) or not entry.get("name"):
            problems.append("model-index entries need a name")
            continue
        for result in entry.get("results", []):
            if not isinstance(result.get("task"), dict) or not result["task"].get("type"):
                problems.append("model-index results need task.type")
            dataset = result.get("dataset")
            if not isinstance(dataset, dict) or not dataset.get("type") or not dataset.get("name"):
                problems.append("model-index results need dataset.type and dataset.name")
            for metric in result.get("metrics", []):
                if not metric.get("type") or not isinstance(metric.get("value"), (int, float)):
                    problems.append(f"model-index metric needs a type and a numeric value: {metric}")
    return problems
