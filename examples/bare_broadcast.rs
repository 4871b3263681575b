//! The bare reference for `scripts/bench`: an axum WebSocket server that relays every text
//! frame it receives to every other socket, and answers a publish with an ack of the hub's
//! size, with nothing else: no Kafka, no tokens, no parsing. It fans out the way the hub
//! does (a bounded queue per socket filled without waiting, frames shared rather than
//! copied, many frames written per flush, the same buffer sizes), so hub figures divided by
//! its figures say what the hub costs beyond what any WebSocket server pays.
//!
//! Argument: the address to listen on.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::State;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use wskafka::{READ_BUFFER, WRITE_BUFFER};

/// Frames taken from the queue before one flush.
const WRITE_BATCH: usize = 64;
/// The hub's default `WSKAFKA_SEND_QUEUE`.
const SEND_QUEUE: usize = 1024;
/// A frame starting with this is answered, not relayed: the ingest scenario's publishes.
const PUBLISH: &str = r#"{"type":"publish""#;
/// As long as the hub's ack to the ingest scenario's publishes.
const ACK: &str =
    r#"{"type":"ack","id":100000,"topic":"bench.ingest","partition":0,"offset":1000000}"#;

#[derive(Default)]
struct Room {
    next: AtomicU64,
    sockets: RwLock<HashMap<u64, mpsc::Sender<Utf8Bytes>>>,
}

#[tokio::main]
async fn main() {
    let listen = std::env::args().nth(1).expect("the address to listen on");
    let app = Router::new()
        .route("/ws", get(upgrade))
        .with_state(Arc::new(Room::default()));
    let listener = tokio::net::TcpListener::bind(&listen).await.unwrap();
    axum::serve(listener, app).await.unwrap();
}

async fn upgrade(State(room): State<Arc<Room>>, upgrade: WebSocketUpgrade) -> Response {
    upgrade
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .on_upgrade(move |socket| run(room, socket))
}

async fn run(room: Arc<Room>, socket: WebSocket) {
    let id = room.next.fetch_add(1, Ordering::Relaxed);
    let (queue, mut frames) = mpsc::channel(SEND_QUEUE);
    room.sockets.write().unwrap().insert(id, queue.clone());
    let (mut sink, mut stream) = socket.split();
    let writer = async {
        let mut batch = Vec::with_capacity(WRITE_BATCH);
        while frames.recv_many(&mut batch, WRITE_BATCH).await > 0 {
            for frame in batch.drain(..) {
                sink.feed(Message::Text(frame)).await?;
            }
            sink.flush().await?;
        }
        Ok::<_, axum::Error>(())
    };
    let reader = async {
        while let Some(Ok(message)) = stream.next().await {
            if let Message::Text(frame) = message {
                if frame.starts_with(PUBLISH) {
                    let _ = queue.try_send(Utf8Bytes::from_static(ACK));
                    continue;
                }
                for (other, queue) in room.sockets.read().unwrap().iter() {
                    if *other != id {
                        // A full queue drops the frame, as the hub would drop the socket.
                        let _ = queue.try_send(frame.clone());
                    }
                }
            }
        }
    };
    tokio::select! {
        _ = writer => {}
        _ = reader => {}
    }
    room.sockets.write().unwrap().remove(&id);
}
