"""A stand-in for `gcloud` and `xpk` in tests: records every call and plays resource states.

FAKE_CLOUD_LOG: file that receives one JSON argv list per call (its .state sibling keeps state).
FAKE_CLOUD_SCENARIO: ok | create_fails | never_active | run_fails | preempted.
A successful train command writes WORKDIR/result.json, as the real trial would.
"""

import json
import os
import re
import sys
from pathlib import Path


def main(tool: str, argv: list[str]) -> int:
    log = Path(os.environ["FAKE_CLOUD_LOG"])
    scenario = os.environ.get("FAKE_CLOUD_SCENARIO", "ok")
    with open(log, "a") as handle:
        handle.write(json.dumps([tool, *argv]) + "\n")
    state_file = log.with_suffix(".state")
    state = json.loads(state_file.read_text()) if state_file.exists() else {"polls": 0, "trained": False}
    words = " ".join(argv)
    code, out, err = 0, "", ""
    if tool == "gcloud" and "queued-resources create" in words or tool == "xpk" and "workload create" in words:
        if scenario == "create_fails":
            code, err = 1, "ERROR: (gcloud) Quota exceeded for TPU cores"
        if tool == "xpk" and code == 0:
            state["trained"] = _train(words, scenario)
    elif "queued-resources describe" in words:
        state["polls"] += 1
        if scenario == "never_active":
            out = "WAITING_FOR_RESOURCES"
        elif scenario == "preempted" and state["trained"]:
            out = "SUSPENDED"
        else:
            out = ["WAITING_FOR_RESOURCES", "PROVISIONING"][state["polls"] - 1] if state["polls"] <= 2 else "ACTIVE"
    elif "tpu-vm ssh" in words and "scaling.train" in words:
        state["trained"] = True
        if scenario == "run_fails":
            code, err = 1, "Traceback (most recent call last):\nRuntimeError: boom"
        elif scenario == "preempted":
            code, err = 255, "Connection closed by remote host"
        else:
            _train(words, scenario)
    elif "workload list" in words:
        state["polls"] += 1
        name = re.search(r"--filter-by-job=(\S+)", words).group(1)
        final = {"run_fails": "Failed", "preempted": "Preempted"}.get(scenario, "Completed")
        out = f"Jobset Name   Status\n{name}   {'Running' if state['polls'] < 2 else final}"
    state_file.write_text(json.dumps(state))
    print(out)
    print(err, file=sys.stderr)
    return code


def _train(words: str, scenario: str) -> bool:
    match = re.search(r"--workdir (\S+)", words)
    workdir_text = match.group(1).strip("'\"") if match else ""
    if scenario == "ok" and workdir_text and "://" not in workdir_text:  # a bucket is not this disk
        workdir = Path(workdir_text)
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "result.json").write_text(json.dumps({"status": "ok", "eval_loss": 1.5, "hr@10": 0.25}))
    return True


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
