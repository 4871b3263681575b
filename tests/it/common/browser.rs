//! The browser: Chromium driven through playwright-core.

use serde_json::Value;
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use super::*;

/// A headless Chromium driven through `web/test/browser-driver.mjs` (playwright-core), one
/// command at a time. It exits with this handle.
pub struct Browser {
    _process: Child,
    commands: tokio::process::ChildStdin,
    answers: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Browser {
    pub async fn start() -> Browser {
        let driver = concat!(env!("CARGO_MANIFEST_DIR"), "/web/test/browser-driver.mjs");
        let mut process = Command::new("node")
            .arg(driver)
            .env("PATIENCE_MS", PATIENCE.as_millis().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("starting node: run scripts/test, which installs it");
        let commands = process.stdin.take().unwrap();
        let answers = BufReader::new(process.stdout.take().unwrap()).lines();
        let mut browser = Browser {
            _process: process,
            commands,
            answers,
        };
        assert_eq!(browser.answer().await, "ready");
        browser
    }

    async fn answer(&mut self) -> Value {
        let line = tokio::time::timeout(PATIENCE * 2, self.answers.next_line())
            .await
            .expect("the browser driver did not answer in time")
            .unwrap()
            .expect("the browser driver exited");
        let mut answer: Value = serde_json::from_str(&line).unwrap();
        if let Some(error) = answer.get("error") {
            panic!("browser: {error}");
        }
        answer["ok"].take()
    }

    /// Runs one driver command (see the driver for the list) and returns its result.
    pub async fn run(&mut self, command: Value) -> Value {
        let line = format!("{command}\n");
        self.commands.write_all(line.as_bytes()).await.unwrap();
        self.answer().await
    }

    /// Opens `url` in a new browser context named `name`.
    pub async fn open(&mut self, name: &str, url: &str) {
        self.run(serde_json::json!({"cmd": "open", "name": name, "url": url}))
            .await;
    }

    /// Opens `url` with HTTP Basic credentials.
    pub async fn open_as(&mut self, name: &str, url: &str, username: &str, password: &str) {
        let credentials = serde_json::json!({"username": username, "password": password});
        self.run(serde_json::json!({"cmd": "open", "name": name, "url": url, "credentials": credentials}))
            .await;
    }

    /// Waits until the element at `selector` in `name`'s page contains `text`.
    pub async fn wait_text(&mut self, name: &str, selector: &str, text: &str) {
        self.run(serde_json::json!({"cmd": "wait_text", "name": name, "selector": selector, "text": text}))
            .await;
    }

    /// The inner text of every element matching `selector`.
    pub async fn texts(&mut self, name: &str, selector: &str) -> Vec<String> {
        let texts = self
            .run(serde_json::json!({"cmd": "texts", "name": name, "selector": selector}))
            .await;
        serde_json::from_value(texts).unwrap()
    }

    /// Waits until exactly `count` elements match `selector`.
    pub async fn wait_count(&mut self, name: &str, selector: &str, count: usize) {
        self.run(serde_json::json!({"cmd": "wait_count", "name": name, "selector": selector, "count": count}))
            .await;
    }

    /// Scrolls the element at `selector` to its top.
    pub async fn scroll_top(&mut self, name: &str, selector: &str) {
        self.run(serde_json::json!({"cmd": "scroll_top", "name": name, "selector": selector}))
            .await;
    }

    /// The errors and warnings `name`'s page wrote to its console.
    pub async fn complaints(&mut self, name: &str) -> Vec<String> {
        let complaints = self
            .run(serde_json::json!({"cmd": "complaints", "name": name}))
            .await;
        serde_json::from_value(complaints).unwrap()
    }

    pub async fn click(&mut self, name: &str, selector: &str) {
        self.run(serde_json::json!({"cmd": "click", "name": name, "selector": selector}))
            .await;
    }

    /// Types `text` into the chat box of `name`'s page and sends it.
    pub async fn say(&mut self, name: &str, text: &str) {
        self.run(
            serde_json::json!({"cmd": "type", "name": name, "selector": "#text", "text": text}),
        )
        .await;
    }

    /// Sets `name`'s window to `width` by `height` CSS pixels (a phone is 390 by 844).
    pub async fn viewport(&mut self, name: &str, width: u32, height: u32) {
        self.run(
            serde_json::json!({"cmd": "viewport", "name": name, "width": width, "height": height}),
        )
        .await;
    }

    /// Saves a screenshot of `name`'s page as `$CARGO_TARGET_DIR/screenshots/{file}.png`
    /// (the target directory the test binary was built in), prints where, and returns it.
    pub async fn screenshot(&mut self, name: &str, file: &str) -> std::path::PathBuf {
        // The binary runs from target/debug/deps.
        let exe = std::env::current_exe().unwrap();
        let target = exe.ancestors().nth(3).unwrap();
        let dir = target.join("screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{file}.png"));
        self.run(serde_json::json!({"cmd": "screenshot", "name": name, "path": path}))
            .await;
        // Past the test harness's capture (which takes print macros only), so the path shows
        // whether the test passes or not.
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "screenshot: {}", path.display());
        path
    }

    /// Where the first element matching each selector is on the page, or `None` for one not
    /// rendered.
    pub async fn boxes(&mut self, name: &str, selectors: &[&str]) -> Vec<(String, Option<Rect>)> {
        let boxes = self
            .run(serde_json::json!({"cmd": "boxes", "name": name, "selectors": selectors}))
            .await;
        selectors
            .iter()
            .map(|s| {
                (
                    s.to_string(),
                    serde_json::from_value(boxes[s].clone()).unwrap(),
                )
            })
            .collect()
    }

    /// How wide `name`'s page is, and its window: a page wider than its window scrolls
    /// sideways.
    pub async fn widths(&mut self, name: &str) -> (f64, f64) {
        let widths = self
            .run(serde_json::json!({"cmd": "widths", "name": name}))
            .await;
        let page = widths["page"]
            .as_f64()
            .unwrap()
            .max(widths["body"].as_f64().unwrap());
        (page, widths["window"].as_f64().unwrap())
    }

    /// axe-core's violations of WCAG 2.1 A and AA (and its best practices) in `name`'s page.
    pub async fn axe(&mut self, name: &str) -> Vec<Value> {
        let violations = self
            .run(serde_json::json!({"cmd": "axe", "name": name}))
            .await;
        serde_json::from_value(violations).unwrap()
    }

    /// The id (or tag name) of the element that has the keyboard's focus.
    pub async fn focused(&mut self, name: &str) -> String {
        let focused = self
            .run(serde_json::json!({"cmd": "focused", "name": name}))
            .await;
        focused.as_str().unwrap_or_default().to_string()
    }
}

/// An element's box on the page, in CSS pixels.
#[derive(Debug, Clone, Copy, serde::Deserialize)]
pub struct Rect {
    pub x: f64,
    pub y: f64,
    pub width: f64,
    pub height: f64,
}

impl Rect {
    /// Whether the box lies wholly inside a window of `width` by `height` (rounding aside).
    pub fn inside(&self, width: f64, height: f64) -> bool {
        self.x >= -0.5
            && self.y >= -0.5
            && self.x + self.width <= width + 0.5
            && self.y + self.height <= height + 0.5
            && self.width > 0.0
            && self.height > 0.0
    }
}
