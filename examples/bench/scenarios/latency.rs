//! Latency: to one subscriber and to many, at fixed rates and at half of each server's
//! saturation, end to end and as added to a plain consumer's in the same run.

use crate::Args;
use crate::clients::spawn_counters;
use crate::kafka::Broker;
use crate::load::{Run, burst_rate, kafka_burst, paced_bare, timed_run};
use crate::report::print_latency;
use crate::servers::{Server, Servers};

/// To one subscriber, where the server's own path is all it adds, and fanned out to
/// `--subscribers`: first at fixed rates, the same for every server, then at half of each
/// server's own saturation rate, and both at half of the lower one.
pub async fn latency(servers: &Servers, kafka: &Broker, args: &Args) {
    let (hub, bare, centrifugo) = (&servers.hub, &servers.bare, servers.centrifugo());
    let topic = "bench.latency";
    let rate = args.single_rate;
    println!("{rate:.1} records/s to one subscriber");
    let mut runs = Vec::new();
    for server in [hub, centrifugo] {
        let run = timed_run(server, kafka, topic, args, rate, 1, 0).await;
        print_added(server, &run);
        runs.push(run);
    }
    compare_p99(&format!("one subscriber at {rate:.0} records/s"), &runs);

    let (rate, n) = (args.rate, args.subscribers);
    println!("{rate:.1} records/s to {n} subscribers");
    let (bare_latency, bare_cpu) = paced_bare(bare, args, rate).await;
    print_latency("bare axum, publisher socket to subscriber", &bare_latency);
    let mut runs = Vec::new();
    for server in [hub, centrifugo] {
        let run = timed_run(server, kafka, topic, args, rate, n, 0).await;
        println!(
            "server CPU at this rate: {} {:.0}%, bare axum {:.0}%: bare / {0} = {:.2} (the share of the bare server's sustained fan-out it reaches)",
            server.label(),
            run.cpu * 100.0,
            bare_cpu * 100.0,
            bare_cpu / run.cpu
        );
        print_added(server, &run);
        runs.push(run);
    }
    compare_p99(&format!("{n} subscribers at {rate:.0} records/s"), &runs);

    // Each at half of its own saturation, then both at half of the lower one: the first
    // loads the faster server more, the second compares the two under the same load.
    for subscribers in [1, n] {
        let mut p99 = Vec::new();
        let mut lowest = f64::INFINITY;
        for server in [hub, centrifugo] {
            let saturation = saturation(server, kafka, topic, subscribers).await;
            lowest = lowest.min(saturation);
            let rate = saturation / 2.0;
            println!(
                "{}: saturates at {saturation:.0} records/s to {subscribers} subscribers; at half, {rate:.0} records/s:",
                server.label()
            );
            let run = timed_run(server, kafka, topic, args, rate, subscribers, 0).await;
            print_delivered(server, &run, rate, subscribers, args);
            p99.push(run.socket.value_at_quantile(0.99) as f64);
        }
        println!(
            "{subscribers} subscribers at half of each one's saturation: p99 hub / Centrifugo = {:.2} (target: <= 1)",
            p99[0] / p99[1]
        );
        let rate = lowest / 2.0;
        println!(
            "both at {rate:.0} records/s to {subscribers} subscribers, half of the lower saturation:"
        );
        let mut runs = Vec::new();
        for server in [hub, centrifugo] {
            let run = timed_run(server, kafka, topic, args, rate, subscribers, 0).await;
            print_delivered(server, &run, rate, subscribers, args);
            runs.push(run);
        }
        compare_p99(
            &format!("{subscribers} subscribers at {rate:.0} records/s"),
            &runs,
        );
    }
}

/// A run's end-to-end latency and how many of the records sent reached its subscribers: a
/// socket the server closed for falling behind (the hub's `lagged`) stops counting there.
pub fn print_delivered(server: &Server, run: &Run, rate: f64, subscribers: usize, args: &Args) {
    print_latency(&format!("{} end to end", server.label()), &run.socket);
    let sent = (rate * args.seconds as f64) as usize * subscribers;
    println!(
        "{}: delivered {} of {sent} ({:.1}%)",
        server.label(),
        run.socket.len(),
        run.socket.len() as f64 * 100.0 / sent as f64
    );
}

/// The hub's p99 over Centrifugo's, end to end and as added to the plain consumer's in the
/// same run (which takes out what Kafka's own jitter did differently in the two runs).
pub fn compare_p99(what: &str, runs: &[Run]) {
    let [hub, centrifugo] = runs else {
        unreachable!("one run per server")
    };
    let added = |run: &Run| {
        run.added[((run.added.len() as f64 * 0.99) as usize).min(run.added.len() - 1)] as f64
    };
    println!(
        "{what}: p99 hub / Centrifugo = {:.2} end to end, {:.2} added to Kafka's (target: <= 1)",
        hub.socket.value_at_quantile(0.99) as f64
            / centrifugo.socket.value_at_quantile(0.99) as f64,
        added(hub) / added(centrifugo)
    );
}

/// Records per second `server` delivers to each of `subscribers` sockets when records
/// come as fast as it takes them: bursts of `BURST`, each timed until every socket had it.
pub async fn saturation(server: &Server, kafka: &Broker, topic: &str, subscribers: usize) -> f64 {
    let readers = spawn_counters(server.subscribers(topic, subscribers).await);
    let producer = kafka.producer(&[]);
    let route = server.route(topic);
    let (rate, _) = burst_rate(server, &readers, 1, SATURATION_BURSTS, async || {
        kafka_burst(&producer, &route).await
    })
    .await;
    drop(readers);
    server.wait_idle().await;
    rate / subscribers as f64
}

/// Bursts that measure a saturation rate.
pub const SATURATION_BURSTS: usize = 10;

/// End to end, the plain path, and what the hub adds to it: per record and subscriber, its
/// arrival at the socket minus its arrival at the plain consumer, which fetched the same
/// record from the same broker (so a stall of Kafka's own weighs on both sides).
pub fn print_added(server: &Server, run: &Run) {
    let name = server.label();
    print_latency(&format!("{name} end to end"), &run.socket);
    print_latency("plain rdkafka produce to consume", &run.plain);
    let added = |q: f64| {
        let at = ((run.added.len() as f64 * q) as usize).min(run.added.len() - 1);
        run.added[at] as f64 / 1e3
    };
    println!(
        "{name}-added latency: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms (hub target at one subscriber: <= 0.5 ms and <= 3 ms)",
        added(0.5),
        added(0.99),
        added(0.999)
    );
}
