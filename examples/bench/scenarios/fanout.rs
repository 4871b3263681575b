//! Fan-out: bursts to many subscribers (deliveries per second and per CPU-second, hub
//! against the bare server and Centrifugo), then a paced stream at the target rate.

use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

use crate::clients::spawn_counters;
use crate::kafka::Broker;
use crate::load::{BURST, ROUNDS, burst_rate, kafka_burst, paced_bare, timed_run};
use crate::records::{message_frame, payload};
use crate::report::{median_of, print_latency};
use crate::servers::Servers;
use crate::{Args, now_us};

/// Records go out in bursts that fit the per-socket queues (which both servers have), each
/// burst sent as fast as possible and the next one only once every socket had the last:
/// the figure is how fast a server empties full queues onto many sockets.
pub async fn fanout(servers: &Servers, kafka: &Broker, args: &Args) {
    let (hub, bare, centrifugo) = (&servers.hub, &servers.bare, servers.centrifugo());
    let n = args.subscribers;
    let bursts = args.records.div_ceil(BURST * ROUNDS);
    let topic = "bench.fanout";

    // The bare server gets one more socket, which publishes frames shaped like the hub's
    // messages. Every server's readers stay open and the rounds alternate, so that a machine
    // slowing down over the scenario weighs on every side of every ratio.
    let bare_readers = spawn_counters(bare.sockets(n).await);
    let mut publisher = bare.open(&bare.ws_url("publisher")).await;
    let hub_readers = spawn_counters(hub.subscribers(topic, n).await);
    let centrifugo_readers = spawn_counters(centrifugo.subscribers(topic, n).await);
    let producer = kafka.producer(&[]);
    let (hub_route, centrifugo_route) = (hub.route(topic), centrifugo.route(topic));
    // A burst through each Kafka path before anything is timed.
    for (route, readers) in [
        (&hub_route, &hub_readers),
        (&centrifugo_route, &centrifugo_readers),
    ] {
        kafka_burst(&producer, route).await;
        readers.wait_for(n * BURST).await;
    }
    let (mut to_bare, mut to_centrifugo, mut per_cpu) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=ROUNDS {
        let (bare_rate, _) = burst_rate(bare, &bare_readers, round, bursts, async || {
            for i in 0..BURST {
                let frame = message_frame(topic, i, payload(now_us(), i));
                publisher.feed(Message::text(frame)).await.unwrap();
            }
            publisher.flush().await.unwrap();
        })
        .await;
        let (hub_rate, hub_cpu) = burst_rate(hub, &hub_readers, round, bursts, async || {
            kafka_burst(&producer, &hub_route).await
        })
        .await;
        let (centrifugo_rate, centrifugo_cpu) =
            burst_rate(centrifugo, &centrifugo_readers, round, bursts, async || {
                kafka_burst(&producer, &centrifugo_route).await
            })
            .await;
        to_bare.push(hub_rate / bare_rate);
        to_centrifugo.push(hub_rate / centrifugo_rate);
        per_cpu.push((hub_rate / hub_cpu) / (centrifugo_rate / centrifugo_cpu));
    }
    drop((bare_readers, hub_readers, centrifugo_readers, publisher));
    println!(
        "fan-out bursts: hub / bare = {} (target: >= 0.75; bursts >= 1000000/s)",
        median_of(to_bare)
    );
    println!(
        "fan-out bursts: hub / Centrifugo = {}",
        median_of(to_centrifugo)
    );
    println!(
        "fan-out bursts, deliveries per CPU-second: hub / Centrifugo = {} (target: >= 2)",
        median_of(per_cpu)
    );

    // As many sockets, fed a steady stream at the target rate: kept up with means every
    // record reached every socket and the latency did not grow over the run.
    let rate = args.paced_rate;
    let expected = (rate * args.seconds as f64) as u64 * n as u64;
    println!(
        "paced: {rate:.0} records/s to {n} sockets, {:.0} deliveries/s for {} s",
        rate * n as f64,
        args.seconds
    );
    let (bare_latency, bare_cpu) = paced_bare(bare, args, rate).await;
    print_latency("bare axum, publisher socket to subscriber", &bare_latency);
    let mut per_cpu_second = Vec::new();
    for server in [hub, centrifugo] {
        let run = timed_run(server, kafka, topic, args, rate, n, 0).await;
        print_latency(
            &format!("{}, record produced to subscriber", server.label()),
            &run.socket,
        );
        let delivered = run.socket.len();
        let per_cpu = delivered as f64 / (run.cpu * args.seconds as f64);
        println!(
            "{}: delivered {delivered} of {expected} at {:.0}% of its core: {per_cpu:.0} deliveries per CPU-second",
            server.label(),
            run.cpu * 100.0,
        );
        per_cpu_second.push(per_cpu);
    }
    println!(
        "paced fan-out: bare axum delivered {} of {expected} at {:.0}% of its core (target: >= 150000/s)",
        bare_latency.len(),
        bare_cpu * 100.0
    );
    println!(
        "paced fan-out, deliveries per CPU-second: hub / Centrifugo = {:.2} (target: >= 2)",
        per_cpu_second[0] / per_cpu_second[1]
    );
}
