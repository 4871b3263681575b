// The demo page: chat rooms kept as the keys of one topic, a notification centre on a
// per-user topic. A room opens with its last messages and loads older ones when scrolled to
// its top; authors are the hub's verified senders, never what a payload claims. Each room
// lists who is in it (on any hub) and who is typing. The user's own messages show
// "sending…" until the hub acknowledges them (they then appear in the room as everyone's
// do), or "failed, retry" with the reason.
// `?topic=t&notifications=n&user=name` override the defaults, and `heartbeat=interval,timeout`
// (ms) the client's (the browser tests use them).
import { Typists, WsKafka } from "/wskafka.js";

const params = new URLSearchParams(location.search);
const topic = params.get("topic") ?? "chat.rooms";
const notificationsTopic = params.get("notifications") ?? "notifications";
const PAGE = 50;
const $ = (id) => document.getElementById(id);

/** Per room: its messages, oldest first, and whether older ones are left to load. */
const rooms = new Map();
let current = null;
let unread = 0;

async function start(user) {
  $("login").hidden = true;
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
    $("status").textContent = e.detail;
  });
  client.addEventListener("error", (e) => complain(e.detail));

  for (const room of first.rooms) {
    rooms.set(room, { messages: [], oldest: false, loading: null, members: new Set(), typists: new Typists(), outbox: [] });
    const button = document.createElement("button");
    button.textContent = `# ${room}`;
    button.dataset.room = room;
    button.onclick = () => show(room);
    $("rooms").append(button);
  }
  for (const room of first.rooms) {
    client
      .subscribe(topic, (m) => {
        rooms.get(room).messages.push(m);
        if (m.sender) rooms.get(room).typists.stopped(m.sender);
        if (room === current) {
          append(m);
          showTyping();
        }
      }, { key: room, presence: true, signals: true })
      // What was said before this page opened.
      .then(() => loadOlder(client, room))
      .catch(complain);
  }
  // Who is here: listed each time a room's subscription starts (again, after a reconnect),
  // then kept by the joins and leaves that follow (events below). The hub lists a room as
  // of its last batch of joins and leaves, so the two add up whenever the list is taken.
  client.addEventListener("subscribed", (e) => {
    if (e.detail.topic !== topic || !rooms.has(e.detail.key)) return;
    rooms.get(e.detail.key).members.clear();
    loadMembers(client, e.detail.key).catch(complain);
  });
  // Unread notifications: everything after what this user last marked read, on any device.
  client
    .subscribe(notificationsTopic, (m) => {
      const li = document.createElement("li");
      li.textContent = m.payload?.text ?? JSON.stringify(m.payload);
      $("notifications").prepend(li);
      unread += 1;
      showUnread();
    }, { from: "committed" })
    .catch(complain);

  $("bell").onclick = async () => {
    await client.commit(notificationsTopic).catch(complain);
    unread = 0;
    showUnread();
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
  show(first.rooms[0]);
}

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
    .finally(() => (state.loading = null));
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
}

function showTyping() {
  if (!current) return;
  const typing = rooms.get(current).typists.current();
  $("typing").textContent =
    typing.length === 0 ? "" : `${typing.join(", ")} ${typing.length === 1 ? "is" : "are"} typing…`;
}

function show(room) {
  current = room;
  showMembers();
  showTyping();
  for (const b of $("rooms").children) b.setAttribute("aria-current", String(b.dataset.room === room));
  const list = $("messages");
  list.replaceChildren(...rooms.get(room).messages.map(line));
  list.dataset.oldest = String(rooms.get(room).oldest);
  list.scrollTop = list.scrollHeight;
  $("outbox").replaceChildren(...rooms.get(room).outbox.map((entry) => entry.li));
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
  if (m.timestamp !== undefined) {
    const time = document.createElement("time");
    const at = new Date(m.timestamp);
    time.dateTime = at.toISOString();
    time.textContent = at.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    time.title = at.toLocaleString();
    li.append(time);
  }
  return li;
}

function append(m) {
  const list = $("messages");
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  list.append(line(m));
  if (atBottom) list.scrollTop = list.scrollHeight;
}

/** Older messages go on top; the view stays on what the reader was looking at. */
function prepend(messages, oldest) {
  const list = $("messages");
  const fromBottom = list.scrollHeight - list.scrollTop;
  list.prepend(...messages.map(line));
  list.dataset.oldest = String(oldest);
  list.scrollTop = list.scrollHeight - fromBottom;
}

function showUnread() {
  $("unread").textContent = String(unread);
  $("unread").hidden = unread === 0;
}

$("signin").onsubmit = (e) => {
  e.preventDefault();
  start($("user").value.trim());
};
if (params.get("user")) start(params.get("user"));
