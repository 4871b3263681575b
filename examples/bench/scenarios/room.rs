//! The large room: one record at a time to many subscribers, timed to the last delivery.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::SinkExt;
use hdrhistogram::Histogram;
use tokio_tungstenite::tungstenite::Message;

use crate::clients::next_text;
use crate::kafka::{Broker, next_stamp, produce, warm_up};
use crate::records::{message_frame, payload, stamps};
use crate::report::{Usage, histogram, print_hub_side, print_latency, report_client};
use crate::servers::Servers;
use crate::{Socket, now_us};

/// One record at a time to `size` subscribers, first through the bare server, then through
/// the hub; the figure is how long the last subscriber waits for each record.
pub async fn room(servers: &Servers, kafka: &Broker, size: usize, records: usize) {
    let (hub, bare, centrifugo) = (&servers.hub, &servers.bare, servers.centrifugo());
    let topic = "bench.room";
    let readers = bare.sockets(size).await;
    let mut publisher = bare.open(&bare.ws_url("publisher")).await;
    let (client, server) = (Usage::of_self(), bare.usage());
    let bare_last = last_deliveries(readers, records, async |i| {
        let frame = message_frame(topic, i, payload(now_us(), i));
        publisher.send(Message::text(frame)).await.unwrap();
    })
    .await;
    println!("{records} records, one at a time, to {size} subscribers");
    println!(
        "  bare server CPU {:.0}%",
        bare.usage().cpu_since(&server) * 100.0
    );
    report_client(&client);
    print_latency("bare axum, last delivery of each record", &bare_last);
    drop(publisher);

    let readers = hub.subscribers(topic, size).await;
    let plain = kafka.consumer_at_end();
    let producer = kafka.producer(&[]);
    let route = hub.route(topic);
    warm_up(&producer, &route, &plain).await;
    let (client, server) = (Usage::of_self(), hub.usage());
    let written_before = hub.delivery_buckets().await;
    let mut plain_latency = histogram();
    let hub_last = last_deliveries(readers, records, async |i| {
        let ack = produce(&producer, &route, payload(now_us(), i)).await;
        ack.await.unwrap().expect("the broker took the record");
        let (sent, _) = next_stamp(&plain).await;
        plain_latency.record(now_us() - sent).unwrap();
    })
    .await;
    println!("  hub CPU {:.0}%", hub.usage().cpu_since(&server) * 100.0);
    report_client(&client);
    print_hub_side(hub, &written_before).await;
    print_latency("hub, last delivery of each record", &hub_last);
    print_latency("plain rdkafka produce to consume", &plain_latency);
    hub.wait_idle().await;

    let readers = centrifugo.subscribers(topic, size).await;
    let route = centrifugo.route(topic);
    let (client, server) = (Usage::of_self(), centrifugo.usage());
    let centrifugo_last = last_deliveries(readers, records, async |i| {
        let ack = produce(&producer, &route, payload(now_us(), i)).await;
        ack.await.unwrap().expect("the broker took the record");
    })
    .await;
    println!(
        "  Centrifugo CPU {:.0}%",
        centrifugo.usage().cpu_since(&server) * 100.0
    );
    report_client(&client);
    print_latency("Centrifugo, last delivery of each record", &centrifugo_last);
    let p99 = |h: &Histogram<u64>| h.value_at_quantile(0.99) as f64;
    println!(
        "room: hub p99 / bare p99 = {:.2} (target: hub last delivery p99 <= 60 ms)",
        p99(&hub_last) / p99(&bare_last)
    );
    println!(
        "room: last delivery p99 hub / Centrifugo = {:.2} (target: <= 1)",
        p99(&hub_last) / p99(&centrifugo_last)
    );
}

/// Time between the room's records.
const GAP: Duration = Duration::from_millis(200);

/// Calls `send(i)` for each of `records` records, 200 ms apart so that each one's fan-out is
/// measured alone and returns, per record, how long after its
/// send time the last of `readers` had it.
pub async fn last_deliveries(
    readers: Vec<Socket>,
    records: usize,
    mut send: impl AsyncFnMut(usize),
) -> Histogram<u64> {
    // The latest arrival of each record, in µs after its send time.
    let last: Arc<Vec<AtomicU64>> = Arc::new((0..records).map(|_| AtomicU64::new(0)).collect());
    let tasks: Vec<_> = readers
        .into_iter()
        .map(|mut socket| {
            let last = last.clone();
            tokio::spawn(async move {
                let mut seen = 0;
                let deadline = tokio::time::Instant::now()
                    + Duration::from_secs(60)
                    + GAP * 2 * records as u32;
                while seen < records {
                    let Ok(Some(text)) =
                        tokio::time::timeout_at(deadline, next_text(&mut socket)).await
                    else {
                        panic!("a subscriber of the room lost its socket or its records");
                    };
                    for (sent, i) in stamps(&text).filter(|(_, i)| *i < records) {
                        last[i].fetch_max(now_us() - sent, Ordering::Relaxed);
                        seen += 1;
                    }
                }
            })
        })
        .collect();
    for i in 0..records {
        send(i).await;
        tokio::time::sleep(GAP).await;
    }
    for task in tasks {
        task.await.unwrap();
    }
    let mut last_delivery = histogram();
    for l in last.iter() {
        last_delivery.record(l.load(Ordering::Relaxed)).unwrap();
    }
    last_delivery
}
