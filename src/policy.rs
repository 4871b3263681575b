//! Who may do what with which topic: the one decision behind publish, subscribe and commit.
//!
//! A topic is allowed when the hub exposes it (`WSKAFKA_TOPICS`) and the token grants the
//! action on it. The hub's own topics are never written by clients, and its control topic
//! never read. On a per-user topic (`WSKAFKA_USER_TOPICS`) a subscriber reads only records
//! keyed with its own `sub`, and publishing needs a grant naming the topic itself, not a
//! glob that happens to cover it.

use crate::auth::Session;
use crate::config::ServeConfig;
use crate::protocol::{ErrorCode, FilterSpec};
use crate::registry::Filter;
use crate::topic::{any_matches, is_valid_topic};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Publish,
    /// Subscribing, and committing read positions.
    Subscribe,
}

impl Action {
    fn verb(self) -> &'static str {
        match self {
            Action::Publish => "publish to",
            Action::Subscribe => "subscribe to",
        }
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("invalid topic name {0:?}")]
    InvalidTopic(String),
    #[error("not allowed to {} topic {topic:?}", action.verb())]
    NotGranted { action: Action, topic: String },
    #[error("topic {0:?} is per user: only records keyed with your own user id are available")]
    OthersKey(String),
}

impl Denied {
    pub fn code(&self) -> ErrorCode {
        match self {
            Denied::InvalidTopic(_) => ErrorCode::BadRequest,
            Denied::NotGranted { .. } | Denied::OthersKey(_) => ErrorCode::Forbidden,
        }
    }
}

pub fn authorize(
    config: &ServeConfig,
    session: &Session,
    topic: &str,
    action: Action,
) -> Result<(), Denied> {
    if !is_valid_topic(topic) {
        return Err(Denied::InvalidTopic(topic.to_string()));
    }
    if allows(config, session, topic, action) {
        Ok(())
    } else {
        Err(Denied::NotGranted {
            action,
            topic: topic.to_string(),
        })
    }
}

/// `authorize` for a topic known to be a valid name.
pub fn allows(config: &ServeConfig, session: &Session, topic: &str, action: Action) -> bool {
    let internal = match action {
        Action::Publish => config.is_internal_topic(topic),
        Action::Subscribe => topic == config.control_topic,
    };
    if internal || !any_matches(&config.topics, topic) {
        return false;
    }
    match action {
        Action::Publish if config.is_user_topic(topic) => session.may_publish_literally(topic),
        Action::Publish => session.may_publish(topic),
        Action::Subscribe => session.may_subscribe(topic),
    }
}

/// The filter a subscription gets: the client's, and on a per-user topic the user's own
/// key, which the client cannot widen.
pub fn filter_for(
    config: &ServeConfig,
    session: &Session,
    topic: &str,
    spec: FilterSpec,
) -> Result<Filter, Denied> {
    let mut key = spec.key.map(|k| k.into_bytes().into_boxed_slice());
    if config.is_user_topic(topic) {
        let own = session.sub.as_bytes();
        if key.as_deref().is_some_and(|k| k != own) {
            return Err(Denied::OthersKey(topic.to_string()));
        }
        key = Some(own.into());
    }
    Ok(Filter {
        key,
        headers: spec.headers.into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use clap::Parser as _;

    use super::*;
    use crate::auth::{Grants, TokenId};
    use crate::config::{Cli, Command};

    fn config(extra: &[&str]) -> ServeConfig {
        let args = [&["wskafka", "serve", "--jwt-secret", "s"], extra].concat();
        match Cli::try_parse_from(args).unwrap().command {
            Command::Serve(config) => *config,
            Command::Token(_) => unreachable!(),
        }
    }

    fn session(publish: &[&str], subscribe: &[&str]) -> Session {
        let parse = |globs: &[&str]| globs.iter().map(|g| g.parse().unwrap()).collect();
        Session {
            sub: "alice".into(),
            grants: Grants {
                publish: parse(publish),
                subscribe: parse(subscribe),
            },
            expires_at: SystemTime::now(),
            token: TokenId::default(),
        }
    }

    #[test]
    fn a_topic_needs_the_hubs_exposure_and_the_tokens_grant() {
        let config = config(&["--topics", "chat.*"]);
        let everything = session(&["*"], &["*"]);
        assert_eq!(
            authorize(&config, &everything, "chat.lobby", Action::Publish),
            Ok(())
        );
        assert!(!allows(&config, &everything, "billing", Action::Subscribe));
        let reader = session(&[], &["chat.*"]);
        assert!(allows(&config, &reader, "chat.lobby", Action::Subscribe));
        assert_eq!(
            authorize(&config, &reader, "chat.lobby", Action::Publish)
                .unwrap_err()
                .to_string(),
            "not allowed to publish to topic \"chat.lobby\""
        );
        assert_eq!(
            authorize(&config, &reader, "chat lobby", Action::Subscribe)
                .unwrap_err()
                .code(),
            ErrorCode::BadRequest
        );
    }

    #[test]
    fn the_hubs_own_topics_are_never_written_and_its_control_topic_never_read() {
        let config = config(&["--topics", "*", "--presence-topic", "presence"]);
        let everything = session(&["*"], &["*"]);
        for own in ["wskafka.control", "presence"] {
            assert!(!allows(&config, &everything, own, Action::Publish), "{own}");
        }
        assert!(!allows(
            &config,
            &everything,
            "wskafka.control",
            Action::Subscribe
        ));
        assert!(allows(&config, &everything, "presence", Action::Subscribe));
    }

    #[test]
    fn per_user_topics_take_literal_publish_grants_and_filter_on_the_users_key() {
        let config = config(&["--topics", "notes,chat.*", "--user-topics", "notes"]);
        assert!(!allows(
            &config,
            &session(&["*"], &[]),
            "notes",
            Action::Publish
        ));
        assert!(allows(
            &config,
            &session(&["notes"], &[]),
            "notes",
            Action::Publish
        ));

        let alice = session(&[], &["*"]);
        let own = filter_for(&config, &alice, "notes", FilterSpec::default()).unwrap();
        assert_eq!(own.key.as_deref(), Some(b"alice".as_slice()));
        let others = FilterSpec {
            key: Some("bob".into()),
            ..FilterSpec::default()
        };
        assert_eq!(
            filter_for(&config, &alice, "notes", others.clone()),
            Err(Denied::OthersKey("notes".into()))
        );
        // Elsewhere the client's filter stands as given.
        let filter = filter_for(&config, &alice, "chat.lobby", others).unwrap();
        assert_eq!(filter.key.as_deref(), Some(b"bob".as_slice()));
    }
}
