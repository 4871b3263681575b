// Drives a real headless Chromium for tests/browser.rs: one JSON command per stdin line,
// one JSON answer per stdout line ({"ok": result} or {"error": message}). Each named user
// gets a browser context of its own (separate storage, like separate people).
import { readFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

/** axe-core's source, run in pages for the accessibility check (`axe`). */
const axeSource = await readFile(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");

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
  // before its own. `permissions`: granted to the new context (say, "notifications").
  async open({ name, url, credentials, beside, init, permissions }) {
    const context = beside
      ? pages.get(beside).context()
      : await browser.newContext({
        ...(credentials ? { httpCredentials: credentials } : {}),
        ...(permissions ? { permissions } : {}),
      });
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
  // Waits until a script's value in the page is true. Asked from here, through the DevTools
  // protocol: waitForFunction would evaluate the string in the page, which the hub's
  // Content-Security-Policy forbids.
  async wait_true({ name, script }) {
    const deadline = Date.now() + timeout;
    while (!(await pages.get(name).evaluate(script))) {
      if (Date.now() > deadline) throw new Error(`never true: ${script}`);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
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
  // The window's size in CSS pixels, as a phone's or a tablet's.
  async viewport({ name, width, height }) {
    await pages.get(name).setViewportSize({ width, height });
  },
  // Per selector, where its first match is on the page ({x, y, width, height}), or null
  // when nothing matching is rendered.
  async boxes({ name, selectors }) {
    const page = pages.get(name);
    const boxes = {};
    for (const selector of selectors) {
      boxes[selector] = await page.locator(selector).first().boundingBox({ timeout: 1000 }).catch(() => null);
    }
    return boxes;
  },
  // How wide the page is against its window: wider means it scrolls sideways.
  async widths({ name }) {
    return pages.get(name).evaluate(() => ({
      window: window.innerWidth,
      page: document.documentElement.scrollWidth,
      body: document.body.scrollWidth,
    }));
  },
  // axe-core's check of the page as it stands (WCAG 2.x A and AA rules): the violations,
  // each with its impact and the elements it found. Run through the DevTools protocol, which
  // the page's Content-Security-Policy does not restrict, so the page is checked as served.
  async axe({ name }) {
    const page = pages.get(name);
    await page.evaluate(`${axeSource}\n;0`);
    return page.evaluate(async () => {
      // @ts-ignore: put there by the line above
      const { violations } = await window.axe.run(document, {
        runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"] },
      });
      return violations.map((v) => ({
        id: v.id,
        impact: v.impact,
        help: v.help,
        nodes: v.nodes.map((n) => `${n.target.join(" ")}: ${n.failureSummary}`),
      }));
    });
  },
  // Presses a key where the focus is, as a keyboard user does.
  async key({ name, key }) {
    await pages.get(name).keyboard.press(key);
  },
  // The element that has the keyboard's focus: its id, or its tag name.
  async focused({ name }) {
    return pages.get(name).evaluate(() => document.activeElement?.id || document.activeElement?.tagName);
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
