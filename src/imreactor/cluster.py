"""``imreactor cluster``: set up authenticated server links across machines, one command each.

::

    imreactor cluster init   [--data-dir DIR]                      # on the first machine
    imreactor cluster invite [--data-dir DIR] --name NAME [--out F]  # there, once per machine
    imreactor cluster join F [--data-dir DIR]                       # on the new machine

Servers of one cluster accept each other's links only with a certificate of the
cluster CA (docs/security.md). ``init`` makes that CA and this machine's link
certificate in ``<data-dir>/pki`` — the files ``imreactor up`` then uses; ``invite``
issues a link certificate for another machine and writes it, with its key and the
CA certificate (never the CA key), to one join file readable by its owner only;
``join`` checks that file and installs it in that machine's ``<data-dir>/pki``. The
CA key stays on the first machine: only it can invite. Both ``init`` and ``join``
print the three config keys (``link_ca_file``, ``link_cert_file``,
``link_key_file``) for servers started with their own ``--config`` files.

Exit status: 0 done, 2 refused (one line on stderr: an existing CA, a join file that
does not verify, a data dir without the CA key).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from . import pki

DEFAULT_DATA_DIR = "data"
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z ]+)-----\r?\n.*?-----END \1-----\r?\n?", re.DOTALL)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,62}")


class ClusterError(Exception):
    """A cluster command refused; the message is the one line to print."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``cluster init|invite|join`` to the CLI's subcommands."""
    p = sub.add_parser("cluster", help="set up authenticated server links across machines")
    steps = p.add_subparsers(dest="step", required=True, metavar="STEP")
    data_dir = argparse.ArgumentParser(add_help=False)
    data_dir.add_argument(
        "--data-dir", default=DEFAULT_DATA_DIR, metavar="DIR", help="as imreactor up (data)"
    )
    s = steps.add_parser("init", parents=[data_dir], help="make the cluster CA here")
    s.set_defaults(run=_runner(lambda a: init(Path(a.data_dir))))
    s = steps.add_parser("invite", parents=[data_dir], help="write a join file for a machine")
    s.add_argument("--name", required=True, help="the machine's name (letters, digits, . and -)")
    s.add_argument("--out", metavar="FILE", help="the join file (default NAME.join)")
    s.set_defaults(
        run=_runner(lambda a: invite(Path(a.data_dir), a.name, Path(a.out or f"{a.name}.join")))
    )
    s = steps.add_parser("join", parents=[data_dir], help="install a join file here")
    s.add_argument("file", metavar="FILE", help="the join file from imreactor cluster invite")
    s.set_defaults(run=_runner(lambda a: join(Path(a.file), Path(a.data_dir))))


def _runner(step: Callable[[argparse.Namespace], str]) -> Callable[[argparse.Namespace], int]:
    """``step`` as a ``run`` function: its message on stdout and 0, or one line and 2."""

    def run(args: argparse.Namespace) -> int:
        try:
            message = step(args)
        except ClusterError as exc:
            print(f"imreactor cluster {args.step}: {exc}", file=sys.stderr, flush=True)
            return 2
        print(message, flush=True)
        return 0

    return run


def _pki(data_dir: Path) -> Path:
    return data_dir.resolve() / "pki"


def _config_lines(link: pki.CertFiles, ca_cert: Path) -> str:
    return (
        f'  link_ca_file = "{ca_cert}"\n'
        f'  link_cert_file = "{link.cert}"\n'
        f'  link_key_file = "{link.key}"'
    )


def init(data_dir: Path) -> str:
    """Make the cluster CA and this machine's link certificate; what to do next."""
    directory = _pki(data_dir)
    if (directory / "ca.pem").exists():
        raise ClusterError(f"{directory} already has a cluster CA (ca.pem); nothing changed")
    ca, link = pki.link_files(directory)
    return (
        f"cluster CA made in {directory} (its key, {ca.key}, never leaves this machine).\n"
        f"imreactor up --data-dir {data_dir} uses it; servers run with their own configs take:\n"
        f"{_config_lines(link, ca.cert)}\n"
        f"next, for each other machine: imreactor cluster invite --data-dir {data_dir} --name NAME"
    )


def invite(data_dir: Path, name: str, out: Path) -> str:
    """Issue a link certificate for machine ``name`` into the join file ``out``."""
    if not _NAME.fullmatch(name):
        raise ClusterError(f"--name {name!r}: use letters, digits, '.' and '-' (up to 63)")
    directory = _pki(data_dir)
    ca = pki.CertFiles(directory / "ca.pem", directory / "ca.key")
    if not ca.key.exists():
        raise ClusterError(
            f"{directory} has no cluster CA key: invite on the machine that ran cluster init"
        )
    if out.exists():
        raise ClusterError(f"{out} exists; remove it or give another --out")
    with tempfile.TemporaryDirectory() as tmp:
        link = pki.issue(ca, Path(tmp), "link", hosts=[name])
        bundle = ca.cert.read_bytes() + link.cert.read_bytes() + link.key.read_bytes()
    pki.write_private(out, bundle)
    return (
        f"join file for {name}: {out} (it holds {name}'s private key: copy it privately).\n"
        f"on {name}: imreactor cluster join {out.name} --data-dir DIR"
    )


def join(file: Path, data_dir: Path) -> str:
    """Check the join file and install it as this machine's link certificate."""
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise ClusterError(f"cannot read {file}: {exc.strerror}") from None
    ca_pem, cert_pem, key_pem = _split(file, data)
    try:
        ca_cert = x509.load_pem_x509_certificate(ca_pem)
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise ClusterError(f"{file} is not a valid join file: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise ClusterError(f"{file} is not a valid join file: the key is not the certificate's")
    directory = _pki(data_dir)
    ca_file = directory / "ca.pem"
    if ca_file.exists() and ca_file.read_bytes() != ca_pem:
        raise ClusterError(f"{directory} already belongs to another cluster (ca.pem differs)")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_file.write_bytes(ca_pem)
    link = pki.CertFiles(directory / "link.pem", directory / "link.key")
    link.cert.write_bytes(cert_pem)
    pki.write_private(link.key, key_pem)
    return (
        f"joined the cluster of {ca_cert.subject.rfc4514_string()} in {directory}.\n"
        f"imreactor up --data-dir {data_dir} uses it; servers run with their own configs take:\n"
        f"{_config_lines(link, ca_file)}"
    )


def _split(file: Path, data: bytes) -> tuple[bytes, bytes, bytes]:
    blocks = [(m.group(1), m.group(0)) for m in _PEM_BLOCK.finditer(data)]
    kinds = [kind for kind, _ in blocks]
    if kinds != [b"CERTIFICATE", b"CERTIFICATE", b"PRIVATE KEY"]:
        raise ClusterError(
            f"{file} is not a join file (expected CA certificate, certificate, key; "
            f"found {', '.join(k.decode() for k in kinds) or 'no PEM blocks'})"
        )
    return blocks[0][1], blocks[1][1], blocks[2][1]
