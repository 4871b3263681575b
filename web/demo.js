// The demo page: chat rooms kept as the keys of one topic, a notification centre on a
// per-user topic. A room opens with its last messages and loads older ones when scrolled to
// its top; authors are the hub's verified senders, never what a payload claims. Each room
// lists who is in it (on any hub) and who is typing. The user's own messages show
// "sending…" until the hub acknowledges them (they then appear in the room as everyone's
// do), or "failed, retry" with the reason.
//
// Read positions are the user's, on every device: a room the user looks at is committed as
// read, and so are notifications when the bell is clicked; the hub tells the user's other
// pages (`read` events), which update their counts. Each page subscribes from those
// positions, so what came while it was closed counts as unread, and loads what lies before
// them through history (the read notifications, a room's past).
// `?topic=t&notifications=n&user=name` override the defaults, and `heartbeat=interval,timeout`
// (ms) the client's (the browser tests use them).
import { Typists, WsKafka } from "/wskafka.js";

const params = new URLSearchParams(location.search);
const topic = params.get("topic") ?? "chat.rooms";
const notificationsTopic = params.get("notifications") ?? "notifications";
const PAGE = 50;
/** Read notifications shown below the unread ones (one page of history). */
const READ_SHOWN = 20;
/** A room being looked at is committed as read at most this often (ms): commits have a budget. */
const COMMIT_EVERY = 500;
const $ = (id) => document.getElementById(id);
/** Below this width the members and notifications are a drawer (as in demo.css). */
const narrow = matchMedia("(max-width: 1000px)");

/**
 * Per room: its messages, oldest first, whether older ones are left to load, and for its
 * unread count the records that arrived live (`live`) and how far the user has read
 * (`read`: the next offset per partition, from any of the user's devices).
 */
const rooms = new Map();
let current = null;
let me = null;
/** Notifications, oldest first: read ones from history, then what the subscription brings. */
const notes = [];
/** How far the user has read the notifications: the next offset per partition. */
const notesRead = new Map();
let notesStarted = false;

/** Raises the positions in `read` to those in `offsets` (positions only move forward). */
function advance(read, offsets) {
  let moved = false;
  for (const [partition, offset] of Object.entries(offsets)) {
    if (offset > (read.get(Number(partition)) ?? -1)) {
      read.set(Number(partition), offset);
      moved = true;
    }
  }
  return moved;
}

const isUnread = (read, m) => m.offset >= (read.get(m.partition) ?? 0);

async function start(user) {
  me = user;
  if ($("login").open) $("login").close();
  $("me").textContent = `as ${user}`;
  const signIn = async () => {
    const response = await fetch(`/dev/token?user=${encodeURIComponent(user)}`);
    if (!response.ok) throw new Error(await response.text());
    return response.json();
  };
  const first = await signIn();
  let fresh = first.token;
  // The first connect uses the token fetched above; refreshes fetch new ones.
  const token = async () => {
    const token = fresh ?? (await signIn()).token;
    fresh = null;
    return token;
  };
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
  const [interval, timeout] = (params.get("heartbeat") ?? "").split(",").map(Number);
  const heartbeat = interval > 0 && timeout > 0 ? { interval, timeout } : undefined;
  const client = new WsKafka(url, { token, heartbeat });
  window.wskafka = client;
  client.addEventListener("state", (e) => {
    $("status").dataset.state = e.detail;
    $("state").textContent = e.detail;
  });
  client.addEventListener("error", (e) => complain(e.detail));

  for (const room of first.rooms) {
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.room = room;
    const count = Object.assign(document.createElement("span"), { className: "count", hidden: true });
    button.append(`# ${room}`, count);
    button.onclick = () => {
      show(room, client);
      closePanels($("show-rooms"));
    };
    $("rooms").append(button);
    rooms.set(room, {
      messages: [],
      oldest: false,
      loading: null,
      members: new Set(),
      typists: new Typists(),
      outbox: [],
      live: [],
      read: new Map(),
      started: false,
      committed: "",
      commitTimer: null,
      button,
      count,
    });
  }
  for (const room of first.rooms) {
    client
      .subscribe(topic, (m) => {
        const state = rooms.get(room);
        state.messages.push(m);
        state.live.push(m);
        // A room this page has not committed yet: its unread count starts here on every
        // device, and after a reload, so the position is stored (at once: the page may be
        // closed any moment).
        if (room !== current && state.committed === "") {
          if (!state.read.has(m.partition)) state.read.set(m.partition, m.offset);
          commitRoom(client, room, false);
        }
        if (m.sender) state.typists.stopped(m.sender);
        if (room === current) {
          append(m);
          showTyping();
          seen(client, room);
        }
        showRoomCounts();
      }, { key: room, presence: true, signals: true, from: "committed" })
      // What was said before: the read part of the room.
      .then(() => loadOlder(client, room))
      .catch(complain);
  }
  client.addEventListener("subscribed", (e) => {
    const { topic: subscribed, key, partitions } = e.detail;
    // Where a subscription from "committed" first starts is how far the user had read; later
    // starts (after a reconnect) resume where this page was and say nothing about that.
    if (subscribed === notificationsTopic && key === undefined && !notesStarted) {
      notesStarted = true;
      advance(notesRead, partitions ?? {});
      loadReadNotes(client).catch(complain);
      return;
    }
    if (subscribed !== topic || !rooms.has(key)) return;
    const state = rooms.get(key);
    if (!state.started) {
      state.started = true;
      advance(state.read, partitions ?? {});
      showRoomCounts();
    }
    // Who is here: listed each time a room's subscription starts (again, after a
    // reconnect), then kept by the joins and leaves that follow (events below). The hub
    // lists a room as of its last batch of joins and leaves, so the two add up whenever
    // the list is taken.
    state.members.clear();
    loadMembers(client, key).catch(complain);
  });
  // Positions the user committed on another device (any hub): counts follow at once.
  client.addEventListener("read", (e) => {
    const { topic: read, key, offsets } = e.detail;
    if (read === notificationsTopic && advance(notesRead, offsets)) showNotes();
    if (read === topic && rooms.has(key) && advance(rooms.get(key).read, offsets)) showRoomCounts();
  });
  // Unread notifications: everything after what this user last marked read, on any device.
  client
    .subscribe(notificationsTopic, (m) => {
      notes.push(m);
      showNotes();
    }, { from: "committed" })
    .catch(complain);

  offerPush(client);
  $("bell").onclick = () => {
    if (narrow.matches) openPanel($("show-side"));
    $("notifications-heading").focus();
    markNotesRead(client);
  };
  $("compose").onsubmit = (e) => {
    e.preventDefault();
    const text = $("text").value;
    // Refused before sending (too large): the text stays for the user to shorten.
    if (send(client, current, text)) $("text").value = "";
  };
  const inRoom = (e) => e.detail.topic === topic && rooms.has(e.detail.key);
  client.addEventListener("join", (e) => {
    if (!inRoom(e)) return;
    rooms.get(e.detail.key).members.add(e.detail.user);
    if (e.detail.key === current) showMembers();
  });
  client.addEventListener("leave", (e) => {
    if (!inRoom(e)) return;
    rooms.get(e.detail.key).members.delete(e.detail.user);
    if (e.detail.key === current) showMembers();
  });
  client.addEventListener("signal", (e) => {
    if (!inRoom(e) || e.detail.sender === user) return;
    rooms.get(e.detail.key).typists.saw(e.detail);
    if (e.detail.key === current) showTyping();
  });
  // Typing ends by itself a few seconds after the last keystroke.
  setInterval(showTyping, 1000);
  $("text").oninput = () => client.typing(topic, { key: current });
  $("messages").onscroll = () => {
    if ($("messages").scrollTop === 0 && current) loadOlder(client, current);
  };
  // A room in a background tab is not being read; it is once the tab is back.
  document.addEventListener("visibilitychange", () => current && seen(client, current));
  show(first.rooms[0], client);
}

/**
 * "Notify me when this page is closed": the demo's service worker (/sw.js) shows what the
 * hub pushes while none of the user's pages is open. Offered where the browser has Web Push.
 */
async function offerPush(client) {
  if (!("serviceWorker" in navigator && "PushManager" in window)) return;
  const box = $("push");
  const say = (text) => { $("push-state").textContent = text; };
  $("push-control").hidden = false;
  const registration = await navigator.serviceWorker.register("/sw.js");
  box.checked = (await registration.pushManager.getSubscription()) !== null;
  box.onchange = async () => {
    box.disabled = true;
    try {
      if (box.checked) {
        if ((await Notification.requestPermission()) !== "granted") {
          box.checked = false;
          say("Notifications are blocked for this page.");
          return;
        }
        await client.registerPush(registration);
        say("You will be notified while this page is closed.");
      } else {
        await client.unregisterPush(registration);
        say("");
      }
    } catch (e) {
      box.checked = !box.checked;
      say(`Cannot ${box.checked ? "stop" : "set up"} notifications: ${e.message ?? e}`);
    } finally {
      box.disabled = false;
    }
  };
}

/**
 * The user has seen every message of `room` that arrived so far: marked read here at once,
 * and committed so the user's other devices follow.
 */
function seen(client, room) {
  if (document.visibilityState === "hidden") return;
  const state = rooms.get(room);
  const upTo = {};
  for (const m of state.live) upTo[m.partition] = Math.max(upTo[m.partition] ?? 0, m.offset + 1);
  advance(state.read, upTo);
  showRoomCounts();
  commitRoom(client, room);
}

/**
 * Stores how far the user read `room`, when it moved: at once, or (`soon`) at most every
 * `COMMIT_EVERY` ms.
 */
function commitRoom(client, room, soon = true) {
  const state = rooms.get(room);
  const commit = () => {
    clearTimeout(state.commitTimer);
    state.commitTimer = null;
    const offsets = Object.fromEntries(state.read);
    const json = JSON.stringify(offsets);
    if (json === state.committed || Object.keys(offsets).length === 0) return;
    state.committed = json;
    client.commit(topic, offsets, { key: room }).catch((e) => {
      // Asked again when the room is next looked at; a lost connection is shown already.
      state.committed = "";
      if (e.code !== "disconnected") complain(e);
    });
  };
  if (!soon) commit();
  else state.commitTimer ??= setTimeout(commit, COMMIT_EVERY);
}

/** The bell: every notification shown so far is read, here and on the user's other devices. */
function markNotesRead(client) {
  const upTo = {};
  for (const m of notes) {
    if (isUnread(notesRead, m)) upTo[m.partition] = Math.max(upTo[m.partition] ?? 0, m.offset + 1);
  }
  if (Object.keys(upTo).length === 0) return;
  advance(notesRead, upTo);
  showNotes();
  client.commit(notificationsTopic, upTo).catch(complain);
}

/** The notifications read before this page opened: the page of history before the start. */
async function loadReadNotes(client) {
  try {
    const { messages } = await client.older(notificationsTopic, { limit: READ_SHOWN });
    notes.unshift(...messages);
    showNotes();
  } finally {
    // Complete from here: what was read before, and whatever comes live.
    $("notifications").setAttribute("aria-busy", "false");
  }
}

function showNotes() {
  const unread = [];
  const read = [];
  for (const m of notes) (isUnread(notesRead, m) ? unread : read).push(m);
  $("notifications").replaceChildren(...unread.reverse().map(note));
  $("read").replaceChildren(...read.reverse().slice(0, READ_SHOWN).map(note));
  $("none-unread").hidden = unread.length > 0;
  $("unread").textContent = String(unread.length);
  $("unread").hidden = unread.length === 0;
  const label = unread.length === 0 ? "none unread" : `${unread.length} unread`;
  $("bell").setAttribute("aria-label", `Notifications, ${label}`);
}

/** One notification: its text and when it came. */
function note(m) {
  const li = document.createElement("li");
  const body = Object.assign(document.createElement("span"), { className: "body" });
  body.textContent = m.payload?.text ?? JSON.stringify(m.payload ?? m.payload_base64);
  li.append(body);
  if (m.timestamp !== undefined) li.append(when(m.timestamp));
  return li;
}

/** Each room's unread count, on its button (none on the room being looked at), and their sum on the phone's rooms button. */
function showRoomCounts() {
  let total = 0;
  for (const [room, state] of rooms) {
    const unread = room === current ? 0 : state.live.filter((m) => m.sender !== me && isUnread(state.read, m)).length;
    total += unread;
    // Read out as "# lobby 3 unread".
    const words = Object.assign(document.createElement("span"), { className: "visually-hidden", textContent: " unread" });
    state.count.replaceChildren(String(unread), words);
    state.count.hidden = unread === 0;
  }
  $("rooms-unread").textContent = String(total);
  $("rooms-unread").hidden = total === 0;
}

/** Opens the drawer that `toggle` controls (on narrow screens), closing the other. */
function openPanel(toggle) {
  closePanels();
  const panel = $(toggle.getAttribute("aria-controls"));
  panel.classList.add("open");
  toggle.setAttribute("aria-expanded", "true");
}

/** Closes the drawers; focus goes back to `focus`, the button that opened one. */
function closePanels(focus) {
  for (const toggle of [$("show-rooms"), $("show-side")]) {
    const open = toggle.getAttribute("aria-expanded") === "true";
    $(toggle.getAttribute("aria-controls")).classList.remove("open");
    toggle.setAttribute("aria-expanded", "false");
    if (open && focus === toggle && getComputedStyle(toggle).display !== "none") toggle.focus();
  }
}

for (const toggle of [$("show-rooms"), $("show-side")]) {
  toggle.onclick = () => {
    if (toggle.getAttribute("aria-expanded") === "true") return closePanels(toggle);
    openPanel(toggle);
    // Into the drawer, for keyboards and screen readers.
    const panel = $(toggle.getAttribute("aria-controls"));
    (panel.querySelector("[aria-current=true]") ?? panel.querySelector("button, [tabindex]"))?.focus();
  };
}
document.addEventListener("keydown", (e) => {
  if (e.key !== "Escape") return;
  const open = [$("show-rooms"), $("show-side")].find((t) => t.getAttribute("aria-expanded") === "true");
  if (open) closePanels(open);
});

/**
 * Sends one of the user's messages and shows it below the room's as "sending…" until the hub
 * acknowledges it (it then arrives in the room like anyone's), or "failed, retry" (the button
 * sends it again under the same publish id, so a message that did get through is not posted
 * twice) with the text put back in an empty input. Returns false, showing why, for a message
 * refused before sending.
 */
function send(client, room, text, publishId = undefined) {
  const sent = client.publish(topic, { text }, { key: room, publishId });
  if (sent.status === "failed") {
    complain(sent.error);
    return false;
  }
  const outbox = rooms.get(room).outbox;
  const entry = { text, li: document.createElement("li") };
  outbox.push(entry);
  entry.li.append(Object.assign(document.createElement("span"), { className: "body", textContent: text }));
  const status = Object.assign(document.createElement("span"), { className: "status", textContent: "sending…" });
  entry.li.append(status);
  entry.li.dataset.status = "sending";
  if (room === current) $("outbox").append(entry.li);
  const remove = () => {
    outbox.splice(outbox.indexOf(entry), 1);
    entry.li.remove();
  };
  sent.then(remove, (error) => {
    entry.li.dataset.status = "failed";
    const retry = Object.assign(document.createElement("button"), { type: "button", textContent: "failed, retry" });
    retry.title = reason(error);
    retry.onclick = () => {
      remove();
      send(client, room, text, sent.publishId);
    };
    status.replaceChildren(retry, ` ${reason(error)}`);
    if (room === current && $("text").value === "") $("text").value = text;
  });
  return true;
}

/** Why a send failed, in the user's terms. */
function reason(error) {
  switch (error?.code) {
    case "rate_limited":
      return "too many messages at once";
    case "timeout":
      return "no answer from the server";
    case "forbidden":
      return "not allowed here";
    case "unavailable":
      return "the server could not store it";
    default:
      return error?.message ?? String(error);
  }
}

/**
 * Shows what went wrong to the user: a topic that does not exist will not appear by asking
 * again (the client library does not retry it), so the page says whom to ask.
 */
function complain(error) {
  console.warn("wskafka:", error);
  const text =
    error?.code === "unknown_topic"
      ? `${error.message}: ask an operator to create it.`
      : error?.code === "too_large"
        ? `Not sent, too long: ${error.message}.`
        : `Something went wrong: ${error?.message ?? error}`;
  $("problem").textContent = text;
  $("problem").hidden = false;
}

/** Loads the page of messages just older than what the room shows, once at a time. */
function loadOlder(client, room) {
  const state = rooms.get(room);
  if (state.oldest || state.loading) return state.loading;
  state.loading = client
    .older(topic, { key: room, limit: PAGE })
    .then(({ messages, oldest }) => {
      state.messages.unshift(...messages);
      state.oldest = oldest;
      if (room === current) prepend(messages, oldest);
    })
    .then(() => {
      // A page that does not fill the view leaves nothing to scroll: load on.
      const list = $("messages");
      if (room === current && !state.oldest && list.scrollHeight <= list.clientHeight) {
        queueMicrotask(() => loadOlder(client, room));
      }
    })
    .catch(complain)
    .finally(() => {
      state.loading = null;
      if (room === current) $("loading").hidden = true;
    });
  if (room === current) $("loading").hidden = false;
  return state.loading;
}

async function loadMembers(client, room) {
  const members = rooms.get(room).members;
  let after;
  do {
    const page = await client.presence(topic, { key: room, after });
    for (const member of page.members ?? []) members.add(member);
    after = page.next;
  } while (after);
  if (room === current) showMembers();
}

function showMembers() {
  const members = [...rooms.get(current).members].sort();
  $("members").replaceChildren(
    ...members.map((member) => {
      const li = document.createElement("li");
      li.textContent = member;
      return li;
    }),
  );
  $("show-side").textContent = `Members (${members.length})`;
}

function showTyping() {
  if (!current) return;
  const typing = rooms.get(current).typists.current();
  $("typing").textContent =
    typing.length === 0 ? "" : `${typing.join(", ")} ${typing.length === 1 ? "is" : "are"} typing…`;
}

function show(room, client) {
  current = room;
  const state = rooms.get(room);
  showMembers();
  showTyping();
  for (const b of $("rooms").children) b.setAttribute("aria-current", String(b.dataset.room === room));
  $("lines").replaceChildren(...state.messages.map(line));
  markOldest(state.oldest);
  $("loading").hidden = !state.loading;
  const list = $("messages");
  list.scrollTop = list.scrollHeight;
  $("outbox").replaceChildren(...state.outbox.map((entry) => entry.li));
  seen(client, room);
}

/** One message: its verified sender, its text, and when it was written. */
function line(m) {
  const li = document.createElement("li");
  const body = document.createElement("span");
  body.className = "body";
  const who = document.createElement("b");
  who.textContent = m.sender ?? "unverified";
  body.append(who, m.payload?.text ?? JSON.stringify(m.payload ?? m.payload_base64));
  li.append(body);
  if (m.timestamp !== undefined) li.append(when(m.timestamp));
  return li;
}

/** A time: the hour and minute of today, with the date on other days. */
function when(timestamp) {
  const time = document.createElement("time");
  const at = new Date(timestamp);
  const now = new Date();
  time.dateTime = at.toISOString();
  const clock = at.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  if (at.toDateString() === now.toDateString()) {
    time.textContent = clock;
  } else {
    const year = at.getFullYear() === now.getFullYear() ? undefined : "numeric";
    time.textContent = `${at.toLocaleDateString([], { day: "numeric", month: "short", year })}, ${clock}`;
  }
  time.title = at.toLocaleString();
  return time;
}

function append(m) {
  const list = $("messages");
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  $("lines").append(line(m));
  if (atBottom) list.scrollTop = list.scrollHeight;
}

/** Older messages go on top; the view stays on what the reader was looking at. */
function prepend(messages, oldest) {
  const list = $("messages");
  const fromBottom = list.scrollHeight - list.scrollTop;
  $("lines").prepend(...messages.map(line));
  markOldest(oldest);
  list.scrollTop = list.scrollHeight - fromBottom;
}

/** Says where the room begins, once history reached its first message. */
function markOldest(oldest) {
  $("messages").dataset.oldest = String(oldest);
  $("start").hidden = !oldest;
}

// The sign-in dialog is modal (the page behind is inert); Tab wraps around inside it instead
// of leaving for the browser's own controls.
$("login").addEventListener("keydown", (e) => {
  if (e.key !== "Tab") return;
  const stops = [...$("login").querySelectorAll("input, button")];
  const [first, last] = [stops[0], stops[stops.length - 1]];
  if (e.shiftKey ? document.activeElement === first : document.activeElement === last) {
    e.preventDefault();
    (e.shiftKey ? last : first).focus();
  }
});
// Escape would close it with nobody signed in.
$("login").addEventListener("cancel", (e) => e.preventDefault());
$("signin").onsubmit = (e) => {
  e.preventDefault();
  start($("user").value.trim()).catch(complain);
  // Straight to the conversation.
  $("text").focus();
};
if (params.get("user")) start(params.get("user")).catch(complain);
else $("login").showModal();
