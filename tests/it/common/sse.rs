//! An SSE client for the hub's fallback transport: a ticket, the stream read as a browser's
//! `EventSource` reads it (events split at blank lines, comments skipped, the last whole
//! event's `id` kept), and requests over `POST`.

use std::collections::VecDeque;

use serde_json::Value;

use super::*;

pub struct Sse {
    base: String,
    token: String,
    http: reqwest::Client,
    /// The id the hub gave the stream, which its requests name.
    pub stream: String,
    response: reqwest::Response,
    pub headers: reqwest::header::HeaderMap,
    /// What was read but is not a whole event yet.
    buffer: String,
    /// Frames of whole events not taken yet.
    frames: VecDeque<Frame>,
    /// The frames taken so far end an event: the client has taken events whole.
    pub between_events: bool,
    /// The id of the last event whose frames were all taken, as `EventSource` keeps it.
    pub last_id: Option<String>,
}

/// A frame of an event, the last of which carries the event's id.
struct Frame {
    frame: Value,
    ends: bool,
    id: Option<String>,
}

impl Hub {
    /// A ticket for a stream, for `token`: the status and the body.
    pub async fn sse_ticket(&self, token: &str) -> (u16, String) {
        let bearer = format!("Bearer {token}");
        self.request("POST", "/sse/ticket", &[("Authorization", &bearer)], "")
            .await
    }

    /// Opens a stream with a new ticket, reopened from `last_id` when given.
    pub async fn sse(&self, token: &str, last_id: Option<&str>) -> Sse {
        match self.try_sse(token, last_id).await {
            Ok(sse) => sse,
            Err((status, body)) => panic!("the stream was refused {status}: {body}"),
        }
    }

    pub async fn try_sse(&self, token: &str, last_id: Option<&str>) -> Result<Sse, (u16, String)> {
        let (status, body) = self.sse_ticket(token).await;
        assert_eq!(status, 200, "{body}");
        let ticket: Value = serde_json::from_str(&body).unwrap();
        let ticket = ticket["ticket"].as_str().unwrap();
        self.sse_with_ticket(token, ticket, last_id).await
    }

    pub async fn sse_with_ticket(
        &self,
        token: &str,
        ticket: &str,
        last_id: Option<&str>,
    ) -> Result<Sse, (u16, String)> {
        Sse::open(format!("http://{}", self.addr), token, ticket, last_id).await
    }
}

impl Sse {
    /// Opens a stream at `base` (the hub, or a proxy in front of it) with a new ticket
    /// taken there.
    pub async fn via(base: &str, token: &str) -> Sse {
        let response = reqwest::Client::new()
            .post(format!("{base}/sse/ticket"))
            .bearer_auth(token)
            .send()
            .await
            .expect("a ticket");
        assert_eq!(response.status(), 200);
        let ticket: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        let ticket = ticket["ticket"].as_str().unwrap();
        match Sse::open(base.to_string(), token, ticket, None).await {
            Ok(sse) => sse,
            Err((status, body)) => panic!("the stream was refused {status}: {body}"),
        }
    }

    async fn open(
        base: String,
        token: &str,
        ticket: &str,
        last_id: Option<&str>,
    ) -> Result<Sse, (u16, String)> {
        let http = reqwest::Client::new();
        let mut request = http.get(format!("{base}/sse?ticket={ticket}"));
        if let Some(id) = last_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = tokio::time::timeout(PATIENCE, request.send())
            .await
            .expect("the stream's headers in time")
            .expect("the stream's request");
        let status = response.status().as_u16();
        if status != 200 {
            return Err((status, response.text().await.unwrap_or_default()));
        }
        let mut sse = Sse {
            base,
            token: token.to_string(),
            http,
            stream: String::new(),
            headers: response.headers().clone(),
            response,
            buffer: String::new(),
            frames: VecDeque::new(),
            between_events: true,
            last_id: last_id.map(str::to_string),
        };
        let first = sse.recv().await;
        assert_eq!(first["type"], "stream", "{first}");
        sse.stream = first["id"].as_str().unwrap().to_string();
        Ok(sse)
    }

    /// POSTs `body` (a frame or an array of them) for the stream with `token`: the status
    /// and the body.
    pub async fn post_as(&self, token: &str, stream: &str, body: &str) -> (u16, String) {
        let response = self
            .http
            .post(format!("{}/sse/{stream}", self.base))
            .bearer_auth(token)
            .body(body.to_string())
            .send()
            .await
            .expect("a POST");
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    }

    /// Sends a request; the hub answers on the stream.
    pub async fn send(&self, frame: Value) {
        let (status, body) = self
            .post_as(&self.token, &self.stream, &frame.to_string())
            .await;
        assert_eq!(status, 202, "{body}");
    }

    pub async fn call(&mut self, frame: Value) -> Value {
        self.send(frame).await;
        self.recv().await
    }

    /// The next frame; `None` when the stream ended.
    pub async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(Frame { frame, ends, id }) = self.frames.pop_front() {
                self.between_events = ends;
                if ends && id.is_some() {
                    self.last_id = id;
                }
                return Some(frame);
            }
            let chunk = tokio::time::timeout(PATIENCE, self.response.chunk())
                .await
                .expect("no event from the hub in time");
            match chunk {
                Ok(Some(bytes)) => self.buffer.push_str(std::str::from_utf8(&bytes).unwrap()),
                Ok(None) | Err(_) => return None,
            }
            while let Some(end) = self.buffer.find("\n\n") {
                let event: String = self.buffer.drain(..end + 2).collect();
                self.take_event(&event);
            }
        }
    }

    fn take_event(&mut self, event: &str) {
        let mut frames = Vec::new();
        let mut id = None;
        for line in event.lines() {
            if let Some(data) = line.strip_prefix("data: ") {
                frames.push(serde_json::from_str::<Value>(data).unwrap());
            } else if let Some(value) = line.strip_prefix("id: ") {
                id = Some(value.to_string());
            } else {
                assert!(line.is_empty() || line.starts_with(':'), "{line:?}");
            }
        }
        let count = frames.len();
        for (i, frame) in frames.into_iter().enumerate() {
            let ends = i + 1 == count;
            let id = id.clone().filter(|_| ends);
            self.frames.push_back(Frame { frame, ends, id });
        }
    }

    pub async fn recv(&mut self) -> Value {
        self.next().await.expect("the stream ended")
    }

    pub async fn subscribe_from(&mut self, topic: &str, from: Value) -> Value {
        let reply = self
            .call(
                serde_json::json!({"type": "subscribe", "id": "sub", "topic": topic, "from": from}),
            )
            .await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
        reply
    }

    /// The close event, skipping frames before it; the stream must end after it.
    pub async fn closed(&mut self) -> (i64, String) {
        loop {
            let frame = self.recv().await;
            if frame["type"] == "close" {
                let reason = frame["reason"].as_str().unwrap().to_string();
                assert_eq!(self.next().await, None, "the stream ends after its close");
                return (frame["code"].as_i64().unwrap(), reason);
            }
        }
    }
}
