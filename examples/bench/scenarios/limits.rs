//! What issue 42's budgets cost the paths they do not limit: fan-out bursts and acked
//! ingest through the same hub with its default budgets and with every request type's
//! budget set too high to matter (`--request-rates`, each type at 1,000,000 a second), in
//! the same run, rounds alternating.

use std::path::Path;

use crate::Args;
use crate::clients::spawn_counters;
use crate::kafka::Broker;
use crate::load::{BURST, ROUNDS, burst_rate, kafka_burst};
use crate::report::median_of;
use crate::scenarios::ingest::publish_run;
use crate::servers::Server;

/// Every request type's budget, far past anything the load sends.
const LIFTED: &str = "publish=1000000,signal=1000000,subscribe=1000000,history=1000000,commit=1000000,presence=1000000,online=1000000,auth=1000000,ping=1000000,invalid=1000000";

/// One topic per hub, so that each hub's consumer only works while it is measured.
pub const LIMITS_TOPICS: [&str; 2] = ["bench.limits-default", "bench.limits-lifted"];

pub async fn limits(binary: &Path, kafka: &Broker, work: &Path, args: &Args) {
    let cap = args.subscribers.max(args.publishers) + 10;
    let default = Server::hub(binary, &kafka.addr, work, cap, "limits-default", &[]).await;
    let lifted = Server::hub(
        binary,
        &kafka.addr,
        work,
        cap,
        "limits-lifted",
        &["--request-rates", LIFTED],
    )
    .await;
    let hubs = [("default budgets", &default), ("budgets lifted", &lifted)];
    println!(
        "the same hub with its default budgets and with --request-rates {LIFTED} (both with the bench's --publish-rate 1000000)"
    );

    let n = args.subscribers;
    let bursts = args.records.div_ceil(BURST * ROUNDS);
    let mut readers = Vec::new();
    for ((_, hub), topic) in hubs.iter().zip(LIMITS_TOPICS) {
        readers.push(spawn_counters(hub.subscribers(topic, n).await));
    }
    let producer = kafka.producer(&[]);
    let routes: Vec<_> = hubs
        .iter()
        .zip(LIMITS_TOPICS)
        .map(|((_, hub), topic)| hub.route(topic))
        .collect();
    for (route, readers) in routes.iter().zip(&readers) {
        kafka_burst(&producer, route).await;
        readers.wait_for(n * BURST).await;
    }
    let (mut rate_ratio, mut cpu_ratio) = (Vec::new(), Vec::new());
    for round in 1..=ROUNDS {
        let mut measured = Vec::new();
        for (((label, hub), route), readers) in hubs.iter().zip(&routes).zip(&readers) {
            println!("{label}:");
            let (rate, cpu) = burst_rate(hub, readers, round, bursts, async || {
                kafka_burst(&producer, route).await
            })
            .await;
            measured.push((rate, rate / cpu));
        }
        rate_ratio.push(measured[0].0 / measured[1].0);
        cpu_ratio.push(measured[0].1 / measured[1].1);
    }
    drop(readers);
    println!(
        "fan-out bursts, deliveries/s: default / lifted = {}",
        median_of(rate_ratio)
    );
    println!(
        "fan-out bursts, deliveries per CPU-second: default / lifted = {}",
        median_of(cpu_ratio)
    );
    default.wait_idle().await;
    lifted.wait_idle().await;

    let (mut rate_ratio, mut per_publish) = (Vec::new(), Vec::new());
    for round in 1..=ROUNDS {
        let mut measured = Vec::new();
        for (label, hub) in hubs {
            println!("round {round}, {label}:");
            let (rate, cpu) = publish_run(hub, args, false).await;
            measured.push((rate, cpu / rate * 1e6));
            hub.wait_idle().await;
        }
        println!(
            "  core time per publish: default {:.1} us, lifted {:.1} us",
            measured[0].1, measured[1].1
        );
        rate_ratio.push(measured[0].0 / measured[1].0);
        per_publish.push(measured[0].1 / measured[1].1);
    }
    println!(
        "ingest, acked publishes/s: default / lifted = {}",
        median_of(rate_ratio)
    );
    println!(
        "ingest, core time per publish: default / lifted = {}",
        median_of(per_publish)
    );
}
