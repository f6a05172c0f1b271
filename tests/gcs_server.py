"""gcp-storage-emulator (PyPI) with what the lab's object-store tests need of real GCS, added in
the emulator's own process: `python tests/gcs_server.py start --port N --in-memory ...` (its CLI).

The stock emulator (2026.7.19) ignores generation preconditions and sends no generation headers,
so a lease on ifGenerationMatch (scaling/services/lease.py) or tensorstore's conditional writes could not
be tested against it. Added here, as GCS documents them:
- ifGenerationMatch (0: the object must not exist), ifGenerationNotMatch and
  ifMetagenerationMatch on writes, copies, moves and deletes: 412 Precondition Failed; on reads
  412, or 304 for ifGenerationNotMatch;
- x-goog-generation and x-goog-metageneration on object reads (tensorstore's read stamps);
- startOffset / endOffset when listing (tensorstore lists key ranges with them);
- objects.moveTo (gcsfs renames with it; the stock emulator answers 501, which gcsfs retries
  for about 33 s a file before copying instead).
The server handles one request at a time, so a precondition's check and the write it guards are
atomic. It exits when the process that started it is gone (GCS_EMULATOR_PARENT_PID).

Faults for the tests (not GCS): POST /_faults with {"match": REGEX, "status": 503, "times": N}
answers the next N write requests (POST, PUT, PATCH) whose decoded URL REGEX matches with that
status, as GCS does when it is overloaded; GET /_faults lists the rules with how many each served.
"""

import http.server
import json
import os
import re
import sys
import threading
import time
from http import HTTPStatus
from urllib.parse import parse_qs, unquote, urlparse

from gcp_storage_emulator import __main__ as emulator_main
from gcp_storage_emulator import server
from gcp_storage_emulator import storage
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

http.server.HTTPServer.request_queue_size = 1024  # tensorstore opens many connections at once
request = threading.local()  # the query and method of the request being handled


class PreconditionFailed(Exception):
    def __init__(self, status: HTTPStatus):
        super().__init__(status)
        self.status = status


def check(current: dict | None, query: dict, method: str) -> None:
    """Raise PreconditionFailed when `query`'s preconditions do not hold for `current` (None: absent)."""
    given = {key: values[0] for key, values in query.items()}
    generation = int(current["generation"]) if current else 0
    if "ifGenerationMatch" in given and int(given["ifGenerationMatch"]) != generation:
        raise PreconditionFailed(HTTPStatus.PRECONDITION_FAILED)
    if "ifMetagenerationMatch" in given and (
            current is None or int(given["ifMetagenerationMatch"]) != int(current["metageneration"])):
        raise PreconditionFailed(HTTPStatus.PRECONDITION_FAILED)
    if "ifGenerationNotMatch" in given and int(given["ifGenerationNotMatch"]) == generation:
        raise PreconditionFailed(HTTPStatus.NOT_MODIFIED if method == "GET" else HTTPStatus.PRECONDITION_FAILED)


def stored(store: storage.Storage, bucket: str, name: str) -> dict | None:
    return store.objects.get(bucket, {}).get(name)


original_create = storage.Storage.create_file
original_delete = storage.Storage.delete_file
original_get = storage.Storage.get_file_obj
original_list = storage.Storage.get_file_list
original_handle = server.Router.handle
original_close = server.Response.close


def create_file(self, bucket_name, file_name, content, file_obj, file_id=None):
    query = getattr(request, "query", None) or {}
    if getattr(request, "to_destination", False):  # copy / rewrite / compose / move: the target's preconditions
        query = {key: value for key, value in query.items() if not key.startswith("ifSource")}
    check(stored(self, bucket_name, file_name), query, "WRITE")
    return original_create(self, bucket_name, file_name, content, file_obj, file_id)


def delete_file(self, bucket_name, file_name):
    current = stored(self, bucket_name, file_name)
    if current is not None and getattr(request, "method", None) == "DELETE":
        check(current, getattr(request, "query", None) or {}, "DELETE")
    return original_delete(self, bucket_name, file_name)


def get_file_obj(self, bucket_name, file_name):
    found = original_get(self, bucket_name, file_name)
    if getattr(request, "method", None) == "GET":
        check(found, getattr(request, "query", None) or {}, "GET")
        request.found = found
    return found


def get_file_list(self, *args, **kwargs):
    files, prefixes = original_list(self, *args, **kwargs)
    query = getattr(request, "query", None) or {}
    low, high = query.get("startOffset", [None])[0], query.get("endOffset", [None])[0]
    if low is not None or high is not None:
        inside = lambda name: (low is None or name >= low) and (high is None or name < high)
        files, prefixes = [f for f in files if inside(f["name"])], [p for p in prefixes if inside(p)]
    return files, prefixes


fault_rules: list[dict] = []  # {"match", "status", "times", "served"}, set through /_faults
WRITE_METHODS = ("POST", "PUT", "PATCH")


def answer(handler, status: int, body: dict) -> None:
    payload = json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(payload)))
    handler.end_headers()
    handler.wfile.write(payload)


def read_body(handler) -> bytes:
    return handler.rfile.read(int(handler.headers.get("Content-Length") or 0))


def faults(handler, method: str) -> None:
    if method == "POST":
        rule = json.loads(read_body(handler))
        fault_rules.append({"match": rule["match"], "status": int(rule.get("status", 503)),
                            "times": int(rule.get("times", 1)), "served": 0})
    elif method == "DELETE":
        fault_rules.clear()
    answer(handler, 200, {"rules": fault_rules})


def injected_fault(handler, method: str) -> bool:
    """Answer the request with a fault when a rule asks for it (its body read and dropped)."""
    if method not in WRITE_METHODS:
        return False
    url = unquote(handler.path)
    for rule in fault_rules:
        if rule["served"] < rule["times"] and re.search(rule["match"], url):
            rule["served"] += 1
            read_body(handler)
            answer(handler, rule["status"], {"error": {"code": rule["status"], "message": "injected by the test"}})
            return True
    return False


def handle(self, method):
    handler = self._request_handler
    method = handler.headers.get("x-http-method-override") or method
    parsed = urlparse(handler.path)
    if parsed.path == "/_faults":
        return faults(handler, method)
    if injected_fault(handler, method):
        return
    request.query, request.method, request.found = parse_qs(parsed.query), method, None
    request.to_destination = any(part in parsed.path for part in ("/copyTo/", "/rewriteTo/", "/compose", "/moveTo/"))
    try:
        original_handle(self, method)
    except PreconditionFailed as failed:  # raised before the handler wrote its response
        response = server.Response(handler)
        response.status = failed.status
        if failed.status != HTTPStatus.NOT_MODIFIED:
            response.json({"error": {"code": int(failed.status),
                                     "message": "conditionNotMet: At least one of the pre-conditions you specified "
                                                "did not hold."}})
        response.close()
    finally:
        request.query = request.method = request.found = None


def close(self):
    found = getattr(request, "found", None)
    if found is not None and self.status in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
        self["x-goog-generation"] = str(found["generation"])
        self["x-goog-metageneration"] = str(found["metageneration"])
        self["x-goog-stored-content-length"] = str(found.get("size", ""))
    return original_close(self)


def move_to(req, response, store, *args, **kwargs):
    params = req.params
    try:
        moved = objects._copy(req.base_url, store, params["bucket_name"], params["object_id"],
                              params["bucket_name"], params["dest_object_id"])
        store.delete_file(params["bucket_name"], params["object_id"])
        response.json(moved)
    except NotFound:
        response.status = HTTPStatus.NOT_FOUND


def exit_with_parent() -> None:
    """The test process may die without its teardown (SIGKILL, an abort): do not outlive it."""
    parent = int(os.environ.get("GCS_EMULATOR_PARENT_PID") or 0)
    while parent:
        if os.getppid() != parent:
            os._exit(0)
        time.sleep(0.5)


storage.Storage.create_file = create_file
storage.Storage.delete_file = delete_file
storage.Storage.get_file_obj = get_file_obj
storage.Storage.get_file_list = get_file_list
server.Router.handle = handle
server.Response.close = close
server.HANDLERS = ((r"^/storage/v1/b/(?P<bucket_name>[-.\w]+)/o/(?P<object_id>.*[^/]+)"
                    r"/moveTo/o/(?P<dest_object_id>.*[^/]+)$", {"POST": move_to}),) + tuple(server.HANDLERS)

if __name__ == "__main__":
    threading.Thread(target=exit_with_parent, daemon=True).start()
    sys.exit(emulator_main.main(sys.argv[1:]))
