//! Topic names and the glob patterns that expose them.
//!
//! Patterns only know `*` (any run of characters) and `?` (one character). That small
//! syntax matters: the same pattern is matched here, for every publish and subscribe, and
//! handed to librdkafka as a regex subscription, and both must agree exactly on which topics
//! a pattern covers. Kafka's topic alphabet (`[A-Za-z0-9._-]`) has no other metacharacter
//! to escape than `.`, so the translation is exact.

use std::fmt;
use std::str::FromStr;

/// Kafka refuses longer names.
const MAX_TOPIC_LEN: usize = 249;

/// Whether `name` is a topic name Kafka would accept.
pub fn is_valid_topic(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TOPIC_LEN
        && name != "."
        && name != ".."
        && name.bytes().all(is_topic_byte)
}

fn is_topic_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid topic pattern {0:?}: use topic characters [A-Za-z0-9._-] with * and ? as wildcards"
)]
pub struct InvalidPattern(pub String);

/// A glob over topic names, such as `chat.*`.
#[derive(Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct TopicPattern(Box<str>);

impl TopicPattern {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_literal(&self) -> bool {
        !self.0.contains(['*', '?'])
    }

    pub fn matches(&self, topic: &str) -> bool {
        glob_match(self.0.as_bytes(), topic.as_bytes())
    }

    /// The subscription string librdkafka expects: the literal name, or an anchored regex
    /// (librdkafka treats a leading `^` as "this is a regex").
    pub fn kafka_subscription(&self) -> String {
        if self.is_literal() {
            return self.0.to_string();
        }
        self.regex()
    }

    /// The anchored regex matching the same names, for librdkafka settings that take
    /// nothing but regexes (`topic.blacklist`).
    pub fn regex(&self) -> String {
        let mut regex = String::with_capacity(self.0.len() * 2 + 2);
        regex.push('^');
        for c in self.0.chars() {
            match c {
                '*' => regex.push_str(".*"),
                '?' => regex.push('.'),
                '.' => regex.push_str("\\."),
                c => regex.push(c),
            }
        }
        regex.push('$');
        regex
    }
}

impl FromStr for TopicPattern {
    type Err = InvalidPattern;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let valid = !s.is_empty()
            && s.len() <= MAX_TOPIC_LEN
            && s.bytes()
                .all(|b| is_topic_byte(b) || b == b'*' || b == b'?');
        if valid {
            Ok(TopicPattern(s.into()))
        } else {
            Err(InvalidPattern(s.to_string()))
        }
    }
}

impl TryFrom<String> for TopicPattern {
    type Error = InvalidPattern;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<TopicPattern> for String {
    fn from(p: TopicPattern) -> Self {
        p.0.into()
    }
}

impl fmt::Debug for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether `topic` is one of Kafka's own (`__consumer_offsets`, `__transaction_state`,
/// `__share_group_state`...): Kafka names every topic it marks internal with this prefix, and
/// keeps the prefix for itself.
pub fn is_kafka_internal(topic: &str) -> bool {
    topic.starts_with("__")
}

/// True when any of `patterns` covers `topic`.
pub fn any_matches(patterns: &[TopicPattern], topic: &str) -> bool {
    patterns.iter().any(|p| p.matches(topic))
}

/// Linear-time wildcard matching: on a mismatch, retry from the last `*` one byte further.
fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    let mut last_star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                last_star = Some((p, n));
                p += 1;
            }
            Some(&c) if c == b'?' || c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match last_star {
                Some((sp, sn)) => {
                    p = sp + 1;
                    n = sn + 1;
                    last_star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pat(s: &str) -> TopicPattern {
        s.parse().unwrap()
    }

    #[test]
    fn literal_matches_only_itself() {
        let p = pat("notifications");
        assert!(p.matches("notifications"));
        assert!(!p.matches("notifications2"));
        assert!(!p.matches("notification"));
        assert!(p.is_literal());
    }

    #[test]
    fn star_matches_any_run_including_empty_and_dots() {
        let p = pat("chat.*");
        assert!(p.matches("chat.lobby"));
        assert!(p.matches("chat."));
        assert!(p.matches("chat.a.b"));
        assert!(!p.matches("chat"));
        assert!(!p.matches("chatroom"));
        assert!(!p.matches("xchat.lobby"));
    }

    #[test]
    fn dot_is_literal_not_any_character() {
        assert!(!pat("chat.*").matches("chatXlobby"));
    }

    #[test]
    fn question_mark_matches_exactly_one() {
        let p = pat("room-?");
        assert!(p.matches("room-1"));
        assert!(!p.matches("room-"));
        assert!(!p.matches("room-12"));
    }

    #[test]
    fn stars_backtrack() {
        assert!(pat("*.events.*").matches("a.b.events.c"));
        assert!(pat("a*b*c").matches("aXXbYYbZc"));
        assert!(!pat("a*b*c").matches("aXXbYYbZ"));
        assert!(pat("*").matches("anything"));
        assert!(pat("**").matches(""));
    }

    #[test]
    fn invalid_patterns_are_refused() {
        for bad in ["", "chat/lobby", "chat.[ab]", "a b", "ünï", "x{a,b}"] {
            assert!(bad.parse::<TopicPattern>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn kafka_subscription_is_literal_or_anchored_regex() {
        assert_eq!(pat("notifications").kafka_subscription(), "notifications");
        assert_eq!(pat("chat.*").kafka_subscription(), "^chat\\..*$");
        assert_eq!(pat("room-?").kafka_subscription(), "^room-.$");
        assert_eq!(pat("_schemas").regex(), "^_schemas$");
    }

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(is_valid_topic("chat.lobby"));
        assert!(is_valid_topic("user_1-feed"));
        assert!(!is_valid_topic(""));
        assert!(!is_valid_topic("."));
        assert!(!is_valid_topic(".."));
        assert!(!is_valid_topic("chat.*"));
        assert!(!is_valid_topic("has space"));
        assert!(!is_valid_topic(&"x".repeat(250)));
    }

    #[test]
    fn any_matches_needs_one_pattern() {
        let ps = [pat("chat.*"), pat("notifications")];
        assert!(any_matches(&ps, "notifications"));
        assert!(any_matches(&ps, "chat.x"));
        assert!(!any_matches(&ps, "audit"));
        assert!(!any_matches(&[], "chat.x"));
    }
}
