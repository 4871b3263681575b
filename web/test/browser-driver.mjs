// Drives a real headless Chromium for tests/browser.rs: one JSON command per stdin line,
// one JSON answer per stdout line ({"ok": result} or {"error": message}). Each named user
// gets a browser context of its own (separate storage, like separate people).
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  // Root in a container cannot use Chromium's sandbox.
  args: ["--no-sandbox"],
});
const pages = new Map();
/** Per page, its console's errors and warnings, for tests that a page loads cleanly. */
const complaints = new Map();
/** Per page, the messages of the dialogs it opened (see `accept_dialogs`). */
const dialogs = new Map();
const timeout = Number(process.env.PATIENCE_MS ?? 20000);

const commands = {
  // In a new context (another person), or with `beside`, in the context of that page (another
  // tab of the same person, holding the same credentials). `init`: a script run in the page
  // before its own.
  async open({ name, url, credentials, beside, init }) {
    const context = beside
      ? pages.get(beside).context()
      : await browser.newContext(credentials ? { httpCredentials: credentials } : {});
    const page = await context.newPage();
    complaints.set(name, []);
    page.on("console", (m) => {
      process.stderr.write(`${name} console: ${m.text()}\n`);
      if (m.type() === "error" || m.type() === "warning") complaints.get(name).push(m.text());
    });
    page.on("pageerror", (e) => {
      process.stderr.write(`${name} page error: ${e}\n`);
      complaints.get(name).push(String(e));
    });
    if (init) await page.addInitScript(init);
    await page.goto(url);
    pages.set(name, page);
  },
  async type({ name, selector, text }) {
    await pages.get(name).fill(selector, text);
    await pages.get(name).press(selector, "Enter");
  },
  // Fills a field as typing does (an input event), without submitting.
  async fill({ name, selector, text }) {
    await pages.get(name).fill(selector, text);
  },
  async wait_gone({ name, selector, text }) {
    await pages.get(name).waitForFunction(
      ([selector, text]) => !document.querySelector(selector)?.textContent.includes(text),
      [selector, text],
      { timeout },
    );
  },
  async close({ name }) {
    await pages.get(name).context().close();
    pages.delete(name);
  },
  async click({ name, selector }) {
    await pages.get(name).click(selector);
  },
  async wait_text({ name, selector, text }) {
    await pages.get(name).waitForFunction(
      ([selector, text]) => document.querySelector(selector)?.textContent.includes(text),
      [selector, text],
      { timeout },
    );
  },
  async texts({ name, selector }) {
    return pages.get(name).locator(selector).allInnerTexts();
  },
  async count({ name, selector }) {
    return pages.get(name).locator(selector).count();
  },
  async wait_count({ name, selector, count }) {
    await pages.get(name).waitForFunction(
      ([selector, count]) => document.querySelectorAll(selector).length === count,
      [selector, count],
      { timeout },
    );
  },
  // Scrolls the element to its top, as a reader looking for older messages does.
  async scroll_top({ name, selector }) {
    await pages.get(name).locator(selector).evaluate((element) => {
      element.scrollTop = 0;
      element.dispatchEvent(new Event("scroll"));
    });
  },
  // Runs a script in the page and returns what it resolves to.
  async evaluate({ name, script }) {
    return pages.get(name).evaluate(script);
  },
  // The page's frames below the top one: where each ended up, and the text it shows.
  async frames({ name }) {
    const page = pages.get(name);
    const frames = page.frames().filter((frame) => frame !== page.mainFrame());
    return Promise.all(frames.map(async (frame) => ({
      url: frame.url(),
      text: await frame.evaluate(() => document.body?.innerText ?? "").catch(() => ""),
    })));
  },
  async complaints({ name }) {
    return complaints.get(name);
  },
  // `full_page`: the whole page, not only what the window shows.
  async screenshot({ name, path, full_page }) {
    await pages.get(name).screenshot({ path, fullPage: Boolean(full_page) });
  },
  // Accepts the page's dialogs (`confirm`) from now on, keeping what they asked for `dialogs`.
  async accept_dialogs({ name }) {
    dialogs.set(name, []);
    pages.get(name).on("dialog", async (dialog) => {
      dialogs.get(name).push(dialog.message());
      await dialog.accept();
    });
  },
  async dialogs({ name }) {
    return dialogs.get(name) ?? [];
  },
};

const lines = createInterface({ input: process.stdin });
process.stdout.write(JSON.stringify({ ok: "ready" }) + "\n");
for await (const line of lines) {
  const command = JSON.parse(line);
  let answer;
  try {
    answer = { ok: (await commands[command.cmd](command)) ?? null };
  } catch (e) {
    answer = { error: `${command.cmd}: ${e.message}` };
  }
  process.stdout.write(JSON.stringify(answer) + "\n");
}
await browser.close();
