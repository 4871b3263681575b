// The package's types: the client's own, generated from its JSDoc into types/ (`npm run
// types`), plus what JSDoc cannot say: each event's name with its `detail`, so that
// `client.addEventListener("lost", (e) => e.detail.lost)` is typed.
export * from "./types/wskafka.js";
import type { WsKafkaEventMap } from "./types/wskafka.js";

declare module "./types/wskafka.js" {
  interface WsKafka {
    addEventListener<K extends keyof WsKafkaEventMap>(
      type: K,
      listener: (event: CustomEvent<WsKafkaEventMap[K]>) => void,
      options?: boolean | AddEventListenerOptions,
    ): void;
    addEventListener(
      type: string,
      listener: EventListenerOrEventListenerObject | null,
      options?: boolean | AddEventListenerOptions,
    ): void;
    removeEventListener<K extends keyof WsKafkaEventMap>(
      type: K,
      listener: (event: CustomEvent<WsKafkaEventMap[K]>) => void,
      options?: boolean | EventListenerOptions,
    ): void;
    removeEventListener(
      type: string,
      listener: EventListenerOrEventListenerObject | null,
      options?: boolean | EventListenerOptions,
    ): void;
  }
}
