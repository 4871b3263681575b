//! One module per scenario, each named as `--scenarios` names it.

pub mod fanout;
pub mod fleet;
pub mod flood;
pub mod heartbeat;
pub mod history;
pub mod http;
pub mod idle;
pub mod ingest;
pub mod latency;
pub mod limits;
pub mod once;
pub mod presence;
pub mod push;
pub mod room;
pub mod slow;
pub mod sse;
pub mod storm;

pub use fanout::fanout;
pub use fleet::fleet;
pub use flood::flood;
pub use heartbeat::heartbeat;
pub use history::history;
pub use http::http;
pub use idle::idle;
pub use ingest::ingest;
pub use latency::latency;
pub use limits::limits;
pub use once::once;
pub use presence::presence;
pub use push::push;
pub use room::room;
pub use slow::slow;
pub use sse::sse;
pub use storm::storm;
