//! Slow consumers: what sockets that stop reading cost the healthy subscribers' latency.

use crate::Args;
use crate::kafka::Broker;
use crate::load::timed_run;
use crate::report::print_latency;
use crate::servers::{Kind, Servers};

pub async fn slow(servers: &Servers, kafka: &Broker, args: &Args) {
    let rate = args.rate;
    let stalled = args.subscribers / 10;
    println!(
        "{rate:.1} records/s to {} subscribers, clean and then with {stalled} not reading",
        args.subscribers
    );
    let mut p99 = Vec::new();
    for server in [&servers.hub, servers.centrifugo()] {
        let name = server.label();
        let topic = "bench.slow";
        let clean = timed_run(server, kafka, topic, args, rate, args.subscribers, 0).await;
        print_latency(
            &format!("{name}, clean run, every subscriber"),
            &clean.socket,
        );
        server.wait_idle().await;
        let lagged = server.metric("wskafka_lagged_closes_total").await;
        let healthy = timed_run(server, kafka, topic, args, rate, args.subscribers, stalled)
            .await
            .socket;
        print_latency(
            &format!("{name}, with stalled sockets, healthy subscribers"),
            &healthy,
        );
        if server.kind == Kind::Hub {
            println!(
                "stalled sockets closed as lagged during the run: {}",
                server.metric("wskafka_lagged_closes_total").await - lagged
            );
        }
        let (clean, healthy) = (
            clean.socket.value_at_quantile(0.99) as f64,
            healthy.value_at_quantile(0.99) as f64,
        );
        println!(
            "{name}: healthy p99 / clean p99 = {:.2} (hub target: <= 1.2)",
            healthy / clean
        );
        p99.push(healthy);
        server.wait_idle().await;
    }
    println!(
        "slow consumers: healthy subscribers' p99 hub / Centrifugo = {:.2} (target: <= 1)",
        p99[0] / p99[1]
    );
}
