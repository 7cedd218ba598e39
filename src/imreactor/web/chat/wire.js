// The TeamTalk wire protocol in the browser: the 16-byte header, the PDUs (protobufjs with
// the schema scripts/gen_proto.py generates from proto/*.proto), and one WebSocket
// connection to a msg_server that matches answers to requests by seq.
//
// One binary WebSocket message carries exactly one PDU, both ways (docs/protocol.md,
// "WebSocket"). Header, big-endian: length (u32, header included), version (u16, 1),
// flag (u16, 0), service_id (u16), command_id (u16), seq (u16: a request's number,
// echoed by its answer; 0 for pushes), reserved (u16, 0).

/* global protobuf -- the vendored protobufjs full build, loaded by index.html */

export const HEADER_BYTES = 16;
export const PDU_VERSION = 1;
export const CLIENT_TYPE_WEB = 0x21;
export const USER_STATUS_ONLINE = 1;
export const SESSION_TYPE_SINGLE = 1;
export const SESSION_TYPE_GROUP = 2;
export const MSG_TYPE_SINGLE_TEXT = 0x01;
export const MSG_TYPE_GROUP_TEXT = 0x11;
// Bit 0x10 of msg_type marks group messages (0x11 text, 0x12 audio).
export const GROUP_MSG_BIT = 0x10;
// Clients heartbeat every 30 s (WIRE.md section 3); msg_server closes a client silent for 120 s.
export const HEARTBEAT_INTERVAL_MS = 30_000;
export const REQUEST_TIMEOUT_MS = 15_000;
const COMMAND_OPTION = "(IM.BaseDefine.command_id)";

// protobufjs gives the schema (reflection, from the JSON scripts/gen_proto.py writes) and the
// wire primitives (Reader, Writer). Its own encode/decode are not used: protobufjs builds
// them at run time with new Function(), which the page's Content-Security-Policy
// (script-src 'self', no 'unsafe-eval') rightly forbids. The few lines below walk the
// reflected fields instead: proto2 as TeamTalk uses it (scalars, enums, embedded messages,
// repeated fields written unpacked and read either way, required fields checked).
const WIRE_TYPES = {
  double: 1, float: 5, int32: 0, uint32: 0, sint32: 0, fixed32: 5, sfixed32: 5,
  int64: 0, uint64: 0, sint64: 0, fixed64: 1, sfixed64: 1, bool: 0, string: 2, bytes: 2,
};

const byNumber = new WeakMap(); // type -> its fields in field-number order, as protoc writes

function fieldsInOrder(type) {
  let fields = byNumber.get(type);
  if (fields === undefined) {
    fields = [...type.fieldsArray].sort((a, b) => a.id - b.id);
    byNumber.set(type, fields);
  }
  return fields;
}

function encodeFields(type, fields, writer) {
  for (const field of fieldsInOrder(type)) {
    const value = fields[field.name];
    if (field.repeated) {
      for (const item of value || []) encodeField(field, item, writer);
    } else if (value !== undefined && value !== null) {
      encodeField(field, value, writer);
    } else if (field.required) {
      if (field.resolvedType instanceof protobuf.Type) throw new Error(`${type.name}.${field.name} is required`);
      encodeField(field, field.typeDefault, writer);
    }
  }
  return writer;
}

function encodeField(field, value, writer) {
  const resolved = field.resolvedType;
  if (resolved instanceof protobuf.Type) {
    writer.uint32((field.id << 3) | 2).fork();
    encodeFields(resolved, value, writer).ldelim();
  } else if (resolved instanceof protobuf.Enum) {
    writer.uint32(field.id << 3).int32(typeof value === "string" ? resolved.values[value] : value);
  } else {
    writer.uint32((field.id << 3) | WIRE_TYPES[field.type])[field.type](value);
  }
}

function decodeFields(type, reader, end) {
  const out = {};
  for (const field of type.fieldsArray) {
    if (field.repeated) out[field.name] = [];
    else if (!(field.resolvedType instanceof protobuf.Type)) out[field.name] = field.typeDefault;
    else out[field.name] = null;
  }
  const seen = new Set();
  while (reader.pos < end) {
    const tag = reader.uint32();
    const field = type.fieldsById[tag >>> 3];
    const wireType = tag & 7;
    if (field === undefined) {
      reader.skipType(wireType); // a field this page does not know
      continue;
    }
    seen.add(field.id);
    const resolved = field.resolvedType;
    let value;
    if (resolved instanceof protobuf.Type) {
      const length = reader.uint32();
      value = decodeFields(resolved, reader, reader.pos + length);
    } else if (field.repeated && wireType === 2 && WIRE_TYPES[field.type] !== 2) {
      const packedEnd = reader.uint32() + reader.pos; // packed, as a proto3 peer may send
      while (reader.pos < packedEnd) out[field.name].push(resolved ? reader.int32() : reader[field.type]());
      continue;
    } else {
      value = resolved instanceof protobuf.Enum ? reader.int32() : reader[field.type]();
    }
    if (field.repeated) out[field.name].push(value);
    else out[field.name] = value;
  }
  if (reader.pos !== end) throw new Error(`${type.name}: a field runs past its message`);
  for (const field of type.fieldsArray) {
    if (field.required && !seen.has(field.id)) throw new Error(`${type.name}: missing required ${field.name}`);
  }
  return out;
}

/** The PDU types of the schema at `url`: name <-> command id, encode and decode. */
export class Schema {
  static async load(url = "/proto/im.json") {
    const answer = await fetch(url);
    if (!answer.ok) throw new Error(`${url}: HTTP ${answer.status}`);
    return new Schema(protobuf.Root.fromJSON(await answer.json()));
  }

  constructor(root) {
    root.resolveAll();
    this.byCommand = new Map();
    this.byName = new Map();
    const visit = (namespace) => {
      for (const item of namespace.nestedArray) {
        if (item instanceof protobuf.Type) {
          const command = item.options && item.options[COMMAND_OPTION];
          if (command !== undefined) {
            this.byCommand.set(command, item);
            this.byName.set(item.name, { type: item, command });
          }
        } else if (item instanceof protobuf.Namespace) {
          visit(item);
        }
      }
    };
    visit(root);
  }

  /** One PDU: `name` (e.g. "IMLoginReq") with the fields of `fields`, under `seq`. */
  encode(name, fields, seq = 0) {
    const entry = this.byName.get(name);
    if (entry === undefined) throw new Error(`no PDU named ${name}`);
    const body = encodeFields(entry.type, fields, protobuf.Writer.create()).finish();
    const pdu = new Uint8Array(HEADER_BYTES + body.length);
    const view = new DataView(pdu.buffer);
    view.setUint32(0, pdu.length);
    view.setUint16(4, PDU_VERSION);
    view.setUint16(6, 0);
    view.setUint16(8, entry.command >> 8); // the service id is the command's high byte
    view.setUint16(10, entry.command);
    view.setUint16(12, seq);
    view.setUint16(14, 0);
    pdu.set(body, HEADER_BYTES);
    return pdu;
  }

  /** `{name, seq, message}` of one received PDU; throws if it is not one whole known PDU. */
  decode(buffer) {
    if (buffer.byteLength < HEADER_BYTES) throw new Error(`${buffer.byteLength} bytes: no PDU header`);
    const view = new DataView(buffer);
    const length = view.getUint32(0);
    if (length !== buffer.byteLength) {
      throw new Error(`header says ${length} bytes, the message has ${buffer.byteLength}`);
    }
    const command = view.getUint16(10);
    const type = this.byCommand.get(command);
    if (type === undefined) throw new Error(`unknown command 0x${command.toString(16)}`);
    const reader = protobuf.Reader.create(new Uint8Array(buffer, HEADER_BYTES));
    const message = decodeFields(type, reader, reader.len);
    return { name: type.name, seq: view.getUint16(12), message };
  }
}

/**
 * One WebSocket to a msg_server. `onPush(name, message)` gets every PDU that answers no
 * request of ours (seq 0, or a seq not waited for); `onClose(reason)` runs once, after
 * which every waiting request has been rejected. Heartbeats go out every
 * HEARTBEAT_INTERVAL_MS from open to close.
 */
export class Connection {
  constructor(schema, url, { onPush, onClose }) {
    this.schema = schema;
    this.onPush = onPush;
    this.onClose = onClose;
    this.waiting = new Map(); // seq -> {resolve, reject, timer, expect}
    this.nextSeq = 1;
    this.closed = false;
    this.socket = new WebSocket(url);
    this.socket.binaryType = "arraybuffer";
    this.opened = new Promise((resolve, reject) => {
      this.socket.addEventListener("open", () => resolve(), { once: true });
      this.socket.addEventListener("close", () => reject(new Error(`cannot connect to ${url}`)), {
        once: true,
      });
    });
    this.opened.catch(() => {}); // a refusal is reported through onClose too
    this.socket.addEventListener("message", (event) => this._received(event.data));
    this.socket.addEventListener("close", (event) => this._closed(`closed (${event.code})`));
    this.heartbeat = setInterval(() => this.send("IMHeartBeat", {}), HEARTBEAT_INTERVAL_MS);
  }

  /** Send a PDU that gets no answer (a push of ours, an ack). */
  send(name, fields, seq = 0) {
    if (this.closed || this.socket.readyState !== WebSocket.OPEN) return false;
    this.socket.send(this.schema.encode(name, fields, seq));
    return true;
  }

  /** Send a request; resolves with the answer (`expect` names its PDU), rejects on timeout or close. */
  request(name, fields, expect, timeoutMs = REQUEST_TIMEOUT_MS) {
    return new Promise((resolve, reject) => {
      if (this.closed) {
        reject(new Error("not connected"));
        return;
      }
      const seq = this._takeSeq();
      const timer = setTimeout(() => {
        this.waiting.delete(seq);
        reject(new Error(`${name}: no answer within ${timeoutMs / 1000} s`));
      }, timeoutMs);
      this.waiting.set(seq, { resolve, reject, timer, expect });
      if (!this.send(name, fields, seq)) {
        clearTimeout(timer);
        this.waiting.delete(seq);
        reject(new Error("not connected"));
      }
    });
  }

  close() {
    this.socket.close(1000);
    this._closed("closed by the page");
  }

  _takeSeq() {
    // 1..65535, skipping seqs still waited for (0 is for pushes).
    for (;;) {
      const seq = this.nextSeq;
      this.nextSeq = seq >= 0xffff ? 1 : seq + 1;
      if (!this.waiting.has(seq)) return seq;
    }
  }

  _received(data) {
    if (!(data instanceof ArrayBuffer)) return; // msg_server sends binary messages only
    let pdu;
    try {
      pdu = this.schema.decode(data);
    } catch (error) {
      console.warn("dropped a PDU from msg_server:", error.message);
      return;
    }
    const waiter = pdu.seq !== 0 ? this.waiting.get(pdu.seq) : undefined;
    if (waiter !== undefined && waiter.expect === pdu.name) {
      this.waiting.delete(pdu.seq);
      clearTimeout(waiter.timer);
      waiter.resolve(pdu.message);
      return;
    }
    if (pdu.name !== "IMHeartBeat") this.onPush(pdu.name, pdu.message, pdu.seq);
  }

  _closed(reason) {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.heartbeat);
    for (const waiter of this.waiting.values()) {
      clearTimeout(waiter.timer);
      waiter.reject(new Error(reason));
    }
    this.waiting.clear();
    this.onClose(reason);
  }
}

/** Ask login_server which msg_server to use: its WebSocket URL (wss on an https page). */
export async function locateMsgServer() {
  const answer = await fetch("/msg_server", { cache: "no-store" });
  if (!answer.ok) throw new Error(`/msg_server: HTTP ${answer.status}`);
  const body = await answer.json();
  if (body.code !== 0) throw new Error(body.msg || `no msg_server (code ${body.code})`);
  const url = location.protocol === "https:" ? body.wssURL : body.wsURL;
  if (!url) throw new Error("the msg_server has no WebSocket port for this page");
  return url;
}
