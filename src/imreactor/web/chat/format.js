// How the chat shows times and ids: pure functions, so tests can call them.

const DAY_MS = 24 * 60 * 60 * 1000;

/**
 * A message's time for its bubble: "14:05" today, "Mon 14:05" within the last week,
 * "3 Mar 14:05" this year, "3 Mar 2025 14:05" before. `seconds` is the server's
 * create_time (Unix seconds); `now` a Date (default: now).
 */
export function messageTime(seconds, now = new Date()) {
  const when = new Date(seconds * 1000);
  const clock = when.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
  if (sameDay(when, now)) return clock;
  if (now - when < 6 * DAY_MS && when < now) {
    return `${when.toLocaleDateString(undefined, { weekday: "short" })} ${clock}`;
  }
  const date = { day: "numeric", month: "short" };
  if (when.getFullYear() !== now.getFullYear()) date.year = "numeric";
  return `${when.toLocaleDateString(undefined, date)} ${clock}`;
}

/** The heading of a day in a conversation: "Today", "Yesterday", else the full date. */
export function dayHeading(seconds, now = new Date()) {
  const when = new Date(seconds * 1000);
  if (sameDay(when, now)) return "Today";
  if (sameDay(when, new Date(now - DAY_MS))) return "Yesterday";
  return when.toLocaleDateString(undefined, {
    weekday: "long",
    day: "numeric",
    month: "long",
    year: "numeric",
  });
}

export function sameDay(a, b) {
  return a.getFullYear() === b.getFullYear() && a.getMonth() === b.getMonth() && a.getDate() === b.getDate();
}

/** The key of a session: "1:<peer user id>" or "2:<group id>". */
export function sessionKey(type, id) {
  return `${type}:${id}`;
}

const decoder = new TextDecoder("utf-8", { fatal: false });
const encoder = new TextEncoder();

/** msg_data is the text's UTF-8 bytes (this suite's clients send text unencrypted). */
export function textOf(bytes) {
  return decoder.decode(bytes);
}

export function bytesOf(text) {
  return encoder.encode(text);
}
