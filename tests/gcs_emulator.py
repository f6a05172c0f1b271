"""A GCS emulator for the object-store tests: tests/gcs_server.py (gcp-storage-emulator from PyPI,
with generation preconditions) on a free port, in memory, one bucket; every client the lab uses
pointed at it through the environment, which the tests' subprocesses inherit:

    STORAGE_EMULATOR_HOST      gcsfs and google-cloud-storage (epath's gs://, tensorboardX, tensorboard)
    TENSORSTORE_GCS_HTTP_URL   tensorstore's gcs kvstore (orbax's arrays, scaling/services/lease.py)
    GOOGLE_AUTH_TOKEN_FOR_TESTING, NO_GCE_CHECK, FSSPEC_GCS_TOKEN=anon: no credential discovery
    GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false: gcsfs 2026 otherwise asks a gRPC control API for
        the bucket's layout, which no emulator serves, and waits ~60 s on every call
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator

os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")  # read when gcsfs is imported

SERVER = Path(__file__).with_name("gcs_server.py")
PROJECT = "lab-tests"


def client_environment(endpoint: str) -> dict[str, str]:
    return {"STORAGE_EMULATOR_HOST": endpoint, "TENSORSTORE_GCS_HTTP_URL": endpoint,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator", "NO_GCE_CHECK": "true",
            "FSSPEC_GCS_TOKEN": "anon", "FSSPEC_GCS_PROJECT": PROJECT, "GOOGLE_CLOUD_PROJECT": PROJECT,
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _reset_clients() -> None:
    """Forget cached filesystems, so that this process's gcsfs talks to the current emulator."""
    import fsspec
    import fsspec.config
    import gcsfs
    import gcsfs.core
    import gcsfs.retry
    from etils.epath import backend

    for protocol in ("gs", "gcs"):
        fsspec.config.conf.setdefault(protocol, {}).update(token="anon", project=PROJECT)
        if gcsfs.GCSFileSystem is not gcsfs.core.GCSFileSystem:  # imported before the setting above
            fsspec.register_implementation(protocol, gcsfs.core.GCSFileSystem, clobber=True)
    gcsfs.core.GCSFileSystem.clear_instance_cache()
    gcsfs.retry.errs.discard(501)  # "not implemented" is never transient
    backend.fsspec_backend._get_filesystem.cache_clear()


def _faults(method: str, rule: dict | None = None) -> list[dict]:
    endpoint = os.environ["STORAGE_EMULATOR_HOST"]
    data = json.dumps(rule).encode() if rule is not None else None
    ask = urllib.request.Request(endpoint + "/_faults", data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(ask, timeout=5) as answer:
        return json.loads(answer.read())["rules"]


def inject_faults(match: str, status: int = 503, times: int = 1) -> None:
    """The running emulator answers the next `times` writes whose decoded URL the regex `match`
    finds with `status`."""
    _faults("POST", {"match": match, "status": status, "times": times})


def served_faults() -> dict[str, int]:
    """match -> how many requests each injected rule has answered so far."""
    return {rule["match"]: rule["served"] for rule in _faults("GET")}


def clear_faults() -> None:
    _faults("DELETE")


@contextlib.contextmanager
def gcs_emulator(bucket: str = "lab-tests", timeout: float = 20.0) -> Iterator[str]:
    """Start the emulator, yield gs://BUCKET, stop it and restore the environment."""
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    # the server's log to a file: a pipe nobody reads fills up with the tracebacks of requests whose
    # clients hung up (tensorstore closes connections early) and blocks the server
    server_log = tempfile.TemporaryFile()
    process = subprocess.Popen([sys.executable, str(SERVER), "start", "--host", "127.0.0.1", "--port", str(port),
                                "--in-memory", "--default-bucket", bucket, "-q"],
                               env={**os.environ, "GCS_EMULATOR_PARENT_PID": str(os.getpid())},
                               stdout=subprocess.DEVNULL, stderr=server_log)
    saved = {key: os.environ.get(key) for key in client_environment(endpoint)}
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                server_log.seek(0)
                raise RuntimeError(f"the GCS emulator exited ({process.returncode}): "
                                   f"{server_log.read().decode(errors='replace')[-500:]}")
            try:
                with urllib.request.urlopen(endpoint + "/", timeout=0.5) as answer:
                    if answer.read() == b"OK":
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the GCS emulator did not answer at {endpoint} in {timeout} s") from None
                time.sleep(0.05)
        os.environ.update(client_environment(endpoint))
        _reset_clients()
        yield f"gs://{bucket}"
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if process.poll() is None:  # in memory, nothing to keep: SIGINT's orderly stop took 5 s
            process.kill()
            process.wait()
        server_log.close()
        _reset_clients()

