"""Vendor the browser libraries the web chat and the dashboard use, pinned, into the package.

Each library is one npm release, named with its version and its registry integrity hash.
The tarball is downloaded, its SHA-512 checked against the pin, and the named files (with
the license) written to ``src/imreactor/web/vendor/``, beside ``VERSIONS.json``, which
records each file's SHA-256. The files are committed: running the suite never fetches
anything, and ``tests/web/test_vendor.py`` checks the committed files against that record.

    .venv/bin/python scripts/vendor_js.py          # fetch, verify, write
    .venv/bin/python scripts/vendor_js.py --check  # verify what is committed, fetch nothing
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import sys
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

VENDOR = Path(__file__).resolve().parent.parent / "src" / "imreactor" / "web" / "vendor"
RECORD = VENDOR / "VERSIONS.json"


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    integrity: str  # the npm registry's "sha512-<base64>" of the tarball
    files: dict[str, str]  # path in the tarball → name under vendor/
    license: str

    @property
    def tarball(self) -> str:
        return f"https://registry.npmjs.org/{self.name}/-/{self.name}-{self.version}.tgz"


PACKAGES = [
    Package(
        "protobufjs",
        "8.8.1",
        "sha512-d9e9179bjXSJdpJ3+R9fP8hzXsnKLyxTjHLG1dUzje8a27pPyXCe6PrcRtgx2rjoM3IZzHd2vAs+6J/BsO1k7Q==",
        {
            "package/dist/protobuf.min.js": "protobuf.min.js",
            "package/LICENSE": "LICENSE.protobufjs",
        },
        "BSD-3-Clause",
    ),
    Package(
        "uplot",
        "1.6.32",
        "sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw==",
        {
            "package/dist/uPlot.iife.min.js": "uPlot.iife.min.js",
            "package/dist/uPlot.min.css": "uPlot.min.css",
            "package/LICENSE": "LICENSE.uplot",
        },
        "MIT",
    ),
]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch(package: Package) -> dict[str, bytes]:
    """The package's named files, from a tarball whose hash matches the pin."""
    with urllib.request.urlopen(package.tarball, timeout=60) as answer:
        tarball = answer.read()
    digest = "sha512-" + base64.b64encode(hashlib.sha512(tarball).digest()).decode()
    if digest != package.integrity:
        raise SystemExit(f"{package.name} {package.version}: tarball hash {digest} is not the pin")
    out: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as tar:
        for member, name in package.files.items():
            extracted = tar.extractfile(member)
            if extracted is None:
                raise SystemExit(f"{package.name}: {member} is not a file in the tarball")
            out[name] = extracted.read()
    return out


def record(vendor: Path = VENDOR) -> dict[str, dict[str, object]]:
    """What ``vendor``'s VERSIONS.json says: per package its version, license and file hashes."""
    data: dict[str, dict[str, object]] = json.loads((vendor / RECORD.name).read_text())
    return data


def check(vendor: Path = VENDOR) -> list[str]:
    """Differences between the files in ``vendor`` and its record (empty: they match)."""
    problems = []
    recorded = record(vendor)
    for package in PACKAGES:
        entry = recorded.get(package.name)
        if entry is None or entry.get("version") != package.version:
            problems.append(f"{package.name}: VERSIONS.json does not pin {package.version}")
            continue
        hashes = entry.get("sha256")
        assert isinstance(hashes, dict)
        for name in package.files.values():
            path = vendor / name
            if not path.is_file():
                problems.append(f"{name}: missing")
            elif sha256(path.read_bytes()) != hashes.get(name):
                problems.append(f"{name}: differs from {package.name} {package.version}")
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--check", action="store_true", help="verify the committed files only")
    args = ap.parse_args()
    if args.check:
        problems = check()
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1 if problems else 0
    VENDOR.mkdir(parents=True, exist_ok=True)
    out: dict[str, dict[str, object]] = {}
    for package in PACKAGES:
        files = fetch(package)
        for name, data in files.items():
            (VENDOR / name).write_bytes(data)
        out[package.name] = {
            "version": package.version,
            "license": package.license,
            "tarball": package.tarball,
            "integrity": package.integrity,
            "sha256": {name: sha256(data) for name, data in sorted(files.items())},
        }
        print(f"{package.name} {package.version}: {', '.join(sorted(files))}")
    RECORD.write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
