"""A one-node Slurm 22.05 cluster with accounting, from Debian's packages, in one folder.

munged, MariaDB, slurmdbd, slurmctld and slurmd run as this (root) user, each in the
foreground as a child of the test session, with every file (keys, sockets, state, spool, logs,
the database) under ``root``; free TCP ports on 127.0.0.1, so nothing clashes with a system
Slurm. No cgroups: ``proctrack/linuxproc``, ``task/none``, ``jobacct_gather/none``.
Accounting (slurmdbd + MariaDB) is there because submitit polls ``sacct`` for job states:
without it a cancelled or finished job that has left ``squeue`` is never seen as done.

``start(root)`` returns a :class:`Cluster` (its ``env`` points Slurm's clients at the cluster)
or raises :class:`Unavailable` with the reason when the packages (or root) are missing.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = "slurmctld slurmd slurm-client slurmdbd munge mariadb-server"
NEEDED = [
    "munged",
    "mariadb-install-db",
    "mariadbd",
    "mariadb",
    "slurmdbd",
    "slurmctld",
    "slurmd",
    "sbatch",
    "sacct",
    "sinfo",
    "scancel",
    "squeue",
]
SBIN = "/usr/sbin:/usr/bin:/sbin:/bin"


class Unavailable(RuntimeError):
    """The cluster cannot start here; the message says why (for pytest.skip)."""


@dataclass
class Cluster:
    root: Path
    env: dict[str, str]
    procs: list[tuple[str, subprocess.Popen]] = field(default_factory=list)

    def run(self, *cmd: str, timeout: float = 30) -> str:
        """A Slurm client command (sinfo, sacct, scancel, ...) against this cluster: stdout."""
        res = subprocess.run(
            cmd, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: exit {res.returncode}: {res.stderr.strip()}")
        return res.stdout

    def logs(self) -> str:
        """The daemons' log tails, for failure messages."""
        parts = []
        for log in sorted(self.root.glob("*.log")):
            parts.append(f"--- {log.name}\n" + "\n".join(log.read_text().splitlines()[-15:]))
        return "\n".join(parts)

    def stop(self) -> None:
        """Cancel every job left, then stop the daemons in reverse order of start (SIGTERM,
        then SIGKILL after 15 s)."""
        if any(name == "slurmd" and p.poll() is None for name, p in self.procs):
            try:
                self.run("scancel", f"--user={os.geteuid()}")
                end = time.monotonic() + 30
                while self.run("squeue", "-h", "-o", "%i").strip() and time.monotonic() < end:
                    time.sleep(0.5)
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
        for _name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        self.procs.clear()


def _which(name: str) -> str | None:
    return shutil.which(name, path=f"{os.environ.get('PATH', '')}:{SBIN}")


def check() -> None:
    """Raise Unavailable unless the packages are installed and this is root (slurmd is)."""
    missing = [n for n in NEEDED if _which(n) is None]
    if missing:
        raise Unavailable(
            f"Slurm/MariaDB/munge not installed ({', '.join(missing)} missing): "
            f"apt-get install {PACKAGES} (.ci/run does)"
        )
    if os.geteuid() != 0:
        raise Unavailable("a test Slurm cluster needs root (slurmd starts jobs as their user)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what: str, ok, cluster: Cluster, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for name, proc in cluster.procs:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited ({proc.returncode}) while waiting for {what}\n{cluster.logs()}"
                )
        try:
            if ok():
                return
        except (RuntimeError, subprocess.TimeoutExpired, OSError):
            pass
        time.sleep(0.25)
    raise RuntimeError(f"timed out waiting for {what}\n{cluster.logs()}")


def _node_line() -> str:
    """This machine's CPUs, sockets, cores and memory as slurmd sees them (``slurmd -C``)."""
    out = subprocess.run([_which("slurmd"), "-C"], capture_output=True, text=True, check=True)
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("NodeName="))
    fields = [f for f in line.split() if not f.startswith("NodeName=")]
    return "NodeName=localhost NodeAddr=127.0.0.1 " + " ".join(fields)


def start(root: Path) -> Cluster:
    """Stand the cluster up under ``root``; stop it with ``Cluster.stop()``."""
    check()
    root.mkdir(parents=True, exist_ok=True)
    for sub in ["state", "spool", "db", "munge"]:
        (root / sub).mkdir(exist_ok=True)
    ports = {k: free_port() for k in ["ctld", "slurmd", "dbd", "mysql"]}
    munge_socket = root / "munge" / "munge.socket"
    conf = root / "slurm.conf"
    env = {**os.environ, "SLURM_CONF": str(conf), "PATH": f"{os.environ['PATH']}:{SBIN}"}
    cluster = Cluster(root=root, env=env)

    def daemon(name: str, *cmd: str) -> None:
        log = open(root / f"{name}.out", "wb")  # noqa: SIM115 - lives as long as the daemon
        proc = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        cluster.procs.append((name, proc))

    try:
        # munge: one key shared by every daemon and client of the cluster
        key = root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        daemon(
            "munged",
            _which("munged"),
            "--foreground",
            "--force",
            f"--key-file={key}",
            f"--socket={munge_socket}",
            f"--pid-file={root / 'munge' / 'munged.pid'}",
            f"--seed-file={root / 'munge' / 'munged.seed'}",
            f"--log-file={root / 'munged.log'}",
        )
        _wait("munged", munge_socket.exists, cluster)

        # MariaDB for slurmdbd: its own datadir and socket, TCP on 127.0.0.1 only
        db, db_socket = root / "db", root / "mysqld.sock"
        subprocess.run(
            [
                _which("mariadb-install-db"),
                "--no-defaults",
                f"--datadir={db}",
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        daemon(
            "mariadbd",
            _which("mariadbd"),
            "--no-defaults",
            f"--datadir={db}",
            "--user=root",
            f"--socket={db_socket}",
            f"--port={ports['mysql']}",
            "--bind-address=127.0.0.1",
            f"--pid-file={root / 'mysqld.pid'}",
            f"--log-error={root / 'mariadb.log'}",
            "--skip-log-bin",
            "--innodb-buffer-pool-size=128M",
            "--innodb-lock-wait-timeout=900",
            "--innodb-flush-log-at-trx-commit=0",
        )
        sql = (
            "CREATE DATABASE IF NOT EXISTS slurm_acct_db; "
            "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm'; "
            "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"
        )
        mysql = [_which("mariadb"), "--no-defaults", f"--socket={db_socket}", "-uroot"]
        _wait(
            "MariaDB",
            lambda: subprocess.run([*mysql, "-e", "SELECT 1"], capture_output=True).returncode == 0,
            cluster,
        )
        subprocess.run([*mysql, "-e", sql], check=True, capture_output=True, timeout=30)

        auth = f"AuthType=auth/munge\nAuthInfo=socket={munge_socket}\n"
        dbd_conf = root / "slurmdbd.conf"  # slurmdbd reads it next to $SLURM_CONF
        dbd_conf.write_text(
            f"{auth}DbdHost=localhost\nDbdPort={ports['dbd']}\nSlurmUser=root\n"
            f"LogFile={root / 'slurmdbd.log'}\nPidFile={root / 'slurmdbd.pid'}\n"
            "StorageType=accounting_storage/mysql\nStorageHost=127.0.0.1\n"
            f"StoragePort={ports['mysql']}\nStorageUser=slurm\nStoragePass=slurm\n"
            "StorageLoc=slurm_acct_db\n"
        )
        dbd_conf.chmod(0o600)
        conf.write_text(
            f"ClusterName=sdbtest\nSlurmctldHost=localhost\nSlurmctldPort={ports['ctld']}\n"
            f"SlurmdPort={ports['slurmd']}\nSlurmUser=root\nSlurmdUser=root\n{auth}"
            "CredType=cred/munge\nMpiDefault=none\n"
            f"StateSaveLocation={root / 'state'}\nSlurmdSpoolDir={root / 'spool'}\n"
            f"SlurmctldPidFile={root / 'slurmctld.pid'}\nSlurmdPidFile={root / 'slurmd.pid'}\n"
            f"SlurmctldLogFile={root / 'slurmctld.log'}\nSlurmdLogFile={root / 'slurmd.log'}\n"
            "ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\n"
            "JobAcctGatherType=jobacct_gather/none\n"
            "AccountingStorageType=accounting_storage/slurmdbd\n"
            f"AccountingStorageHost=localhost\nAccountingStoragePort={ports['dbd']}\n"
            f"AccountingStoragePass={munge_socket}\n"  # the munge socket, for slurmdbd
            "JobCompType=jobcomp/none\nSelectType=select/cons_tres\n"
            "SelectTypeParameters=CR_Core_Memory\nSchedulerType=sched/backfill\n"
            "SchedulerParameters=bf_interval=1\nReturnToService=2\nKillWait=15\n"
            "InactiveLimit=0\nMinJobAge=600\n"
            f"{_node_line()} State=UNKNOWN\n"
            "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP\n"
        )
        daemon("slurmdbd", _which("slurmdbd"), "-D")
        _wait("slurmdbd", lambda: _port_open(ports["dbd"]), cluster)
        daemon("slurmctld", _which("slurmctld"), "-D", "-i")
        _wait("slurmctld", lambda: bool(cluster.run("sinfo", "-h", "-o", "%P")), cluster)
        daemon("slurmd", _which("slurmd"), "-D", "-N", "localhost")
        _wait("the node", lambda: cluster.run("sinfo", "-h", "-o", "%t").strip() == "idle", cluster)
        # the cluster is registered with slurmdbd (slurmctld adds it), so sacct answers
        _wait("sacct", lambda: cluster.run("sacct", "-n", "-X", "-a") is not None, cluster)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
