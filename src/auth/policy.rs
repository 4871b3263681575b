//! Who may do what with which topic and key: the one decision behind publish, subscribe,
//! history and commit.
//!
//! A topic is allowed when the hub exposes it (`WSKAFKA_TOPICS`), it is neither Kafka's own
//! nor closed (`WSKAFKA_CLOSED_TOPICS`), and the token grants the action on it (see `grant`): on the key the request names, or on every key when it names
//! none. The hub's own topics are never written by clients, and its control topic never
//! read. A keyed topic (`WSKAFKA_KEYED_TOPICS`, and per-user topics) takes no publish
//! without a key, since a key is what places a record in its room. On a per-user topic
//! (`WSKAFKA_USER_TOPICS`) a reader gets only the records keyed with its own `sub`, whatever
//! it asks, and publishing needs a grant naming the topic itself, not a glob that happens
//! to cover it.

use crate::auth::Session;
use crate::config::ServeConfig;
use crate::grant::Grant;
use crate::protocol::ErrorCode;
use crate::topic::{any_matches, is_valid_topic};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Publish,
    /// Subscribing, and committing read positions.
    Subscribe,
    /// Reading past records with `history`.
    History,
}

impl Action {
    fn verb(self) -> &'static str {
        match self {
            Action::Publish => "publish to",
            Action::Subscribe => "subscribe to",
            Action::History => "read the history of",
        }
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("invalid topic name {0:?}")]
    InvalidTopic(String),
    #[error("topic {0:?} is Kafka's own or closed to clients: the hub never serves it")]
    Closed(String),
    #[error("not allowed to {} topic {topic:?}{}", action.verb(), key_text(key))]
    NotGranted {
        action: Action,
        topic: String,
        key: Option<String>,
    },
    #[error("topic {0:?} is per user: only records keyed with your own user id are available")]
    OthersKey(String),
    #[error("topic {0:?} is keyed: a publish needs a `key`")]
    KeyRequired(String),
}

fn key_text(key: &Option<String>) -> String {
    match key {
        Some(key) => format!(" with key {key:?}"),
        None => " (every key)".to_string(),
    }
}

impl Denied {
    pub fn code(&self) -> ErrorCode {
        match self {
            Denied::InvalidTopic(_) | Denied::KeyRequired(_) => ErrorCode::BadRequest,
            Denied::Closed(_) | Denied::NotGranted { .. } | Denied::OthersKey(_) => {
                ErrorCode::Forbidden
            }
        }
    }
}

/// Decides whether the session may `action` on `key` of `topic` (every key, for `None`), and
/// returns the key the request is confined to: the one asked, or on a per-user topic the
/// user's own.
pub fn authorize(
    config: &ServeConfig,
    session: &Session,
    topic: &str,
    key: Option<&str>,
    action: Action,
) -> Result<Option<String>, Denied> {
    if !is_valid_topic(topic) {
        return Err(Denied::InvalidTopic(topic.to_string()));
    }
    // Before anything else: no exposure or grant reaches these.
    if config.is_closed_topic(topic) {
        return Err(Denied::Closed(topic.to_string()));
    }
    let not_granted = || Denied::NotGranted {
        action,
        topic: topic.to_string(),
        key: key.map(str::to_string),
    };
    let internal = match action {
        Action::Publish => config.is_internal_topic(topic),
        Action::Subscribe | Action::History => config.is_hidden_topic(topic),
    };
    if internal || !any_matches(&config.topics.topics, topic) {
        return Err(not_granted());
    }
    let sub = session.sub.as_str();
    let grants = granted(session, action);
    if config.is_user_topic(topic) {
        return match action {
            // Backends write users' notifications; a token that may do so names the topic.
            Action::Publish => {
                let Some(key) = key else {
                    return Err(Denied::KeyRequired(topic.to_string()));
                };
                let literal = grants
                    .iter()
                    .any(|g| g.topic_pattern().is_literal() && g.covers(topic, Some(key), sub));
                if literal {
                    Ok(Some(key.to_string()))
                } else {
                    Err(not_granted())
                }
            }
            Action::Subscribe | Action::History => {
                if key.is_some_and(|k| k != sub) {
                    return Err(Denied::OthersKey(topic.to_string()));
                }
                if grants.iter().any(|g| g.covers(topic, Some(sub), sub)) {
                    Ok(Some(sub.to_string()))
                } else {
                    Err(not_granted())
                }
            }
        };
    }
    if action == Action::Publish && key.is_none() && config.is_keyed_topic(topic) {
        return Err(Denied::KeyRequired(topic.to_string()));
    }
    if grants.iter().any(|g| g.covers(topic, key, sub)) {
        Ok(key.map(str::to_string))
    } else {
        Err(not_granted())
    }
}

/// Whether the session may still hold a subscription made for `key` of `topic` (every
/// key, for `None`).
pub fn still_allows(
    config: &ServeConfig,
    session: &Session,
    topic: &str,
    key: Option<&str>,
) -> bool {
    authorize(config, session, topic, key, Action::Subscribe).is_ok()
}

/// The grants for `action`: reading history is granted by `history` and by `subscribe`.
fn granted(session: &Session, action: Action) -> Vec<&Grant> {
    let grants = &session.grants;
    match action {
        Action::Publish => grants.publish.iter().collect(),
        Action::Subscribe => grants.subscribe.iter().collect(),
        Action::History => grants.subscribe.iter().chain(&grants.history).collect(),
    }
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
                history: Vec::new(),
                online: Vec::new(),
            },
            expires_at: SystemTime::now(),
            token: TokenId::default(),
        }
    }

    fn allows(config: &ServeConfig, session: &Session, topic: &str, action: Action) -> bool {
        authorize(config, session, topic, None, action).is_ok()
    }

    #[test]
    fn a_topic_needs_the_hubs_exposure_and_the_tokens_grant() {
        let config = config(&["--topics", "chat.*"]);
        let everything = session(&["*"], &["*"]);
        assert!(allows(&config, &everything, "chat.lobby", Action::Publish));
        assert!(!allows(&config, &everything, "billing", Action::Subscribe));
        let reader = session(&[], &["chat.*"]);
        assert!(allows(&config, &reader, "chat.lobby", Action::Subscribe));
        assert!(allows(&config, &reader, "chat.lobby", Action::History));
        assert_eq!(
            authorize(&config, &reader, "chat.lobby", None, Action::Publish)
                .unwrap_err()
                .to_string(),
            "not allowed to publish to topic \"chat.lobby\" (every key)"
        );
        assert_eq!(
            authorize(&config, &reader, "chat lobby", None, Action::Subscribe)
                .unwrap_err()
                .code(),
            ErrorCode::BadRequest
        );
    }

    #[test]
    fn the_hubs_own_topics_are_never_written_and_only_presence_events_read() {
        let config = config(&["--topics", "*", "--presence-topic", "presence"]);
        let everything = session(&["*"], &["*"]);
        let own = [
            "wskafka.control",
            "presence",
            "wskafka.roster",
            "wskafka.signals",
        ];
        for topic in own {
            assert!(
                !allows(&config, &everything, topic, Action::Publish),
                "{topic}"
            );
        }
        for action in [Action::Subscribe, Action::History] {
            for topic in ["wskafka.control", "wskafka.roster", "wskafka.signals"] {
                assert!(!allows(&config, &everything, topic, action), "{topic}");
            }
        }
        assert!(allows(&config, &everything, "presence", Action::Subscribe));
    }

    #[test]
    fn kafkas_own_and_closed_topics_are_refused_whatever_exposure_and_grants_say() {
        let config = config(&["--topics", "*", "--closed-topics", "_schemas,connect-*"]);
        let everything = session(&["*"], &["*"]);
        for topic in [
            "__consumer_offsets",
            "__transaction_state",
            "__share_group_state",
            "_schemas",
            "connect-configs",
        ] {
            for action in [Action::Publish, Action::Subscribe, Action::History] {
                assert_eq!(
                    authorize(&config, &everything, topic, None, action),
                    Err(Denied::Closed(topic.into())),
                    "{topic} {action:?}"
                );
            }
        }
        assert!(allows(&config, &everything, "_internal", Action::Publish));
        assert!(allows(&config, &everything, "chat", Action::Subscribe));
    }

    #[test]
    fn key_grants_open_their_rooms_only_and_never_the_whole_topic() {
        let config = config(&["--topics", "chat.*", "--keyed-topics", "chat.rooms"]);
        let member = session(
            &["chat.rooms:lobby"],
            &["chat.rooms:lobby", "chat.rooms:team-*"],
        );
        for (key, action, allowed) in [
            ("lobby", Action::Publish, true),
            ("lobby", Action::Subscribe, true),
            ("team-red", Action::Subscribe, true),
            ("team-red", Action::History, true),
            ("team-red", Action::Publish, false),
            ("staff", Action::Subscribe, false),
            ("staff", Action::History, false),
            ("staff", Action::Publish, false),
        ] {
            let decided = authorize(&config, &member, "chat.rooms", Some(key), action);
            assert_eq!(decided.is_ok(), allowed, "{key} {action:?}: {decided:?}");
            if let Err(denied) = decided {
                assert_eq!(denied.code(), ErrorCode::Forbidden);
            }
        }
        assert!(!allows(&config, &member, "chat.rooms", Action::Subscribe));
        assert_eq!(
            authorize(&config, &member, "chat.rooms", None, Action::Publish),
            Err(Denied::KeyRequired("chat.rooms".into()))
        );
        // Elsewhere a key is a filter the grant may or may not cover.
        let whole = session(&["chat.*"], &["chat.*"]);
        assert!(allows(&config, &whole, "chat.lobby", Action::Publish));
        assert_eq!(
            authorize(
                &config,
                &whole,
                "chat.rooms",
                Some("staff"),
                Action::Subscribe
            ),
            Ok(Some("staff".into()))
        );
    }

    #[test]
    fn history_is_granted_by_subscribe_grants_and_by_its_own() {
        let config = config(&["--topics", "chat.*"]);
        let mut reader = session(&[], &["chat.lobby"]);
        reader.grants.history = vec!["chat.archive".parse().unwrap()];
        assert!(allows(&config, &reader, "chat.lobby", Action::History));
        assert!(allows(&config, &reader, "chat.archive", Action::History));
        assert!(!allows(&config, &reader, "chat.archive", Action::Subscribe));
        assert!(!allows(&config, &reader, "chat.other", Action::History));
    }

    #[test]
    fn per_user_topics_take_literal_publish_grants_and_confine_readers_to_their_key() {
        let config = config(&["--topics", "notes,chat.*", "--user-topics", "notes"]);
        assert!(
            authorize(
                &config,
                &session(&["*"], &[]),
                "notes",
                Some("bob"),
                Action::Publish
            )
            .is_err()
        );
        assert_eq!(
            authorize(
                &config,
                &session(&["notes"], &[]),
                "notes",
                Some("bob"),
                Action::Publish
            ),
            Ok(Some("bob".into()))
        );
        assert_eq!(
            authorize(
                &config,
                &session(&["notes"], &[]),
                "notes",
                None,
                Action::Publish
            ),
            Err(Denied::KeyRequired("notes".into()))
        );

        let alice = session(&[], &["*"]);
        for action in [Action::Subscribe, Action::History] {
            assert_eq!(
                authorize(&config, &alice, "notes", None, action),
                Ok(Some("alice".into()))
            );
            assert_eq!(
                authorize(&config, &alice, "notes", Some("bob"), action),
                Err(Denied::OthersKey("notes".into()))
            );
        }
        // The general rule says the same with a `{sub}` grant.
        let own = session(&[], &["notes:{sub}"]);
        assert_eq!(
            authorize(&config, &own, "notes", None, Action::Subscribe),
            Ok(Some("alice".into()))
        );
        assert!(still_allows(&config, &own, "notes", None));
        assert!(!still_allows(
            &config,
            &session(&[], &["chat.*"]),
            "notes",
            None
        ));
    }
}
