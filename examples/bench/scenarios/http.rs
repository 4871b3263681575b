//! Publishing over plain HTTP (`POST /publish`): acked records per second and the hub's core
//! time per record, one record per request and batches, beside socket publishes to the same
//! hub in the same run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::Args;
use crate::report::{Usage, report_client};
use crate::scenarios::ingest::publish_run;
use crate::servers::Server;

const TOPIC: &str = "bench.ingest";
const BATCH: usize = 100;
/// Requests in flight, each on a keep-alive connection of its own: what a backend's
/// connection pool holds, well within the hub's descriptors.
const SINGLE_IN_FLIGHT: usize = 256;
const BATCHES_IN_FLIGHT: usize = 32;

pub async fn http(hub: &Server, args: &Args) {
    let (socket_rate, socket_cpu) = publish_run(hub, args, false).await;
    let (single_rate, single_cpu) = post_run(hub, args, SINGLE_IN_FLIGHT, 1).await;
    let (batch_rate, batch_cpu) = post_run(hub, args, BATCHES_IN_FLIGHT, BATCH).await;
    let us = |cpu: f64, rate: f64| cpu / rate * 1e6;
    println!(
        "core time per record: sockets {:.1} us, HTTP one per request {:.1} us, HTTP batches of {BATCH} {:.1} us",
        us(socket_cpu, socket_rate),
        us(single_cpu, single_rate),
        us(batch_cpu, batch_rate)
    );
    println!(
        "HTTP / socket publishes: one per request {:.2}, batches of {BATCH} {:.2}",
        single_rate / socket_rate,
        batch_rate / socket_rate
    );
}

/// `requests` requests in flight for `--seconds`, each of `batch` records (a lone record
/// when 1); returns the acked records per second and the hub's share of its core.
async fn post_run(hub: &Server, args: &Args, requests: usize, batch: usize) -> (f64, f64) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(requests)
        .build()
        .unwrap();
    let url = format!("http://{}/publish", hub.addr);
    let auth = format!("Bearer {}", Server::token("http"));
    let record = |n: u64| format!(r#"{{"topic":"{TOPIC}","payload":{{"n":{n}}}}}"#);
    let body = |n: u64| match batch {
        1 => record(n),
        _ => format!(
            "[{}]",
            (0..batch as u64)
                .map(|i| record(n + i))
                .collect::<Vec<_>>()
                .join(",")
        ),
    };
    let acked = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let duration = Duration::from_secs(args.seconds);
    let deadline = tokio::time::Instant::now() + duration;
    let (load, before) = (Usage::of_self(), hub.usage());
    let tasks: Vec<_> = (0..requests as u64)
        .map(|worker| {
            let (client, url, auth) = (client.clone(), url.clone(), auth.clone());
            let (acked, errors) = (acked.clone(), errors.clone());
            let body = body(worker * 1_000_000);
            tokio::spawn(async move {
                while tokio::time::Instant::now() < deadline {
                    let sent = client
                        .post(&url)
                        .header("Authorization", &auth)
                        .header("Content-Type", "application/json")
                        .body(body.clone())
                        .send()
                        .await;
                    let text = match sent {
                        Ok(response) => response.text().await.unwrap_or_default(),
                        Err(_) => String::new(),
                    };
                    let acks = text.matches(r#""type":"ack""#).count() as u64;
                    acked.fetch_add(acks, Ordering::Relaxed);
                    errors.fetch_add(batch as u64 - acks.min(batch as u64), Ordering::Relaxed);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let rate = acked.load(Ordering::Relaxed) as f64 / duration.as_secs_f64();
    let cpu = hub.usage().cpu_since(&before);
    println!(
        "HTTP, {batch} record(s) per request, {requests} requests in flight: {rate:.0} acked records/s ({} errors), hub CPU {:.0}%",
        errors.load(Ordering::Relaxed),
        cpu * 100.0
    );
    report_client(&load);
    (rate, cpu)
}
