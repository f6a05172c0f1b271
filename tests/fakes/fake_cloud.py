"""A stand-in for `gcloud` and `xpk` in tests: records every call and plays resource states.

FAKE_CLOUD_LOG: file that receives one JSON argv list per call; its .state sibling keeps the
  resources that exist, per name (so a sweep of several trials gets one life cycle per trial).
FAKE_CLOUD_SCENARIO: ok | create_fails | never_active | provisioning_fails (ACCEPTED, then FAILED) |
  run_fails | preempted_while_running (alias: preempted) | delete_fails |
  ssh_flaky (the first install ssh is refused, as on a just-booted VM) |
  preempted_once (the first training is preempted: SIGTERM once step $FAKE_CLOUD_PREEMPT_AT_STEP
  is logged, its queued resource SUSPENDED; later ones run to the end).
Queued resources go ACCEPTED -> PROVISIONING -> ACTIVE on successive describes; xpk workloads
answer `list --wait-for-job-completion` with 124 (not finished) once, then 0 or 125 as real xpk.
FAKE_CLOUD_TPU_VMS: comma-separated names of TPU VMs that exist from the start (tpu-vm launcher).
Calls on a resource that does not exist fail with NOT_FOUND, as the real CLIs do.
A successful train command writes WORKDIR/result.json when WORKDIR is a local path; with
FAKE_CLOUD_RUN_TRAIN=1 it runs the real `python -m scaling.train` here instead, on this
machine's devices (without --distributed), and answers with its exit status.
"""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

QR_STATES = ["ACCEPTED", "PROVISIONING", "ACTIVE"]


def main(tool: str, argv: list[str]) -> int:
    log = Path(os.environ["FAKE_CLOUD_LOG"])
    scenario = os.environ.get("FAKE_CLOUD_SCENARIO", "ok").replace("preempted_while_running", "preempted")
    with open(log, "a") as handle:
        handle.write(json.dumps([tool, *argv]) + "\n")
    state_file = log.with_suffix(".state")
    state = json.loads(state_file.read_text()) if state_file.exists() else new_state()
    play = gcloud if tool == "gcloud" else xpk
    code, out, err = play(argv, scenario, state)
    state_file.write_text(json.dumps(state))
    print(out)
    print(err, file=sys.stderr)
    return code


def new_state() -> dict:
    existing = [name for name in os.environ.get("FAKE_CLOUD_TPU_VMS", "").split(",") if name]
    return {"resources": {name: {"describes": 0, "trained": False} for name in existing}, "ssh_refused": False}


def gcloud(argv: list[str], scenario: str, state: dict) -> tuple[int, str, str]:
    words = " ".join(argv)
    verb = " ".join(argv[2:4])  # compute tpus <group> <verb>
    name = argv[4] if len(argv) > 4 else ""
    resources = state["resources"]
    if verb == "queued-resources create":
        if scenario == "create_fails":
            return 1, "", "ERROR: (gcloud.compute.tpus.queued-resources.create) Quota exceeded for TPU cores"
        resources[name] = {"describes": 0, "trained": False}
        return 0, "", f"Create request issued for: [{name}]"
    if name not in resources:
        return 1, "", f"ERROR: (gcloud) NOT_FOUND: {name} was not found"
    resource = resources[name]
    if verb == "tpu-vm describe":
        return 0, "PREEMPTED" if scenario == "preempted" and resource["trained"] else "READY", ""
    if verb == "queued-resources describe":
        resource["describes"] += 1
        if scenario == "never_active":
            return 0, "WAITING_FOR_RESOURCES", ""
        if scenario == "provisioning_fails":
            return 0, "ACCEPTED" if resource["describes"] == 1 else "FAILED", ""
        if scenario == "preempted" and resource["trained"] or resource.get("preempted"):
            return 0, "SUSPENDED", ""
        return 0, QR_STATES[min(resource["describes"], len(QR_STATES)) - 1], ""
    if verb == "queued-resources delete":
        if scenario == "delete_fails":
            return 1, "", "ERROR: (gcloud) PERMISSION_DENIED: tpu.queuedResources.delete"
        del resources[name]
        return 0, "", ""
    if verb == "tpu-vm ssh":
        return tpu_vm_ssh(words, scenario, state, resource)
    return 2, "", f"fake gcloud does not know: {words}"


def tpu_vm_ssh(words: str, scenario: str, state: dict, resource: dict) -> tuple[int, str, str]:
    if "scaling.train" not in words:
        if scenario == "ssh_flaky" and not state["ssh_refused"]:
            state["ssh_refused"] = True
            return 255, "", "ssh: connect to host 10.0.0.2 port 22: Connection refused"
        return 0, "", ""
    resource["trained"] = True
    if os.environ.get("FAKE_CLOUD_RUN_TRAIN"):
        preempt = scenario == "preempted_once" and not state.get("preempted_once")
        code, out, err = run_train(words, int(os.environ["FAKE_CLOUD_PREEMPT_AT_STEP"]) if preempt else None)
        if preempt:
            state["preempted_once"] = resource["preempted"] = True
        return code, out, err
    if scenario == "run_fails":
        return 1, "", "Traceback (most recent call last):\nRuntimeError: boom"
    if scenario == "preempted":
        return 255, "", "Connection to 10.0.0.2 closed by remote host."
    write_result(words)
    return 0, '{"status": "ok"}', ""


def xpk(argv: list[str], scenario: str, state: dict) -> tuple[int, str, str]:
    words = " ".join(argv)
    workloads = state["resources"]
    name = _flag(argv, "--workload") or _flag(argv, "--wait-for-job-completion") or _flag(argv, "--filter-by-job")
    if argv[:2] == ["workload", "create"]:
        if scenario == "create_fails":
            return 1, "", "[XPK] Workload create request returned ERROR 1"
        workloads[name] = {"polls": 0, "command": _flag(argv, "--command")}
        return 0, "[XPK] Exiting XPK cleanly", ""
    if name not in workloads:
        return 1, f"[XPK] Workload named {name} does not exist.", ""
    workload = workloads[name]
    if argv[:2] == ["workload", "list"] and _flag(argv, "--wait-for-job-completion"):
        workload["polls"] += 1
        if workload["polls"] < 2 or scenario == "never_active":
            return 124, "[XPK] Timed out waiting for your workload after 0s", ""
        if scenario == "ok":
            write_result(workload["command"])
            return 0, "[XPK] Your workload finished with status: Completed", ""
        return 125, "[XPK] Your workload did not complete successfully", ""
    if argv[:2] == ["workload", "list"]:
        status, message = ("Evicted", "Preempted to accommodate a higher priority Workload") \
            if scenario == "preempted" else ("Finished", "JobSet failed")
        header = "Jobset Name   Created Time   Priority   TPU VMs Needed   TPU VMs Running/Ran   TPU VMs Done   " \
                 "Status   Status Message   Status Time"
        return 0, f"{header}\n{name}   2025-1-1T1:00:00Z   medium   4   4   <none>   {status}   {message}   " \
                  "2025-1-1T1:05:00Z", ""
    if argv[:2] == ["workload", "delete"]:
        del workloads[name]
        return 0, "", ""
    return 2, "", f"fake xpk does not know: {words}"


def _flag(argv: list[str], flag: str) -> str:
    for index, arg in enumerate(argv):
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
        if arg == flag and index + 1 < len(argv):
            return argv[index + 1]
    return ""


def run_train(command: str, preempt_at_step: int | None) -> tuple[int, str, str]:
    """Run the worker's training command here; SIGTERM it once `preempt_at_step` is logged."""
    args = [a for a in shlex.split(command.split("-m scaling.train", 1)[1]) if a != "--distributed"]
    process = subprocess.Popen([os.environ.get("FAKE_CLOUD_PYTHON", sys.executable), "-m", "scaling.train", *args],
                               cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    lines = []
    for line in process.stderr:
        lines.append(line)
        if preempt_at_step is not None and line.startswith(f"step {preempt_at_step}/"):
            process.send_signal(signal.SIGTERM)
    out = process.stdout.read()
    return process.wait(), out.strip().splitlines()[-1] if out.strip() else "", "".join(lines[-3:])


def write_result(command: str) -> None:
    match = re.search(r"--workdir (\S+)", command)
    workdir_text = match.group(1).strip("'\"") if match else ""
    if workdir_text and "://" not in workdir_text:  # a bucket is not this disk
        workdir = Path(workdir_text)
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "result.json").write_text(json.dumps({"status": "ok", "eval_loss": 1.5, "hr@10": 0.25}))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
