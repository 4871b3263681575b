// The demo page: chat rooms on `chat.*` topics, a notification centre on a per-user topic.
// `?rooms=a,b&notifications=t&user=name` override the defaults (the browser tests use them).
import { WsKafka } from "/wskafka.js";

const params = new URLSearchParams(location.search);
const rooms = (params.get("rooms") ?? "chat.lobby,chat.random").split(",");
const notificationsTopic = params.get("notifications") ?? "notifications";
const $ = (id) => document.getElementById(id);

/** Messages per room, in arrival order (offset order per partition). */
const history = new Map(rooms.map((room) => [room, []]));
let current = rooms[0];
let unread = 0;

function start(user) {
  $("login").hidden = true;
  $("me").textContent = `as ${user}`;
  const token = async () => {
    const response = await fetch(`/dev/token?user=${encodeURIComponent(user)}`);
    if (!response.ok) throw new Error(await response.text());
    return (await response.json()).token;
  };
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
  const client = new WsKafka(url, { token });
  window.wskafka = client;
  client.addEventListener("state", (e) => {
    $("status").dataset.state = e.detail;
    $("status").textContent = e.detail;
  });
  client.addEventListener("error", (e) => console.warn("wskafka:", e.detail));

  for (const room of rooms) {
    const button = document.createElement("button");
    button.textContent = `# ${room}`;
    button.dataset.room = room;
    button.onclick = () => show(room);
    $("rooms").append(button);
    client.subscribe(room, (m) => {
      history.get(room).push(m);
      if (room === current) render(m);
    }, { from: "earliest" });
  }
  // Unread notifications: everything after what this user last marked read, on any device.
  client.subscribe(notificationsTopic, (m) => {
    const li = document.createElement("li");
    li.textContent = m.payload?.text ?? JSON.stringify(m.payload);
    $("notifications").prepend(li);
    unread += 1;
    showUnread();
  }, { from: "committed" });

  $("bell").onclick = async () => {
    await client.commit(notificationsTopic);
    unread = 0;
    showUnread();
  };
  $("compose").onsubmit = async (e) => {
    e.preventDefault();
    const text = $("text").value;
    $("text").value = "";
    await client.publish(current, { user, text }, { key: user });
  };
  show(current);
}

function show(room) {
  current = room;
  for (const b of $("rooms").children) b.setAttribute("aria-current", String(b.dataset.room === room));
  $("messages").replaceChildren();
  history.get(room).forEach(render);
}

function render(m) {
  const li = document.createElement("li");
  const who = document.createElement("b");
  who.textContent = m.payload?.user ?? m.key ?? "?";
  li.append(who, m.payload?.text ?? JSON.stringify(m.payload ?? m.payload_base64));
  $("messages").append(li);
  li.scrollIntoView({ block: "end" });
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
