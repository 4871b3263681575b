// Unit tests of the client library's own logic, with a scripted socket in place of the
// network: reconnecting, resuming from the last offsets seen, resending unanswered
// publishes, refreshing tokens. The browser tests (tests/browser.rs) run it for real.
import { test } from "node:test";
import assert from "node:assert/strict";
import { DEFAULT_BACKOFF, TYPING_FOR, Typists, WsKafka, WsKafkaError, backoffDelay } from "../wskafka.js";

/** A socket whose every frame the test sees, and whose replies the test writes. */
class ScriptedSocket {
  static all = [];
  static waiting = [];
  static hang = false;
  constructor(url) {
    this.url = url;
    this.sent = [];
    ScriptedSocket.all.push(this);
    ScriptedSocket.waiting.splice(0).forEach((resolve) => resolve(this));
    // A hanging socket never opens: a connect the network swallowed.
    if (!ScriptedSocket.hang) queueMicrotask(() => this.onopen?.());
  }
  send(text) {
    const frame = JSON.parse(text);
    this.sent.push(frame);
    this.waiting?.(frame);
  }
  /** The next frame the client sends. */
  nextSent() { return new Promise((resolve) => (this.waiting = resolve)); }
  close(code) {
    this.closedWith = code;
    this.onclose?.();
  }
  reply(frame) { this.onmessage?.({ data: JSON.stringify(frame) }); }
  drop() { this.onclose?.(); }
  last(type) { return this.sent.filter((f) => f.type === type).at(-1); }
}

const settle = () => new Promise((resolve) => setTimeout(resolve, 0));

async function connected(options = {}) {
  ScriptedSocket.all = [];
  const client = new WsKafka("ws://hub/ws", {
    token: "t1",
    WebSocket: ScriptedSocket,
    backoff: { min: 1, max: 1 },
    ...options,
  });
  await settle();
  const socket = ScriptedSocket.all.at(-1);
  assert.deepEqual(socket.sent[0], { type: "auth", id: "auth", token: options.tokenValue ?? "t1" });
  socket.reply({ type: "authenticated", id: "auth", sub: "alice", expires_at: 0 });
  return { client, socket };
}

/** The socket of the next reconnect, once the client opened it. */
async function reconnected() {
  const socket = await new Promise((resolve) => ScriptedSocket.waiting.push(resolve));
  await settle();
  socket.reply({ type: "authenticated", id: "auth", sub: "alice", expires_at: 0 });
  return socket;
}

test("backoff grows, is capped, and is jittered between half and all of the ceiling", () => {
  const backoff = { min: 100, max: 1000 };
  assert.equal(backoffDelay(0, backoff, () => 0), 50);
  assert.equal(backoffDelay(0, backoff, () => 1), 100);
  assert.equal(backoffDelay(3, backoff, () => 1), 800);
  assert.equal(backoffDelay(10, backoff, () => 1), 1000);
  assert.equal(backoffDelay(10, backoff, () => 0), 500);
});

test("a reconnect resubscribes from the next offset per partition and drops repeats", async () => {
  const { client, socket } = await connected();
  const seen = [];
  const subscribed = client.subscribe("chat", (m) => seen.push([m.partition, m.offset]), { from: "earliest" });
  const request = socket.last("subscribe");
  assert.equal(request.from, "earliest");
  socket.reply({ type: "subscribed", id: request.id, topic: "chat", partitions: { 0: 0, 1: 5 } });
  await subscribed;
  socket.reply({ type: "message", topic: "chat", partition: 0, offset: 0 });
  socket.reply({ type: "message", topic: "chat", partition: 0, offset: 1 });
  socket.reply({ type: "message", topic: "chat", partition: 0, offset: 1 });

  const states = [];
  client.addEventListener("state", (e) => states.push(e.detail));
  socket.drop();
  const again = await reconnected();
  assert.deepEqual(states, ["reconnecting", "open"]);
  const resume = again.last("subscribe");
  assert.deepEqual(resume.from, { offsets: { 0: 2, 1: 5 } });
  again.reply({ type: "subscribed", id: resume.id, topic: "chat", partitions: { 0: 2, 1: 5 } });
  again.reply({ type: "message", topic: "chat", partition: 1, offset: 5 });
  assert.deepEqual(seen, [[0, 0], [0, 1], [1, 5]]);
  client.close();
});

test("an unanswered publish is sent again after a reconnect, as a resend of the same publish id, and resolves with its ack", async () => {
  const { client, socket } = await connected();
  const acked = client.publish("chat", { text: "hi" }, { key: "alice" });
  const first = socket.last("publish");
  assert.match(first.publish_id, /^[0-9a-f-]{36}$/);
  assert.equal(acked.publishId, first.publish_id);
  assert.deepEqual(first, {
    type: "publish", id: first.id, topic: "chat", payload: { text: "hi" }, key: "alice", publish_id: first.publish_id,
  });
  socket.drop();
  const again = await reconnected();
  const resent = again.last("publish");
  assert.ok(resent.age_ms >= 0, JSON.stringify(resent));
  assert.deepEqual(resent, { ...first, age_ms: resent.age_ms, attempt: 1 });
  again.drop();
  const third = await reconnected();
  assert.equal(third.last("publish").attempt, 2);
  assert.ok(third.last("publish").age_ms >= resent.age_ms);
  third.reply({ type: "ack", id: first.id, topic: "chat", partition: 0, offset: 7 });
  assert.equal((await acked).offset, 7);
  // Published again under its id (a user's "retry"), it is a resend too, never a new record.
  client.publish("chat", { text: "hi" }, { key: "alice", publishId: acked.publishId });
  assert.equal(third.last("publish").attempt, 3);

  const refused = client.publish("audit", 1);
  third.reply({ type: "error", id: third.last("publish").id, code: "forbidden", message: "no" });
  await assert.rejects(refused, (e) => e instanceof WsKafkaError && e.code === "forbidden");
  client.close();
});

test("a refused subscription rejects, and `expiring` fetches a fresh token", async () => {
  let issued = 0;
  const { client, socket } = await connected({ token: () => `t${++issued}`, tokenValue: "t1" });
  const refused = client.subscribe("secret", () => {});
  socket.reply({ type: "error", id: socket.last("subscribe").id, code: "forbidden", message: "no" });
  await assert.rejects(refused, (e) => e.code === "forbidden");
  assert.equal(client.subscriptions.size, 0);

  socket.reply({ type: "expiring", expires_at: 0 });
  await settle();
  assert.deepEqual(socket.last("auth"), { type: "auth", id: "refresh", token: "t2" });
  client.close();
  assert.equal(client.state, "closed");
});

test("a subscribe refused as unavailable is asked again and then succeeds", async () => {
  const { client, socket } = await connected();
  const subscribed = client.subscribe("chat", () => {}, { from: { offsets: { 0: 4 } } });
  const first = socket.last("subscribe");
  const resent = socket.nextSent();
  socket.reply({ type: "error", id: first.id, code: "unavailable", message: "retry shortly", topic: "chat" });
  const again = await resent;
  assert.equal(again.type, "subscribe");
  assert.notEqual(again.id, first.id);
  assert.deepEqual(again.from, { offsets: { 0: 4 } });
  socket.reply({ type: "subscribed", id: again.id, topic: "chat", partitions: { 0: 4 } });
  await subscribed;
  assert.equal(client.subscriptions.size, 1);
  client.close();
});

test("a topic that does not exist is refused once, not retried, for publish, subscribe and history", async () => {
  const { client, socket } = await connected();
  const subscribed = client.subscribe("typo", () => {});
  const first = socket.last("subscribe");
  socket.reply({ type: "error", id: first.id, code: "unknown_topic", message: 'topic "typo" does not exist' });
  await assert.rejects(subscribed, (e) => e instanceof WsKafkaError && e.code === "unknown_topic");
  const published = client.publish("typo", 1);
  socket.reply({ type: "error", id: socket.last("publish").id, code: "unknown_topic", message: "no" });
  await assert.rejects(published, (e) => e.code === "unknown_topic");
  const page = client.history("typo");
  socket.reply({ type: "error", id: socket.last("history").id, code: "unknown_topic", message: "no" });
  await assert.rejects(page, (e) => e.code === "unknown_topic");
  // Nothing is asked again, on this socket or the next.
  await new Promise((resolve) => setTimeout(resolve, 20));
  assert.equal(socket.sent.filter((f) => f.type === "subscribe").length, 1);
  socket.drop();
  const again = await reconnected();
  assert.deepEqual(again.sent.filter((f) => f.type !== "auth"), []);
  client.close();
});

test("commit stores as far as the subscription delivered, and resolves once stored", async () => {
  const { client, socket } = await connected();
  const counts = [];
  client.addEventListener("subscribed", (e) => counts.push(e.detail.waiting));
  const subscribed = client.subscribe("inbox", () => {}, { from: "committed" });
  const request = socket.last("subscribe");
  assert.equal(request.from, "committed");
  socket.reply({ type: "subscribed", id: request.id, topic: "inbox", partitions: { 0: 3, 1: 0 }, waiting: 2 });
  await subscribed;
  assert.deepEqual(counts, [2]);
  socket.reply({ type: "message", topic: "inbox", partition: 0, offset: 3 });
  socket.reply({ type: "message", topic: "inbox", partition: 0, offset: 4 });

  let stored = false;
  const committing = client.commit("inbox").then(() => (stored = true));
  const commit = socket.last("commit");
  assert.deepEqual(commit.offsets, { 0: 5, 1: 0 });
  await settle();
  assert.equal(stored, false);
  socket.reply({ type: "committed", id: commit.id, topic: "inbox" });
  await committing;

  const refused = client.commit("inbox", { 0: 1 });
  socket.reply({ type: "error", id: socket.last("commit").id, code: "unavailable", message: "retry" });
  await assert.rejects(refused, (e) => e instanceof WsKafkaError && e.code === "unavailable");
  client.close();
});

test("rooms of one topic are subscriptions of their own, each resuming from its own offsets", async () => {
  const { client, socket } = await connected();
  const seen = { lobby: [], staff: [] };
  for (const room of ["lobby", "staff"]) {
    const subscribed = client.subscribe("rooms", (m) => seen[room].push(m.offset), { key: room });
    const request = socket.last("subscribe");
    assert.equal(request.key, room);
    socket.reply({ type: "subscribed", id: request.id, topic: "rooms", key: room, partitions: { 0: 10 } });
    await subscribed;
  }
  socket.reply({ type: "message", topic: "rooms", key: "lobby", partition: 0, offset: 10 });
  socket.reply({ type: "message", topic: "rooms", key: "staff", partition: 0, offset: 11 });
  socket.reply({ type: "message", topic: "rooms", key: "lobby", partition: 0, offset: 12 });
  assert.deepEqual(seen, { lobby: [10, 12], staff: [11] });

  // The hub ends one room's subscription: the other carries on.
  socket.reply({ type: "error", code: "forbidden", message: "no longer", topic: "rooms", key: "staff" });
  socket.reply({ type: "message", topic: "rooms", key: "staff", partition: 0, offset: 13 });
  assert.deepEqual(seen.staff, [11]);

  socket.drop();
  const again = await reconnected();
  const resumed = again.sent.filter((f) => f.type === "subscribe");
  assert.deepEqual(resumed.map((f) => [f.key, f.from]), [["lobby", { offsets: { 0: 13 } }]]);
  client.unsubscribe("rooms", "lobby");
  assert.deepEqual(again.last("unsubscribe"), { type: "unsubscribe", topic: "rooms", key: "lobby" });
  client.close();
});

test("older() pages back from where the subscription started, past pages cut short", async () => {
  const { client, socket } = await connected();
  const subscribed = client.subscribe("rooms", () => {}, { key: "lobby" });
  socket.reply({ type: "subscribed", id: socket.last("subscribe").id, topic: "rooms", key: "lobby", partitions: { 2: 90 } });
  await subscribed;

  const first = client.older("rooms", { key: "lobby", limit: 2 });
  let request = socket.last("history");
  assert.deepEqual(request, { type: "history", id: request.id, topic: "rooms", key: "lobby", limit: 2, before: "subscribed" });
  socket.reply({ type: "history", id: request.id, topic: "rooms", messages: [], before: { 2: 60 }, oldest: false, partial: true });
  await settle();
  request = socket.last("history");
  assert.deepEqual(request.before, { 2: 60 });
  const message = (offset) => ({ type: "message", topic: "rooms", key: "lobby", partition: 2, offset });
  socket.reply({ type: "history", id: request.id, topic: "rooms", messages: [message(40), message(55)], before: { 2: 40 }, oldest: false, partial: false });
  const page = await first;
  assert.deepEqual(page.messages.map((m) => m.offset), [40, 55]);
  assert.equal(page.oldest, false);

  const second = client.older("rooms", { key: "lobby", limit: 2 });
  request = socket.last("history");
  assert.deepEqual(request.before, { 2: 40 });
  socket.reply({ type: "history", id: request.id, topic: "rooms", messages: [message(3)], before: { 2: 3 }, oldest: true, partial: false });
  assert.deepEqual(await second, { messages: [message(3)], oldest: true });
  client.close();
});

test("presence and signal frames become events, and watched users are asked again after a reconnect", async () => {
  const { client, socket } = await connected();
  const seen = [];
  for (const type of ["join", "leave", "signal", "status"]) {
    client.addEventListener(type, (e) => seen.push([type, e.detail.user ?? e.detail.sender]));
  }
  const diffs = [];
  client.addEventListener("presence_diff", (e) => diffs.push(e.detail));
  const subscribed = client.subscribe("rooms", () => {}, { key: "lobby", presence: true, signals: true });
  const request = socket.last("subscribe");
  assert.equal(request.presence, true);
  assert.equal(request.signals, true);
  socket.reply({ type: "subscribed", id: request.id, topic: "rooms", key: "lobby", partitions: {} });
  await subscribed;
  const joined = { type: "presence_diff", topic: "rooms", key: "lobby", joins: ["bob", "cy"], leaves: [] };
  socket.reply(joined);
  socket.reply({ type: "signal", topic: "rooms", key: "lobby", sender: "bob", payload: { typing: true } });
  socket.reply({ type: "presence_diff", topic: "rooms", key: "lobby", joins: ["dee"], leaves: ["bob"] });
  assert.deepEqual(diffs[0], joined);
  assert.equal(diffs.length, 2);

  const asked = client.online(["bob"], { watch: true });
  const online = socket.last("online");
  assert.deepEqual(online.users, ["bob"]);
  socket.reply({ type: "online", id: online.id, users: { bob: false } });
  assert.deepEqual(await asked, { bob: false });
  socket.reply({ type: "status", user: "bob", online: true });
  assert.deepEqual(seen, [
    ["join", "bob"],
    ["join", "cy"],
    ["signal", "bob"],
    ["leave", "bob"],
    ["join", "dee"],
    ["status", "bob"],
  ]);

  client.typing("rooms", { key: "lobby" });
  client.typing("rooms", { key: "lobby" });
  assert.equal(socket.sent.filter((f) => f.type === "signal").length, 1, "typing is throttled");

  socket.drop();
  const again = await reconnected();
  assert.deepEqual(again.last("online"), { type: "online", id: again.last("online").id, users: ["bob"], watch: true });
  client.close();
});

test("a typist shows until a while after their last signal, then by themselves no more", () => {
  let now = 0;
  const typists = new Typists(() => now);
  typists.saw({ sender: "bob", payload: { typing: true } });
  typists.saw({ sender: "ann", payload: { typing: true } });
  typists.saw({ sender: "cy", payload: { cursor: 3 } });
  assert.deepEqual(typists.current(), ["ann", "bob"]);
  now = TYPING_FOR - 1;
  typists.stopped("ann");
  assert.deepEqual(typists.current(), ["bob"]);
  now = TYPING_FOR;
  assert.deepEqual(typists.current(), []);
});

test("the default backoff is capped at 10 s, as the README says", () => {
  assert.equal(backoffDelay(100, DEFAULT_BACKOFF, () => 1), 10_000);
  assert.equal(backoffDelay(100, DEFAULT_BACKOFF, () => 0), 5_000);
});

test("a socket that answers nothing after a heartbeat ping is given up and the client resumes on a new one", async () => {
  const { client, socket } = await connected({ heartbeat: { interval: 5, timeout: 5 } });
  const seen = [];
  const subscribed = client.subscribe("chat", (m) => seen.push(m.offset));
  socket.reply({ type: "subscribed", id: socket.last("subscribe").id, topic: "chat", partitions: { 0: 3 } });
  await subscribed;
  socket.reply({ type: "message", topic: "chat", partition: 0, offset: 3 });
  const acked = client.publish("chat", { text: "during the stall" });

  // A ping answered by any frame keeps the socket.
  let ping = await socket.nextSent();
  assert.equal(ping.type, "ping");
  socket.reply({ type: "pong", id: ping.id });
  ping = await socket.nextSent();
  assert.equal(ping.type, "ping");
  assert.equal(ScriptedSocket.all.length, 1, "an answered ping keeps the socket");

  // This one gets no answer: the client closes the socket and connects again at once.
  const states = [];
  client.addEventListener("state", (e) => states.push(e.detail));
  const again = await reconnected();
  assert.equal(socket.closedWith, 4000);
  assert.deepEqual(states, ["reconnecting", "open"]);
  assert.deepEqual(again.last("subscribe").from, { offsets: { 0: 4 } });
  const resent = again.last("publish");
  assert.deepEqual(resent.payload, { text: "during the stall" });
  again.reply({ type: "ack", id: resent.id, topic: "chat", partition: 0, offset: 4 });
  assert.equal((await acked).offset, 4);
  // Frames from the abandoned socket are ignored.
  socket.reply({ type: "message", topic: "chat", partition: 0, offset: 9 });
  assert.deepEqual(seen, [3]);
  client.close();
});

/** An EventTarget standing in for the page's `window` or `document`. */
function page() {
  const target = new EventTarget();
  target.visibilityState = "visible";
  return target;
}

test("the `online` event reconnects at once instead of waiting out the backoff", async () => {
  const window = page();
  // A backoff of a minute: only the event can bring the reconnect in time.
  const { client, socket } = await connected({ backoff: { min: 60_000, max: 60_000 }, window });
  socket.drop();
  assert.equal(client.state, "reconnecting");
  const next = reconnected();
  window.dispatchEvent(new Event("online"));
  await next;
  assert.equal(client.state, "open");
  client.close();
});

test("coming back to the foreground reconnects a dropped socket, and probes an open one", async () => {
  const document = page();
  const { client, socket } = await connected({
    backoff: { min: 60_000, max: 60_000 },
    heartbeat: { interval: 60_000, timeout: 5 },
    document,
  });
  // Open and recently heard: asked with a ping, and kept when it answers.
  const ping = socket.nextSent();
  document.dispatchEvent(new Event("visibilitychange"));
  assert.equal((await ping).type, "ping");
  socket.reply({ type: "pong", id: socket.last("ping").id });
  await new Promise((resolve) => setTimeout(resolve, 20));
  assert.equal(ScriptedSocket.all.length, 1);
  // Open but answering nothing: replaced once the ping's timeout passes.
  document.dispatchEvent(new Event("visibilitychange"));
  let next = reconnected();
  const second = await next;
  assert.equal(socket.closedWith, 4000);
  // Dropped and waiting out a minute's backoff: replaced at once.
  second.drop();
  next = reconnected();
  document.dispatchEvent(new Event("visibilitychange"));
  await next;
  assert.equal(client.state, "open");
  client.close();
});

test("a publish is pending until answered, then acked or failed with the hub's reason", async () => {
  const { client, socket } = await connected();
  const events = [];
  client.addEventListener("publish", (e) => events.push([e.detail.id, e.detail.status, e.detail.error?.code]));
  const ok = client.publish("chat", 1);
  assert.equal(ok.status, "pending");
  socket.reply({ type: "ack", id: ok.id, topic: "chat", partition: 0, offset: 1 });
  await ok;
  assert.equal(ok.status, "acked");

  const limited = client.publish("chat", 2);
  socket.reply({ type: "error", id: limited.id, code: "rate_limited", retry_after_ms: 200, message: "wait" });
  await assert.rejects(limited, (e) => e instanceof WsKafkaError && e.code === "rate_limited" && e.retryAfterMs === 200);
  assert.equal(limited.status, "failed");
  assert.equal(limited.error.code, "rate_limited");
  assert.deepEqual(events, [
    [ok.id, "pending", undefined],
    [ok.id, "acked", undefined],
    [limited.id, "pending", undefined],
    [limited.id, "failed", "rate_limited"],
  ]);
  client.close();
});

test("a publish with no answer within its bound fails as timed out and is not sent again", async () => {
  const { client, socket } = await connected({ publishTimeout: 10 });
  const sent = client.publish("chat", { text: "lost" });
  assert.equal(sent.status, "pending");
  await assert.rejects(sent, (e) => e instanceof WsKafkaError && e.code === "timeout");
  assert.equal(sent.status, "failed");
  socket.drop();
  const again = await reconnected();
  assert.equal(again.last("publish"), undefined);
  // A late ack for it changes nothing.
  again.reply({ type: "ack", id: sent.id, topic: "chat", partition: 0, offset: 1 });
  assert.equal(sent.status, "failed");
  client.close();
});

test("a publish over maxFrameBytes is refused before it is sent, with a clear error", async () => {
  const { client, socket } = await connected({ maxFrameBytes: 250 });
  const sent = client.publish("chat", { text: "é".repeat(100) });
  assert.equal(sent.status, "failed");
  assert.equal(sent.error.code, "too_large");
  assert.match(sent.error.message, /the message is \d+ bytes; the hub takes at most 250/);
  await assert.rejects(sent, (e) => e.code === "too_large");
  const fits = client.publish("chat", { text: "e".repeat(100) });
  assert.equal(fits.status, "pending");
  assert.deepEqual(socket.sent.filter((f) => f.type === "publish").map((f) => f.id), [fits.id]);
  client.close();
});

test("a connect that never opens is given up after the heartbeat's bound and tried again", async () => {
  const { client, socket } = await connected({ heartbeat: { interval: 5, timeout: 5 } });
  ScriptedSocket.hang = true;
  const hung = new Promise((resolve) => ScriptedSocket.waiting.push(resolve));
  socket.drop();
  const first = await hung;
  ScriptedSocket.hang = false;
  const again = await reconnected();
  assert.notEqual(again, first);
  assert.equal(first.closedWith, 4000);
  assert.equal(client.state, "open");
  client.close();
});

/** A stream the test writes events to, as `EventSource` gives them. */
class ScriptedSource {
  static all = [];
  constructor(url) {
    this.url = url;
    ScriptedSource.all.push(this);
  }
  /** One event: the frames of one write, a line each. */
  event(...frames) { this.onmessage?.({ data: frames.map((f) => JSON.stringify(f)).join("\n") }); }
  close() { this.closed = true; }
}

/** `fetch` answering tickets and taking requests, each POST's frames kept with its token. */
function scriptedFetch() {
  const posts = [];
  const fetch = async (url, init) => {
    if (url.endsWith("/sse/ticket")) {
      return { ok: true, json: async () => ({ ticket: `t-${posts.length}` }) };
    }
    const status = fetch.refuse ?? 202;
    posts.push({ url, token: init.headers.Authorization, frames: JSON.parse(init.body) });
    fetch.posted?.();
    return { ok: status === 202, status, text: async () => "no such stream on this hub" };
  };
  fetch.posts = posts;
  // Each POST once, in order, whether it was made before or after the call.
  let taken = 0;
  fetch.next = async () => {
    while (posts.length <= taken) await new Promise((resolve) => (fetch.posted = resolve));
    return posts[taken++];
  };
  return fetch;
}

test("a WebSocket that cannot be made falls back to SSE with POSTed requests, and the same API", async () => {
  ScriptedSource.all = [];
  const fetch = scriptedFetch();
  const client = new WsKafka("wss://hub.example/ws", {
    token: "t1",
    backoff: { min: 1, max: 1 },
    WebSocket: /** @type {any} */ (function () { throw new Error("blocked"); }),
    EventSource: ScriptedSource,
    fetch,
  });
  await settle();
  const source = ScriptedSource.all.at(-1);
  assert.equal(source.url, "https://hub.example/sse?ticket=t-0");
  source.event({ type: "stream", id: "s1" });
  await fetch.next();
  assert.deepEqual(fetch.posts[0], {
    url: "https://hub.example/sse/s1", token: "Bearer t1", frames: [{ type: "auth", id: "auth", token: "t1" }],
  });
  source.event({ type: "authenticated", id: "auth", sub: "alice", expires_at: 0 });
  assert.equal(client.state, "open");
  const seen = [];
  const subscribed = client.subscribe("chat", (m) => seen.push(m.offset));
  await fetch.next();
  const subscribe = fetch.posts[1].frames[0];
  source.event({ type: "subscribed", id: subscribe.id, topic: "chat", partitions: { 0: 4 } });
  await subscribed;
  source.event({ type: "message", topic: "chat", partition: 0, offset: 4 }, { type: "message", topic: "chat", partition: 0, offset: 5 });
  assert.deepEqual(seen, [4, 5]);

  // The hub's close ends the stream; the client reopens one and resumes from its positions.
  source.event({ type: "close", code: 1001, reason: "going away" });
  assert.ok(source.closed);
  assert.equal(client.state, "reconnecting");
  await new Promise((resolve) => setTimeout(resolve, 5));
  const again = ScriptedSource.all.at(-1);
  assert.notEqual(again, source);
  again.event({ type: "stream", id: "s2" });
  await fetch.next();
  again.event({ type: "authenticated", id: "auth", sub: "alice", expires_at: 0 });
  await fetch.next();
  const resume = fetch.posts.at(-1);
  assert.equal(resume.url, "https://hub.example/sse/s2");
  assert.deepEqual(resume.frames[0].from, { offsets: { 0: 6 } });

  // A POST for a stream the hub no longer holds closes it too.
  fetch.refuse = 404;
  const ping = client.request({ type: "ping" }).catch((e) => e.code);
  await fetch.next();
  await settle();
  assert.equal(await ping, "disconnected");
  assert.equal(client.state, "reconnecting");
  client.close();
});

test("only a WebSocket cut before its first frame falls back: not one the hub refused with its code", async () => {
  ScriptedSource.all = [];
  ScriptedSocket.all = [];
  const options = { token: "t1", backoff: { min: 1, max: 1 }, WebSocket: ScriptedSocket, EventSource: ScriptedSource, fetch: scriptedFetch() };
  const refused = new WsKafka("ws://hub/ws", options);
  await settle();
  ScriptedSocket.all.at(-1).onclose?.({ code: 4403 });
  await new Promise((resolve) => setTimeout(resolve, 5));
  assert.equal(ScriptedSource.all.length, 0, "no stream after a refusal");
  assert.equal(ScriptedSocket.all.length, 2, "a WebSocket again");
  refused.close();

  const cut = new WsKafka("ws://hub/ws", options);
  await settle();
  ScriptedSocket.all.at(-1).onclose?.({ code: 1006 });
  await settle();
  assert.equal(ScriptedSource.all.at(-1)?.url, "http://hub/sse?ticket=t-0");
  cut.close();
});

test("after falling back, a reconnect keeps to SSE until `websocketRetry` has passed, then tries WebSocket", async () => {
  ScriptedSource.all = [];
  ScriptedSocket.all = [];
  let blocked = true;
  const WebSocket = /** @type {any} */ (function (url) {
    if (blocked) throw new Error("blocked");
    return new ScriptedSocket(url);
  });
  const fetch = scriptedFetch();
  const client = new WsKafka("ws://hub/ws", {
    token: "t1", backoff: { min: 1, max: 1 }, websocketRetry: 30, WebSocket, EventSource: ScriptedSource, fetch,
  });
  await settle();
  ScriptedSource.all.at(-1).event({ type: "stream", id: "s1" });
  await fetch.next();
  // WebSocket works again, but the client does not look before the window ends.
  blocked = false;
  ScriptedSource.all.at(-1).event({ type: "close", code: 1001, reason: "going away" });
  await new Promise((resolve) => setTimeout(resolve, 5));
  assert.equal(ScriptedSource.all.length, 2, "a stream again");
  assert.equal(ScriptedSocket.all.length, 0);
  ScriptedSource.all.at(-1).event({ type: "stream", id: "s2" });
  await fetch.next();
  await new Promise((resolve) => setTimeout(resolve, 30));
  ScriptedSource.all.at(-1).event({ type: "close", code: 1001, reason: "going away" });
  await new Promise((resolve) => setTimeout(resolve, 5));
  assert.equal(ScriptedSocket.all.length, 1, "WebSocket tried again");
  assert.equal(ScriptedSource.all.length, 2);
  client.close();
});

test("told `sse`, the client never makes a WebSocket; told `websocket`, it never falls back", async () => {
  ScriptedSource.all = [];
  ScriptedSocket.all = [];
  const options = { token: "t1", backoff: { min: 1, max: 1 }, WebSocket: ScriptedSocket, EventSource: ScriptedSource, fetch: scriptedFetch() };
  const sse = new WsKafka("ws://hub/ws", { ...options, transport: "sse" });
  await settle();
  assert.equal(ScriptedSocket.all.length, 0);
  assert.equal(ScriptedSource.all.length, 1);
  sse.close();

  const ws = new WsKafka("ws://hub/ws", { ...options, transport: "websocket" });
  await settle();
  ScriptedSocket.all.at(-1).onclose?.({ code: 1006 });
  await new Promise((resolve) => setTimeout(resolve, 5));
  assert.equal(ScriptedSource.all.length, 1, "no stream");
  assert.equal(ScriptedSocket.all.length, 2);
  ws.close();
});

test("a POST the hub refuses for its full queue (429) is sent again, in order, and requests are batched under its bound", async () => {
  ScriptedSource.all = [];
  const fetch = scriptedFetch();
  const client = new WsKafka("ws://hub/ws", {
    token: "t1", backoff: { min: 1, max: 1 }, transport: "sse", EventSource: ScriptedSource, fetch,
  });
  await settle();
  const source = ScriptedSource.all.at(-1);
  source.event({ type: "stream", id: "s1" });
  await fetch.next();
  source.event({ type: "authenticated", id: "auth", sub: "alice", expires_at: 0 });
  await settle();
  fetch.refuse = 429;
  const pings = [];
  for (let n = 0; n < 40; n++) {
    pings.push(client.request({ type: "ping" }).catch(() => {}));
  }
  // The first went alone, while no POST was on its way, and was refused.
  const refused = (await fetch.next()).frames;
  assert.equal(refused.length, 1);
  await settle();
  fetch.refuse = undefined;
  const posted = [];
  while (posted.length < 40) {
    const { frames } = await fetch.next();
    assert.ok(frames.length <= 32, `${frames.length} in one POST`);
    posted.push(...frames);
  }
  assert.equal(posted[0].id, refused[0].id, "the refused one first");
  const ids = posted.map((f) => f.id);
  assert.deepEqual(ids, [...ids].sort((a, b) => a - b), "in order");
  assert.equal(new Set(ids).size, 40);
  assert.equal(client.state, "open");
  client.close();
  await Promise.all(pings);
});
test("registerPush subscribes the browser with the hub's key and stores it; unregisterPush removes it", async () => {
  const { client, socket } = await connected();
  const key = "BAEC"; // bytes 4, 1, 2
  const subscribed = [];
  /** A browser's subscription, as PushManager gives it. */
  const browserSubscription = (applicationServerKey) => ({
    endpoint: "https://push.example.net/s/1",
    options: { applicationServerKey: applicationServerKey.buffer },
    toJSON: () => ({ endpoint: "https://push.example.net/s/1", keys: { p256dh: "p", auth: "a" } }),
    unsubscribe: async () => { current = null; return true; },
  });
  // Subscribed before with another key: the hub's replaces it.
  let current = browserSubscription(new Uint8Array([9, 9]));
  const registration = {
    pushManager: {
      getSubscription: async () => current,
      subscribe: async (options) => {
        subscribed.push(options);
        current = browserSubscription(options.applicationServerKey);
        return current;
      },
    },
  };
  const registered = client.registerPush(/** @type {any} */ (registration));
  await settle();
  const asked = socket.last("push_key");
  socket.reply({ type: "push_key", id: asked.id, key });
  await settle();
  const stored = socket.last("push_subscribe");
  assert.deepEqual(Array.from(subscribed[0].applicationServerKey), [4, 1, 2]);
  assert.equal(subscribed[0].userVisibleOnly, true);
  assert.deepEqual(stored.subscription, { endpoint: "https://push.example.net/s/1", keys: { p256dh: "p", auth: "a" } });
  assert.equal(stored.type, "push_subscribe");
  socket.reply({ type: "push_subscribed", id: stored.id, endpoint: "https://push.example.net/s/1" });
  assert.equal((await registered).endpoint, "https://push.example.net/s/1");

  const unregistered = client.unregisterPush(/** @type {any} */ (registration));
  await settle();
  const removed = socket.last("push_unsubscribe");
  assert.deepEqual(removed, { type: "push_unsubscribe", endpoint: "https://push.example.net/s/1", id: removed.id });
  socket.reply({ type: "push_unsubscribed", id: removed.id, endpoint: removed.endpoint, removed: true });
  assert.equal(await unregistered, true);
  assert.equal(current, null);
  assert.equal(await client.unregisterPush(/** @type {any} */ (registration)), false);
  client.close();
});
