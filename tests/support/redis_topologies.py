"""Real Redis topologies for drills: a Redis Cluster (masters with one replica each) and a
Sentinel deployment (one master, one replica, three sentinels), all `redis-server` processes on
loopback, on free ports, with their files in a directory of the test's own. Every process is
stopped by `stop()`, also when start-up fails half way.

Timings are shortened so failovers happen within seconds: `cluster-node-timeout` and Sentinel's
`down-after-milliseconds` are parameters (production defaults: 15 s and 30 s).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import redis

from tests.support.ports import LOOPBACK, free_port
from tests.support.processes import Proc
from tests.support.waiting import poll_until


def _exe(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed: ./run test installs it (apt-get install redis-server)")
    return path


def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    for _ in range(200):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind((LOOPBACK, port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no port pair free for a cluster node")


def _spawn(name: str, argv: list[str], port: int, log: Path) -> Proc:
    out = log.open("ab")
    try:
        popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    finally:
        out.close()  # the child holds its own descriptor
    return Proc(name, popen, url=f"redis://{LOOPBACK}:{port}/0", port=port)


def _wait_ping(proc: Proc, timeout: float = 15.0) -> None:
    client = redis.Redis(host=LOOPBACK, port=proc.port, socket_timeout=1, socket_connect_timeout=1)

    def up() -> bool:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited during start-up ({proc.popen.returncode})")
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    try:
        poll_until(up, timeout, what=f"{proc.name} up")
    finally:
        client.close()


def _client(port: int) -> redis.Redis:
    return redis.Redis(host=LOOPBACK, port=port, socket_timeout=2, socket_connect_timeout=1)


def _info(port: int, section: str) -> dict[str, Any]:
    c = _client(port)
    try:
        # (redis-py types its blocking and asyncio answers alike: this one is a dict)
        return dict(cast("dict[str, Any]", c.info(section)))
    finally:
        c.close()


@dataclass
class RedisCluster:
    """`masters` masters with `replicas_per_master` replicas each, created by `redis-cli --cluster
    create`. `url` names one master (the client discovers the rest)."""

    directory: Path
    node_timeout_ms: int
    nodes: dict[int, Proc] = field(default_factory=dict)

    @property
    def url(self) -> str:
        port = next(p for p, proc in self.nodes.items() if proc.alive())
        return f"redis://{LOOPBACK}:{port}/0"

    def _node_argv(self, port: int) -> list[str]:
        d = self.directory / str(port)
        d.mkdir(parents=True, exist_ok=True)
        return [
            _exe("redis-server"),
            "--port",
            str(port),
            "--bind",
            LOOPBACK,
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            str(d / "nodes.conf"),
            "--cluster-node-timeout",
            str(self.node_timeout_ms),
            "--dir",
            str(d),
            "--save",
            "",
            "--appendonly",
            "no",
        ]

    def start_node(self, port: int) -> Proc:
        proc = _spawn(f"cluster node {port}", self._node_argv(port), port, self.directory / f"{port}.log")
        self.nodes[port] = proc
        _wait_ping(proc)
        return proc

    def cluster_nodes(self, port: int | None = None) -> list[dict[str, Any]]:
        """CLUSTER NODES as seen by one live node: [{id, port, role, master_id, failed, slots}]."""
        port = port or next(p for p, proc in self.nodes.items() if proc.alive())
        c = _client(port)
        try:
            raw = c.execute_command("CLUSTER", "NODES")
        finally:
            c.close()
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        if isinstance(raw, dict):  # some redis-py versions parse it
            text = "\n".join(f"{v['node_id']} {k} {v['flags']} {v['master_id']}" for k, v in raw.items())
        out = []
        for line in text.strip().splitlines():
            parts = line.split()
            flags = parts[2].split(",")
            out.append(
                {
                    "id": parts[0],
                    "port": int(parts[1].split("@")[0].rsplit(":", 1)[1]),
                    "role": "master" if "master" in flags else "replica",
                    "master_id": parts[3],
                    "failed": "fail" in flags or "fail?" in flags,
                    "slots": parts[8:],
                }
            )
        return out

    def masters(self) -> list[int]:
        """Ports of the masters that serve slots, as a live node sees them."""
        return sorted(
            n["port"]
            for n in self.cluster_nodes()
            if n["role"] == "master" and n["slots"] and not n["failed"]
        )

    def replica_of(self, master_port: int) -> int:
        nodes = self.cluster_nodes()
        mid = next(n["id"] for n in nodes if n["port"] == master_port)
        return int(next(n["port"] for n in nodes if n["master_id"] == mid))

    def master_of_key(self, key: str) -> int:
        """The port of the master serving `key`'s slot."""
        c = redis.RedisCluster.from_url(self.url)
        try:
            node = c.get_node_from_key(key)
            return int(node.port)
        finally:
            c.close()

    def healthy(self) -> bool:
        """Every live node says cluster_state:ok and sees every serving master alive, and every
        replica's link to its master is up."""
        for port, proc in self.nodes.items():
            if not proc.alive():
                continue
            try:
                if _info_cluster(port) != "ok":
                    return False
                if _info(port, "replication").get("role") == "slave" and (
                    _info(port, "replication").get("master_link_status") != "up"
                ):
                    return False
            except redis.RedisError:
                return False
        return True

    def wait_healthy(self, timeout: float = 60.0) -> float:
        """Seconds it took until `healthy()`."""
        t0 = time.monotonic()
        poll_until(self.healthy, timeout, interval=0.05, what="cluster healthy")
        return time.monotonic() - t0

    def kill(self, port: int) -> None:
        self.nodes[port].signal(signal.SIGKILL)
        self.nodes[port].popen.wait(timeout=10)

    def stop(self) -> None:
        for proc in self.nodes.values():
            proc.stop()


def _info_cluster(port: int) -> str:
    c = _client(port)
    try:
        raw = c.execute_command("CLUSTER", "INFO")
    finally:
        c.close()
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    for line in text.splitlines():
        if line.startswith("cluster_state:"):
            return line.split(":", 1)[1].strip()
    return "?"


def start_cluster(
    directory: Path, *, masters: int = 3, replicas_per_master: int = 1, node_timeout_ms: int = 1000
) -> RedisCluster:
    cluster = RedisCluster(directory, node_timeout_ms)
    try:
        ports = [cluster_port() for _ in range(masters * (1 + replicas_per_master))]
        for port in ports:
            cluster.start_node(port)
        done = subprocess.run(
            [
                _exe("redis-cli"),
                "--cluster",
                "create",
                *[f"{LOOPBACK}:{p}" for p in ports],
                "--cluster-replicas",
                str(replicas_per_master),
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"redis-cli --cluster create failed: {done.stdout[-1500:]} {done.stderr[-500:]}"
            )
        cluster.wait_healthy()
        poll_until(lambda: len(cluster.masters()) == masters, 30, what="every master serving")
    except BaseException:
        cluster.stop()
        raise
    return cluster


@dataclass
class RedisSentinel:
    """One master, one replica, sentinels watching them as `service`."""

    directory: Path
    service: str
    down_after_ms: int
    servers: dict[int, Proc] = field(default_factory=dict)
    sentinels: list[Proc] = field(default_factory=list)

    @property
    def sentinel_addresses(self) -> list[str]:
        return [f"{LOOPBACK}:{s.port}" for s in self.sentinels]

    def master_port(self, via: int | None = None) -> int:
        """The master the sentinels name (the first live sentinel, or `via`)."""
        for s in self.sentinels if via is None else [p for p in self.sentinels if p.port == via]:
            if not s.alive():
                continue
            c = _client(s.port)
            try:
                _, port = c.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
                return int(port)
            except redis.RedisError:
                continue
            finally:
                c.close()
        raise RuntimeError("no sentinel answered")

    def replica_port(self) -> int:
        master = self.master_port()
        return next(p for p, proc in self.servers.items() if p != master and proc.alive())

    def failover(self) -> None:
        """SENTINEL FAILOVER: the sentinels promote the replica (no agreement needed)."""
        c = _client(self.sentinels[0].port)
        try:
            c.execute_command("SENTINEL", "FAILOVER", self.service)
        finally:
            c.close()

    def settled(self, master: int, *, replicas: bool = True) -> bool:
        """`master` is a master and every sentinel names it; with `replicas`, every other live
        server also replicates it with its link up."""
        try:
            if _info(master, "replication").get("role") != "master":
                return False
            for s in self.sentinels:
                if self.master_port(via=s.port) != master:
                    return False
            if not replicas:
                return True
            for port, proc in self.servers.items():
                if port == master or not proc.alive():
                    continue
                repl = _info(port, "replication")
                if repl.get("role") != "slave" or repl.get("master_port") != master:
                    return False
                if repl.get("master_link_status") != "up":
                    return False
        except (redis.RedisError, RuntimeError):
            return False
        return True

    def wait_new_master(self, old: int, timeout: float = 60.0) -> int:
        """Waits until another server is master and every sentinel names it (clients asking any
        sentinel are sent there); its port. The old master may still be catching up as a
        replica (see `wait_settled`)."""

        def moved() -> int | None:
            try:
                port = self.master_port()
            except RuntimeError:
                return None
            return port if port != old and self.settled(port, replicas=False) else None

        return int(poll_until(moved, timeout, interval=0.05, what="sentinel failover"))

    def wait_settled(self, timeout: float = 60.0) -> None:
        """Every live server replicates the master, links up (another failover can follow)."""
        poll_until(lambda: self.settled(self.master_port()), timeout, interval=0.1, what="sentinel settled")

    def kill(self, port: int) -> None:
        self.servers[port].signal(signal.SIGKILL)
        self.servers[port].popen.wait(timeout=10)

    def start_server(self, port: int, replica_of: int | None = None) -> Proc:
        d = self.directory / str(port)
        d.mkdir(parents=True, exist_ok=True)
        argv = [_exe("redis-server"), "--port", str(port), "--bind", LOOPBACK, "--dir", str(d)]
        argv += ["--save", "", "--appendonly", "no"]
        if replica_of is not None:
            argv += ["--replicaof", LOOPBACK, str(replica_of)]
        proc = _spawn(f"redis {port}", argv, port, self.directory / f"{port}.log")
        self.servers[port] = proc
        _wait_ping(proc)
        return proc

    def stop(self) -> None:
        for proc in [*self.sentinels, *self.servers.values()]:
            proc.stop()


def start_sentinel(
    directory: Path, *, service: str = "bffmaster", sentinels: int = 3, down_after_ms: int = 1000
) -> RedisSentinel:
    topo = RedisSentinel(directory, service, down_after_ms)
    try:
        master = free_port()
        topo.start_server(master)
        replica = free_port()
        topo.start_server(replica, replica_of=master)
        quorum = sentinels // 2 + 1
        for i in range(sentinels):
            port = free_port()
            conf = directory / f"sentinel-{i}.conf"  # sentinels rewrite their file: one each
            conf.write_text(
                f"port {port}\nbind {LOOPBACK}\ndaemonize no\ndir {directory}\n"
                f"sentinel monitor {service} {LOOPBACK} {master} {quorum}\n"
                f"sentinel down-after-milliseconds {service} {down_after_ms}\n"
                f"sentinel failover-timeout {service} {max(down_after_ms * 5, 3000)}\n"
                f"sentinel parallel-syncs {service} 1\n"
            )
            proc = _spawn(
                f"sentinel {port}",
                [_exe("redis-server"), str(conf), "--sentinel"],
                port,
                directory / f"s{i}.log",
            )
            topo.sentinels.append(proc)
            _wait_ping(proc)
        poll_until(
            lambda: topo.settled(master) and _sentinels_know(topo, sentinels), 60, what="sentinels ready"
        )
    except BaseException:
        topo.stop()
        raise
    return topo


def _sentinels_know(topo: RedisSentinel, count: int) -> bool:
    """Every sentinel sees the replica and the other sentinels (so a failover can be agreed)."""
    for s in topo.sentinels:
        c = _client(s.port)
        try:
            info = c.execute_command("SENTINEL", "MASTER", topo.service)
        except redis.RedisError:
            return False
        finally:
            c.close()
        if isinstance(info, list):
            info = {
                (info[i].decode() if isinstance(info[i], bytes) else info[i]): info[i + 1]
                for i in range(0, len(info), 2)
            }
        with contextlib.suppress(KeyError, ValueError):
            if int(info["num-slaves"]) < 1 or int(info["num-other-sentinels"]) < count - 1:
                return False
            continue
        return False
    return True
