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
}
