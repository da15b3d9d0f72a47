"""A real SLURM cluster of one node on this machine: slurmctld and slurmd started for the test session.

The node is named ``localhost`` so that the job's node list, which yolodist reads for the master's
address, resolves to the loopback interface. Authentication is off (``auth/none``): the daemons
listen on loopback ports of their own and live only as long as the session.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port

DAEMONS = ("slurmctld", "slurmd", "srun", "sbatch", "scontrol", "sinfo", "squeue")


@dataclass
class Cluster:
    conf: Path
    root: Path

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

    def run(self, *args: str, timeout: float = 60, cwd: Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            list(args), env=self.env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
        )

    def job_state(self, job_id: str) -> str:
        """The job's state (PENDING, RUNNING, COMPLETED, ...), '' once slurmctld has forgotten it."""
        out = self.run("scontrol", "show", "job", job_id).stdout
        for field in out.split():
            if field.startswith("JobState="):
                return field.split("=", 1)[1]
        return ""

    def job_field(self, job_id: str, name: str) -> str:
        for field in self.run("scontrol", "show", "job", job_id).stdout.split():
            if field.startswith(f"{name}="):
                return field.split("=", 1)[1]
        return ""


def _config(root: Path, cpus: int) -> str:
    return "\n".join(
        [
            "ClusterName=yolodisttest",
            "SlurmctldHost=localhost(127.0.0.1)",
            "AuthType=auth/none",
            "CredType=cred/none",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"SlurmctldPort={free_port()}",
            f"SlurmdPort={free_port()}",
            f"StateSaveLocation={root / 'state'}",
            f"SlurmdSpoolDir={root / 'spool'}",
            f"SlurmctldPidFile={root / 'slurmctld.pid'}",
            f"SlurmdPidFile={root / 'slurmd.pid'}",
            f"SlurmctldLogFile={root / 'slurmctld.log'}",
            f"SlurmdLogFile={root / 'slurmd.log'}",
            "ProctrackType=proctrack/pgid",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "SchedulerType=sched/builtin",
            "MpiDefault=none",
            "ReturnToService=2",
            "JobRequeue=1",
            "MinJobAge=300",
            "KillWait=30",
            f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN",
            "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4",
            "",
        ]
    )


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory) -> Iterator[Cluster]:
    missing = [d for d in DAEMONS if shutil.which(d) is None]
    if missing:
        pytest.skip(f"SLURM is not installed ({', '.join(missing)} missing): apt-get install slurmctld slurmd")
    if os.geteuid() != 0:
        pytest.skip("a test SLURM cluster needs root (slurmd starts jobs as their user)")
    root = tmp_path_factory.mktemp("slurm")
    (root / "state").mkdir()
    (root / "spool").mkdir()
    conf = root / "slurm.conf"
    conf.write_text(_config(root, os.cpu_count() or 2))
    cluster = Cluster(conf, root)
    daemons = [
        subprocess.Popen(["slurmctld", "-D", "-c", "-f", str(conf)], env=cluster.env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.STDOUT, start_new_session=True),
        subprocess.Popen(["slurmd", "-D", "-N", "localhost", "-f", str(conf)], env=cluster.env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True),
    ]  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while cluster.run("sinfo", "-h", "-o", "%T").stdout.strip() not in ("idle", "mixed", "allocated"):
            if time.monotonic() > deadline or any(d.poll() is not None for d in daemons):
                logs = "".join(p.read_text()[-2000:] for p in root.glob("*.log") if p.is_file())
                pytest.fail(f"the test SLURM cluster did not come up:\n{logs}")
            time.sleep(0.5)
        yield cluster
    finally:
        for daemon in daemons:
            daemon.terminate()
        for daemon in daemons:
            try:
                daemon.wait(timeout=20)
            except subprocess.TimeoutExpired:
                daemon.kill()
