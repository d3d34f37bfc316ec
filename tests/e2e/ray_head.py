"""A private Ray head started the way a user starts a cluster: ``ray start --head``.

Tests of ``ray job submit`` need a real head with its dashboard (the job API), not an in-process
``ray.init()``. Other Ray instances share the machine, so this head takes free ports for every
listener, lives in its own short temp dir, and ``stop()`` ends only its own processes (never
``ray stop``, which would end everyone's). Token authentication is on, as on a real cluster:
Ray >= 2.60 turns it on for ``ray start --head`` whenever ``~/.ray/auth_token`` exists, and we
set ``RAY_AUTH_MODE=token`` so it does not depend on that file. The token is private to this
head (``RAY_AUTH_TOKEN_PATH``), so the real ``~/.ray/auth_token`` is neither read nor written.

    with RayHead() as head:
        subprocess.run(["ray", "job", "list", "--address", head.dashboard_url], env=head.env)
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import psutil

BIN = Path(sys.executable).parent          # the venv's bin: `ray` and the `python` jobs run
RAY = BIN / "ray"

# Every listener `ray start --head` opens; left unset, several default to fixed ports
# (6379, 8265, 10001, 52365) that another instance on this machine may hold.
PORT_FLAGS = ("port", "dashboard-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
              "runtime-env-agent-port", "metrics-export-port", "ray-client-server-port",
              "node-manager-port", "object-manager-port")


def free_ports(n: int) -> list[int]:
    """n distinct ports that are free right now (all bound at once, so they differ)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def base_env() -> dict[str, str]:
    """This process's environment without any pointer to another cluster or token."""
    drop = {"RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


class RayHead:
    """One ``ray start --head`` with free ports, a private temp dir and a private token.

    After ``start()``: ``address`` is the GCS address (ip:port, as the head advertises it),
    ``dashboard_url`` (on 127.0.0.1) serves the job API, and ``env`` is what a client
    subprocess (``ray job submit``) needs: the venv first on PATH, ``RAY_AUTH_MODE=token`` and
    ``RAY_AUTH_TOKEN_PATH``, no ``RAY_ADDRESS``. The head runs with the same environment, so a
    job's ``python`` is the venv's python and its driver finds the token.
    """

    def __init__(self, num_cpus: int = 2, start_timeout_s: float = 120.0):
        self.num_cpus = num_cpus
        self.start_timeout_s = start_timeout_s
        self.temp_dir: str | None = None
        self.address = ""
        self.dashboard_url = ""
        self.env: dict[str, str] = {}
        self._client_port = 0

    @property
    def token_path(self) -> Path:
        return Path(self.temp_dir, "auth_token")

    def start(self) -> "RayHead":
        # Short: Ray's unix socket paths under the session dir must stay below 107 characters.
        self.temp_dir = tempfile.mkdtemp(prefix="srh-", dir="/tmp")
        self.token_path.write_text(secrets.token_hex(32))
        self.env = {**base_env(), "RAY_AUTH_MODE": "token",
                    "RAY_AUTH_TOKEN_PATH": str(self.token_path)}
        ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS))))
        self._client_port = ports["ray-client-server-port"]
        # No --node-ip-address=127.0.0.1: Ray replaces a loopback node IP with the machine's
        # routable one anyway (services.resolve_ip_for_localhost), and the GCS listens on all
        # interfaces. The dashboard, which runs jobs for anyone holding the token, stays local.
        # Worker ports 0 = chosen by the OS, instead of a fixed range shared with other heads.
        cmd = [str(RAY), "start", "--head", "--dashboard-host=127.0.0.1",
               f"--num-cpus={self.num_cpus}", f"--temp-dir={self.temp_dir}",
               "--min-worker-port=0", "--max-worker-port=0", "--disable-usage-stats",
               *(f"--{flag}={port}" for flag, port in ports.items())]
        out = subprocess.run(cmd, env=self.env, capture_output=True, text=True,
                             timeout=self.start_timeout_s)
        if out.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` failed ({out.returncode}):\n"
                               f"{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
        self.address = Path(self.temp_dir, "ray_current_cluster").read_text().strip()
        self.dashboard_url = f"http://127.0.0.1:{ports['dashboard-port']}"
        self._wait_for_job_api()
        return self

    def _wait_for_job_api(self) -> None:
        """Poll the job list endpoint (with the token) until the dashboard answers it."""
        request = urllib.request.Request(
            f"{self.dashboard_url}/api/jobs/",
            headers={"Authorization": f"Bearer {self.token_path.read_text()}"})
        deadline, error = time.monotonic() + self.start_timeout_s, None
        while True:
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
                error = e
            if time.monotonic() > deadline:
                raise RuntimeError(f"job API at {self.dashboard_url} not up after "
                                   f"{self.start_timeout_s:g} s ({error}); head logs:\n"
                                   + self.log_tail())
            time.sleep(0.5)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the head's main logs, for error messages."""
        logs = Path(self.temp_dir or "/nonexistent", "session_latest", "logs")
        parts = []
        for name in ("dashboard.log", "dashboard.err", "gcs_server.out", "raylet.out"):
            if (logs / name).exists():
                tail = (logs / name).read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {logs / name}\n" + "\n".join(tail))
        return "\n".join(parts) or f"(no logs under {logs})"

    def processes(self) -> list[psutil.Process]:
        """This head's processes: those naming our temp dir, and everything they started.

        Ray workers rename themselves (``ray::IDLE``, ``ray::JobSupervisor``), so only the
        process tree under the raylet finds them; the temp dir is unique to this head. The Ray
        Client server names neither (and ``ray start`` cannot turn it off): its port is ours.
        """
        client_server = ("ray.util.client.server", f"--port={self._client_port}")
        ours = self.temp_dir + os.sep                # not a longer name with our dir's prefix
        found: dict[int, psutil.Process] = {}
        for proc in psutil.process_iter(["cmdline"]):
            cmdline = proc.info["cmdline"] or ()
            if (any(ours in arg + os.sep for arg in cmdline)
                    or all(marker in cmdline for marker in client_server)):
                found[proc.pid] = proc
        for proc in list(found.values()):
            try:
                found.update({child.pid: child for child in proc.children(recursive=True)})
            except psutil.NoSuchProcess:
                pass
        found.pop(os.getpid(), None)
        return list(found.values())

    def stop(self, grace_s: float = 5.0) -> None:
        """End this head's processes (SIGTERM, then SIGKILL) and remove its temp dir.

        Safe to call twice or after a failed ``start()``. Looks again after each round because
        a process may start a child while we look (a worker the raylet was spawning).
        """
        if self.temp_dir is None:
            return
        for _ in range(3):
            procs = self.processes()
            for sig in (signal.SIGTERM, signal.SIGKILL):
                for proc in procs:
                    try:
                        proc.send_signal(sig)
                    except psutil.NoSuchProcess:
                        pass
                _, procs = psutil.wait_procs(procs, timeout=grace_s)
        left = self.processes()
        if left:
            raise RuntimeError(f"Ray head in {self.temp_dir} left processes: {left}")
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        self.temp_dir = None

    def __enter__(self) -> "RayHead":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
