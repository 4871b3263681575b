// wskafka browser client: a dependency-free ES module for the protocol in docs/protocol.md.
//
// It keeps what a dropped network must not lose: the next offset per partition of every
// subscription (resubscribed with `from: {offsets}` after a reconnect, so nothing is missed
// or repeated) and every publish not yet acknowledged (sent again after a reconnect with its
// `publish_id` and age, which the hub answers from Kafka when the first attempt got there,
// so nothing is written twice). A subscription follows a whole topic
// or one key of it (a chat room); one socket follows any number of rooms.
//
// Where WebSocket upgrades are blocked, it speaks the same protocol over Server-Sent Events
// and POST (`SseSocket`, below), with the same API: see `Transport`.

/**
 * @typedef {string | (() => string | Promise<string>)} TokenSource
 *   A token, or a function returning a fresh one (called on connect and on `expiring`).
 * @typedef {"connecting" | "open" | "reconnecting" | "closed"} ConnectionState
 * @typedef {"latest" | "earliest" | "committed" | {timestamp: number} | {offsets: Record<string, number>}} Start
 * @typedef {{key?: string, headers?: Record<string, string>}} Filter
 * @typedef {{type: "message", topic: string, partition: number, offset: number,
 *   timestamp?: number, key?: string, key_base64?: string, sender?: string,
 *   headers?: Record<string, string | null>, headers_base64?: Record<string, string>,
 *   payload?: unknown, payload_base64?: string}} Message
 * @typedef {{type: "ack", topic: string, partition: number, offset: number}} Ack
 * @typedef {{messages: Message[], before: Record<string, number>, oldest: boolean,
 *   partial: boolean}} Page  a history page, oldest message first
 * @typedef {{min: number, max: number}} Backoff  delays in ms
 * @typedef {{interval: number, timeout: number}} Heartbeat  in ms: after `interval` with no
 *   frame received the client sends `ping`; if nothing at all comes within `timeout` after
 *   it, the connection counts as dead
 * @typedef {"pending" | "acked" | "failed"} PublishStatus
 * @typedef {Promise<Ack> & {id: number, publishId: string, status: PublishStatus,
 *   error?: WsKafkaError}} Publish
 *   a publish's promise, with where it stands (`status`, and `error` once failed); its
 *   `publishId` sent again as an option publishes the same record, never a second one
 * @typedef {{token: TokenSource, backoff?: Backoff, heartbeat?: Heartbeat,
 *   publishTimeout?: number, maxFrameBytes?: number, WebSocket?: typeof WebSocket,
 *   transport?: Transport, sseUrl?: string, websocketRetry?: number,
 *   EventSource?: typeof EventSource,
 *   fetch?: typeof fetch, random?: () => number, window?: EventTarget,
 *   document?: EventTarget & {visibilityState?: string}}} Options
 *   `window` and `document` (the page's, by default) give the `online` and
 *   `visibilitychange` events that make the client reconnect at once; `sseUrl` is the
 *   hub's `http(s)://…/sse` (by default, the WebSocket URL's, `/ws` made `/sse`)
 * @typedef {"auto" | "websocket" | "sse"} Transport
 *   `auto` (the default): WebSocket first; SSE + POST at once when a WebSocket is cut before
 *   its first frame (1006: its upgrade refused, or the connection broke) or its constructor
 *   throws. Once a stream has opened after such a failure, the client keeps to SSE for
 *   `websocketRetry` ms (`WEBSOCKET_RETRY`, 5 minutes): the first reconnect after that tries
 *   WebSocket again (a connection that works is not given up to try, so a page that never
 *   loses its stream stays on SSE). A stream that fails before it opens sends the next
 *   attempt, after the backoff, to WebSocket. `websocket` or `sse`: that one only.
 */

/** How long the client keeps to SSE after falling back before it tries WebSocket again. */
export const WEBSOCKET_RETRY = 5 * 60_000;

/** Reconnect delays: from 250 ms, doubling, capped at 10 s (with jitter: 5 to 10 s). */
export const DEFAULT_BACKOFF = Object.freeze({ min: 250, max: 10_000 });
/**
 * Silence after which the client pings (15 s), and how long it then waits for any frame
 * (5 s): a dead network is noticed within 20 s of the last frame received, sooner than the
 * hub's own 35 s, so the page says "reconnecting" and resumes first.
 */
export const DEFAULT_HEARTBEAT = Object.freeze({ interval: 15_000, timeout: 5_000 });
/**
 * A publish without an answer after this long fails with code `timeout` (60 s): longer than
 * the heartbeat's bound plus a reconnect plus what a resend may wait at the hub for its first
 * attempt to land (the hub's landing bound, 55 s after the first attempt with its defaults),
 * so a stall the heartbeat catches still gets its answer.
 */
export const DEFAULT_PUBLISH_TIMEOUT = 60_000;
/** First attempts remembered for resends under the same `publishId`. */
const REMEMBERED_ATTEMPTS = 1000;
/** The hub's default `WSKAFKA_MAX_FRAME_BYTES`: larger publishes are refused before sending. */
export const DEFAULT_MAX_FRAME_BYTES = 64 * 1024;

/**
 * An `error` frame turned into an exception; `code` is the protocol's error code. Only
 * `unavailable` subscribes are asked again by the client; `unknown_topic` (the topic does not
 * exist, and the hub creates none) and every other refusal reject at once, for the
 * application to show.
 */
export class WsKafkaError extends Error {
  /**
   * @param {string} code @param {string} message @param {string} [topic]
   * @param {number} [retryAfterMs] with `rate_limited`: when the request may be sent again
   */
  constructor(code, message, topic, retryAfterMs) {
    super(message);
    this.name = "WsKafkaError";
    this.code = code;
    this.topic = topic;
    this.retryAfterMs = retryAfterMs;
  }
}

/**
 * The delay before reconnect attempt `attempt` (0-based): exponential, capped, with "full
 * jitter" between half and all of it, so that clients dropped together do not return
 * together.
 * @param {number} attempt @param {Backoff} backoff @param {() => number} random
 */
export function backoffDelay(attempt, backoff, random) {
  const ceiling = Math.min(backoff.max, backoff.min * 2 ** attempt);
  return ceiling / 2 + (random() * ceiling) / 2;
}

/**
 * A connection to a wskafka hub. Events (an EventTarget): `state` (detail: the new
 * ConnectionState), `lost` (detail: {topic, lost}: records a resume could not recover),
 * `error` (detail: a WsKafkaError not tied to a request, such as an ended subscription),
 * `presence_diff` (detail: {topic, key, joins, leaves}: who joined and who left a room since
 * the last one, for subscriptions made with `presence`; the hub sends at most one per room
 * every 250 ms), and for each user in it a `leave` or `join` event (detail: {topic, key, user}),
 * `signal` (detail: {topic, key, sender, payload}, for subscriptions made with `signals`),
 * `status` (detail: {user, online}, for users watched with `online`), `read` (detail:
 * {topic, key, offsets}: the same user committed these positions on another device, so an
 * unread count kept from them can follow; positions only move forward), `publish` (detail:
 * {id, topic, key, payload, status, error}: a publish became `pending`, `acked` or `failed`).
 *
 * Liveness: browsers never show the hub's WebSocket pings to a page, so the client watches
 * for itself (see `DEFAULT_HEARTBEAT`). It also reconnects at once on the browser's `online`
 * event and when the page comes back to the foreground, instead of waiting out its backoff;
 * a socket that looks open is first asked with a `ping`.
 */
export class WsKafka extends EventTarget {
  /** @param {string} url  the hub's `ws(s)://…/ws` @param {Options} options */
  constructor(url, options) {
    super();
    this.url = url;
    this.options = options;
    this.backoff = options.backoff ?? DEFAULT_BACKOFF;
    this.heartbeat = options.heartbeat ?? DEFAULT_HEARTBEAT;
    this.publishTimeout = options.publishTimeout ?? DEFAULT_PUBLISH_TIMEOUT;
    this.maxFrameBytes = options.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES;
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket;
    /** @type {Transport} */
    this.transport = options.transport ?? "auto";
    this.sseUrl = options.sseUrl ?? sseUrlOf(url);
    this.websocketRetry = options.websocketRetry ?? WEBSOCKET_RETRY;
    /** When a WebSocket last failed where a stream then worked (ms), or null. */
    this.fellBack = null;
    /** The last WebSocket failed before its first frame: the next attempt is a stream. */
    this.wsFailed = false;
    this.random = options.random ?? Math.random;
    /** @type {ConnectionState} */
    this.state = "connecting";
    /** By `subscriptionId(topic, key)`. @type {Map<string, Subscription>} */
    this.subscriptions = new Map();
    /** Publishes without an answer yet: id -> {frame, handle, resolve, reject, timer}. */
    this.publishes = new Map();
    /** First attempts by `publish_id`: when each left, and how often it was sent again. */
    this.attempts = new Map();
    /** Other requests waiting for their reply on the current socket: id -> handlers. */
    this.requests = new Map();
    this.nextId = 1;
    this.attempt = 0;
    /** @type {WebSocket | SseSocket | null} */
    this.socket = null;
    this.authenticated = false;
    this.timer = null;
    /** Users whose status is watched, asked again after a reconnect. @type {string[]} */
    this.watching = [];
    /** When each `typing()` last sent a signal, by room. */
    this.typed = new Map();
    /** When the current socket last received a frame (ms since the epoch). */
    this.heard = 0;
    /** The heartbeat's timer: the next check for silence, or the wait for an answer. */
    this.beat = null;
    /** Whether a heartbeat `ping` is waiting for an answer. */
    this.probing = false;
    this.wake = () => this.revive();
    this.onVisibility = () => {
      if (this.document?.visibilityState !== "hidden") this.revive();
    };
    this.window = options.window ?? globalThis.window;
    this.document = options.document ?? globalThis.document;
    this.window?.addEventListener?.("online", this.wake);
    this.document?.addEventListener?.("visibilitychange", this.onVisibility);
    this.connect();
  }

  /**
   * Publishes one record; resolves with its position once Kafka has it. Never dropped
   * silently: the returned promise's `status` is `pending` until the hub answers (it is sent
   * again after a reconnect), then `acked`, or `failed` with the promise rejected and
   * `error.code` saying why: `too_large` (refused here, before sending, over
   * `maxFrameBytes`), `rate_limited` (`error.retryAfterMs`), `forbidden`, `unknown_topic`,
   * `unavailable`, `timeout` (no answer within `publishTimeout`; it may still have been
   * stored: publish it again with the same `publishId`, which never stores it twice) or
   * `closed`. Each change is also a `publish` event.
   *
   * Every publish has a `publishId` (a random UUID unless given): the hub writes it in the
   * record and answers a resend of it with the record already written, on any hub.
   * @param {string} topic @param {unknown} payload
   * @param {{key?: string, headers?: Record<string, string>, publishId?: string}} [options]
   * @returns {Publish}
   */
  publish(topic, payload, options = {}) {
    const id = this.nextId++;
    const { publishId = crypto.randomUUID(), ...rest } = options;
    const frame = { type: "publish", id, topic, payload, ...rest, publish_id: publishId };
    /** @type {any} */
    let settle;
    const handle = /** @type {Publish} */ (
      new Promise((resolve, reject) => (settle = { resolve, reject }))
    );
    handle.id = id;
    handle.publishId = publishId;
    handle.status = "pending";
    const publish = { frame, handle, ...settle, timer: null };
    const bytes = new TextEncoder().encode(JSON.stringify(frame)).length;
    if (bytes > this.maxFrameBytes) {
      const error = new WsKafkaError(
        "too_large",
        `the message is ${bytes} bytes; the hub takes at most ${this.maxFrameBytes}`,
        topic,
      );
      // Failed at once, so a page can keep what the user typed.
      this.settlePublish(publish, "failed", error);
      return handle;
    }
    publish.timer = setTimeout(() => {
      if (this.publishes.get(id) !== publish) return;
      this.publishes.delete(id);
      const error = new WsKafkaError("timeout", `no answer within ${this.publishTimeout} ms; it may still have been stored`, topic);
      this.settlePublish(publish, "failed", error);
    }, this.publishTimeout);
    this.publishes.set(id, publish);
    this.announce(publish);
    if (this.authenticated) this.sendPublish(frame);
    return handle;
  }

  /**
   * Sends a publish: as a first attempt, or, when its `publish_id` was sent before, as a
   * resend saying how long ago the first attempt left (on this page's clock) and which
   * resend it is, so the hub can tell whether an earlier attempt may still land.
   * @param {any} frame
   */
  sendPublish(frame) {
    const now = performance.now();
    const first = this.attempts.get(frame.publish_id);
    if (!first) {
      if (this.attempts.size >= REMEMBERED_ATTEMPTS) {
        this.attempts.delete(this.attempts.keys().next().value);
      }
      this.attempts.set(frame.publish_id, { sentAt: now, resends: 0 });
      this.send(frame);
      return;
    }
    first.resends += 1;
    this.send({ ...frame, age_ms: Math.round(now - first.sentAt), attempt: first.resends });
  }

  /**
   * Subscribes `onMessage` to a topic, or with `key` to one room of it; resolves once the
   * hub confirmed. Returns a function that ends the subscription. A socket follows either a
   * whole topic or rooms of it: subscribing to one replaces the other. A topic that does not
   * exist rejects with code `unknown_topic` and is not asked for again.
   * @param {string} topic @param {(message: Message) => void} onMessage
   * @param {{key?: string, from?: Start, filter?: Filter, presence?: boolean, signals?: boolean}} [options]
   *   `presence`: `presence_diff` (and `join` and `leave`) events for the room; `signals`: its
   *   `signal` events
   * @returns {Promise<() => void>}
   */
  subscribe(topic, onMessage, options = {}) {
    const key = options.key ?? options.filter?.key;
    const subscription = new Subscription(topic, key, onMessage, options);
    for (const [id, held] of this.subscriptions) {
      if (held.topic === topic && (key === undefined || held.key === undefined || held.key === key)) {
        held.confirmed.reject(new WsKafkaError("replaced", "subscribed again"));
        this.subscriptions.delete(id);
      }
    }
    this.subscriptions.set(subscription.id, subscription);
    if (this.authenticated) this.sendSubscribe(subscription);
    return subscription.confirmed.promise.then(() => () => this.unsubscribe(topic, key));
  }

  /**
   * Stores how far this user has read `topic` (or its room `key`: the next offset per
   * partition), for `from: "committed"` on any device; by default, as far as this
   * subscription delivered. Resolves once the hub stored it.
   * @param {string} topic @param {Record<string, number>} [offsets] @param {{key?: string}} [options]
   * @returns {Promise<unknown>}
   */
  commit(topic, offsets, options = {}) {
    const key = options.key;
    offsets ??= Object.fromEntries(this.subscriptions.get(subscriptionId(topic, key))?.next ?? []);
    if (Object.keys(offsets).length === 0) return Promise.resolve(undefined);
    const frame = { type: "commit", topic, offsets };
    if (key !== undefined) frame.key = key;
    return this.request(frame);
  }

  /**
   * A page of past records of `topic` (or its room `key`), newest page first: those before
   * `before` (the previous page's `before`; by default each partition's end), at most
   * `limit` (the hub's bound applies). A page with `partial` was cut short by the hub's bound
   * on reading: ask again with its `before`. `oldest` says no older record is left.
   * @param {string} topic
   * @param {{key?: string, before?: Record<string, number> | "subscribed", limit?: number}} [options]
   * @returns {Promise<Page>}
   */
  history(topic, options = {}) {
    const frame = { type: "history", topic };
    for (const field of ["key", "before", "limit"]) {
      if (options[field] !== undefined) frame[field] = options[field];
    }
    return this.request(frame);
  }

  /**
   * The page of records just older than what a subscription (to `topic`, or its room `key`)
   * shows, for "load older messages": the first call ends where the subscription started,
   * so history and live meet with no gap and no repeat; each next call goes further back.
   * Resolves with the messages, oldest first, and whether the oldest record was reached.
   * @param {string} topic @param {{key?: string, limit?: number}} [options]
   * @returns {Promise<{messages: Message[], oldest: boolean}>}
   */
  async older(topic, options = {}) {
    const subscription = this.subscriptions.get(subscriptionId(topic, options.key));
    if (!subscription) throw new WsKafkaError("not_subscribed", `not subscribed to ${topic}`);
    const messages = [];
    let page;
    // Pages cut short by the hub's bound carry on until some are found or none are left.
    do {
      page = await this.history(topic, {
        key: options.key,
        limit: options.limit,
        before: subscription.olderBefore ?? "subscribed",
      });
      subscription.olderBefore = page.before;
      messages.unshift(...page.messages);
    } while (page.partial && messages.length === 0);
    return { messages, oldest: page.oldest };
  }

  /**
   * The members of `topic`, or of its room `key`: a page of user ids (`members`, absent for
   * a room too large to list), their `count`, and `next` to pass as `after` for the next page.
   * @param {string} topic @param {{key?: string, after?: string}} [options]
   * @returns {Promise<{members?: string[], count: number, next?: string, large?: boolean}>}
   */
  presence(topic, options = {}) {
    const frame = { type: "presence", topic };
    if (options.key !== undefined) frame.key = options.key;
    if (options.after !== undefined) frame.after = options.after;
    return this.request(frame);
  }

  /**
   * Which of `users` are online; with `watch`, `status` events follow as that changes (the
   * list replaces the one watched before, and is watched again after a reconnect).
   * @param {string[]} users @param {{watch?: boolean}} [options]
   * @returns {Promise<Record<string, boolean>>}
   */
  async online(users, options = {}) {
    if (options.watch) this.watching = [...users];
    const reply = await this.request({ type: "online", users, watch: Boolean(options.watch) });
    return reply.users;
  }

  /**
   * Registers this browser for Web Push: while none of the user's pages is open, the hub
   * pushes the records of the user's per-user topics to it. The service worker
   * (`registration`) and the permission prompt are the page's. Subscribes the browser with
   * the hub's key (again, when it was subscribed with another), and resolves with the
   * browser's subscription once the hub stored it.
   * @param {ServiceWorkerRegistration} registration
   * @returns {Promise<PushSubscription>}
   */
  async registerPush(registration) {
    const { key } = await this.request({ type: "push_key" });
    const applicationServerKey = base64UrlBytes(key);
    let subscription = await registration.pushManager.getSubscription();
    const current = subscription?.options.applicationServerKey;
    if (subscription && !(current && sameBytes(new Uint8Array(current), applicationServerKey))) {
      await subscription.unsubscribe();
      subscription = null;
    }
    subscription ??= await registration.pushManager.subscribe({
      userVisibleOnly: true,
      applicationServerKey,
    });
    await this.request({ type: "push_subscribe", subscription: subscription.toJSON() });
    return subscription;
  }

  /**
   * Stops pushes to this browser: removed at the hub, then unsubscribed in the browser.
   * Resolves false when the browser had no subscription.
   * @param {ServiceWorkerRegistration} registration
   * @returns {Promise<boolean>}
   */
  async unregisterPush(registration) {
    const subscription = await registration.pushManager.getSubscription();
    if (!subscription) return false;
    await this.request({ type: "push_unsubscribe", endpoint: subscription.endpoint });
    return subscription.unsubscribe();
  }

  /**
   * Sends an ephemeral signal to the room's current subscribers (those that asked for
   * signals), on every hub: never stored, never replayed. Nothing answers it; a refusal
   * comes as an `error` event.
   * @param {string} topic @param {unknown} payload @param {{key?: string}} [options]
   */
  signal(topic, payload, options = {}) {
    const frame = { type: "signal", topic, payload };
    if (options.key !== undefined) frame.key = options.key;
    if (this.authenticated) this.send(frame);
  }

  /**
   * Says the user is typing in a room: a `{typing: true}` signal, at most one per
   * `TYPING_EVERY` ms however often it is called. Receivers hold the state for
   * `TYPING_FOR` ms after the last one (see `Typists`), so it ends by itself.
   * @param {string} topic @param {{key?: string}} [options]
   */
  typing(topic, options = {}) {
    const room = JSON.stringify([topic, options.key ?? null]);
    const now = Date.now();
    if (now - (this.typed.get(room) ?? -Infinity) < TYPING_EVERY) return;
    this.typed.set(room, now);
    this.signal(topic, { typing: true }, options);
  }

  /** @param {string} topic @param {string} [key] a room; none: every subscription to the topic */
  unsubscribe(topic, key) {
    let held = false;
    for (const [id, subscription] of this.subscriptions) {
      if (subscription.topic === topic && (key === undefined || subscription.key === key)) {
        this.subscriptions.delete(id);
        held = true;
      }
    }
    if (!held || !this.authenticated) return;
    const frame = { type: "unsubscribe", topic };
    if (key !== undefined) frame.key = key;
    this.send(frame);
  }

  /** Closes for good: no reconnect; unanswered publishes are rejected. */
  close() {
    this.setState("closed");
    clearTimeout(this.timer);
    clearTimeout(this.beat);
    this.window?.removeEventListener?.("online", this.wake);
    this.document?.removeEventListener?.("visibilitychange", this.onVisibility);
    this.socket?.close(1000);
    const closed = new WsKafkaError("closed", "the client was closed");
    for (const publish of this.publishes.values()) this.settlePublish(publish, "failed", closed);
    for (const { reject } of this.requests.values()) reject(closed);
    for (const subscription of this.subscriptions.values()) subscription.confirmed.reject(closed);
    this.publishes.clear();
    this.requests.clear();
  }

  // -- internals ----------------------------------------------------------------------

  /** @param {ConnectionState} state */
  setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.dispatchEvent(new CustomEvent("state", { detail: state }));
  }

  async token() {
    const source = this.options.token;
    return typeof source === "function" ? await source() : source;
  }

  connect() {
    if (this.state === "closed") return;
    clearTimeout(this.timer);
    const socket = this.open();
    const sse = socket instanceof SseSocket;
    this.socket = socket;
    this.authenticated = false;
    // Silence is watched from the start: a connect or a login that hangs (the network died
    // under it) is given up like an open socket that stopped answering.
    this.heard = Date.now();
    this.listen();
    let framed = false;
    socket.onopen = async () => {
      if (sse && this.wsFailed) this.fellBack = Date.now();
      this.wsFailed = false;
      try {
        // A stream was opened with a token already: the same one logs in, as the ticket's.
        const token = sse ? socket.bearer : await this.token();
        if (this.socket === socket) this.send({ type: "auth", id: "auth", token });
      } catch (e) {
        socket.close(4000, "no token");
      }
    };
    socket.onmessage = (/** @type {{data: string}} */ event) => {
      if (this.socket !== socket) return;
      framed = true;
      // Any frame at all shows the connection lives.
      this.heard = Date.now();
      if (this.probing) {
        this.probing = false;
        this.listen();
      }
      this.receive(JSON.parse(event.data));
    };
    socket.onclose = (/** @type {{code?: number} | undefined} */ event) => {
      if (this.socket !== socket) return;
      this.lost();
      if (this.state === "closed") return;
      // A WebSocket cut before its first frame (1006: its upgrade failed, or the connection
      // broke) may be a proxy refusing upgrades: a stream is tried at once. The hub's own
      // refusals come with their codes.
      if (!sse && !framed && event?.code === 1006 && this.transport === "auto") {
        this.wsFailed = true;
        return this.connect();
      }
      this.wsFailed = false;
      const delay = backoffDelay(this.attempt++, this.backoff, this.random);
      this.timer = setTimeout(() => this.connect(), delay);
    };
  }

  /** A WebSocket, or a stream when the transport says so or WebSocket failed. */
  open() {
    const retry = this.fellBack !== null && Date.now() - this.fellBack >= this.websocketRetry;
    if (retry) this.fellBack = null;
    const sse =
      this.transport === "sse" ||
      (this.transport === "auto" && (this.wsFailed || this.fellBack !== null));
    if (!sse) {
      try {
        return new this.WebSocket(this.url);
      } catch (e) {
        if (this.transport !== "auto") throw e;
        this.wsFailed = true;
      }
    }
    return new SseSocket(this.sseUrl, () => this.token(), this.options);
  }

  /** The current socket is gone (closed, or given up for dead): forget it. */
  lost() {
    this.socket = null;
    this.authenticated = false;
    this.probing = false;
    clearTimeout(this.beat);
    // Replies to requests other than publishes will never come; publishes are resent.
    for (const { reject } of this.requests.values()) {
      reject(new WsKafkaError("disconnected", "the connection dropped"));
    }
    this.requests.clear();
    if (this.state !== "closed") this.setState("reconnecting");
  }

  /**
   * Waits for the heartbeat's interval of silence, then pings. Checked against `heard`
   * rather than restarted on every frame, so a busy socket costs no timer churn.
   */
  listen() {
    clearTimeout(this.beat);
    const quiet = Date.now() - this.heard;
    this.beat = setTimeout(() => {
      if (Date.now() - this.heard >= this.heartbeat.interval) this.probe();
      else this.listen();
    }, Math.max(0, this.heartbeat.interval - quiet));
  }

  /** Asks the hub for any answer; none within the heartbeat's timeout: the socket is dead. */
  probe() {
    if (this.probing || !this.socket) return;
    clearTimeout(this.beat);
    this.probing = true;
    // The hub takes only `auth` before authentication; silence then counts all the same.
    if (this.authenticated) this.send({ type: "ping", id: `ping-${this.nextId++}` });
    this.beat = setTimeout(() => this.dead(), this.heartbeat.timeout);
  }

  /**
   * Gives the socket up and connects again at once. The old socket is closed without
   * waiting for its close handshake, which a dead network would hold up for minutes.
   */
  dead() {
    const socket = this.socket;
    if (!socket) return;
    this.lost();
    try {
      socket.close(4000, "no answer to ping");
    } catch {
      // Nothing to do: it is forgotten already.
    }
    this.connect();
  }

  /**
   * The network came back or the page came to the foreground: a socket waiting out its
   * backoff (or still connecting) is replaced at once; one silent past the heartbeat's whole
   * bound (its timers were throttled in the background) is dead; any other open socket is
   * asked with a `ping`, and kept if anything answers.
   */
  revive() {
    if (this.state === "closed") return;
    if (!this.socket || !this.authenticated) {
      if (this.socket) this.dead();
      else this.connect();
      return;
    }
    if (Date.now() - this.heard >= this.heartbeat.interval + this.heartbeat.timeout) this.dead();
    else this.probe();
  }

  /** @param {any} publish @param {PublishStatus} status @param {WsKafkaError} [error] */
  settlePublish(publish, status, error) {
    clearTimeout(publish.timer);
    publish.handle.status = status;
    if (error) {
      publish.handle.error = error;
      publish.handle.catch(() => {});
    }
    this.announce(publish);
    if (error) publish.reject(error);
  }

  /** A `publish` event with where the publish stands. @param {any} publish */
  announce(publish) {
    const { id, topic, key, payload } = publish.frame;
    const { status, error } = publish.handle;
    this.dispatchEvent(new CustomEvent("publish", { detail: { id, topic, key, payload, status, error } }));
  }

  /** @param {object} frame */
  send(frame) {
    this.socket?.send(JSON.stringify(frame));
  }

  /**
   * Sends a request on the current socket; resolves with its reply.
   * @param {Record<string, unknown>} frame
   */
  request(frame) {
    if (!this.authenticated) {
      return Promise.reject(new WsKafkaError("disconnected", "not connected"));
    }
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.requests.set(id, { resolve, reject });
      this.send({ ...frame, id });
    });
  }

  /** @param {Subscription} subscription */
  sendSubscribe(subscription) {
    const id = this.nextId++;
    this.requests.set(id, {
      resolve: (/** @type {any} */ reply) => subscription.started(reply, this),
      reject: (/** @type {Error} */ e) => subscription.failed(e, this),
    });
    const frame = { type: "subscribe", id, topic: subscription.topic, from: subscription.from() };
    if (subscription.key !== undefined) frame.key = subscription.key;
    const headers = subscription.options.filter?.headers;
    if (headers) frame.filter = { headers };
    if (subscription.options.presence) frame.presence = true;
    if (subscription.options.signals) frame.signals = true;
    this.send(frame);
  }

  /** @param {any} frame */
  receive(frame) {
    switch (frame.type) {
      case "message": {
        // A room's subscription, or the whole topic's.
        const subscription =
          this.subscriptions.get(subscriptionId(frame.topic, frame.key)) ??
          this.subscriptions.get(subscriptionId(frame.topic, undefined));
        subscription?.deliver(frame);
        return;
      }
      case "authenticated":
        if (frame.id === "auth" && !this.authenticated) this.opened();
        return;
      case "expiring":
        this.refresh();
        return;
      case "presence_diff": {
        this.dispatchEvent(new CustomEvent(frame.type, { detail: frame }));
        const { topic, key } = frame;
        for (const user of frame.leaves ?? []) {
          this.dispatchEvent(new CustomEvent("leave", { detail: { topic, key, user } }));
        }
        for (const user of frame.joins ?? []) {
          this.dispatchEvent(new CustomEvent("join", { detail: { topic, key, user } }));
        }
        return;
      }
      case "signal":
      case "status":
      case "read":
        this.dispatchEvent(new CustomEvent(frame.type, { detail: frame }));
        return;
      case "lagged":
        // The close (4429) follows; our own positions already say where to resume.
        return;
      case "ack": {
        const publish = this.publishes.get(frame.id);
        if (!publish) return;
        this.publishes.delete(frame.id);
        this.settlePublish(publish, "acked");
        publish.resolve(frame);
        return;
      }
      case "error":
        return this.failed(frame);
      default: {
        const request = this.requests.get(frame.id);
        this.requests.delete(frame.id);
        request?.resolve(frame);
      }
    }
  }

  opened() {
    this.authenticated = true;
    this.attempt = 0;
    this.listen();
    this.setState("open");
    for (const subscription of this.subscriptions.values()) this.sendSubscribe(subscription);
    for (const { frame } of this.publishes.values()) this.sendPublish(frame);
    if (this.watching.length > 0) {
      this.online(this.watching, { watch: true }).catch((e) =>
        this.dispatchEvent(new CustomEvent("error", { detail: e })),
      );
    }
  }

  async refresh() {
    if (typeof this.options.token !== "function") return;
    try {
      this.send({ type: "auth", id: "refresh", token: await this.token() });
    } catch (e) {
      this.dispatchEvent(new CustomEvent("error", { detail: e }));
    }
  }

  /** @param {any} frame */
  failed(frame) {
    const error = new WsKafkaError(frame.code, frame.message, frame.topic, frame.retry_after_ms);
    const publish = this.publishes.get(frame.id);
    if (publish) {
      this.publishes.delete(frame.id);
      return this.settlePublish(publish, "failed", error);
    }
    const request = this.requests.get(frame.id);
    if (request) {
      this.requests.delete(frame.id);
      return request.reject(error);
    }
    // A refused heartbeat ping (over its budget) still showed the connection lives.
    if (String(frame.id).startsWith("ping-")) return;
    const ended = frame.topic && subscriptionId(frame.topic, frame.key ?? undefined);
    if (ended && this.subscriptions.has(ended)) {
      this.subscriptions.get(ended)?.confirmed.reject(error);
      this.subscriptions.delete(ended);
    }
    this.dispatchEvent(new CustomEvent("error", { detail: error }));
  }
}

/** The hub's SSE URL for its WebSocket URL: `ws(s)://host/ws` -> `http(s)://host/sse`. */
function sseUrlOf(/** @type {string} */ url) {
  const u = new URL(url, globalThis.location?.href);
  u.protocol = u.protocol === "wss:" || u.protocol === "https:" ? "https:" : "http:";
  u.pathname = u.pathname.replace(/\/(ws)?$/, "") + "/sse";
  u.search = "";
  return u.toString();
}

/** Requests one POST carries at most: half what the hub queues for a stream. */
const SSE_BATCH = 32;
/** ... and their bytes, past the first, under the hub's bound on a POST's body (1 MiB). */
const SSE_BATCH_BYTES = 256 * 1024;

/**
 * The protocol over Server-Sent Events and POST, shaped as the WebSocket the client uses
 * (`onopen`, `onmessage`, `onclose`, `send`, `close`): a ticket (`POST /sse/ticket` with
 * the token), the stream (`GET /sse?ticket=…`), whose first frame names it, and requests
 * POSTed to it in order, batched while one is on its way, with the token of the last `auth`
 * frame. The hub answers on the stream. A `close` frame, a stream that fails, or a POST the
 * hub refuses (a stream it no longer holds: 404) close it, and the client reconnects as
 * after a socket's close, resubscribing from its own positions. (It does not use the
 * browser's own reconnect: a ticket opens one stream.)
 */
export class SseSocket {
  /**
   * @param {string} url  the hub's `…/sse`
   * @param {() => Promise<string>} token
   * @param {{EventSource?: typeof EventSource, fetch?: typeof fetch}} [options]
   */
  constructor(url, token, options = {}) {
    this.url = url;
    this.EventSource = options.EventSource ?? globalThis.EventSource;
    this.fetch = options.fetch ?? ((input, init) => globalThis.fetch(input, init));
    /** @type {(() => void) | null} */
    this.onopen = null;
    /** @type {((event: {data: string}) => void) | null} */
    this.onmessage = null;
    /** @type {((event: {code: number, reason: string}) => void) | null} */
    this.onclose = null;
    /** @type {EventSource | null} */
    this.source = null;
    /** @type {string | null} */
    this.stream = null;
    this.bearer = "";
    /** Frames waiting for the POST on its way. @type {string[]} */
    this.queue = [];
    this.posting = false;
    this.closed = false;
    this.start(token).catch(() => this.finish(1006, "no stream"));
  }

  /** @param {() => Promise<string>} token */
  async start(token) {
    this.bearer = await token();
    const response = await this.fetch(`${this.url}/ticket`, {
      method: "POST",
      headers: { Authorization: `Bearer ${this.bearer}` },
    });
    if (!response.ok) throw new Error(`ticket refused: ${response.status}`);
    const { ticket } = await response.json();
    if (this.closed) return;
    const source = new this.EventSource(`${this.url}?ticket=${encodeURIComponent(ticket)}`);
    this.source = source;
    source.onmessage = (event) => {
      // One event holds every frame of one write, a line each.
      for (const line of event.data.split("\n")) {
        if (this.closed) return;
        const frame = JSON.parse(line);
        if (frame.type === "stream" && this.stream === null) {
          this.stream = frame.id;
          this.onopen?.();
          this.flush();
        } else if (frame.type === "close") {
          this.finish(frame.code, frame.reason);
        } else {
          this.onmessage?.({ data: line });
        }
      }
    };
    source.onerror = () => this.finish(1006, "stream lost");
  }

  /** @param {string} text  a request frame */
  send(text) {
    if (this.closed) return;
    const frame = JSON.parse(text);
    if (frame.type === "auth") this.bearer = frame.token;
    this.queue.push(text);
    this.flush();
  }

  async flush() {
    if (this.posting || this.stream === null || this.queue.length === 0) return;
    this.posting = true;
    // A POST holds what the stream's task may queue at once (the hub refuses more, 429).
    let count = 0;
    for (let bytes = 0; count < this.queue.length && count < SSE_BATCH; count++) {
      bytes += this.queue[count].length;
      if (count > 0 && bytes > SSE_BATCH_BYTES) break;
    }
    const frames = this.queue.splice(0, count);
    try {
      const response = await this.fetch(`${this.url}/${this.stream}`, {
        method: "POST",
        headers: { Authorization: `Bearer ${this.bearer}`, "Content-Type": "application/json" },
        body: `[${frames.join(",")}]`,
      });
      if (response.status === 429) {
        // The stream's task has many requests to take yet: these go again, first, shortly.
        this.queue.unshift(...frames);
        const wait = 1000 * Number(response.headers?.get?.("retry-after") ?? 1);
        setTimeout(() => this.flush(), wait);
        return;
      }
      if (!response.ok) return this.finish(4000 + response.status, await response.text());
    } catch {
      return this.finish(1006, "request lost");
    } finally {
      this.posting = false;
    }
    this.flush();
  }

  /** @param {number} [code] @param {string} [reason] */
  close(code = 1000, reason = "") {
    this.finish(code, reason);
  }

  /** @param {number} code @param {string} reason */
  finish(code, reason) {
    if (this.closed) return;
    this.closed = true;
    this.source?.close();
    this.onclose?.({ code, reason });
  }
}

/**
 * Base64url (as the hub sends keys) to bytes.
 * @param {string} text
 */
function base64UrlBytes(text) {
  const binary = atob(text.replace(/-/g, "+").replace(/_/g, "/"));
  return Uint8Array.from(binary, (c) => c.charCodeAt(0));
}

/** @param {Uint8Array} a @param {Uint8Array} b */
function sameBytes(a, b) {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** A `typing()` signal is sent at most this often (ms)... */
export const TYPING_EVERY = 2000;
/** ... and a typist is shown for this long after the last one. */
export const TYPING_FOR = 5000;

/**
 * Who is typing in a room, from its `signal` events: a user counts as typing for
 * `TYPING_FOR` ms after their last `{typing: true}` signal, so the state ends by itself when
 * they go quiet.
 */
export class Typists {
  constructor(now = () => Date.now()) {
    this.now = now;
    /** @type {Map<string, number>} user -> until when */
    this.until = new Map();
  }

  /** @param {{sender: string, payload?: any}} signal */
  saw(signal) {
    if (signal.payload?.typing) this.until.set(signal.sender, this.now() + TYPING_FOR);
  }

  /** A user who sent a message has stopped typing. @param {string} user */
  stopped(user) {
    this.until.delete(user);
  }

  /** @returns {string[]} */
  current() {
    const now = this.now();
    for (const [user, until] of this.until) if (until <= now) this.until.delete(user);
    return [...this.until.keys()].sort();
  }
}

/**
 * A promise with its resolvers, settled once.
 * @returns {{promise: Promise<unknown>, resolve: (value?: unknown) => void,
 *   reject: (reason?: unknown) => void}}
 */
function deferred() {
  /** @type {any} */
  let resolve, reject;
  const promise = new Promise((res, rej) => ((resolve = res), (reject = rej)));
  promise.catch(() => {});
  return { promise, resolve, reject };
}

/** How the client files a subscription: its topic and its room, if any. */
function subscriptionId(/** @type {string} */ topic, /** @type {string | undefined} */ key) {
  return JSON.stringify([topic, key ?? null]);
}

/** One subscription and where it stands: the next offset per partition. */
class Subscription {
  /**
   * @param {string} topic @param {string | undefined} key
   * @param {(message: Message) => void} onMessage
   * @param {SubscribeOptions} options
   */
  constructor(topic, key, onMessage, options) {
    this.topic = topic;
    this.key = key;
    this.id = subscriptionId(topic, key);
    /** Where `older()` goes on from; none until its first page. */
    this.olderBefore = undefined;
    this.onMessage = onMessage;
    this.options = options;
    /** @type {Map<number, number> | null} null until the hub said where it starts */
    this.next = null;
    this.confirmed = deferred();
    /** Subscribes refused as `unavailable` in a row, for the retry backoff. */
    this.retries = 0;
  }

  /** The first subscribe uses the caller's start; every later one resumes exactly. */
  from() {
    if (this.next === null) return this.options.from ?? "latest";
    return { offsets: Object.fromEntries(this.next) };
  }

  /** @param {any} reply @param {WsKafka} client */
  started(reply, client) {
    this.next ??= new Map();
    for (const [partition, offset] of Object.entries(reply.partitions ?? {})) {
      if (!this.next.has(Number(partition))) this.next.set(Number(partition), offset);
    }
    this.retries = 0;
    if (reply.lost) {
      client.dispatchEvent(new CustomEvent("lost", { detail: { topic: this.topic, key: this.key, lost: reply.lost } }));
    }
    // With `from: "committed"`: `waiting` is the unread count, where the hub can tell.
    client.dispatchEvent(new CustomEvent("subscribed", { detail: reply }));
    this.confirmed.resolve(undefined);
  }

  /** @param {Error} error @param {WsKafka} client */
  failed(error, client) {
    // A dropped connection retries on reconnect.
    if (error instanceof WsKafkaError && error.code === "disconnected") return;
    // A hub still starting says `unavailable`: ask it again on this socket (a reconnect
    // meanwhile resubscribes anyway). Any other refusal ends the subscription.
    if (error instanceof WsKafkaError && error.code === "unavailable") {
      const socket = client.socket;
      const delay = backoffDelay(this.retries++, client.backoff, client.random);
      setTimeout(() => {
        const current = client.subscriptions.get(this.id) === this;
        if (current && client.socket === socket && client.authenticated) client.sendSubscribe(this);
      }, delay);
      return;
    }
    client.subscriptions.delete(this.id);
    this.confirmed.reject(error);
    client.dispatchEvent(new CustomEvent("error", { detail: error }));
  }

  /** @param {Message} message */
  deliver(message) {
    this.next ??= new Map();
    const expected = this.next.get(message.partition);
    if (expected !== undefined && message.offset < expected) return; // already had it
    this.next.set(message.partition, message.offset + 1);
    this.onMessage(message);
  }
}

// -- the protocol's frames and the client's events, as types (docs/protocol.md) --------

/**
 * @typedef {{key?: string, from?: Start, filter?: Filter, presence?: boolean,
 *   signals?: boolean}} SubscribeOptions  the options of `subscribe`
 * @typedef {{type: "publish", id?: string | number, topic: string, payload: unknown,
 *   key?: string, headers?: Record<string, string>, publish_id?: string, age_ms?: number,
 *   attempt?: number}} PublishFrame
 * @typedef {{type: "subscribe", id?: string | number, topic: string, key?: string,
 *   from?: Start, filter?: {headers?: Record<string, string>}, presence?: boolean,
 *   signals?: boolean}} SubscribeFrame
 * @typedef {{type: "presence", id?: string | number, topic: string, key?: string,
 *   after?: string}} PresenceFrame
 * @typedef {{type: "online", id?: string | number, users: string[], watch?: boolean}} OnlineFrame
 * @typedef {{type: "signal", id?: string | number, topic: string, key?: string,
 *   payload: unknown}} SignalFrame
 * @typedef {{type: "unsubscribe", id?: string | number, topic: string, key?: string}} UnsubscribeFrame
 * @typedef {{type: "history", id?: string | number, topic: string, key?: string,
 *   before?: Record<string, number> | "subscribed", limit?: number}} HistoryFrame
 * @typedef {{type: "ping", id?: string | number}} PingFrame
 * @typedef {{type: "auth", id?: string | number, token: string}} AuthFrame
 * @typedef {{type: "commit", id?: string | number, topic: string, key?: string,
 *   offsets: Record<string, number>}} CommitFrame
 * @typedef {PublishFrame | SubscribeFrame | PresenceFrame | OnlineFrame | SignalFrame
 *   | UnsubscribeFrame | HistoryFrame | PingFrame | AuthFrame | CommitFrame} ClientFrame
 *   every frame a client sends
 *
 * @typedef {{from: number, to: number, reason: "retention" | "replay_limit" | string}} LostRange
 *   offsets `from` up to `to` (excluded) that a subscription asked for and will not get
 * @typedef {{type: "subscribed", id?: string | number, topic: string, key?: string,
 *   partitions: Record<string, number>, lost?: Record<string, LostRange>,
 *   waiting?: number}} SubscribedFrame
 * @typedef {{type: "unsubscribed", id?: string | number, topic: string}} UnsubscribedFrame
 * @typedef {{type: "pong", id?: string | number}} PongFrame
 * @typedef {{type: "authenticated", id?: string | number, sub: string,
 *   expires_at: number}} AuthenticatedFrame
 * @typedef {{type: "expiring", expires_at: number}} ExpiringFrame
 * @typedef {{type: "committed", id?: string | number, topic: string}} CommittedFrame
 * @typedef {{type: "lagged", topics?: Record<string, Record<string, number>>,
 *   keys?: Record<string, Record<string, Record<string, number>>>}} LaggedFrame
 * @typedef {{type: "history", id?: string | number} & Page} HistoryReplyFrame
 * @typedef {{type: "presence", id?: string | number, topic: string, key?: string,
 *   members?: string[], count: number, next?: string, large?: boolean}} PresenceReplyFrame
 * @typedef {{type: "online", id?: string | number, users: Record<string, boolean>}} OnlineReplyFrame
 * @typedef {{type: "presence_diff", topic: string, key?: string, joins: string[],
 *   leaves: string[]}} PresenceDiffFrame  who joined and who left a room in one interval
 * @typedef {{topic: string, key?: string, user: string}} Membership  one user's join or
 *   leave, from a `presence_diff`
 * @typedef {{type: "signal", topic: string, key?: string, sender: string,
 *   payload: unknown}} SignalReceivedFrame
 * @typedef {{type: "status", user: string, online: boolean}} StatusFrame
 * @typedef {{type: "read", topic: string, key?: string,
 *   offsets: Record<string, number>}} ReadFrame  the user's positions moved on another device
 * @typedef {"unauthorized" | "bad_request" | "forbidden" | "too_large" | "limit_exceeded"
 *   | "rate_limited" | "id_conflict" | "retry_expired" | "unknown_topic" | "unavailable"
 *   | "internal"} ErrorCode  the hub's error codes; the client adds `timeout`, `closed`,
 *   `disconnected`, `replaced` and `not_subscribed`
 * @typedef {{type: "error", id?: string | number, code: ErrorCode, message: string,
 *   topic?: string, key?: string, retry_after_ms?: number}} ErrorFrame
 * @typedef {Message | Ack | SubscribedFrame | UnsubscribedFrame | PongFrame
 *   | AuthenticatedFrame | ExpiringFrame | CommittedFrame | LaggedFrame | HistoryReplyFrame
 *   | PresenceReplyFrame | OnlineReplyFrame | PresenceDiffFrame | SignalReceivedFrame
 *   | StatusFrame | ReadFrame | ErrorFrame} HubFrame  every frame the hub sends
 *
 * @typedef {{id: number, topic: string, key?: string, payload: unknown,
 *   status: PublishStatus, error?: WsKafkaError}} PublishEvent
 * @typedef {{state: ConnectionState, lost: {topic: string, key?: string,
 *   lost: Record<string, LostRange>}, error: WsKafkaError,
 *   presence_diff: PresenceDiffFrame, join: Membership, leave: Membership,
 *   signal: SignalReceivedFrame, status: StatusFrame, read: ReadFrame,
 *   publish: PublishEvent, subscribed: SubscribedFrame}} WsKafkaEventMap
 *   each event's `detail`, by event name
 */
