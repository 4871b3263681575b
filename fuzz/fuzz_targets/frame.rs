//! Any text a client can send: parsing never panics, and a publish it accepts carries a
//! payload that is valid JSON, nested no deeper than consumers can read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wskafka::{Request, parse, peek_id};

fuzz_target!(|text: &str| {
    let _ = peek_id(text);
    if let Ok(Request::Publish(publish)) = parse(text) {
        let payload = publish.payload.get();
        let value: serde_json::Value = serde_json::from_str(payload)
            .expect("an accepted payload is JSON within the depth limit");
        drop(value);
    }
});
