// A React page on the hooks of wskafka/react, in strict mode, for tests/react.rs: a room
// (messages with "load older", members, typing) that a button unmounts and mounts again, the
// connection's state, a notification bell with its unread count, and bob's online status.
// It counts the frames it sends by type (`window.sent`), so the test can see how often a
// room was subscribed.
import { StrictMode, useState } from "react";
import { createRoot } from "react-dom/client";
import { WsKafka } from "../../wskafka.js";
import {
  WsKafkaProvider,
  useConnectionState,
  useMessages,
  useOnline,
  usePresence,
  useTyping,
  useUnread,
} from "../../react.js";

const params = new URLSearchParams(location.search);
const [topic, room, notes] = [params.get("topic"), params.get("room"), params.get("notes")];
/** @type {Record<string, number>} */
const sent = {};
window.sent = sent;
class CountingSocket extends WebSocket {
  send(text) {
    const type = JSON.parse(text).type;
    sent[type] = (sent[type] ?? 0) + 1;
    super.send(text);
  }
}
const client = new WsKafka(params.get("hub"), {
  token: params.get("token"),
  WebSocket: CountingSocket,
  backoff: { min: 100, max: 1000 },
});

function Room() {
  const { messages, loadOlder, oldest } = useMessages(topic, { key: room });
  const members = usePresence(topic, room);
  const { typists, typing } = useTyping(topic, room);
  return (
    <section>
      <button id="older" onClick={() => loadOlder(2)}>older</button>
      <span id="oldest">{oldest ? "no older" : ""}</span>
      <ul id="messages">
        {messages.map((m) => (
          <li key={`${m.partition}/${m.offset}`}>{`${m.sender}: ${m.payload.text}`}</li>
        ))}
      </ul>
      <p id="members">{members ? `members: ${members.join(",")}` : ""}</p>
      <p id="typing">{typists.length > 0 ? `typing: ${typists.join(",")}` : ""}</p>
      <input id="say" onInput={typing} />
    </section>
  );
}

function Bell() {
  const { messages } = useMessages(notes, { from: "committed" });
  const { unread, markRead } = useUnread(notes);
  return (
    <section>
      <span id="unread">{`unread: ${unread}`}</span>
      <button id="read" onClick={markRead}>read</button>
      <ul id="notes">
        {messages.map((m) => (
          <li key={`${m.partition}/${m.offset}`}>{m.payload.text}</li>
        ))}
      </ul>
    </section>
  );
}

function App() {
  const [shown, setShown] = useState(true);
  const state = useConnectionState();
  const online = useOnline(["bob"]);
  return (
    <>
      <p id="state">{state}</p>
      <p id="online">{online.bob ? "bob online" : "bob offline"}</p>
      <button id="toggle" onClick={() => setShown((shown) => !shown)}>toggle</button>
      {shown && <Room />}
      <Bell />
    </>
  );
}

createRoot(document.getElementById("root")).render(
  <StrictMode>
    <WsKafkaProvider client={client}>
      <App />
    </WsKafkaProvider>
  </StrictMode>,
);
