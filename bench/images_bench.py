"""Benchmark of creates from an image already in the store against creates from a host
directory (the issue's bar: within 1.2x). Both unprivileged (shifted lower layers cached),
the same busybox files; the image is a two-layer OCI layout built here.

    sudo .venv/bin/python -m bench.images_bench [--n 30] [--json] [--debian]

`--debian`: the image is the Debian minbase tarball that scripts/setup.sh builds (160 MB, ~8700
files) with a small layer on top, and the host directory is that tarball unpacked, so both
sides hold the same Debian tree (no registry).

Starts its own in-process server (own state dir and tag), imports the image once, then
alternates create+destroy of each kind so that load on this shared machine hits both alike.
Reports the median create time of each and their ratio. When Debian's docker-registry and
skopeo are installed, the same image is also pushed to a local registry on 127.0.0.1 and
creates from `docker://` (already stored: one manifest request each) join the alternation;
the first of them, which pulls and unpacks both layers, is reported on its own.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
import trio

from garden.config import DEFAULT_ROOTFS, ServerConfig
from garden.main import serve
from tests.imagebuild import Entry, Image, busybox_entries, layer_tar, write_oci_layout
from tests.registry import Registry, missing_tool

TEST_ROOT = Path("/var/tmp/garden-bench")
MINBASE = Path(os.environ.get("GARDEN_MINBASE_TAR", "/var/cache/garden-trio/debian-minbase.tar"))


async def _timed_create(client: httpx.AsyncClient, rootfs: str) -> float:
    start = time.perf_counter()
    r = await client.post("/containers", json={"rootfs": rootfs})
    took = time.perf_counter() - start
    assert r.status_code == 200, r.text
    d = await client.delete(f"/containers/{r.json()['handle']}")
    assert d.status_code == 200, d.text
    return took


async def run(n: int = 30, debian: bool = False) -> dict[str, Any]:
    work = TEST_ROOT / secrets.token_hex(4)
    work.mkdir(parents=True, mode=0o711)
    TEST_ROOT.chmod(0o711)
    try:
        top = layer_tar([Entry("etc/motd", data=b"hi\n")])
        host_dir = DEFAULT_ROOTFS
        if debian:
            if not MINBASE.is_file():
                raise SystemExit(f"{MINBASE} is missing: run scripts/setup.sh")
            image = Image([MINBASE, top], env=["PATH=/usr/bin:/bin"])
            host_dir = str(work / "debian-root")
            Path(host_dir).mkdir(mode=0o755)
            await trio.run_process(["tar", "-xf", str(MINBASE), "-C", host_dir])
        else:
            image = Image([layer_tar(busybox_entries()), top], env=["PATH=/bin"])
        write_oci_layout(work / "layout", {"v1": image}, compress="none" if debian else "gzip")
        uri = f"oci://{work}/layout:v1"
        registry = None
        if not debian and not missing_tool():
            (work / "registry").mkdir()
            registry = Registry(work / "registry")
            registry.start()
        try:
            return await _measure(work, uri, registry, n, host_dir)
        finally:
            if registry is not None:
                registry.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def _measure(
    work: Path, uri: str, registry: Registry | None, n: int, host_dir: str
) -> dict[str, Any]:
    pulled_uri = ""
    if registry is not None:
        await registry.push(work / "layout", "v1", "bench/busy", "v1")
        pulled_uri = f"docker://{registry.host}/bench/busy#v1"
    config = ServerConfig(
        state_dir=str(work / "state"),
        bind_port=0,
        tag="b" + secrets.token_hex(3),
        handle_signals=False,
        network_pool="10.250.0.0/22",
        ip_forward=False,
        insecure_docker_registries=(registry.host,) if registry is not None else (),
    )
    result: dict[str, Any] = {"n": n}
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve, config)
        async with httpx.AsyncClient(base_url=binds[0], timeout=60) as client:
            if pulled_uri:  # pull + unpack + shifted copies
                result["first_pull_ms"] = round(await _timed_create(client, pulled_uri) * 1000, 1)
            else:  # import + shifted copies
                result["first_import_ms"] = round(await _timed_create(client, uri) * 1000, 1)
            # shifted copy of the dir
            result["first_dir_ms"] = round(await _timed_create(client, host_dir) * 1000, 1)
            image_s, dir_s, pulled_s = [], [], []
            for _ in range(n):
                image_s.append(await _timed_create(client, uri))
                dir_s.append(await _timed_create(client, host_dir))
                if pulled_uri:
                    pulled_s.append(await _timed_create(client, pulled_uri))
        nursery.cancel_scope.cancel()
    med_image, med_dir = statistics.median(image_s), statistics.median(dir_s)
    result |= {
        "create_image_ms": round(med_image * 1000, 1),
        "create_dir_ms": round(med_dir * 1000, 1),
        "ratio": round(med_image / med_dir, 3),
        "bar": 1.2,
    }
    if pulled_s:
        med_pulled = statistics.median(pulled_s)
        result["create_registry_ms"] = round(med_pulled * 1000, 1)
        result["registry_ratio"] = round(med_pulled / med_dir, 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=30)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--debian", action="store_true", help="the setup's Debian minbase image")
    args = parser.parse_args()
    result = trio.run(run, args.n, args.debian)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:18} {v}")


if __name__ == "__main__":
    main()
