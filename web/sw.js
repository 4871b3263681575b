// The demo's service worker: shows each push the hub sends while the user has no page open,
// and opens (or focuses) the demo when the notification is clicked. A push's data is the
// record as JSON (docs/protocol.md, "Web Push"); one marked `cut` came without its payload.
self.addEventListener("push", (event) => {
  /** @type {{topic?: string, payload?: any, cut?: boolean}} */
  let record = {};
  try {
    record = event.data?.json() ?? {};
  } catch {
    // Not JSON: shown as a plain notice.
  }
  const payload = record.payload;
  const body = record.cut
    ? "Something new: open the page to read it."
    : (payload?.text ?? (typeof payload === "string" ? payload : JSON.stringify(payload ?? "")));
  event.waitUntil(
    self.registration.showNotification("wskafka demo", {
      body,
      // Another push of the same record replaces its notification rather than adding one.
      tag: record.topic === undefined ? undefined : `${record.topic}/${record.partition}/${record.offset}`,
      data: { url: self.registration.scope },
    }),
  );
});

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  const url = event.notification.data?.url ?? self.registration.scope;
  event.waitUntil(
    (async () => {
      const open = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
      const page = open.find((c) => c.url.startsWith(url));
      if (page) return page.focus();
      return self.clients.openWindow(url);
    })(),
  );
});
