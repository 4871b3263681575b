//! Revocation across hubs. The admin API stores a revocation in the database, which every
//! hub checks when a token arrives, then writes it to the control topic, which every hub's
//! consumer reads, so sockets already open with the token close wherever they are.
//!
//! A socket registers before the database is checked for its token. A revocation stored
//! after that check therefore reaches the control topic after the socket registered, and
//! the hub that holds it finds it there; the in-memory set below covers the one gap left,
//! a revocation read from the topic between the check and the registration.

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

use crate::auth::TokenId;

/// A token revocation, as stored and as sent over the control topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Revocation {
    /// One token, by its `jti`.
    Jti { jti: String },
    /// Every token of a user issued (`iat`) at or before `before`, in seconds since the
    /// epoch; tokens without `iat` too.
    Sub { sub: String, before: u64 },
}

/// A record of the control topic.
#[derive(Debug, Serialize, Deserialize)]
pub struct ControlMessage {
    pub revoke: Revocation,
}

/// The revocations this hub has read from the control topic since it started.
#[derive(Default)]
pub struct Revocations {
    jtis: DashMap<String, ()>,
    /// Per user, the latest `before`.
    subs: DashMap<String, u64>,
}

impl Revocations {
    pub fn add(&self, revocation: &Revocation) {
        match revocation {
            Revocation::Jti { jti } => {
                self.jtis.insert(jti.clone(), ());
            }
            Revocation::Sub { sub, before } => {
                let mut entry = self.subs.entry(sub.clone()).or_insert(*before);
                *entry = (*entry).max(*before);
            }
        }
    }

    pub fn revokes(&self, sub: &str, token: &TokenId) -> bool {
        token
            .jti
            .as_ref()
            .is_some_and(|jti| self.jtis.contains_key(jti))
            || self
                .subs
                .get(sub)
                .is_some_and(|before| revokes_issued(*before, token.issued_at))
    }
}

impl Revocation {
    pub fn covers(&self, user: &str, token: &TokenId) -> bool {
        match self {
            Revocation::Jti { jti } => token.jti.as_ref() == Some(jti),
            Revocation::Sub { sub, before } => {
                sub == user && revokes_issued(*before, token.issued_at)
            }
        }
    }
}

/// A user's revocation covers the tokens issued up to it, and those that do not say when.
pub fn revokes_issued(before: u64, issued_at: Option<u64>) -> bool {
    issued_at.is_none_or(|iat| iat <= before)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(jti: Option<&str>, issued_at: Option<u64>) -> TokenId {
        TokenId {
            jti: jti.map(Into::into),
            issued_at,
        }
    }

    #[test]
    fn a_jti_revokes_that_token_only() {
        let revoked = Revocations::default();
        revoked.add(&Revocation::Jti { jti: "t1".into() });
        assert!(revoked.revokes("alice", &token(Some("t1"), Some(5))));
        assert!(!revoked.revokes("alice", &token(Some("t2"), Some(5))));
        assert!(!revoked.revokes("alice", &token(None, Some(5))));
    }

    #[test]
    fn a_user_revocation_covers_tokens_issued_until_then_and_undated_ones() {
        let revoked = Revocations::default();
        let revocation = Revocation::Sub {
            sub: "alice".into(),
            before: 100,
        };
        revoked.add(&revocation);
        for (sub, token, covered) in [
            ("alice", token(Some("a"), Some(99)), true),
            ("alice", token(Some("b"), Some(100)), true),
            ("alice", token(Some("c"), None), true),
            ("alice", token(Some("d"), Some(101)), false),
            ("bob", token(Some("e"), Some(1)), false),
        ] {
            assert_eq!(revoked.revokes(sub, &token), covered, "{sub} {token:?}");
            assert_eq!(revocation.covers(sub, &token), covered, "{sub} {token:?}");
        }
        // An older revocation read later does not shrink a newer one.
        revoked.add(&Revocation::Sub {
            sub: "alice".into(),
            before: 50,
        });
        assert!(revoked.revokes("alice", &token(None, Some(80))));
    }

    #[test]
    fn control_messages_read_back_as_written() {
        for revoke in [
            Revocation::Jti { jti: "t1".into() },
            Revocation::Sub {
                sub: "alice".into(),
                before: 7,
            },
        ] {
            let json = serde_json::to_string(&ControlMessage {
                revoke: revoke.clone(),
            })
            .unwrap();
            let back: ControlMessage = serde_json::from_str(&json).unwrap();
            assert_eq!(back.revoke, revoke);
        }
    }
}
