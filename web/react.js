// React hooks over one wskafka client per page (`wskafka/react`).
//
// The page makes one `WsKafka` outside React and hands it to `<WsKafkaProvider>`; every hook
// reads from it, so the page holds one socket whatever it renders. Hooks on the same topic
// and room share one subscription (a feed), counted by its users: the last one to unmount
// unsubscribes, one render later, so that React's strict mode (which mounts, unmounts and
// mounts again) sends one `subscribe` and no `unsubscribe`. Reconnects are the client's
// business: it resubscribes from the next offset of every partition, so a feed's messages
// go on with no gap and no repeat.

import { createContext, createElement, useCallback, useContext, useEffect, useState, useSyncExternalStore } from "react";
import { TYPING_FOR, Typists, WsKafka } from "./wskafka.js";

/** @typedef {import("./wskafka.js").Message} Message */
/** @typedef {import("./wskafka.js").Start} Start */
/** @typedef {import("./wskafka.js").ConnectionState} ConnectionState */
/**
 * @typedef {{messages: Message[], oldest: boolean, members: string[] | null,
 *   typing: string[], unread: number, error: Error | null}} FeedState
 *   what a feed shows: its messages (oldest first, older pages included), whether no older
 *   record is left, the room's members (null until known, or without presence), who is
 *   typing, how many messages came since the last `markRead`, and why it ended, if it did
 */

const ClientContext = createContext(/** @type {WsKafka | null} */ (null));

/**
 * Gives the hooks below the page's client. Make the client once, outside any component
 * (`const client = new WsKafka(url, {token})` at module level): a client made during render
 * would be made twice under strict mode, each with its own socket.
 * @param {{client: WsKafka, children?: import("react").ReactNode}} props
 */
export function WsKafkaProvider({ client, children }) {
  return createElement(ClientContext.Provider, { value: client }, children);
}

/** The provider's client. @returns {WsKafka} */
export function useWsKafka() {
  const client = useContext(ClientContext);
  if (!client) throw new Error("wskafka hooks need a <WsKafkaProvider client={…}> above them");
  return client;
}

/** The connection's state, re-rendered on each change. @returns {ConnectionState} */
export function useConnectionState() {
  const client = useWsKafka();
  const subscribe = useCallback(
    (/** @type {() => void} */ changed) => {
      client.addEventListener("state", changed);
      return () => client.removeEventListener("state", changed);
    },
    [client],
  );
  return useSyncExternalStore(subscribe, () => client.state);
}

/**
 * A topic's messages, or with `key` a room's, live from `from` (`latest` by default), and
 * `loadOlder()` for the page of records just before the oldest shown (history meets the
 * live stream with no gap and no repeat). Rooms (with `key`) are subscribed with presence
 * and signals, for `usePresence` and `useTyping`. Hooks on the same topic and key share one
 * subscription, made with the first one's `from`.
 * @param {string} topic @param {{key?: string, from?: Start}} [options]
 * @returns {FeedState & {loadOlder: (limit?: number) => Promise<void>, markRead: () => Promise<void>}}
 */
export function useMessages(topic, options = {}) {
  const feed = useFeed(topic, options.key, options.from);
  const state = useSyncExternalStore(feed.watch, feed.current);
  const loadOlder = useCallback((/** @type {number | undefined} */ limit) => feed.loadOlder(limit), [feed]);
  const markRead = useCallback(() => feed.markRead(), [feed]);
  return { ...state, loadOlder, markRead };
}

/**
 * The members of a room (`key`) of `topic`, kept up to date from its joins and leaves;
 * `null` until the hub answered (or when it keeps no roster). Subscribes to the room.
 * @param {string} topic @param {string} key @returns {string[] | null}
 */
export function usePresence(topic, key) {
  const feed = useFeed(topic, key, undefined);
  return useSyncExternalStore(feed.watch, feed.current).members;
}

/**
 * Who is typing in a room, and `typing()` to say the user is (call it on every keystroke:
 * the client sends at most one signal per `TYPING_EVERY` ms). Subscribes to the room.
 * @param {string} topic @param {string} key
 * @returns {{typists: string[], typing: () => void}}
 */
export function useTyping(topic, key) {
  const client = useWsKafka();
  const feed = useFeed(topic, key, undefined);
  const typists = useSyncExternalStore(feed.watch, feed.current).typing;
  const typing = useCallback(() => client.typing(topic, { key }), [client, topic, key]);
  return { typists, typing };
}

/**
 * How many messages of a topic (or room) came since the user last read it, counted from the
 * read position stored by `commit` (`from: "committed"`, on any device), and `markRead()`
 * to store that the user has read all shown. Shares the feed of `useMessages` on the same
 * topic and key (give that one `from: "committed"` too).
 * @param {string} topic @param {{key?: string}} [options]
 * @returns {{unread: number, markRead: () => Promise<void>}}
 */
export function useUnread(topic, options = {}) {
  const feed = useFeed(topic, options.key, "committed");
  const unread = useSyncExternalStore(feed.watch, feed.current).unread;
  const markRead = useCallback(() => feed.markRead(), [feed]);
  return { unread, markRead };
}

/**
 * Which of `users` are online, kept up to date. The socket watches one list: the union of
 * every mounted `useOnline`'s, asked again when it changes (and by the client after a
 * reconnect).
 * @param {string[]} users @returns {Record<string, boolean>}
 */
export function useOnline(users) {
  const client = useWsKafka();
  const watcher = watchers(client);
  const wanted = users.join("\n");
  useEffect(() => watcher.want(wanted.split("\n").filter(Boolean)), [watcher, wanted]);
  const statuses = useSyncExternalStore(watcher.watch, watcher.current);
  return Object.fromEntries(users.map((user) => [user, statuses[user] ?? false]));
}

// -- feeds: one subscription per topic and room, shared by the hooks ------------------------

/** Feeds by client, then by topic and room. @type {WeakMap<WsKafka, Map<string, Feed>>} */
const feeds = new WeakMap();

/**
 * The feed of a topic and room for this component; held while it is mounted (through
 * `useSyncExternalStore`'s subscription).
 * @param {string} topic @param {string | undefined} key @param {Start | undefined} from
 */
function useFeed(topic, key, from) {
  const client = useWsKafka();
  let byId = feeds.get(client);
  if (!byId) feeds.set(client, (byId = new Map()));
  const id = JSON.stringify([topic, key ?? null]);
  let feed = byId.get(id);
  if (!feed) byId.set(id, (feed = new Feed(client, byId, topic, key, from)));
  return feed;
}

/** One subscription and what it has shown, shared by every hook on its topic and room. */
class Feed {
  /**
   * @param {WsKafka} client @param {Map<string, Feed>} byId
   * @param {string} topic @param {string | undefined} key @param {Start | undefined} from
   */
  constructor(client, byId, topic, key, from) {
    this.client = client;
    this.byId = byId;
    this.topic = topic;
    this.key = key;
    this.from = from;
    /** @type {Set<() => void>} the mounted hooks' re-render callbacks */
    this.listeners = new Set();
    /** @type {ReturnType<typeof setTimeout> | undefined} the unsubscribe, once unused */
    this.ending = undefined;
    this.started = false;
    this.typists = new Typists();
    /** @type {FeedState} */
    this.state = { messages: [], oldest: false, members: null, typing: [], unread: 0, error: null };
    this.watch = this.watch.bind(this);
    this.current = () => this.state;
    /** @param {any} event */
    this.onEvent = (event) => this.event(event.type, event.detail);
  }

  /** `useSyncExternalStore`'s subscribe: holds the feed while `changed` is mounted. */
  watch(/** @type {() => void} */ changed) {
    this.listeners.add(changed);
    clearTimeout(this.ending);
    if (!this.started) this.start();
    return () => {
      this.listeners.delete(changed);
      // Strict mode mounts again at once: wait past it before ending the subscription.
      if (this.listeners.size === 0) this.ending = setTimeout(() => this.listeners.size === 0 && this.stop(), 0);
    };
  }

  start() {
    this.started = true;
    const room = this.key !== undefined;
    for (const type of ["subscribed", "join", "leave", "signal"]) this.client.addEventListener(type, this.onEvent);
    this.client
      .subscribe(this.topic, (message) => this.add(message), {
        key: this.key,
        from: this.from,
        presence: room,
        signals: room,
      })
      .catch((error) => this.update({ error }));
  }

  stop() {
    for (const type of ["subscribed", "join", "leave", "signal"]) this.client.removeEventListener(type, this.onEvent);
    if (this.byId.get(JSON.stringify([this.topic, this.key ?? null])) === this) {
      this.byId.delete(JSON.stringify([this.topic, this.key ?? null]));
    }
    this.client.unsubscribe(this.topic, this.key);
  }

  /** @param {Partial<FeedState>} change */
  update(change) {
    this.state = { ...this.state, ...change };
    for (const changed of this.listeners) changed();
  }

  /** @param {Message} message */
  add(message) {
    if (message.sender) this.typists.stopped(message.sender);
    this.update({
      messages: [...this.state.messages, message],
      unread: this.state.unread + 1,
      typing: this.typists.current(),
    });
  }

  /** @param {number} [limit] */
  async loadOlder(limit) {
    const page = await this.client.older(this.topic, { key: this.key, limit });
    this.update({ messages: [...page.messages, ...this.state.messages], oldest: page.oldest });
  }

  async markRead() {
    const read = this.state.unread;
    await this.client.commit(this.topic, undefined, { key: this.key });
    this.update({ unread: Math.max(0, this.state.unread - read) });
  }

  /** @param {string} type @param {any} detail */
  event(type, detail) {
    if (detail.topic !== this.topic || (detail.key ?? undefined) !== this.key) return;
    if (type === "subscribed" && this.key !== undefined) {
      // After every (re)subscribe, the roster as it is now; joins and leaves follow.
      this.client.presence(this.topic, { key: this.key }).then(
        (reply) => reply.members && this.update({ members: reply.members }),
        () => {},
      );
    } else if (type === "join" || type === "leave") {
      const members = new Set(this.state.members ?? []);
      if (type === "join") members.add(detail.user);
      else members.delete(detail.user);
      this.update({ members: [...members].sort() });
    } else if (type === "signal") {
      this.typists.saw(detail);
      this.update({ typing: this.typists.current() });
      // A typist is shown for TYPING_FOR after their last signal: look again then.
      setTimeout(() => this.update({ typing: this.typists.current() }), TYPING_FOR + 10);
    }
  }
}

// -- online status: one watched list per client --------------------------------------------

/** @type {WeakMap<WsKafka, Watcher>} */
const watched = new WeakMap();

/** @param {WsKafka} client */
function watchers(client) {
  let watcher = watched.get(client);
  if (!watcher) watched.set(client, (watcher = new Watcher(client)));
  return watcher;
}

/** The users every mounted `useOnline` wants, watched as one list, and their statuses. */
class Watcher {
  /** @param {WsKafka} client */
  constructor(client) {
    this.client = client;
    /** @type {Set<string[]>} each mounted hook's list */
    this.lists = new Set();
    /** @type {Record<string, boolean>} */
    this.statuses = {};
    /** @type {Set<() => void>} */
    this.listeners = new Set();
    this.asked = "";
    this.watch = this.watch.bind(this);
    this.current = () => this.statuses;
    client.addEventListener("status", (/** @type {any} */ event) => this.set({ [event.detail.user]: event.detail.online }));
    // After a reconnect, the statuses as they are now (the client watches the list again).
    client.addEventListener("state", () => client.state === "open" && this.ask(true));
  }

  /** @param {() => void} changed */
  watch(changed) {
    this.listeners.add(changed);
    return () => this.listeners.delete(changed);
  }

  /** @param {Record<string, boolean>} statuses */
  set(statuses) {
    this.statuses = { ...this.statuses, ...statuses };
    for (const changed of this.listeners) changed();
  }

  /** A hook's list, held until the returned function is called. @param {string[]} users */
  want(users) {
    this.lists.add(users);
    this.ask();
    return () => {
      this.lists.delete(users);
      setTimeout(() => this.ask(), 0);
    };
  }

  /** Watches the union of the lists, when it changed (or `again`). */
  ask(again = false) {
    const users = [...new Set([...this.lists].flat())].sort();
    if (users.join("\n") === this.asked && !again) return;
    this.asked = users.join("\n");
    // Not connected yet: asked once open.
    if (this.client.state !== "open") return;
    this.client.online(users, { watch: true }).then((statuses) => this.set(statuses), () => {});
  }
}
