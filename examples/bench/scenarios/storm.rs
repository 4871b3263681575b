//! The reconnect storm: every socket drops at once, reconnects and resumes; how long until
//! each caught up, and records lost or delivered twice.

use std::time::Duration;

use futures_util::{StreamExt, stream};

use crate::clients::{Position, next_text};
use crate::kafka::{Broker, produce};
use crate::load::paced;
use crate::records::{number_after, payload, stamp};
use crate::report::{Usage, histogram, print_latency, report_client};
use crate::servers::{Server, Servers};
use crate::{Args, Socket, now_us};

/// The topic of the reconnect storm. Centrifugo's channel for it is in a namespace with
/// history and recovery; the hub's subscribers resume from offsets.
pub const STORM_TOPIC: &str = "bench.storm";

/// `--subscribers` sockets read `--rate` records/s for `--seconds`; a third of the way in
/// every one of them drops at once, reconnects and resumes where it left off: the hub's
/// from the next offset, Centrifugo's from its history by epoch and offset. Measured: how
/// long after the drop each socket was caught up (it had every record sent so far, then
/// one sent after it resubscribed), and records lost or delivered twice.
pub async fn storm(servers: &Servers, kafka: &Broker, args: &Args) {
    let (n, rate) = (args.subscribers, args.rate);
    let total = (rate * args.seconds as f64) as usize;
    println!(
        "{rate:.1} records/s to {n} subscribers for {} s; after {:.1} s every socket drops at once, reconnects and resumes",
        args.seconds,
        args.seconds as f64 / 3.0
    );
    let mut slowest = Vec::new();
    for server in [&servers.hub, servers.centrifugo()] {
        let producer = kafka.producer(&[]);
        let route = server.route(STORM_TOPIC);
        let mut sockets: Vec<Storm> = stream::iter(0..n)
            .map(|k| async move {
                let user = format!("storm-{k}");
                let position = Position::default();
                let (socket, lines) = server.subscribe(STORM_TOPIC, &user, &position).await;
                let mut storm = Storm {
                    user,
                    socket: Some(socket),
                    position,
                    received: vec![0; total],
                    contiguous: 0,
                    dropped_at: None,
                    resubscribed_at: u64::MAX,
                    caught_up: None,
                };
                storm.take(&lines);
                storm
            })
            .buffer_unordered(64)
            .collect()
            .await;
        // Each socket has a record, so a position, before the stream starts.
        drop(
            produce(&producer, &route, r#"{"warm":true}"#.into())
                .await
                .await,
        );
        for storm in &mut sockets {
            while storm.position.offset.is_none() {
                let socket = storm.socket.as_mut().unwrap();
                let frame = next_text(socket).await.expect("the warm-up record");
                storm.take(&frame.lines().collect::<Vec<_>>());
            }
        }
        let (client, before) = (Usage::of_self(), server.usage());
        let (drop_all, dropped) = tokio::sync::watch::channel(None);
        let deadline =
            tokio::time::Instant::now() + Duration::from_secs_f64(total as f64 / rate + 60.0);
        let sending = paced(rate, total, async |i, sent| {
            if i == total / 3 {
                drop_all.send_replace(Some(now_us()));
            }
            drop(produce(&producer, &route, payload(sent, i)).await);
        });
        let reading = futures_util::future::join_all(
            sockets
                .into_iter()
                .map(|storm| storm.run(server, dropped.clone(), deadline)),
        );
        let ((), sockets) = tokio::join!(sending, reading);
        println!(
            "  {} CPU {:.0}%",
            server.label(),
            server.usage().cpu_since(&before) * 100.0
        );
        report_client(&client);
        let mut caught_up = histogram();
        let (mut lost, mut repeated, mut behind) = (0, 0, 0);
        for storm in &sockets {
            lost += storm.received.iter().filter(|&&c| c == 0).count();
            repeated += storm
                .received
                .iter()
                .map(|&c| usize::from(c).saturating_sub(1))
                .sum::<usize>();
            match storm.caught_up {
                Some(after) => caught_up.record(after.max(1)).unwrap(),
                None => behind += 1,
            }
        }
        print_latency(
            &format!("{}: from the drop until caught up", server.label()),
            &caught_up,
        );
        println!(
            "{}: {lost} records lost, {repeated} delivered twice, {behind} sockets never caught up, of {} ({total} records to each of {n} sockets)",
            server.label(),
            total * n
        );
        slowest.push(caught_up.max() as f64);
        drop(sockets);
        server.wait_idle().await;
    }
    println!(
        "storm: last socket caught up, hub / Centrifugo = {:.2} (target: <= 1, and no loss)",
        slowest[0] / slowest[1]
    );
}

/// One socket of the storm, and what it has had of the stream.
pub struct Storm {
    pub user: String,
    /// None between the drop and the new socket.
    pub socket: Option<Socket>,
    pub position: Position,
    /// Per record index, how many times it arrived.
    pub received: Vec<u8>,
    /// Records `0..contiguous` have all arrived.
    pub contiguous: usize,
    pub dropped_at: Option<u64>,
    pub resubscribed_at: u64,
    /// From the drop until the socket was caught up, in µs.
    pub caught_up: Option<u64>,
}

impl Storm {
    /// Reads until the last record arrives or the deadline passes; when `dropped` says so,
    /// drops the socket and resubscribes from its position.
    pub async fn run(
        mut self,
        server: &Server,
        mut dropped: tokio::sync::watch::Receiver<Option<u64>>,
        deadline: tokio::time::Instant,
    ) -> Storm {
        while self.received.last() == Some(&0) {
            let frame = tokio::select! {
                _ = dropped.changed(), if self.dropped_at.is_none() => None,
                frame = tokio::time::timeout_at(deadline, next_text(self.socket.as_mut().unwrap())) => {
                    match frame {
                        Ok(Some(frame)) => Some(frame),
                        _ => break,
                    }
                }
            };
            match frame {
                Some(frame) => self.take(&frame.lines().collect::<Vec<_>>()),
                None => {
                    self.dropped_at = *dropped.borrow();
                    // The socket closes without a word, as a lost network would.
                    self.socket = None;
                    let (socket, lines) = server
                        .subscribe(STORM_TOPIC, &self.user, &self.position)
                        .await;
                    self.socket = Some(socket);
                    self.resubscribed_at = now_us();
                    self.take(&lines);
                }
            }
        }
        self
    }

    pub fn take<L: AsRef<str>>(&mut self, lines: &[L]) {
        for line in lines.iter().map(AsRef::as_ref) {
            if line.starts_with(r#"{"id":2"#) {
                let reply: serde_json::Value = serde_json::from_str(line).unwrap();
                let subscribed = &reply["subscribe"];
                if let Some(epoch) = subscribed["epoch"].as_str() {
                    self.position.epoch = Some(epoch.to_string());
                }
                continue;
            }
            if !line.starts_with(r#"{"type":"message""#) && !line.starts_with(r#"{"push""#) {
                continue;
            }
            self.position.offset = number_after(line, r#""offset":"#);
            let Some((sent, i)) = stamp(line) else {
                continue;
            };
            let Some(count) = self.received.get_mut(i) else {
                continue;
            };
            *count = count.saturating_add(1);
            while self.received.get(self.contiguous).is_some_and(|&c| c > 0) {
                self.contiguous += 1;
            }
            if let Some(dropped_at) = self.dropped_at
                && self.caught_up.is_none()
                && self.contiguous > i
                && sent >= self.resubscribed_at
            {
                self.caught_up = Some(now_us() - dropped_at);
            }
        }
    }
}
