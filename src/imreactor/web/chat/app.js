// The web chat: log in, contacts and recent chats, conversations with history, groups,
// message status, typing, and reconnect with catch-up. docs/web.md says what it does and
// which PDUs it uses. All text from users goes into the page with textContent only.

import { dayHeading, messageTime, sessionKey, textOf, bytesOf } from "./format.js";
import { md5Hex } from "./md5.js";
import {
  CLIENT_TYPE_WEB,
  Connection,
  GROUP_MSG_BIT,
  MSG_TYPE_GROUP_TEXT,
  MSG_TYPE_SINGLE_TEXT,
  SESSION_TYPE_GROUP,
  SESSION_TYPE_SINGLE,
  Schema,
  USER_STATUS_ONLINE,
  locateMsgServer,
} from "./wire.js";

const CLIENT_VERSION = "imreactor-web/1";
const HISTORY_PAGE = 20;
// After a reconnect, at most this many pages are fetched to close the gap of the open chat.
const CATCH_UP_PAGES = 10;
const RECONNECT_FIRST_MS = 500;
const RECONNECT_MAX_MS = 5_000;
const TYPING_SEND_EVERY_MS = 3_000;
const TYPING_SHOWN_MS = 5_000;
// msg_server answers at most this many users per presence question (max_subscriptions).
const WATCH_LIMIT = 1000;
const LOGIN_RETRY_CODES = new Set([3, 4, 5]); // no db_proxy / login_server / route_server link yet
const LOGIN_REFUSED = 6;
const PRESENCE = { 1: "online", 2: "offline", 3: "away" };

const $ = (id) => document.getElementById(id);

const state = {
  schema: null,
  conn: null,
  credentials: null, // {user, digest}: the password itself is never kept
  me: 0,
  online: false,
  everOnline: false,
  stopped: false, // kicked, or the password was refused: no more reconnects
  attempt: 0,
  retryTimer: 0,
  users: new Map(), // id -> {name, status}
  asked: new Set(), // user ids looked up (IMUsersInfoReq): answered or not, asked once
  groups: new Map(), // id -> {name, members}
  sessions: new Map(), // sessionKey -> Session
  open: null, // sessionKey of the conversation shown
  typing: new Map(), // user id -> time until which "typing" shows
  nextLocal: 1,
};

class Session {
  constructor(type, id) {
    this.type = type;
    this.id = id;
    this.key = sessionKey(type, id);
    this.updated = 0;
    this.latest = null; // {text, from}
    this.unread = 0;
    this.messages = new Map(); // msg_id -> message
    this.pending = []; // sent, not acked (or failed)
    this.loaded = false; // has the newest page been fetched since the last login?
    this.historyDone = false;
    this.loading = false;
    this.peerRead = 0; // the peer read every message up to this msg_id
    this.peerDelivered = 0;
    this.readSent = 0;
    this.typingSent = 0;
  }

  get oldest() {
    let min = 0;
    for (const id of this.messages.keys()) if (min === 0 || id < min) min = id;
    return min;
  }

  get newest() {
    let max = 0;
    for (const id of this.messages.keys()) if (id > max) max = id;
    return max;
  }
}

function session(type, id) {
  const key = sessionKey(type, id);
  let s = state.sessions.get(key);
  if (s === undefined) {
    s = new Session(type, id);
    state.sessions.set(key, s);
  }
  return s;
}

// -- names ------------------------------------------------------------------------------

function userName(id) {
  if (id === state.me && state.users.has(id)) return state.users.get(id).name;
  const user = state.users.get(id);
  if (user !== undefined) return user.name;
  lookUpUsers([id]);
  return `user #${id}`;
}

function sessionName(s) {
  if (s.type === SESSION_TYPE_GROUP) {
    const group = state.groups.get(s.id);
    return group !== undefined ? group.name : `group #${s.id}`;
  }
  return userName(s.id);
}

function rememberUser(info) {
  const name = info.user_nick_name || info.user_real_name || info.user_domain || `user #${info.user_id}`;
  const known = state.users.get(info.user_id);
  state.users.set(info.user_id, { name, status: known ? known.status : 0 });
}

/** Ask the server for users we have no name for (joined after we logged in, say). */
function lookUpUsers(ids) {
  const wanted = ids.filter((id) => id && !state.users.has(id) && !state.asked.has(id));
  if (wanted.length === 0 || !state.online) return;
  wanted.forEach((id) => state.asked.add(id));
  request("IMUsersInfoReq", { user_id: state.me, user_id_list: wanted }, "IMUsersInfoRsp")
    .then((rsp) => {
      rsp.user_info_list.forEach(rememberUser);
      render(); // an id the server does not know stays "user #ID" and is not asked again
    })
    .catch(() => wanted.forEach((id) => state.asked.delete(id))); // asked again later
}

async function loadGroups(ids) {
  if (ids.length === 0) return;
  const rsp = await request(
    "IMGroupInfoListReq",
    { user_id: state.me, group_version_list: ids.map((id) => ({ group_id: id, version: 0 })) },
    "IMGroupInfoListRsp",
  );
  for (const g of rsp.group_info_list) {
    if (!g.group_member_list.includes(state.me)) continue;
    state.groups.set(g.group_id, { name: g.group_name, members: g.group_member_list });
    session(SESSION_TYPE_GROUP, g.group_id);
    lookUpUsers(g.group_member_list);
  }
}

// -- the connection ---------------------------------------------------------------------

function request(name, fields, expect) {
  if (state.conn === null) return Promise.reject(new Error("not connected"));
  return state.conn.request(name, fields, expect);
}

function send(name, fields) {
  return state.conn !== null && state.conn.send(name, fields);
}

function setConnState(label, kind) {
  const badge = $("conn-status");
  badge.textContent = label;
  badge.dataset.state = kind;
}

async function goOnline() {
  state.retryTimer = 0;
  if (state.stopped) return;
  setConnState(state.everOnline ? "reconnecting…" : "connecting…", "connecting");
  let conn = null;
  try {
    const url = await locateMsgServer();
    conn = new Connection(state.schema, url, {
      onPush: handlePush,
      onClose: (reason) => dropped(conn, reason),
    });
    state.conn = conn;
    await conn.opened;
    const res = await conn.request(
      "IMLoginReq",
      {
        user_name: state.credentials.user,
        password: state.credentials.digest,
        online_status: USER_STATUS_ONLINE,
        client_type: CLIENT_TYPE_WEB,
        client_version: CLIENT_VERSION,
      },
      "IMLoginRes",
    );
    if (res.result_code === LOGIN_REFUSED) {
      stop("wrong user name or password");
      return;
    }
    if (res.result_code !== 0) {
      const why = LOGIN_RETRY_CODES.has(res.result_code) ? "server not ready" : "login refused";
      throw new Error(`${why} (${res.result_code})`);
    }
    state.me = res.user_info.user_id;
    rememberUser(res.user_info);
    state.online = true;
    state.everOnline = true;
    state.attempt = 0;
    showChat();
    setConnState("online", "online");
    await catchUp();
  } catch (error) {
    if (conn !== null && state.conn === conn) {
      state.conn = null;
      conn.close();
    }
    retry(error.message);
  }
}

function dropped(conn, reason) {
  if (state.conn !== conn) return; // an attempt already given up
  state.conn = null;
  state.online = false;
  for (const s of state.sessions.values()) s.loaded = false;
  render();
  retry(reason);
}

function retry(reason) {
  if (state.stopped || state.retryTimer) return;
  const delay = Math.min(RECONNECT_FIRST_MS * 2 ** state.attempt, RECONNECT_MAX_MS);
  state.attempt += 1;
  setConnState(`offline: ${reason}; retrying…`, "offline");
  state.retryTimer = setTimeout(goOnline, delay);
}

/** No more reconnects: the password was refused, or another login took this place. */
function stop(reason) {
  state.stopped = true;
  const conn = state.conn;
  state.conn = null;
  state.online = false;
  if (conn !== null) conn.close();
  if (!state.everOnline) {
    $("login-error").textContent = reason;
    $("login-button").disabled = false;
    return;
  }
  setConnState(`signed out: ${reason}`, "stopped");
}

/** After every login: users, presence, chats and unread counts, groups, the open chat. */
async function catchUp() {
  const me = state.me;
  const [all, recent, unread, normal] = await Promise.all([
    request("IMAllUserReq", { user_id: me, latest_update_time: 0 }, "IMAllUserRsp"),
    request("IMRecentContactSessionReq", { user_id: me, latest_update_time: 0 }, "IMRecentContactSessionRsp"),
    request("IMUnreadMsgCntReq", { user_id: me }, "IMUnreadMsgCntRsp"),
    request("IMNormalGroupListReq", { user_id: me }, "IMNormalGroupListRsp"),
  ]);
  all.user_list.forEach(rememberUser);
  const groupIds = new Set(normal.group_version_list.map((g) => g.group_id));
  for (const c of recent.contact_session_list) {
    if (c.session_status !== 0) continue; // removed
    const s = session(c.session_type, c.session_id);
    s.updated = Math.max(s.updated, c.updated_time);
    if (c.latest_msg_id) s.latest = { text: textOf(c.latest_msg_data), from: c.latest_msg_from_user_id };
    if (c.session_type === SESSION_TYPE_GROUP) groupIds.add(c.session_id);
  }
  for (const s of state.sessions.values()) s.unread = 0;
  for (const u of unread.unreadinfo_list) session(u.session_type, u.session_id).unread = u.unread_cnt;
  for (const s of state.sessions.values()) if (s.type === SESSION_TYPE_GROUP) groupIds.add(s.id);
  await loadGroups([...groupIds]);
  render();
  await watchPresence();
  if (state.open !== null) await loadNewest(state.sessions.get(state.open));
  render();
}

async function watchPresence() {
  const ids = [...state.users.keys()].filter((id) => id !== state.me).slice(0, WATCH_LIMIT);
  if (ids.length === 0) return;
  const rsp = await request("IMUsersStatReq", { user_id: state.me, user_id_list: ids }, "IMUsersStatRsp");
  for (const stat of rsp.user_stat_list) setPresence(stat.user_id, stat.status);
}

function setPresence(id, status) {
  const user = state.users.get(id);
  if (user !== undefined) user.status = status;
  else lookUpUsers([id]);
}

// -- what the server pushes -------------------------------------------------------------

function handlePush(name, m) {
  switch (name) {
    case "IMMsgData":
      received(m);
      break;
    case "IMUserStatNotify":
      setPresence(m.user_stat.user_id, m.user_stat.status);
      break;
    case "IMMsgDataReadNotify":
      if (m.user_id === state.me) {
        session(m.session_type, m.session_id).unread = 0; // read on another device of ours
      } else if (m.session_type === SESSION_TYPE_SINGLE) {
        peerRead(session(SESSION_TYPE_SINGLE, m.user_id), m.msg_id);
      }
      break;
    case "IMP2PCmdMsg":
      peerCommand(m.from_user_id, m.cmd_msg_data);
      break;
    case "IMGroupChangeMemberNotify":
      loadGroups([m.group_id]).then(render, () => {});
      break;
    case "IMKickUser":
      stop("this user logged in somewhere else");
      break;
    default:
      return; // answers that came too late, pushes the page does not show
  }
  render();
}

function received(m) {
  const group = (m.msg_type & GROUP_MSG_BIT) !== 0;
  const fromMe = m.from_user_id === state.me;
  let s;
  if (group) s = session(SESSION_TYPE_GROUP, m.to_session_id);
  else s = session(SESSION_TYPE_SINGLE, fromMe ? m.to_session_id : m.from_user_id);
  const added = addMessage(s, {
    msgId: m.msg_id,
    from: m.from_user_id,
    time: m.create_time,
    text: textOf(m.msg_data),
  });
  if (group && !state.groups.has(s.id)) loadGroups([s.id]).then(render, () => {});
  if (fromMe || !added) return;
  state.typing.delete(m.from_user_id);
  // The protocol's delivery receipt, to the server; and to a peer page, ours (docs/web.md).
  send("IMMsgDataAck", { user_id: state.me, session_id: s.id, msg_id: m.msg_id, session_type: s.type });
  if (!group) sendCommand(s.id, { type: "delivered", msg_id: m.msg_id });
  if (state.open === s.key && document.visibilityState !== "hidden") markRead(s);
  else s.unread += 1;
}

/** Add a stored message (by msg_id, once); false if it was there already. */
function addMessage(s, message) {
  if (!message.msgId || s.messages.has(message.msgId)) return false;
  s.messages.set(message.msgId, message);
  if (message.time >= s.updated) {
    s.updated = message.time;
    s.latest = { text: message.text, from: message.from };
  }
  return true;
}

/** The JSON commands pages send each other in IMP2PCmdMsg (docs/web.md). */
function peerCommand(from, data) {
  let command;
  try {
    command = JSON.parse(data);
  } catch {
    return; // another client's command: not ours to read
  }
  if (command === null || typeof command !== "object") return;
  const s = session(SESSION_TYPE_SINGLE, from);
  if (command.type === "typing") {
    state.typing.set(from, Date.now() + TYPING_SHOWN_MS);
    setTimeout(render, TYPING_SHOWN_MS + 50);
  } else if (command.type === "read" && Number.isInteger(command.msg_id)) {
    peerRead(s, command.msg_id);
  } else if (command.type === "delivered" && Number.isInteger(command.msg_id)) {
    s.peerDelivered = Math.max(s.peerDelivered, command.msg_id);
  }
}

function peerRead(s, msgId) {
  s.peerRead = Math.max(s.peerRead, msgId);
  s.peerDelivered = Math.max(s.peerDelivered, msgId);
}

function sendCommand(userId, command) {
  send("IMP2PCmdMsg", { from_user_id: state.me, to_user_id: userId, cmd_msg_data: JSON.stringify(command) });
}

function markRead(s) {
  s.unread = 0;
  const newest = s.newest;
  if (newest <= s.readSent || !state.online) return;
  s.readSent = newest;
  send("IMMsgDataReadAck", { user_id: state.me, session_id: s.id, msg_id: newest, session_type: s.type });
  if (s.type === SESSION_TYPE_SINGLE) sendCommand(s.id, { type: "read", msg_id: newest });
}

// -- history ----------------------------------------------------------------------------

/** One page of messages with ids <= begin (0: the newest), newest first; how many came. */
async function fetchPage(s, begin) {
  const rsp = await request(
    "IMGetMsgListReq",
    { user_id: state.me, session_type: s.type, session_id: s.id, msg_id_begin: begin, msg_cnt: HISTORY_PAGE },
    "IMGetMsgListRsp",
  );
  for (const m of rsp.msg_list) {
    addMessage(s, { msgId: m.msg_id, from: m.from_session_id, time: m.create_time, text: textOf(m.msg_data) });
  }
  return rsp.msg_list;
}

/** The newest page, then older pages until what we had before is reached (catch-up). */
async function loadNewest(s) {
  if (s === undefined || s.loading) return;
  s.loading = true;
  try {
    const had = s.newest;
    let page = await fetchPage(s, 0);
    if (!s.loaded && had === 0 && page.length < HISTORY_PAGE) s.historyDone = true;
    for (let i = 1; i < CATCH_UP_PAGES && had > 0 && page.length === HISTORY_PAGE; i++) {
      const lowest = Math.min(...page.map((m) => m.msg_id));
      if (lowest <= had + 1) break;
      page = await fetchPage(s, lowest - 1);
    }
    s.loaded = true;
  } finally {
    s.loading = false;
  }
  if (state.open === s.key && document.visibilityState !== "hidden") markRead(s);
}

async function loadOlder(s) {
  if (s.loading || s.historyDone) return;
  const oldest = s.oldest;
  if (oldest === 1) {
    s.historyDone = true;
    return;
  }
  s.loading = true;
  const list = $("messages");
  const fromBottom = list.scrollHeight - list.scrollTop;
  try {
    const page = await fetchPage(s, oldest === 0 ? 0 : oldest - 1);
    if (page.length < HISTORY_PAGE) s.historyDone = true;
  } finally {
    s.loading = false;
  }
  renderMessages();
  list.scrollTop = list.scrollHeight - fromBottom; // keep what was on screen in place
}

// -- what the user does -----------------------------------------------------------------

async function openSession(key) {
  const s = state.sessions.get(key);
  if (s === undefined) return;
  state.open = key;
  document.body.classList.add("in-conversation");
  $("composer").hidden = false;
  render();
  renderMessages(true);
  if (!s.loaded) {
    try {
      await loadNewest(s);
    } catch {
      // offline: what we have is shown; the catch-up after the reconnect loads the rest
    }
  }
  markRead(s);
  render();
  renderMessages(true);
  $("compose-text").focus();
}

async function sendText(s, text) {
  const now = Math.floor(Date.now() / 1000);
  const local = { localId: state.nextLocal++, from: state.me, time: now, text, status: "sending" };
  s.pending.push(local);
  s.typingSent = 0;
  renderMessages(true);
  try {
    const ack = await request(
      "IMMsgData",
      {
        from_user_id: state.me,
        to_session_id: s.id,
        msg_id: 0,
        create_time: now,
        msg_type: s.type === SESSION_TYPE_GROUP ? MSG_TYPE_GROUP_TEXT : MSG_TYPE_SINGLE_TEXT,
        msg_data: bytesOf(text),
      },
      "IMMsgDataAck",
    );
    s.pending.splice(s.pending.indexOf(local), 1);
    local.msgId = ack.msg_id;
    delete local.status;
    addMessage(s, local);
  } catch {
    local.status = "failed"; // not acknowledged: maybe not stored (docs/web.md)
  }
  render();
  renderMessages(true);
}

function resend(s, local) {
  s.pending.splice(s.pending.indexOf(local), 1);
  sendText(s, local.text);
}

function typed() {
  const s = state.sessions.get(state.open);
  if (s === undefined || s.type !== SESSION_TYPE_SINGLE) return; // IMP2PCmdMsg is one user to one
  const now = Date.now();
  if (now - s.typingSent < TYPING_SEND_EVERY_MS) return;
  s.typingSent = now;
  sendCommand(s.id, { type: "typing" });
}

async function createGroup(name, members) {
  const rsp = await request(
    "IMGroupCreateReq",
    { user_id: state.me, group_type: 2, group_name: name, group_avatar: "", member_id_list: [...members, state.me] },
    "IMGroupCreateRsp",
  );
  if (rsp.result_code !== 0) throw new Error(`the server refused the group (${rsp.result_code})`);
  state.groups.set(rsp.group_id, { name: rsp.group_name, members: rsp.user_id_list });
  const s = session(SESSION_TYPE_GROUP, rsp.group_id);
  s.updated = Math.floor(Date.now() / 1000);
  s.historyDone = true;
  s.loaded = true;
  return s;
}

// -- rendering --------------------------------------------------------------------------

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function presenceDot(userId) {
  const user = state.users.get(userId);
  const status = user !== undefined ? PRESENCE[user.status] || "unknown" : "unknown";
  const dot = el("span", `presence ${status}`);
  dot.dataset.presence = status;
  dot.title = status;
  return dot;
}

function render() {
  if (!state.everOnline) return;
  $("me-name").textContent = userName(state.me);
  renderRecent();
  renderContacts();
  renderHeader();
  renderMessages();
}

function renderRecent() {
  const list = $("recent-list");
  const shown = [...state.sessions.values()]
    .filter((s) => s.updated > 0 || s.messages.size > 0 || s.type === SESSION_TYPE_GROUP)
    .sort((a, b) => b.updated - a.updated || a.key.localeCompare(b.key));
  list.replaceChildren(
    ...shown.map((s) => {
      const item = el("li", "session");
      item.dataset.key = s.key;
      item.classList.toggle("selected", s.key === state.open);
      if (s.type === SESSION_TYPE_SINGLE) item.append(presenceDot(s.id));
      else item.append(el("span", "presence group", "#"));
      const body = el("span", "session-body");
      body.append(el("span", "name", sessionName(s)));
      if (s.latest !== null) {
        const who = s.latest.from === state.me ? "You: " : s.type === SESSION_TYPE_GROUP ? `${userName(s.latest.from)}: ` : "";
        body.append(el("span", "preview", who + s.latest.text));
      }
      item.append(body);
      if (s.updated) item.append(el("span", "when", messageTime(s.updated)));
      const badge = el("span", "unread", s.unread ? String(s.unread) : "");
      badge.dataset.unread = String(s.unread);
      badge.hidden = s.unread === 0;
      item.append(badge);
      item.addEventListener("click", () => openSession(s.key));
      return item;
    }),
  );
}

function renderContacts() {
  const list = $("contact-list");
  const users = [...state.users.entries()]
    .filter(([id]) => id !== state.me)
    .sort((a, b) => a[1].name.localeCompare(b[1].name));
  list.replaceChildren(
    ...users.map(([id, user]) => {
      const item = el("li", "contact");
      item.dataset.userId = String(id);
      item.append(presenceDot(id), el("span", "name", user.name));
      item.addEventListener("click", () => {
        session(SESSION_TYPE_SINGLE, id);
        openSession(sessionKey(SESSION_TYPE_SINGLE, id));
      });
      return item;
    }),
  );
}

function renderHeader() {
  const s = state.open === null ? undefined : state.sessions.get(state.open);
  const presence = $("peer-presence");
  const typing = $("typing");
  if (s === undefined) {
    $("peer-name").textContent = "Pick a chat";
    presence.replaceChildren();
    typing.hidden = true;
    return;
  }
  $("peer-name").textContent = sessionName(s);
  if (s.type === SESSION_TYPE_SINGLE) {
    const dot = presenceDot(s.id);
    presence.replaceChildren(dot, el("span", "presence-label", dot.dataset.presence));
    const until = state.typing.get(s.id) || 0;
    typing.hidden = until < Date.now();
    typing.textContent = `${userName(s.id)} is typing…`;
  } else {
    const group = state.groups.get(s.id);
    const names = group ? group.members.map(userName).join(", ") : "";
    presence.replaceChildren(el("span", "presence-label", names));
    typing.hidden = true;
  }
}

function statusOf(s, message) {
  if (message.status) return message.status; // sending, failed
  if (s.type === SESSION_TYPE_SINGLE) {
    if (message.msgId <= s.peerRead) return "read";
    if (message.msgId <= s.peerDelivered) return "delivered";
  }
  return "stored";
}

const STATUS_MARKS = {
  sending: ["…", "sending"],
  stored: ["✓", "stored on the server"],
  delivered: ["✓✓", "delivered to a page of the recipient"],
  read: ["✓✓ read", "read"],
  failed: ["not sent — click to send again", "not acknowledged by the server"],
};

function renderMessages(toBottom = false) {
  const s = state.open === null ? undefined : state.sessions.get(state.open);
  const box = $("messages");
  const list = $("message-list");
  const historyState = $("history-state");
  if (s === undefined) {
    list.replaceChildren();
    historyState.textContent = "";
    return;
  }
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  const stored = [...s.messages.values()].sort((a, b) => a.msgId - b.msgId);
  const items = [];
  let lastDay = "";
  for (const message of [...stored, ...s.pending]) {
    const day = dayHeading(message.time);
    if (day !== lastDay) {
      items.push(el("li", "day", day));
      lastDay = day;
    }
    const mine = message.from === state.me;
    const item = el("li", `msg ${mine ? "mine" : "theirs"}`);
    if (message.msgId) item.dataset.msgId = String(message.msgId);
    if (!mine && s.type === SESSION_TYPE_GROUP) item.append(el("span", "from", userName(message.from)));
    item.append(el("span", "text", message.text));
    const meta = el("span", "meta");
    meta.append(el("time", "time", messageTime(message.time)));
    if (mine) {
      const status = statusOf(s, message);
      const [mark, title] = STATUS_MARKS[status];
      const badge = el("span", "status", mark);
      badge.dataset.status = status;
      badge.title = title;
      if (status === "failed") badge.addEventListener("click", () => resend(s, message));
      meta.append(badge);
    }
    item.append(meta);
    items.push(item);
  }
  list.replaceChildren(...items);
  if (s.historyDone || s.oldest === 1) historyState.textContent = stored.length ? "The beginning of this chat" : "No messages yet";
  else historyState.textContent = s.loading ? "Loading…" : "Scroll up for older messages";
  historyState.dataset.done = String(s.historyDone || s.oldest === 1);
  if (toBottom || atBottom) box.scrollTop = box.scrollHeight;
}

function showChat() {
  $("login").hidden = true;
  $("chat").hidden = false;
}

function showTab(recent) {
  $("recent-list").hidden = !recent;
  $("contact-list").hidden = recent;
  $("tab-recent").setAttribute("aria-selected", String(recent));
  $("tab-contacts").setAttribute("aria-selected", String(!recent));
}

function openGroupDialog() {
  const members = $("group-members");
  const users = [...state.users.entries()].filter(([id]) => id !== state.me).sort((a, b) => a[1].name.localeCompare(b[1].name));
  members.replaceChildren(
    ...users.map(([id, user]) => {
      const item = el("li");
      const label = el("label");
      const box = el("input");
      box.type = "checkbox";
      box.value = String(id);
      box.dataset.userId = String(id);
      label.append(box, document.createTextNode(` ${user.name}`));
      item.append(label);
      return item;
    }),
  );
  $("group-error").textContent = "";
  $("group-name").value = "";
  $("group-dialog").showModal();
}

// -- start ------------------------------------------------------------------------------

async function start() {
  try {
    state.schema = await Schema.load();
  } catch (error) {
    $("login-error").textContent = `cannot load the protocol schema: ${error.message}`;
    return;
  }
  document.body.dataset.ready = "true";
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const user = $("login-user").value.trim();
    const password = $("login-password").value;
    if (!user || !password) return;
    state.credentials = { user, digest: md5Hex(password) };
    $("login-password").value = "";
    $("login-error").textContent = "";
    $("login-button").disabled = true;
    state.stopped = false;
    goOnline();
  });
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("compose-text");
    const text = input.value.trim();
    const s = state.sessions.get(state.open);
    if (!text || s === undefined) return;
    input.value = "";
    sendText(s, text);
  });
  $("compose-text").addEventListener("input", typed);
  $("messages").addEventListener("scroll", () => {
    const s = state.sessions.get(state.open);
    if (s !== undefined && $("messages").scrollTop < 40) loadOlder(s).catch(() => {});
  });
  $("history-state").addEventListener("click", () => {
    const s = state.sessions.get(state.open);
    if (s !== undefined) loadOlder(s).catch(() => {});
  });
  $("tab-recent").addEventListener("click", () => showTab(true));
  $("tab-contacts").addEventListener("click", () => showTab(false));
  $("back").addEventListener("click", () => {
    document.body.classList.remove("in-conversation");
  });
  $("new-group").addEventListener("click", openGroupDialog);
  $("group-cancel").addEventListener("click", () => $("group-dialog").close());
  $("group-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const name = $("group-name").value.trim();
    const members = [...$("group-members").querySelectorAll("input:checked")].map((box) => Number(box.value));
    if (!name || members.length === 0) {
      $("group-error").textContent = "a group needs a name and at least one other member";
      return;
    }
    try {
      const s = await createGroup(name, members);
      $("group-dialog").close();
      showTab(true);
      openSession(s.key);
    } catch (error) {
      $("group-error").textContent = error.message;
    }
  });
  document.addEventListener("visibilitychange", () => {
    const s = state.sessions.get(state.open);
    if (s !== undefined && document.visibilityState !== "hidden") {
      markRead(s);
      render();
    }
  });
}

start();
