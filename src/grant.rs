//! What a token grants for one action: topic globs, each optionally narrowed to some keys
//! of the topic.
//!
//! A chat keeps its rooms as the keys of one topic (a topic per room would spend Kafka's
//! cluster-wide budget of partitions), so a room is a key, and access to a room is a grant
//! on that key: `chat.rooms:team-*` grants the keys `team-*` of `chat.rooms`, `chat.*` every
//! key of every topic it covers. In the key part, `{sub}` stands for the token's own user
//! id, matched literally whatever characters it holds: `dm:*{sub}*` grants every
//! conversation whose key names the user, and `notifications:{sub}` a user's own
//! notifications. Keys are matched with the same `*` and `?` as topics, over their bytes.

use std::fmt;
use std::str::FromStr;

use crate::topic::{InvalidPattern, TopicPattern};

/// The placeholder for the token's own `sub` in a key pattern.
pub const SUB: &str = "{sub}";
/// Longest key pattern accepted, in bytes.
const MAX_KEY_PATTERN: usize = 1024;

/// A topic glob and, optionally, the keys of it that are granted.
#[derive(Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct Grant {
    topic: TopicPattern,
    key: Option<KeyPattern>,
}

#[derive(Clone, PartialEq, Eq)]
struct KeyPattern {
    text: Box<str>,
    pieces: Vec<Piece>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece {
    Byte(u8),
    /// Any run of bytes.
    Star,
    /// Exactly one byte.
    One,
    /// The token's `sub`.
    Sub,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidGrant {
    #[error(transparent)]
    Topic(#[from] InvalidPattern),
    #[error("invalid grant {0:?}: the key pattern after `:` is empty or too long")]
    Key(String),
}

impl Grant {
    /// A grant of every key of the topics `topic` covers.
    pub fn topic(topic: TopicPattern) -> Grant {
        Grant { topic, key: None }
    }

    pub fn topic_pattern(&self) -> &TopicPattern {
        &self.topic
    }

    /// Whether it grants every key of the topics it covers.
    pub fn is_whole_topic(&self) -> bool {
        self.key.is_none()
    }

    /// Whether it covers `key` of `topic` for the user `sub`; `None` asks for every key.
    pub fn covers(&self, topic: &str, key: Option<&str>, sub: &str) -> bool {
        if !self.topic.matches(topic) {
            return false;
        }
        match (&self.key, key) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(pattern), Some(key)) => pattern.matches(key.as_bytes(), sub.as_bytes()),
        }
    }
}

impl KeyPattern {
    fn parse(text: &str) -> KeyPattern {
        let bytes = text.as_bytes();
        let mut pieces = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i..].starts_with(SUB.as_bytes()) {
                pieces.push(Piece::Sub);
                i += SUB.len();
                continue;
            }
            pieces.push(match bytes[i] {
                b'*' => Piece::Star,
                b'?' => Piece::One,
                b => Piece::Byte(b),
            });
            i += 1;
        }
        KeyPattern {
            text: text.into(),
            pieces,
        }
    }

    fn matches(&self, key: &[u8], sub: &[u8]) -> bool {
        let mut pieces = Vec::with_capacity(self.pieces.len() + sub.len());
        for &piece in &self.pieces {
            match piece {
                Piece::Sub => pieces.extend(sub.iter().map(|&b| Piece::Byte(b))),
                other => pieces.push(other),
            }
        }
        glob_match(&pieces, key)
    }
}

/// Linear-time wildcard matching: on a mismatch, retry from the last `*` one byte further.
fn glob_match(pattern: &[Piece], key: &[u8]) -> bool {
    let (mut p, mut k) = (0, 0);
    let mut last_star: Option<(usize, usize)> = None;
    while k < key.len() {
        match pattern.get(p) {
            Some(Piece::Star) => {
                last_star = Some((p, k));
                p += 1;
            }
            Some(Piece::One) => {
                p += 1;
                k += 1;
            }
            Some(&Piece::Byte(b)) if b == key[k] => {
                p += 1;
                k += 1;
            }
            _ => match last_star {
                Some((sp, sk)) => {
                    p = sp + 1;
                    k = sk + 1;
                    last_star = Some((sp, sk + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&piece| piece == Piece::Star)
}

impl FromStr for Grant {
    type Err = InvalidGrant;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        // Topic names never hold `:`, so the first one ends the topic pattern.
        let Some((topic, key)) = s.split_once(':') else {
            return Ok(Grant::topic(s.parse()?));
        };
        if key.is_empty() || key.len() > MAX_KEY_PATTERN {
            return Err(InvalidGrant::Key(s.to_string()));
        }
        Ok(Grant {
            topic: topic.parse()?,
            key: Some(KeyPattern::parse(key)),
        })
    }
}

/// A glob over user ids, `{sub}` standing for the token's own: whose online status a token
/// may ask for (`online`).
#[derive(Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserPattern(KeyPattern);

impl UserPattern {
    pub fn matches(&self, user: &str, sub: &str) -> bool {
        self.0.matches(user.as_bytes(), sub.as_bytes())
    }
}

impl TryFrom<String> for UserPattern {
    type Error = InvalidGrant;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        if s.is_empty() || s.len() > MAX_KEY_PATTERN {
            return Err(InvalidGrant::Key(s));
        }
        Ok(UserPattern(KeyPattern::parse(&s)))
    }
}

impl FromStr for UserPattern {
    type Err = InvalidGrant;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.trim().to_string().try_into()
    }
}

impl From<UserPattern> for String {
    fn from(pattern: UserPattern) -> Self {
        pattern.0.text.into()
    }
}

impl fmt::Debug for UserPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0.text, f)
    }
}

impl TryFrom<String> for Grant {
    type Error = InvalidGrant;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Grant> for String {
    fn from(grant: Grant) -> Self {
        grant.to_string()
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            None => write!(f, "{}", self.topic),
            Some(key) => write!(f, "{}:{}", self.topic, key.text),
        }
    }
}

impl fmt::Debug for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.to_string(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(s: &str) -> Grant {
        s.parse().unwrap()
    }

    #[test]
    fn a_topic_grant_covers_every_key_and_none() {
        let g = grant("chat.*");
        assert!(g.is_whole_topic());
        assert!(g.covers("chat.rooms", None, "alice"));
        assert!(g.covers("chat.rooms", Some("staff"), "alice"));
        assert!(!g.covers("billing", None, "alice"));
    }

    #[test]
    fn a_key_grant_covers_its_keys_only_and_never_the_whole_topic() {
        let g = grant("chat.rooms:team-*");
        assert!(!g.is_whole_topic());
        assert!(g.covers("chat.rooms", Some("team-red"), "alice"));
        assert!(!g.covers("chat.rooms", Some("staff"), "alice"));
        assert!(!g.covers("chat.rooms", None, "alice"));
        assert!(!g.covers("chat.other", Some("team-red"), "alice"));
        assert_eq!(g.to_string(), "chat.rooms:team-*");
    }

    #[test]
    fn the_sub_placeholder_is_the_users_id_taken_literally() {
        let own = grant("notifications:{sub}");
        assert!(own.covers("notifications", Some("alice"), "alice"));
        assert!(!own.covers("notifications", Some("bob"), "alice"));
        // A user id with wildcard characters does not turn into a wildcard.
        assert!(!own.covers("notifications", Some("anyone"), "*"));
        assert!(own.covers("notifications", Some("*"), "*"));

        let dm = grant("dm:*{sub}*");
        assert!(dm.covers("dm", Some("alice:bob"), "bob"));
        assert!(dm.covers("dm", Some("bob"), "bob"));
        assert!(!dm.covers("dm", Some("alice:carol"), "bob"));
    }

    #[test]
    fn keys_may_hold_any_text_colons_included() {
        let g = grant("t:a:b?é*");
        assert!(g.covers("t", Some("a:bxé"), "u"));
        // `?` is one byte: a character of several is not one.
        assert!(!g.covers("t", Some("a:b€é!"), "u"));
        assert!(g.covers("t", Some("a:bxéyz"), "u"));
    }

    #[test]
    fn user_patterns_name_users_and_the_tokens_own() {
        let friends = UserPattern::try_from("team-*".to_string()).unwrap();
        assert!(friends.matches("team-red", "alice"));
        assert!(!friends.matches("bob", "alice"));
        let own = UserPattern::try_from("{sub}".to_string()).unwrap();
        assert!(own.matches("alice", "alice") && !own.matches("bob", "alice"));
    }

    #[test]
    fn malformed_grants_are_refused() {
        for bad in [
            "",
            "chat/x",
            "chat:",
            "a b:c",
            &format!("t:{}", "k".repeat(1025)),
        ] {
            assert!(bad.parse::<Grant>().is_err(), "{bad:?}");
        }
    }
}
