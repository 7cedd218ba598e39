"""TLS of the servers: authenticated links between them, and their client-facing TLS ports.

Links are mutual TLS with certificates of a cluster CA.

Every server-facing port (db_proxy_server's, route_server's, login_server's
msg_server port) trusts whoever connects unless the link is authenticated:
anyone who reached db_proxy_server could read any history or check any
password. With the three ``link_*`` keys set, a server's listener for other
servers accepts only peers that present a certificate signed by the cluster
CA, and every link it opens presents its own. A peer that does not is closed
during the TLS handshake, before a single request is read, and logged once
with its address (:mod:`imreactor.net.tls`).

What is checked is membership: a certificate from the cluster CA. Host names
are not, because servers reach each other by whatever address a deployment
uses (loopback, a private network, a NAT) and the CA is private to the
cluster. docs/security.md has the trust model and how to rotate.

With the keys empty (the default for a config written by hand) links are plain
TCP, as in TeamTalk, so the suite can mix with TeamTalk's own servers; those
ports must then stay on a private network. ``imreactor up`` always sets them.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from ..config import ConfigError, option
from ..net.tls import harden, server_context


@dataclass
class LinkSecurity:
    """The ``link_*`` keys every server role has (one table per role)."""

    link_ca_file: str = option(
        "",
        "cluster CA (PEM) that signs every server's link certificate; empty: links between"
        " servers are plain TCP and unauthenticated (as in TeamTalk; keep their ports private)",
    )
    link_cert_file: str = option("", "this server's link certificate (PEM, signed by link_ca_file)")
    link_key_file: str = option(
        "", "the private key of link_cert_file (PEM; readable by this user only)"
    )

    def check_link_security(self, section: str) -> None:
        """ConfigError unless the three keys are all set or all empty."""
        given = [bool(self.link_ca_file), bool(self.link_cert_file), bool(self.link_key_file)]
        if any(given) and not all(given):
            raise ConfigError(
                f"{section}: link_ca_file, link_cert_file and link_key_file go together"
                " (set all three, or none for plain links)"
            )

    @property
    def links_authenticated(self) -> bool:
        return bool(self.link_ca_file)


def _load(section: str, build: ssl.SSLContext, config: LinkSecurity) -> ssl.SSLContext:
    try:
        build.load_cert_chain(config.link_cert_file, config.link_key_file)
        build.load_verify_locations(config.link_ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{section}: cannot load the link certificate or CA: {exc}") from exc
    return build


def public_server_context(cert_file: str, key_file: str, section: str) -> ssl.SSLContext:
    """The context of a port that faces clients (msg_server's ``tls_port``, HTTPS).

    Raises ConfigError for files that cannot be read or do not match.
    """
    try:
        return server_context(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{section}: cannot load cert_file/key_file: {exc}") from exc


def link_server_context(config: LinkSecurity, section: str) -> ssl.SSLContext | None:
    """The context for a listener of server links, or None for plain links.

    Raises ConfigError for files that cannot be read or do not match.
    """
    if not config.links_authenticated:
        return None
    context = harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    context.verify_mode = ssl.CERT_REQUIRED  # no certificate from the cluster CA: no link
    return _load(section, context, config)


def link_client_context(config: LinkSecurity, section: str) -> ssl.SSLContext | None:
    """The context for links this server opens, or None for plain links.

    Raises ConfigError for files that cannot be read or do not match.
    """
    if not config.links_authenticated:
        return None
    context = harden(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    context.check_hostname = False  # membership of the cluster CA is what is checked
    context.verify_mode = ssl.CERT_REQUIRED
    return _load(section, context, config)
