//! Interest-based consumption (issue 37): a hub fetches only the topics its sockets follow,
//! resumes a paused topic at a first subscribe with its live stream starting where the
//! replay ends, and pauses it again after the linger, all without a gap for the sockets of
//! other topics.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::common::*;
use serde_json::json;

/// The gauge of `topic`'s partitions this hub's consumer does not fetch.
fn paused(topic: &str) -> String {
    format!("wskafka_consumer_paused_partitions{{topic=\"{topic}\"}}")
}

/// Reads `count` records on `client` into `received`, each once and in offset order.
async fn read(client: &mut Client, received: &mut Received, count: usize) {
    while received.seqs.len() < count {
        let (position, message) = client.message().await;
        assert!(
            !received.seqs.contains_key(&position),
            "{position:?} delivered twice"
        );
        received.take(position, &message);
    }
}

#[tokio::test]
async fn a_hub_does_not_fetch_a_topic_its_sockets_do_not_follow_until_one_subscribes() {
    let (followed, glob) = fresh_topic("interest", 2).await;
    let other = glob.replace('*', "other");
    create_topic(&other, 3).await;
    let hub = Hub::start(&glob, &[]).await;
    let reader = token("reader", &[], &[&glob]);
    let mut client = hub.connect(&reader).await;
    client.subscribe(&followed).await;
    produce_many(&other, 30).await;
    let produced = produce_many(&followed, 10).await;
    let mut received = Received::default();
    read(&mut client, &mut received, produced.len()).await;

    hub.until_metric(&paused(&other), 3.0).await;
    hub.until_metric(&paused(&followed), 0.0).await;

    // A first subscriber: the topic is fetched from then on, live from the reply's positions.
    let mut newcomer = hub.connect(&reader).await;
    let subscribed = newcomer.subscribe_from(&other, json!("latest")).await;
    let mut live = Received::starting_at(&subscribed);
    assert_eq!(
        live.next.values().sum::<i64>(),
        30,
        "the live stream starts at the end: {subscribed}"
    );
    hub.until_metric(&paused(&other), 0.0).await;
    let after = produce_many(&other, 20).await;
    read(&mut newcomer, &mut live, after.len()).await;
    assert_eq!(live.seqs, after);
}

#[tokio::test]
async fn a_first_subscriber_to_a_paused_topic_gets_its_replay_then_live_and_latest_misses_nothing()
{
    let (topic, glob) = fresh_topic("seam", 2).await;
    let quiet = glob.replace('*', "quiet");
    create_topic(&quiet, 2).await;
    let hub = Hub::start(&glob, &["--send-queue", "10000"]).await;
    hub.until_metric(&paused(&topic), 2.0).await;
    hub.until_metric(&paused(&quiet), 2.0).await;
    let reader = token("reader", &[], &[&glob]);

    // Records appended while nobody here follows the topic come by replay; the rest live.
    let mut produced = produce_many(&topic, 100).await;
    let mut client = hub.connect(&reader).await;
    let from = json!({"offsets": {"0": 0, "1": 0}});
    let producing = tokio::spawn({
        let topic = topic.clone();
        async move { produce_many(&topic, 300).await }
    });
    let subscribed = client.subscribe_from(&topic, from).await;
    let mut received = Received::starting_at(&subscribed);
    produced.extend(producing.await.unwrap());
    read(&mut client, &mut received, produced.len()).await;
    let positions =
        |records: &BTreeMap<(i32, i64), i64>| records.keys().copied().collect::<Vec<_>>();
    assert_eq!(
        positions(&received.seqs),
        positions(&produced),
        "every record once, no gap at the seam"
    );

    // `latest` waits for the end to be known: every record appended after its reply is live.
    produce_many(&quiet, 40).await;
    let mut latest = hub.connect(&reader).await;
    let subscribed = latest.subscribe_from(&quiet, json!("latest")).await;
    let after = produce_many(&quiet, 50).await;
    let mut live = Received::starting_at(&subscribed);
    read(&mut latest, &mut live, after.len()).await;
    assert_eq!(live.seqs, after);
}

#[tokio::test]
async fn a_subscriber_of_one_topic_sees_no_gap_while_another_is_resumed_and_paused() {
    let (steady, glob) = fresh_topic("steady", 2).await;
    let churned = glob.replace('*', "churned");
    create_topic(&churned, 2).await;
    let hub = Hub::start(
        &glob,
        &["--interest-linger", "1s", "--send-queue", "100000"],
    )
    .await;
    let reader = token("reader", &[], &[&glob]);
    let mut client = hub.connect(&reader).await;
    let subscribed = client.subscribe_from(&steady, json!("latest")).await;
    let mut received = Received::starting_at(&subscribed);

    // Records flow into the followed topic all along.
    let done = Arc::new(AtomicBool::new(false));
    let producing = tokio::spawn({
        let (topic, done) = (steady.clone(), done.clone());
        async move {
            let producer = producer();
            let mut produced = BTreeMap::new();
            let mut seq = 0;
            while !done.load(Ordering::Relaxed) {
                let body = json!({"seq": seq}).to_string();
                let at = produce(&producer, &topic, &format!("k{seq}"), body.as_bytes()).await;
                produced.insert(at, seq);
                seq += 1;
            }
            produced
        }
    });
    hub.until_metric(&paused(&churned), 2.0).await;
    for round in 0..3 {
        let mut visitor = hub.connect(&reader).await;
        visitor.subscribe_from(&churned, json!("latest")).await;
        hub.until_metric(&paused(&churned), 0.0).await;
        let producer = producer();
        let body = json!({"seq": round}).to_string();
        produce(&producer, &churned, "k", body.as_bytes()).await;
        visitor.message().await;
        drop(visitor);
        // Paused again a linger after its last subscriber left.
        hub.until_metric(&paused(&churned), 2.0).await;
    }
    done.store(true, Ordering::Relaxed);
    let produced = producing.await.unwrap();
    read(&mut client, &mut received, produced.len()).await;
    assert_eq!(received.seqs, produced);
}
