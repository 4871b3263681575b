// The React hooks as a page would use them, with strict types (compiled, not run).
import { WsKafka } from "wskafka";
import {
  WsKafkaProvider,
  useConnectionState,
  useMessages,
  useOnline,
  usePresence,
  useTyping,
  useUnread,
} from "wskafka/react";

const client = new WsKafka("wss://hub.example.com/ws", { token: () => "a token" });

function Room({ room }: { room: string }) {
  const state: "connecting" | "open" | "reconnecting" | "closed" = useConnectionState();
  const { messages, loadOlder, oldest, error } = useMessages("chat.rooms", { key: room });
  const members: string[] | null = usePresence("chat.rooms", room);
  const { typists, typing } = useTyping("chat.rooms", room);
  const online: Record<string, boolean> = useOnline(["bob", "carol"]);
  return (
    <section>
      <p>{state} {error?.message}</p>
      {!oldest && <button onClick={() => void loadOlder(50)}>older</button>}
      <ul>{messages.map((m) => <li key={`${m.partition}-${m.offset}`}>{m.sender}: {String(m.payload)}</li>)}</ul>
      <p>{members?.join(", ")} {typists.join(", ")} {online["bob"] ? "bob is online" : ""}</p>
      <input onInput={typing} />
    </section>
  );
}

function Bell() {
  const { unread, markRead } = useUnread("notifications");
  return <button onClick={() => void markRead()}>{unread}</button>;
}

export const page = (
  <WsKafkaProvider client={client}>
    <Room room="lobby" />
    <Bell />
  </WsKafkaProvider>
);
