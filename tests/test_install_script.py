"""scripts/install_system_packages.sh takes its mirrors from the machine's apt sources."""

import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "install_system_packages.sh"

FAKE_APT_GET = """#!/usr/bin/env bash
# indextargets of a machine whose sources use a local Debian mirror and one other archive
[ "$1" = indextargets ] || exit 1
case "$*" in *"Origin: Debian"*) printf '%s' "$ARCHIVES";; esac
"""


def print_sources(tmp_path: Path, archives: str) -> subprocess.CompletedProcess:
    (tmp_path / "apt-get").write_text(FAKE_APT_GET)
    (tmp_path / "apt-get").chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "ARCHIVES": archives}
    return subprocess.run(
        ["bash", str(SCRIPT), "--print-sources"], env=env, capture_output=True, text=True
    )


def test_contrib_non_free_follow_the_existing_sources(tmp_path):
    mirror = f"{(tmp_path / 'debian').as_uri()}/"  # a local mirror, made up for the test
    archives = f"{mirror} trixie\n{mirror} trixie-updates\n"
    result = print_sources(tmp_path, archives)
    assert result.returncode == 0, result.stderr
    assert f"URIs: {mirror}\nSuites: trixie trixie-updates\n" in result.stdout
    assert "Components: contrib non-free" in result.stdout
    assert "debian.org" not in SCRIPT.read_text()


def test_no_debian_archive_in_the_sources_is_an_error(tmp_path):
    assert print_sources(tmp_path, "").returncode != 0
