"""A stand-in for SLURM's sbatch, squeue, sacct, scancel and srun in tests: a one-machine cluster.

FAKE_SLURM_DIR: where jobs live (jobs/ID.json: name, script, state, exit code) and every call is
  logged (calls.jsonl, one JSON argv list per call).
FAKE_SLURM_SCENARIO: ok | fail (the training task exits 1) | timeout (the first job of a trial
  ends TIMEOUT after its tasks got SIGTERM; later ones run) | requeue (the first run of a job is
  preempted at step $FAKE_SLURM_PREEMPT_AT_STEP: its tasks get SIGTERM, the job shows REQUEUED,
  then runs its script again under the same job id, as `#SBATCH --requeue` makes SLURM do).
FAKE_SLURM_FLAKY=1: squeue times out twice and sacct lags once (see _flaky).
sbatch starts the batch script in the background (a detached job process, setting SLURM_JOB_ID,
SLURM_JOB_NODELIST=localhost, SLURM_NNODES from #SBATCH --nodes); srun runs its command once
per node as local processes with SLURM_PROCID, SLURM_LOCALID, SLURM_NTASKS, SLURM_STEP_NODELIST
and SLURM_STEP_NUM_NODES set, as a real step's tasks see them. With FAKE_SLURM_RUN_TRAIN=0, srun
writes WORKDIR/result.json instead of training, after $FAKE_SLURM_JOB_SECONDS (fast tests of the
launcher's bookkeeping).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ACTIVE = ("PENDING", "RUNNING", "REQUEUED")


def root() -> Path:
    return Path(os.environ["FAKE_SLURM_DIR"])


def job_file(job: str) -> Path:
    return root() / "jobs" / f"{job}.json"


def load(job: str) -> dict:
    return json.loads(job_file(job).read_text())


def save(job: str, record: dict) -> None:
    path = job_file(job)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(record))
    partial.replace(path)


def directive(script: str, name: str, default: str) -> str:
    match = re.search(rf"^#SBATCH --{name}=(\S+)", script, re.MULTILINE)
    return match.group(1) if match else default


def sbatch(argv: list[str]) -> int:
    script_path = Path(argv[-1])
    script = script_path.read_text()
    (root() / "jobs").mkdir(parents=True, exist_ok=True)
    job = str(1000 + len(list((root() / "jobs").glob("*.json"))))
    name = directive(script, "job-name", script_path.stem)
    first_of_trial = not any(load(p.stem)["name"] == name for p in (root() / "jobs").glob("*.json"))
    save(job, {"name": name, "script": str(script_path), "state": "PENDING", "exit": "", "pid": None,
               "first_of_trial": first_of_trial})
    process = subprocess.Popen([sys.executable, __file__, "job", job], start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    record = load(job)
    record["pid"] = process.pid
    save(job, record)
    print(f"{job};fake")
    return 0


def run_job(job: str) -> int:
    """The job's life: its script run (twice when requeued), its final state recorded."""
    record = load(job)
    script = Path(record["script"]).read_text()
    scenario = os.environ.get("FAKE_SLURM_SCENARIO", "ok")
    output = Path(directive(script, "output", str(root() / f"slurm-{job}.out")).replace("%j", job))
    env = dict(os.environ, SLURM_JOB_ID=job, SLURM_JOB_NODELIST="localhost",
               SLURM_NNODES=directive(script, "nodes", "1"))
    record.update(state="RUNNING")
    save(job, record)
    with open(output, "ab") as log:
        preempted = scenario in ("requeue", "timeout") and record["first_of_trial"]
        # the step's srun signals its tasks once one logs this step (SLURM's preemption / time-limit signal)
        first_env = dict(env, FAKE_SLURM_PREEMPT_AT=os.environ.get("FAKE_SLURM_PREEMPT_AT_STEP", "3")) if preempted else env
        batch = subprocess.Popen(["bash", record["script"]], env=first_env, stdout=log, stderr=log,
                                 start_new_session=True)
        if preempted:
            code = batch.wait()
            if scenario == "timeout":
                record.update(state="TIMEOUT", exit=f"{code}:0")
                save(job, record)
                return 0
            record.update(state="REQUEUED")
            save(job, record)
            time.sleep(1.0)
            record.update(state="RUNNING", first_of_trial=False)
            save(job, record)
            batch = subprocess.Popen(["bash", record["script"]], env=env, stdout=log, stderr=log, start_new_session=True)
        code = batch.wait()
    record.update(state="COMPLETED" if code == 0 else "FAILED", exit=f"{code}:0")
    save(job, record)
    return 0


def _flaky(tool: str) -> bool:
    """With FAKE_SLURM_FLAKY=1, the first two `squeue --jobs` calls and the first sacct call of a
    run misbehave: the controller times out, the accounting lags."""
    if os.environ.get("FAKE_SLURM_FLAKY") != "1":
        return False
    counter = root() / f"{tool}.calls"
    calls = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(calls))
    return calls <= (2 if tool == "squeue" else 1)


def squeue(argv: list[str]) -> int:
    args = dict(arg.split("=", 1) for arg in argv if "=" in arg)
    if "--jobs" in args:
        job = args["--jobs"]
        if _flaky("squeue"):
            print("slurm_load_jobs error: Socket timed out on send/recv operation", file=sys.stderr)
            return 1
        if job_file(job).exists() and load(job)["state"] in ACTIVE:
            print(load(job)["state"])
        return 0
    for path in sorted((root() / "jobs").glob("*.json")):  # --me --name=NAME --format=%i
        record = json.loads(path.read_text())
        if record["name"] == args.get("--name") and record["state"] in ACTIVE:
            print(path.stem)
    return 0


def sacct(argv: list[str]) -> int:
    job = next(arg.split("=", 1)[1] for arg in argv if arg.startswith("--jobs="))
    if not job_file(job).exists():
        print(f"sacct: error: job {job} not found", file=sys.stderr)
        return 1
    record = load(job)
    if _flaky("sacct"):
        print("RUNNING|0:0")
        return 0
    print(f"{record['state']}|{record['exit'] or '0:0'}")
    return 0


def scancel(argv: list[str]) -> int:
    job = argv[-1]
    record = load(job)
    if record["state"] in ACTIVE and record["pid"]:
        try:
            os.killpg(record["pid"], signal.SIGKILL)
        except ProcessLookupError:
            pass
    record.update(state="CANCELLED", exit="0:9")
    save(job, record)
    return 0


def srun(argv: list[str]) -> int:
    command = argv[next(i for i, arg in enumerate(argv) if not arg.startswith("-")):]  # after srun's own options
    tasks = int(os.environ.get("SLURM_NNODES", "1"))
    if os.environ.get("FAKE_SLURM_SCENARIO") == "fail":
        print("srun: error: task 0: Exited with exit code 1", file=sys.stderr)
        return 1
    if os.environ.get("FAKE_SLURM_RUN_TRAIN", "1") == "0":
        time.sleep(float(os.environ.get("FAKE_SLURM_JOB_SECONDS", "0")))
        workdir = Path(command[command.index("--workdir") + 1])
        (workdir / "result.json").write_text(json.dumps({"status": "ok", "steps": 1}))
        return 0
    command = [sys.executable if word == "python" else word for word in command]
    preempt_at = os.environ.pop("FAKE_SLURM_PREEMPT_AT", None)
    processes = [subprocess.Popen(command, env=dict(os.environ, SLURM_PROCID=str(i), SLURM_LOCALID=str(i),
                                                    SLURM_NTASKS=str(tasks), SLURM_STEP_NODELIST="localhost",
                                                    SLURM_STEP_NUM_NODES="1"),
                                  stderr=subprocess.PIPE if i == 0 and preempt_at else None, text=True)
                 for i in range(tasks)]
    if preempt_at:  # task 0's lines pass through; its step line brings SIGTERM to every task
        for line in processes[0].stderr:
            sys.stderr.write(line)
            sys.stderr.flush()
            match = re.match(r"step (\d+)/", line)
            if match and int(match.group(1)) >= int(preempt_at):
                for process in processes:
                    process.send_signal(signal.SIGTERM)
    codes = [p.wait() for p in processes]
    return max(codes)


def main(tool: str, argv: list[str]) -> int:
    root().mkdir(parents=True, exist_ok=True)
    if tool != "job":
        with open(root() / "calls.jsonl", "a") as handle:
            handle.write(json.dumps([tool, *argv]) + "\n")
    return {"sbatch": sbatch, "squeue": squeue, "sacct": sacct, "scancel": scancel, "srun": srun,
            "job": lambda args: run_job(args[0])}[tool](argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
