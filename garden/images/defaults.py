"""What an image's config gives a container made from it (docs/images.md#defaults):

- `Env`: the container's env is the image's with the client's `env` on top (a name the client
  sets wins; the others keep the image's value);
- `WorkingDir`: the `dir` of a process that names none (else the user's home, as for a host
  directory);
- `User`: the `user` of a process that names none. An image without `User` runs as `root`
  (the container's root: an unprivileged host uid unless the container is privileged), as
  Docker would, not as Garden's `vcap`, which images do not have.
"""

from __future__ import annotations

from garden.images.model import ImageConfig


def container_env(image_env: list[str], client_env: list[str]) -> list[str]:
    """The image's env with the client's on top; order: the image's names first."""
    merged: dict[str, str] = {}
    for item in (*image_env, *client_env):
        name, _, _ = item.partition("=")
        merged[name] = item
    return list(merged.values())


def default_user(config: ImageConfig) -> str:
    return config.user or "root"


def default_dir(config: ImageConfig) -> str:
    return config.working_dir if config.working_dir.startswith("/") else ""
