"""``imreactor chat``: a terminal IM client; ``imreactor send`` / ``history`` for scripts.

::

    imreactor chat --user NAME [--password PW] [--login-url URL] [--aes-key KEY]
    imreactor send --user NAME [--password PW] (--to PEER | --group ID) TEXT
    imreactor history --user NAME [--password PW] (--with PEER | --group ID) [--count N]

Each also takes ``--tls`` (msg_server's TLS port, the certificate verified) and
``--ca FILE`` (the CA to verify with, e.g. the one ``imreactor up --tls`` prints).

``chat`` logs in through login_server (and reconnects the same way, catching up
on what it missed), shows contacts and recent sessions with presence and unread
counts, and then reads lines: text goes to the current conversation, slash
commands (``/help`` lists them) pick conversations, show history, list people
and groups. Incoming messages, presence changes and connection status print
above the prompt (prompt_toolkit's ``patch_stdout``), so typing is never
interrupted.

Presence: the chat watches (:meth:`Client.watch`, which the SDK renews after
each reconnect) the users it shows — the peer of the open conversation, the
peers of recent sessions, then the contacts, up to the SDK's ``watch_limit`` —
and prints the changes of those users only, whether msg_server sends
``IMUserStatNotify`` to subscribers or to everyone. People are always shown by
name: an id it does not know yet is looked up (``IMUsersInfoReq``, cached), and
only one the server does not know, or cannot be asked about right now, is
shown as ``user #ID``.

What the chat says of a message sent: ``✓ #ID stored`` once msg_server acks it
(``IMMsgDataAck``, which it sends only after the message is durably stored), and
then, for a 1:1 message, whether the peer is online (msg_server passes it on to
their open sessions now) or offline (it waits for their next login, as unread).
That is all TeamTalk's protocol tells a sender: a recipient's delivery receipt
(its ``IMMsgDataAck``) ends at msg_server, and a read mark
(``IMMsgDataReadAck``) is echoed as ``IMMsgDataReadNotify`` only to the reader's
own other devices, never to the sender; so the chat shows no "delivered" or
"read" it could not know (docs/protocol.md, "What a sender learns").

Times are ``HH:MM`` for today's messages; a message of another day (history,
a catch-up after a reconnect) shows its date too: ``2026-12-05 14:03``.

``send`` prints the stored message's ``msg_id``; ``history`` prints the newest
``--count`` messages, oldest first, one per line: ``#ID TIME SENDER: TEXT``.

A peer is named by its numeric user id, or by its domain, nick or real name
(case-insensitive; the wire's ``UserInfo`` has no login name). Without
``--password`` the password comes from ``$IMREACTOR_PASSWORD``, else it is asked
for on the terminal. ``--aes-key`` (or ``$IMREACTOR_AES_KEY``) encodes texts the
way the original clients do; received texts that do not decode under it are
shown as plain UTF-8.

Exit status: 0 done; 1 refused or failed (login refused, no such user or group,
login_server or msg_server unreachable, kicked), with one line on stderr; 2 bad
usage.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ..pdu.proto import im_base_define_pb2 as base
from ..pdu.proto import im_buddy_pb2 as buddy
from ..pdu.proto import im_group_pb2 as group_pb
from ..pdu.proto import im_message_pb2 as msg_pb
from .blocking import Client, ClientError, ClientStatus
from .images import Image, image_text, segments
from .msfs import MAX_DOWNLOAD_BYTES, MsfsError, upload
from .tls import add_tls_arguments, tls_context

if TYPE_CHECKING:
    from prompt_toolkit import PromptSession

DEFAULT_LOGIN_URL = "http://127.0.0.1:8080"
HISTORY_ON_SWITCH = 10
DEFAULT_HISTORY = 20


class ChatError(Exception):
    """What the user asked cannot be done; the message is the one line to print."""


# -- command line ------------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``chat``, ``send`` and ``history`` to the CLI's subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--user", required=True, metavar="NAME", help="login name")
    common.add_argument(
        "--password",
        metavar="PW",
        help="plaintext password (default: $IMREACTOR_PASSWORD, else asked for)",
    )
    common.add_argument(
        "--login-url",
        default=DEFAULT_LOGIN_URL,
        metavar="URL",
        help=f"login_server's HTTP address (default {DEFAULT_LOGIN_URL})",
    )
    common.add_argument(
        "--aes-key",
        default=os.environ.get("IMREACTOR_AES_KEY"),
        metavar="KEY",
        help="32-byte key: encode texts as the original clients do ($IMREACTOR_AES_KEY)",
    )
    common.add_argument(
        "--timeout", type=float, default=10.0, metavar="S", help="request timeout (default 10)"
    )
    add_tls_arguments(common)

    p = sub.add_parser("chat", parents=[common], help="interactive terminal chat")
    p.set_defaults(run=_runner("chat", run_chat))

    p = sub.add_parser("send", parents=[common], help="send one text and print its msg_id")
    to = p.add_mutually_exclusive_group(required=True)
    to.add_argument("--to", metavar="PEER", help="user: id, domain, nick or real name")
    to.add_argument("--group", type=int, metavar="ID", help="group id")
    p.add_argument("text", metavar="TEXT", help="the message")
    p.set_defaults(run=_runner("send", run_send))

    p = sub.add_parser("history", parents=[common], help="print a conversation's history")
    with_ = p.add_mutually_exclusive_group(required=True)
    with_.add_argument("--with", dest="peer", metavar="PEER", help="user: id or name")
    with_.add_argument("--group", type=int, metavar="ID", help="group id")
    p.add_argument(
        "--count", type=int, default=DEFAULT_HISTORY, metavar="N", help="messages (default 20)"
    )
    p.set_defaults(run=_runner("history", run_history))


def _runner(name: str, fn: Callable[[argparse.Namespace], int]) -> Callable[..., int]:
    """``fn`` as a ``run`` function: every expected failure is one line on stderr and 1."""

    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except (ChatError, ClientError, TimeoutError, ValueError) as exc:
            print(f"imreactor {name}: {_one_line(exc)}", file=sys.stderr, flush=True)
            return 1
        except KeyboardInterrupt:
            return 130

    return run


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer from the server ({str(exc) or 'timed out'})"
    return " ".join(str(exc).split()) or type(exc).__name__


def _password(args: argparse.Namespace) -> str:
    if args.password is not None:
        return str(args.password)
    env = os.environ.get("IMREACTOR_PASSWORD")
    if env is not None:
        return env
    if not sys.stdin.isatty():
        raise ChatError("no password: give --password or set IMREACTOR_PASSWORD")
    return getpass.getpass(f"password for {args.user}: ")


def _login(
    args: argparse.Namespace, client_type: int = base.CLIENT_TYPE_SCRIPT, **kw: Any
) -> Client:
    """Connect through login_server and log in; ClientError (one line) if anything fails.

    ``send`` and ``history`` log in as scripts (``CLIENT_TYPE_SCRIPT``), a device class
    of its own, so that they never kick the user's open chat or phone."""
    password = _password(args)
    client = Client.via_login_server(
        args.login_url,
        timeout_s=args.timeout,
        aes_key=args.aes_key or None,
        ssl=tls_context(args),
        **kw,
    )
    try:
        client.login(args.user, password, client_type=client_type)
    except BaseException:
        client.close()
        raise
    return client


# -- names and texts ---------------------------------------------------------------------------


def display_name(user: Any) -> str:
    """What to call a user on screen: nick, else real name, else domain, else the id."""
    return str(
        user.user_nick_name or user.user_real_name or user.user_domain or unknown_user(user.user_id)
    )


def unknown_user(user_id: int) -> str:
    """What to call a user whose name cannot be found (the id marked as one, not bare)."""
    return f"user #{user_id}"


def state_word(status: int | None) -> str:
    """A presence status (``USER_STATUS_*``) in words; None: not known (not watched)."""
    if status is None:
        return "presence not watched"
    if status == base.USER_STATUS_ONLINE:
        return "online"
    return "away" if status == base.USER_STATUS_LEAVE else "offline"


def resolve_user(users: Iterable[Any], name: str) -> Any:
    """The ``UserInfo`` that ``name`` means: a numeric id, or a domain, nick or real name.

    Names match case-insensitively, tried in that order; ChatError if nothing or
    more than one user matches.
    """
    users = list(users)
    if name.isdigit():
        for u in users:
            if u.user_id == int(name):
                return u
        raise ChatError(f"no user with id {name}")
    wanted = name.casefold()
    for field in ("user_domain", "user_nick_name", "user_real_name"):
        found = [u for u in users if getattr(u, field) and getattr(u, field).casefold() == wanted]
        if len(found) == 1:
            return found[0]
        if found:
            ids = ", ".join(str(u.user_id) for u in found)
            raise ChatError(f"{name!r} is ambiguous (users {ids}): use the id")
    raise ChatError(f"no user named {name!r}")


def text_of(client: Client, data: bytes) -> str:
    """The text of ``msg_data`` (decoded as the client's encoding, else as plain UTF-8),
    with each image shown as ``[image URL]``."""
    try:
        text = client.decode_text(data)
    except ValueError:
        text = data.decode("utf-8", errors="replace")
    return "".join(f"[image {s.url}]" if isinstance(s, Image) else s for s in segments(text))


def _clock(ts: int, with_date: bool = False) -> str:
    """``ts`` as ``YYYY-MM-DD HH:MM:SS`` (``with_date``), else as :func:`when`."""
    if with_date:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
    return when(ts)


def when(ts: int, now: float | None = None) -> str:
    """``HH:MM`` for a time on the day of ``now`` (default: today), else with its date
    before it (``YYYY-MM-DD HH:MM``), local time both."""
    moment, today = time.localtime(ts), time.localtime(now)
    if (moment.tm_year, moment.tm_yday) == (today.tm_year, today.tm_yday):
        return time.strftime("%H:%M", moment)
    return time.strftime("%Y-%m-%d %H:%M", moment)


# -- one-shot commands -------------------------------------------------------------------------


def run_send(args: argparse.Namespace) -> int:
    with _login(args) as client:
        if args.group is not None:
            _check_group(client, args.group)
            ack = client.send_group_text(args.group, args.text)
        else:
            peer = resolve_user(client.all_users().user_list, args.to)
            ack = client.send_text(peer.user_id, args.text)
        print(ack.msg_id, flush=True)
    return 0


def run_history(args: argparse.Namespace) -> int:
    if args.count < 1:
        raise ChatError("--count must be at least 1")
    with _login(args) as client:
        users = {u.user_id: u for u in client.all_users().user_list}
        if args.group is not None:
            _check_group(client, args.group)
            session_id, session_type = args.group, base.SESSION_TYPE_GROUP
        else:
            session_id = resolve_user(users.values(), args.peer).user_id
            session_type = base.SESSION_TYPE_SINGLE
        msgs = newest_messages(client, session_id, session_type, args.count)
        for line in history_lines(client, users, msgs, with_date=True):
            print(line)
        sys.stdout.flush()
    return 0


def _check_group(client: Client, group_id: int) -> Any:
    for g in client.groups():
        if g.group_id == group_id:
            return g
    raise ChatError(f"no group {group_id} with you in it")


def newest_messages(client: Client, session_id: int, session_type: int, count: int) -> list[Any]:
    """The newest ``count`` messages (``MsgInfo``) of a session, oldest first."""
    return list(reversed(client.history(session_id, 0, count, session_type).msg_list))


def history_lines(
    client: Client, users: dict[int, Any], msgs: Iterable[Any], with_date: bool = False
) -> list[str]:
    """Messages (``MsgInfo``) as ``#ID TIME SENDER: TEXT`` lines."""
    lines = []
    for m in msgs:
        if m.from_session_id == client.user_id:
            who = "you"
        elif m.from_session_id in users:
            who = display_name(users[m.from_session_id])
        else:
            who = unknown_user(m.from_session_id)
        stamp = _clock(m.create_time, with_date)
        lines.append(f"#{m.msg_id} {stamp} {who}: {text_of(client, m.msg_data)}")
    return lines


# -- the interactive chat ----------------------------------------------------------------------


HELP = """\
commands:
  /to NAME        talk to a user (id, domain, nick or real name); shows recent history
  /group ID       talk in a group you are a member of
  /groups         your groups
  /newgroup NAME PEER[,PEER...]   create a group with these members and switch to it
  /history [N]    the last N messages here (default 20)
  /send FILE      upload an image to msfs and send it here
  /who            contacts with presence and unread counts
  /recent         recent sessions with unread counts
  /help           this list
  /quit           leave (also Ctrl-D)
anything else is sent to the current conversation."""


class Chat:
    """The state of one interactive session; output goes through ``out`` (thread-safe).

    Commands run on the prompt's thread; server pushes arrive on the client's
    callback thread. ``_lock`` guards the shared state (users, groups, presence,
    the current conversation); requests are never made while holding it.
    """

    def __init__(self, client: Client, out: Callable[[str], None]) -> None:
        self.client = client
        self.out = out
        self._lock = threading.Lock()
        self.users: dict[int, Any] = {}
        #: Ids the server said it has no user for (not asked about again for a name).
        self.missing: set[int] = set()
        self.groups: dict[int, Any] = {}
        #: Status by user id, of the users watched (and, from a server that sends
        #: every notify to everyone, of others too).
        self.presence: dict[int, int] = {}
        #: ``(session_type, session_id)`` of the conversation typed text goes to.
        self.current: tuple[int, int] | None = None
        self.ended: str | None = None  # why the chat must stop (kicked, refused)
        self.on_end: Callable[[], None] = lambda: None

    # -- start ----------------------------------------------------------------------------

    def load(self) -> None:
        """Fetch users and groups, and watch the users shown (:meth:`watch_shown`)."""
        users = {u.user_id: u for u in self.client.all_users().user_list}
        groups = {g.group_id: g for g in self.client.groups()}
        with self._lock:
            self.users = users
            self.groups = groups
        self.watch_shown()

    # -- presence -------------------------------------------------------------------------

    def watch_shown(self) -> None:
        """Watch the users this chat shows, most wanted first (the bound keeps the first).

        The peer of the open conversation, the peers of recent sessions (newest
        first), then the contacts in the order ``/who`` lists them. Only users not
        watched yet are asked for: the SDK itself renews the others after a reconnect.
        """
        sessions = self.client.recent_sessions().contact_session_list
        with self._lock:
            current = self.current
            contacts = sorted(self.users.values(), key=lambda u: display_name(u).casefold())
        ids: list[int] = []
        if current is not None and current[0] == base.SESSION_TYPE_SINGLE:
            ids.append(current[1])
        ids += [s.session_id for s in sessions if s.session_type == base.SESSION_TYPE_SINGLE]
        ids += [u.user_id for u in contacts]
        self.watch(ids)

    def watch(self, user_ids: Iterable[int]) -> None:
        """Watch those of ``user_ids`` not watched yet (not this user) and note their status."""
        watched = self.client.watched
        me = self.client.user_id
        new = [uid for uid in dict.fromkeys(user_ids) if uid != me and uid not in watched]
        if new:
            statuses = self.client.watch(new)
            with self._lock:
                self.presence.update(statuses)

    def greet(self) -> None:
        me = self.client.user_info
        self.out(
            f"logged in as {display_name(me)} (id {me.user_id}) at "
            f"{self.client.host}:{self.client.port}; /help lists the commands"
        )
        self.cmd_who("")
        self.cmd_recent("")

    # -- names ----------------------------------------------------------------------------

    def name(self, user_id: int, *, again: bool = False) -> str:
        """What to call ``user_id`` here ("you" for this user); looked up if not known yet.

        ``again``: ask the server even if it said before that there is no such
        user (a message or a notify from the id shows that there is one now).
        """
        if user_id == self.client.user_id:
            return "you"
        self.learn_users([user_id], again=again)
        with self._lock:
            user = self.users.get(user_id)
        return display_name(user) if user is not None else unknown_user(user_id)

    def learn_users(self, user_ids: Iterable[int], *, again: bool = False) -> None:
        """Fetch, with one ``IMUsersInfoReq``, the users among ``user_ids`` not known yet.

        The ids the server does not answer for go to :attr:`missing` and are not
        asked about again unless ``again``; when the server cannot be asked
        (offline, no answer) nothing is recorded, so the next name asks again.
        """
        with self._lock:
            unknown = [
                uid
                for uid in dict.fromkeys(user_ids)
                if uid not in self.users and (again or uid not in self.missing)
            ]
        if not unknown:
            return
        try:
            infos = self.client.users_info(unknown).user_info_list
        except (ClientError, TimeoutError):
            return
        with self._lock:
            for u in infos:
                self.users[u.user_id] = u
            self.missing.update(uid for uid in unknown if uid not in self.users)

    def resolve(self, name: str) -> Any:
        """The user ``name`` means (:func:`resolve_user`), among the users known, else
        among everyone after asking the server again (a user who joined after login)."""
        if name.isdigit():
            self.learn_users([int(name)], again=True)  # an id it has not seen yet
        with self._lock:
            users = list(self.users.values())
        try:
            return resolve_user(users, name)
        except ChatError:
            if name.isdigit():
                raise
        fresh = {u.user_id: u for u in self.client.all_users().user_list}
        with self._lock:
            self.users.update(fresh)
            users = list(self.users.values())
        return resolve_user(users, name)

    def session_label(self, session_type: int, session_id: int) -> str:
        if session_type == base.SESSION_TYPE_GROUP:
            with self._lock:
                g = self.groups.get(session_id)
            return f"#{session_id} {g.group_name}" if g is not None else f"#{session_id}"
        return self.name(session_id)

    def prompt(self) -> str:
        me = display_name(self.client.user_info)
        if self.current is None:
            return f"{me}> "
        return f"{me} → {self.session_label(*self.current)}> "

    # -- input ----------------------------------------------------------------------------

    def handle(self, line: str) -> bool:
        """Run one input line; False when the chat should end."""
        line = line.strip()
        if not line:
            return True
        if not line.startswith("/"):
            self.send(line)
            return True
        cmd, _, rest = line[1:].partition(" ")
        if cmd in ("quit", "exit"):
            return False
        handler = getattr(self, f"cmd_{cmd}", None) if cmd.isidentifier() else None
        if handler is None:
            self.out(f"unknown command /{cmd} (try /help)")
            return True
        try:
            handler(rest.strip())
        except ChatError as exc:
            self.out(str(exc))
        except (ClientError, TimeoutError) as exc:
            self.out(f"failed: {_one_line(exc)}")
        return True

    def send(self, text: str) -> None:
        if self.current is None:
            self.out("no conversation yet: /to NAME or /group ID first")
            return
        session_type, session_id = self.current
        try:
            if session_type == base.SESSION_TYPE_GROUP:
                ack = self.client.send_group_text(session_id, text)
            else:
                ack = self.client.send_text(session_id, text)
        except (ClientError, TimeoutError) as exc:
            self.out(f"not sent: {_one_line(exc)}")
            return
        self.out(self.sent_status(session_type, session_id, ack.msg_id))

    def sent_status(self, session_type: int, session_id: int, msg_id: int) -> str:
        """What is known of message ``msg_id`` just acked: stored, and where it goes now
        (module docstring: the protocol tells a sender nothing after the ack)."""
        stored = f"  ✓ #{msg_id} stored"
        if session_type == base.SESSION_TYPE_GROUP:
            return f"{stored} · passed on to the members online"
        with self._lock:
            status = self.presence.get(session_id)
        if session_id not in self.client.watched or status is None:
            return stored
        peer = self.name(session_id)
        if status == base.USER_STATUS_OFFLINE:
            return f"{stored} · {peer} is offline: it waits for their next login"
        return f"{stored} · {peer} is {state_word(status)}: passed on now"

    # -- commands -------------------------------------------------------------------------

    def cmd_help(self, rest: str) -> None:
        self.out(HELP)

    def cmd_to(self, rest: str) -> None:
        if not rest:
            raise ChatError("usage: /to NAME")
        user = self.resolve(rest)
        if user.user_id == self.client.user_id:
            raise ChatError("that is you")
        self._switch(base.SESSION_TYPE_SINGLE, user.user_id)

    def cmd_group(self, rest: str) -> None:
        if not rest.isdigit():
            raise ChatError("usage: /group ID (see /groups)")
        gid = int(rest)
        with self._lock:
            known = gid in self.groups
        if not known:
            self._refresh_groups()
            with self._lock:
                known = gid in self.groups
        if not known:
            raise ChatError(f"no group {gid} with you in it (see /groups)")
        self._switch(base.SESSION_TYPE_GROUP, gid)

    def cmd_groups(self, rest: str) -> None:
        self._refresh_groups()
        with self._lock:
            groups = list(self.groups.values())
        if not groups:
            self.out("no groups (/newgroup NAME PEER,PEER creates one)")
        self.learn_users(uid for g in groups for uid in g.group_member_list)
        for g in groups:
            # In user-id order, whichever answer or notify the list last came from.
            members = ", ".join(self.name(uid) for uid in sorted(g.group_member_list))
            self.out(f"  #{g.group_id} {g.group_name}: {members}")

    def cmd_newgroup(self, rest: str) -> None:
        name, _, peers = rest.partition(" ")
        if not name or not peers.strip():
            raise ChatError("usage: /newgroup NAME PEER[,PEER...]")
        ids = [self.resolve(p.strip()).user_id for p in peers.split(",") if p.strip()]
        rsp = self.client.create_group(name, ids)
        self._refresh_groups()
        self.out(f"created group #{rsp.group_id} {name}")
        self._switch(base.SESSION_TYPE_GROUP, rsp.group_id)

    def cmd_send(self, rest: str) -> None:
        if not rest:
            raise ChatError("usage: /send FILE")
        if self.current is None:
            raise ChatError("no conversation yet: /to NAME or /group ID first")
        if not self.client.msfs_url:
            raise ChatError("no image store: login_server gave no msfsPrior")
        path = os.path.expanduser(rest)
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_DOWNLOAD_BYTES + 1)
        except OSError as exc:
            raise ChatError(f"cannot read {rest}: {exc.strerror}") from None
        if len(data) > MAX_DOWNLOAD_BYTES:
            raise ChatError(f"{rest} is over {MAX_DOWNLOAD_BYTES} bytes")
        try:
            url = upload(self.client.msfs_url, data, os.path.basename(path), self.client.timeout_s)
        except MsfsError as exc:
            raise ChatError(f"not sent: {exc}") from None
        self.send(image_text(url))
        self.out(f"sent [image {url}]")

    def cmd_history(self, rest: str) -> None:
        if self.current is None:
            raise ChatError("no conversation yet: /to NAME or /group ID first")
        if rest and not rest.isdigit():
            raise ChatError("usage: /history [N]")
        self._show_history(int(rest) if rest else DEFAULT_HISTORY)

    def cmd_who(self, rest: str) -> None:
        unread = self._unread_by_session()
        with self._lock:
            users = sorted(self.users.values(), key=lambda u: display_name(u).casefold())
            presence = dict(self.presence)
        parts = []
        for u in users:
            if u.user_id == self.client.user_id:
                continue
            state = state_word(presence.get(u.user_id))
            n = unread.get((base.SESSION_TYPE_SINGLE, u.user_id), 0)
            parts.append(f"{display_name(u)} ({state}{f', {n} unread' if n else ''})")
        self.out("contacts: " + (", ".join(parts) if parts else "none"))

    def cmd_recent(self, rest: str) -> None:
        unread = self._unread_by_session()
        sessions = self.client.recent_sessions().contact_session_list
        if not sessions:
            self.out("recent: none")
            return
        peers = [s.session_id for s in sessions if s.session_type == base.SESSION_TYPE_SINGLE]
        self.learn_users(peers + [s.latest_msg_from_user_id for s in sessions if s.latest_msg_id])
        self.watch(peers)
        self.out("recent:")
        for s in sessions:
            label = self.session_label(s.session_type, s.session_id)
            n = unread.get((s.session_type, s.session_id), 0)
            last = text_of(self.client, s.latest_msg_data) if s.latest_msg_id else ""
            who = self.name(s.latest_msg_from_user_id) if s.latest_msg_id else ""
            tail = f" — {who}: {last}" if last else ""
            self.out(f"  {label}{f' ({n} unread)' if n else ''}{tail}")

    # -- helpers --------------------------------------------------------------------------

    def _unread_by_session(self) -> dict[tuple[int, int], int]:
        rsp = self.client.unread()
        return {(u.session_type, u.session_id): u.unread_cnt for u in rsp.unreadinfo_list}

    def _refresh_groups(self) -> None:
        groups = {g.group_id: g for g in self.client.groups()}
        with self._lock:
            self.groups = groups

    def _switch(self, session_type: int, session_id: int) -> None:
        with self._lock:
            self.current = (session_type, session_id)
        self.out(f"--- {self.session_label(session_type, session_id)} ---")
        if session_type == base.SESSION_TYPE_SINGLE:
            self.watch([session_id])
        self._show_history(HISTORY_ON_SWITCH)

    def _show_history(self, count: int) -> None:
        assert self.current is not None
        session_type, session_id = self.current
        msgs = newest_messages(self.client, session_id, session_type, count)
        self.learn_users(m.from_session_id for m in msgs)
        with self._lock:
            users = dict(self.users)
        for line in history_lines(self.client, users, msgs) or ["(no messages yet)"]:
            self.out(line)
        if msgs:
            self.client.read_ack(session_id, msgs[-1].msg_id, session_type)

    # -- pushes (the client's callback thread) --------------------------------------------

    def on_push(self, message: Any, seq: int) -> None:
        if isinstance(message, msg_pb.IMMsgData):
            self._incoming(message)
        elif isinstance(message, buddy.IMUserStatNotify):
            stat = message.user_stat
            with self._lock:
                before = self.presence.get(stat.user_id)
                self.presence[stat.user_id] = stat.status
            # Only the users shown: a server that sends every notify to everyone must
            # not make this chat print more than one that sends them to subscribers.
            if before != stat.status and stat.user_id in self.client.watched:
                self.out(f"* {self.name(stat.user_id, again=True)} is {state_word(stat.status)}")
        elif isinstance(message, group_pb.IMGroupChangeMemberNotify):
            self._refresh_groups()
            verb = "joined" if message.change_type == base.GROUP_MODIFY_TYPE_ADD else "left"
            self.learn_users(message.chg_user_id_list)
            who = ", ".join(self.name(uid) for uid in message.chg_user_id_list)
            self.out(
                f"* {self.session_label(base.SESSION_TYPE_GROUP, message.group_id)}: {who} {verb}"
            )

    def _incoming(self, m: Any) -> None:
        group = m.msg_type in (base.MSG_TYPE_GROUP_TEXT, base.MSG_TYPE_GROUP_AUDIO)
        if group:
            key = (base.SESSION_TYPE_GROUP, m.to_session_id)
            with self._lock:
                unknown = m.to_session_id not in self.groups
            if unknown:
                self._refresh_groups()
        elif m.from_user_id == self.client.user_id:
            key = (base.SESSION_TYPE_SINGLE, m.to_session_id)
        else:
            key = (base.SESSION_TYPE_SINGLE, m.from_user_id)
        text = text_of(self.client, m.msg_data)
        # Looked up before the line is printed; if that cannot be done now, the line
        # still prints (as "user #ID") and the next line from the id asks again.
        sender = self.name(m.from_user_id, again=True)
        stamp = when(m.create_time)
        if key == self.current:
            self.out(f"[{stamp}] {sender}: {text}")
            if m.from_user_id != self.client.user_id:
                try:
                    self.client.read_ack(key[1], m.msg_id, key[0])
                except ClientError:
                    pass  # offline: the read mark is sent with the next one
        elif group:
            self.out(f"[{stamp}] {self.session_label(*key)} | {sender}: {text}")
        elif m.from_user_id == self.client.user_id:
            self.out(f"[{stamp}] you → {self.name(key[1])}: {text}")
        else:
            with self._lock:
                named = m.from_user_id in self.users
            reply = sender if named else str(m.from_user_id)
            self.out(f"[{stamp}] {sender} → you: {text}   (/to {reply} to reply)")
        if not group and m.from_user_id != self.client.user_id:
            try:
                self.watch([m.from_user_id])  # now a recent session: one of those shown
            except (ClientError, TimeoutError):
                pass  # offline: the next watch_shown (after the reconnect) has them

    def on_status(self, status: ClientStatus) -> None:
        if status is ClientStatus.OFFLINE:
            self.out("* connection lost; reconnecting...")
        elif status is ClientStatus.ONLINE and self.client.reconnects:
            self.out("* back online")
            try:
                self.watch_shown()  # the SDK renewed the watched; recent sessions may be new
            except (ClientError, TimeoutError) as exc:
                self.out(f"* presence not renewed: {_one_line(exc)}")
        elif status is ClientStatus.KICKED:
            self.end("kicked: this user logged in elsewhere")
        elif status is ClientStatus.FAILED:
            self.end(f"cannot log in again: {self.client.closed_with}")

    def end(self, why: str) -> None:
        self.ended = why
        self.out(f"* {why}")
        self.on_end()


def run_chat(args: argparse.Namespace) -> int:
    import logging

    from prompt_toolkit import PromptSession
    from prompt_toolkit.patch_stdout import patch_stdout

    # Log lines would scribble over the prompt: the chat reports connection changes itself.
    logging.getLogger().setLevel(max(logging.getLogger().level, logging.WARNING))
    # Pushes that arrive before the chat is set up wait here (callback thread vs. main).
    ready = threading.Lock()
    early: list[Callable[[Chat], None]] = []
    holder: list[Chat] = []

    def dispatch(event: Callable[[Chat], None]) -> None:
        with ready:
            if not holder:
                early.append(event)
                return
        event(holder[0])

    def on_push(message: Any, seq: int) -> None:
        dispatch(lambda chat: chat.on_push(message, seq))

    def on_status(status: ClientStatus) -> None:
        dispatch(lambda chat: chat.on_status(status))

    client = _login(
        args,
        base.CLIENT_TYPE_WINDOWS,  # the chat is the user's desktop session
        reconnect=True,
        login_url=args.login_url,
        on_push=on_push,
        on_status=on_status,
        queue_pushes=False,
    )
    session: PromptSession[str] = PromptSession()
    with client, patch_stdout(raw=True):
        chat = Chat(client, lambda text: print(text, flush=True))
        chat.load()
        chat.on_end = lambda: _interrupt(session)
        chat.greet()
        with ready:  # flushed before any later push is shown
            for event in early:
                event(chat)
            holder.append(chat)

        def stop_if_ended() -> None:
            if chat.ended is not None:  # ended between two prompts
                session.app.exit(exception=EOFError())

        while chat.ended is None:
            try:
                line = session.prompt(chat.prompt, pre_run=stop_if_ended)
            except KeyboardInterrupt:
                continue
            except EOFError:
                break
            if chat.ended is not None or not chat.handle(line):
                break
    if chat.ended is not None:
        print(f"imreactor chat: {chat.ended}", file=sys.stderr, flush=True)
        return 1
    return 0


def _interrupt(session: PromptSession[str]) -> None:
    """Make a running ``session.prompt()`` return (from any thread)."""
    app = session.app
    if app.is_running and app.loop is not None:
        app.loop.call_soon_threadsafe(lambda: app.exit(exception=EOFError()))
