"""The rootfs URI grammar (garden/images/uri.py) and the image defaults of a container."""

from __future__ import annotations

import pytest

from garden.errors import InvalidRequestError
from garden.images.defaults import container_env, default_dir, default_user
from garden.images.model import ImageConfig
from garden.images.uri import HostDir, ImageSource, parse_rootfs


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("/srv/rootfs", HostDir(path="/srv/rootfs")),
        ("raw:///srv/rootfs/", HostDir(path="/srv/rootfs")),
        ("oci:///imgs/layout", ImageSource(kind="oci", path="/imgs/layout")),
        ("oci:///imgs/layout:v1.2", ImageSource(kind="oci", path="/imgs/layout", tag="v1.2")),
        (
            "oci-archive:///x/i.tar:latest",
            ImageSource(kind="oci-archive", path="/x/i.tar", tag="latest"),
        ),
        (
            "docker-archive:///x/i.tar:library/busybox:1.36",
            ImageSource(kind="docker-archive", path="/x/i.tar", tag="library/busybox:1.36"),
        ),
        ("docker:///busybox#1.36", ImageSource(kind="docker", name="busybox", tag="1.36")),
        (
            "docker://127.0.0.1:5000/team/app",
            ImageSource(kind="docker", registry="127.0.0.1:5000", name="team/app"),
        ),
        (
            "docker://127.0.0.1:5000/team/app:v1",
            ImageSource(kind="docker", registry="127.0.0.1:5000", name="team/app", tag="v1"),
        ),
        (
            "docker:///library/busybox:1.36",
            ImageSource(kind="docker", name="library/busybox", tag="1.36"),
        ),
        (
            f"docker://r.example/app@sha256:{'a' * 64}",
            ImageSource(kind="docker", registry="r.example", name="app", tag="sha256:" + "a" * 64),
        ),
        ("docker:///my-app/x__y", ImageSource(kind="docker", name="my-app/x__y")),
    ],
)
def test_parses(value: str, parsed: object) -> None:
    assert parse_rootfs(value) == parsed


@pytest.mark.parametrize(
    "value",
    [
        "",
        "relative/dir",
        "raw://relative",
        "/a/../b",
        "oci://rel/layout",
        "oci:///a/../layout",
        "oci:///",
        "oci:///x:bad tag",
        "ftp:///x",
        "docker://",
        "docker:///UPPER",
        "docker:///x#bad tag",
        "docker://bad host!/x",
        "docker:///x:v1#v2",
        "docker:///x:",
        "docker:///x#",
        "docker:///x@sha256:short",
        "docker:///x@sha256:" + "a" * 64 + "#v1",
        "docker:///x:a/b",
        "docker:///x#a:b",
        "docker:///-x",
        "/x\0y",
    ],
)
def test_refuses(value: str) -> None:
    with pytest.raises(InvalidRequestError):
        parse_rootfs(value)


def test_uri_round_trips() -> None:
    for value in [
        "oci:///a/b:v1",
        "oci-archive:///a.tar",
        "docker:///busybox#1",
        "docker://r:5/x",
        "docker://r:5/x@sha256:" + "b" * 64,
    ]:
        source = parse_rootfs(value)
        assert isinstance(source, ImageSource)
        assert parse_rootfs(source.uri()) == source


def test_client_env_wins_over_image_env() -> None:
    assert container_env(["PATH=/bin", "A=1", "B=2"], ["B=3", "C=4"]) == [
        "PATH=/bin",
        "A=1",
        "B=3",
        "C=4",
    ]


def test_defaults_from_image_config() -> None:
    assert default_user(ImageConfig()) == "root"
    assert default_user(ImageConfig(user="1000:1000")) == "1000:1000"
    assert default_dir(ImageConfig(working_dir="/app")) == "/app"
    assert default_dir(ImageConfig(working_dir="relative")) == ""
