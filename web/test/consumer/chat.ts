// Uses the package as an application would, with strict types: a chat room and a
// notification feed. Compiled (not run) by `npm test`; a wrong type here or in the
// package's declarations fails it.
import {
  WsKafka,
  WsKafkaError,
  type Ack,
  type HubFrame,
  type Message,
  type Page,
  type SubscribedFrame,
} from "wskafka";

const client = new WsKafka("wss://hub.example.com/ws", {
  token: async () => "a fresh token",
  heartbeat: { interval: 15_000, timeout: 5_000 },
});

client.addEventListener("state", (e) => {
  const state: "connecting" | "open" | "reconnecting" | "closed" = e.detail;
  console.log(state);
});
client.addEventListener("lost", (e) => {
  for (const [partition, range] of Object.entries(e.detail.lost)) {
    console.log(e.detail.topic, partition, range.from, range.to, range.reason);
  }
});
client.addEventListener("join", (e) => console.log(e.detail.user, "joined", e.detail.key));
client.addEventListener("signal", (e) => console.log(e.detail.sender, e.detail.payload));
client.addEventListener("status", (e) => console.log(e.detail.user, e.detail.online));
client.addEventListener("subscribed", (e) => {
  const frame: SubscribedFrame = e.detail;
  console.log(frame.waiting ?? 0);
});
client.addEventListener("publish", (e) => console.log(e.detail.status, e.detail.error?.code));
client.addEventListener("error", (e) => {
  const error: WsKafkaError = e.detail;
  console.log(error.code, error.retryAfterMs);
});

export async function chat(): Promise<void> {
  const stop: () => void = await client.subscribe(
    "chat.rooms",
    (message: Message) => console.log(message.sender, message.payload, message.offset),
    { key: "lobby", from: "committed", presence: true, signals: true },
  );
  const sent = client.publish("chat.rooms", { text: "hi" }, { key: "lobby" });
  const status: "pending" | "acked" | "failed" = sent.status;
  const ack: Ack = await sent;
  console.log(status, sent.publishId, ack.partition, ack.offset);
  const older: { messages: Message[]; oldest: boolean } = await client.older("chat.rooms", {
    key: "lobby",
    limit: 50,
  });
  const page: Page = await client.history("chat.rooms", { key: "lobby", before: "subscribed" });
  console.log(older.oldest, page.before, page.partial);
  const members = await client.presence("chat.rooms", { key: "lobby" });
  console.log(members.count, members.members?.length);
  const online: Record<string, boolean> = await client.online(["bob"], { watch: true });
  console.log(online["bob"]);
  client.typing("chat.rooms", { key: "lobby" });
  await client.commit("chat.rooms", undefined, { key: "lobby" });
  stop();
  client.close();
}

/** Every frame the hub sends has a type the compiler can tell apart. */
export function describe(frame: HubFrame): string {
  switch (frame.type) {
    case "message":
      return `${frame.topic}/${frame.partition}@${frame.offset}`;
    case "error":
      return `${frame.code}: ${frame.message}`;
    case "lagged":
      return JSON.stringify(frame.topics ?? {});
    default:
      return frame.type;
  }
}

// @ts-expect-error: a subscription's start is one of the protocol's, not any string
client.subscribe("chat.rooms", () => {}, { from: "yesterday" });
