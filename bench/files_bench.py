"""Benchmark of file transfers through the API: one large file in and out, a tree of small
files in and out as a tar, with the server's RSS sampled throughout, and the page-cache write
and read speed of the same filesystem measured alongside (this machine is shared: compare with
the baseline of the same run, never with numbers of another run; the server's CPU seconds per
GiB are the steadier figure).

    sudo .venv/bin/python -m bench.files_bench [--size-mib 1024] [--url URL --handle H] [--json]

Without --url it starts its own `garden server` (a separate process, own state dir and tag,
as root) and creates a container; with --url it uses that server and container and reports no
RSS unless --server-pid is given. The client is curl (streams from and to files); the numbers
are MB/s (10^6 bytes per second). `run(...)` returns the results as a dict for a harness.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

TEST_ROOT = Path("/var/tmp/garden-bench")


class RssSampler:
    """Samples VmRSS of a pid every 20 ms in a thread (`start`, `peak` in MiB) and counts the
    CPU seconds it used meanwhile (`cpu_used`: a load-independent cost, where wall-clock
    speeds on a shared machine are not)."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.start = self.peak = 0.0
        self.cpu_start = self.cpu_used = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> float:
        if self.pid is None:
            return 0.0
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def cpu(self) -> float:
        """User + system CPU seconds of the process so far."""
        if self.pid is None:
            return 0.0
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.rss())

    def __enter__(self) -> RssSampler:
        self.start = self.peak = self.rss()
        self.cpu_start = self.cpu()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu_used = self.cpu() - self.cpu_start
        self._stop.set()
        self._thread.join()


def _request(url: str, method: str = "GET", body: bytes | None = None) -> bytes:
    req = urllib.request.Request(url, data=body, method=method)
    with urllib.request.urlopen(req, timeout=120) as r:
        data: bytes = r.read()
        return data


def _curl(args: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(
        ["curl", "-sS", "--fail", "-H", "Expect:", *args], check=True, stdout=subprocess.DEVNULL
    )
    return time.perf_counter() - t


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _dd(src: str, dst: str, size_mib: int) -> float:
    t = time.perf_counter()
    subprocess.run(
        ["dd", f"if={src}", f"of={dst}", "bs=1M", f"count={size_mib}"],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - t


def _make_tree(top: Path, files: int, size: int) -> None:
    for i in range(files):
        d = top / f"d{i % 20}" / f"e{i % 7}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}").write_bytes(os.urandom(size))


class OwnServer:
    """A `garden server` process of its own, as the integration tests' ServerProcess."""

    def __init__(self, work: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.state = work / "state"
        self.tag = "b" + secrets.token_hex(3)
        self.log = open(work / "server.log", "ab")  # noqa: SIM115
        argv = [
            sys.executable,
            "-m",
            "garden.cli",
            "server",
            "--state-dir",
            str(self.state),
            "--bind-port",
            str(self.port),
            "--tag",
            self.tag,
            "--log-level",
            "warning",
        ]
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=self.log)
        for _ in range(400):
            try:
                _request(self.url + "/ping")
                return
            except OSError:
                time.sleep(0.025)
        raise RuntimeError("server did not start")

    def close(self) -> None:
        try:
            for h in json.loads(_request(self.url + "/containers"))["handles"]:
                _request(f"{self.url}/containers/{h}", "DELETE")
        finally:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)
            self.log.close()
            # The server leaves its (empty) cgroup parent for the next start: ours is gone.
            import trio

            from garden.linux.cgroups import detect

            trio.run(detect().remove_parent_if_empty, f"/{self.tag}")


def run(
    *,
    size_mib: int = 1024,
    url: str | None = None,
    handle: str | None = None,
    server_pid: int | None = None,
    tree_files: int = 2000,
    tree_file_size: int = 4096,
) -> dict[str, Any]:
    TEST_ROOT.mkdir(mode=0o711, exist_ok=True)
    work = TEST_ROOT / secrets.token_hex(4)
    work.mkdir(mode=0o711)
    server = None
    try:
        if url is None:
            server = OwnServer(work)
            url, server_pid = server.url, server.proc.pid
            handle = json.loads(_request(url + "/containers", "POST", b"{}"))["handle"]
        assert handle is not None
        files = f"{url}/containers/{handle}/files"
        big = work / "big.bin"
        with open(big, "wb") as f:
            for _ in range(size_mib):
                f.write(os.urandom(1 << 20))
        want = _sha256(big)
        nbytes = size_mib << 20
        out: dict[str, Any] = {"size_mib": size_mib}

        # Baselines on the same filesystem, in the same minute.
        copy = work / "copy.bin"
        out["baseline_dd_write_mbps"] = round(nbytes / _dd(str(big), str(copy), size_mib) / 1e6)
        out["baseline_dd_read_mbps"] = round(nbytes / _dd(str(copy), "/dev/null", size_mib) / 1e6)
        copy.unlink()

        with RssSampler(server_pid) as rss:
            took = _curl(["-T", str(big), f"{files}?destination=/bench/big.bin"])
        out["upload_mbps"] = round(nbytes / took / 1e6)
        out["upload_rss_mib"] = [round(rss.start, 1), round(rss.peak, 1)]
        out["upload_server_cpu_s_per_gib"] = round(rss.cpu_used * 1024 / size_mib, 2)

        back = work / "back.bin"
        with RssSampler(server_pid) as rss:
            took = _curl(["-o", str(back), f"{files}?source=/bench/big.bin"])
        out["download_mbps"] = round(nbytes / took / 1e6)
        out["download_rss_mib"] = [round(rss.start, 1), round(rss.peak, 1)]
        out["download_server_cpu_s_per_gib"] = round(rss.cpu_used * 1024 / size_mib, 2)
        out["round_trip_sha256_ok"] = _sha256(back) == want
        back.unlink()
        with RssSampler(server_pid) as rss:
            took = _curl(["-o", "/dev/null", f"{files}?source=/bench/big.bin"])
        out["download_to_null_mbps"] = round(nbytes / took / 1e6)

        tree = work / "tree"
        _make_tree(tree, tree_files, tree_file_size)
        tar_path = work / "tree.tar"
        with tarfile.open(tar_path, "w") as t:
            t.add(tree, arcname=".")
        with RssSampler(server_pid) as rss:
            took = _curl(
                [
                    "-T",
                    str(tar_path),
                    "-H",
                    "Content-Type: application/x-tar",
                    f"{files}?destination=/bench/tree",
                ]
            )
        out["tar_in_files_per_s"] = round(tree_files / took)
        out["tar_in_rss_mib"] = [round(rss.start, 1), round(rss.peak, 1)]
        with RssSampler(server_pid) as rss:
            took = _curl(["-o", str(work / "back.tar"), f"{files}?source=/bench/tree"])
        out["tar_out_files_per_s"] = round(tree_files / took)
        with tarfile.open(work / "back.tar") as t:
            out["tar_out_members"] = sum(1 for m in t if m.isfile())
        return out
    finally:
        if server is not None:
            server.close()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-mib", type=int, default=1024)
    p.add_argument("--url", help="a running server (default: start one)")
    p.add_argument("--handle", help="a container of that server")
    p.add_argument("--server-pid", type=int, help="its pid, to sample RSS")
    p.add_argument("--tree-files", type=int, default=2000)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = p.parse_args()
    if a.url and not a.handle:
        p.error("--url needs --handle")
    result = run(
        size_mib=a.size_mib,
        url=a.url,
        handle=a.handle,
        server_pid=a.server_pid,
        tree_files=a.tree_files,
    )
    if a.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:28} {v}")


if __name__ == "__main__":
    main()
