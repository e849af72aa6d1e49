# Developer tasks. `just` itself comes from the dev extra: run scripts/setup.sh once (as root),
# then `.venv/bin/just <recipe>` (or put .venv/bin on PATH). `just` alone lists the recipes.

set shell := ["bash", "-euo", "pipefail", "-c"]
set positional-arguments

bin := justfile_directory() / ".venv" / "bin"

[private]
default:
    @"{{ just_executable() }}" --justfile "{{ justfile() }}" --list --unsorted

# Install packages, the .venv and the default rootfs (as root; idempotent)
setup *args:
    "{{ justfile_directory() }}/scripts/setup.sh" "$@"

# Set up, then start the server on 127.0.0.1:7777 (as root); extra args go to `garden server`
serve *args:
    "{{ justfile_directory() }}/scripts/serve" "$@"

# Format the code and sort imports
fmt:
    "{{ bin }}/ruff" check --select I --fix-only --quiet .
    "{{ bin }}/ruff" format .

# Check formatting without changing files
fmt-check:
    "{{ bin }}/ruff" format --check .

# Lint
lint:
    "{{ bin }}/ruff" check .

# Type-check (mypy strict)
typecheck:
    "{{ bin }}/mypy" garden bench

# Run the whole test suite (integration tests need root); extra args go to pytest
test *args:
    "{{ bin }}/pytest" "$@"

# Run the unit tests (no root needed)
test-unit *args:
    "{{ bin }}/pytest" tests/unit "$@"

# Run the integration tests (root, real kernel)
test-integration *args:
    "{{ bin }}/pytest" tests/integration "$@"

# Format check, lint, types and all tests; runs every step, fails if any failed
check:
    #!/usr/bin/env bash
    set -uo pipefail
    cd "{{ justfile_directory() }}"
    status=0
    failed=()
    for step in fmt-check lint typecheck test; do
        echo "==> just $step" >&2
        "{{ just_executable() }}" --justfile "{{ justfile() }}" "$step"
        rc=$?
        if [[ $rc -ne 0 ]]; then
            failed+=("$step (exit $rc)")
            [[ $status -ne 0 ]] || status=$rc
        fi
    done
    if [[ $status -ne 0 ]]; then
        echo "check: FAILED: ${failed[*]}" >&2
    else
        echo "check: all passed" >&2
    fi
    exit $status

# Run the benchmarks (python -m bench); extra args go to it
bench *args:
    "{{ bin }}/python" -m bench "$@"

# Load test (as root): N clients for D minutes against a server of its own, then leak checks;
# e.g. `just load -c 4 -s 60`. See docs/operations.md#load-test
load *args:
    "{{ bin }}/python" -m bench.load "$@"
