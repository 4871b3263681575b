//! Topic globs: the hub's own matcher and the regex handed to librdkafka agree on every
//! topic name, so a client is never allowed a topic the consumer does not read, or the
//! other way round.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wskafka::{TopicPattern, is_valid_topic};

fuzz_target!(|input: &str| {
    let Some((pattern, topic)) = input.split_once('\n') else {
        return;
    };
    let Ok(pattern) = pattern.parse::<TopicPattern>() else {
        return;
    };
    if !is_valid_topic(topic) {
        return;
    }
    let subscription = pattern.kafka_subscription();
    let by_kafka = if pattern.is_literal() {
        subscription == topic
    } else {
        regex::Regex::new(&subscription)
            .expect("a valid pattern makes a valid regex")
            .is_match(topic)
    };
    assert_eq!(pattern.matches(topic), by_kafka, "{pattern:?} vs {topic:?}");
});
