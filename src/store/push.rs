//! Web Push's state: subscriptions per user, the VAPID key, and the pushes claimed (see the
//! migration `push`).

use crate::clock::now_millis;

use super::{Store, StoreError};

/// A stored push subscription: keys as base64url, as the browser gave them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSubscription {
    pub endpoint: String,
    pub p256dh: String,
    pub auth: String,
}

/// What a claim found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// No hub claimed the push before: send it.
    New,
    /// A hub claimed it and never said it was done: it died or lost the partition while
    /// sending. Send it again, under the same `Topic`, for the push service to collapse.
    Unfinished,
    /// Sent or given up already.
    Done,
}

/// How long a claim is kept: far longer than a record can wait for its push.
const CLAIMS_KEPT_MS: i64 = 7 * 24 * 3600 * 1000;

/// Why a subscription was not stored.
#[derive(Debug, thiserror::Error)]
pub enum AddError {
    #[error("the user has {0} push subscriptions already, the most allowed")]
    TooMany(u32),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Store {
    /// Stores `subscription` for `sub`, or moves it to `sub` with its new keys when the
    /// endpoint was stored already; refused when `sub` already has `most` others.
    pub async fn add_push_subscription(
        &self,
        sub: &str,
        subscription: &StoredSubscription,
        most: u32,
    ) -> Result<(), AddError> {
        let mut tx = self.pool.begin().await.map_err(StoreError::from)?;
        let (others,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM push_subscriptions WHERE sub = $1 AND endpoint <> $2",
        )
        .bind(sub)
        .bind(&subscription.endpoint)
        .fetch_one(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        if others >= i64::from(most) {
            return Err(AddError::TooMany(most));
        }
        sqlx::query(
            "INSERT INTO push_subscriptions (endpoint, sub, p256dh, auth, created_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (endpoint) DO UPDATE
             SET sub = excluded.sub, p256dh = excluded.p256dh, auth = excluded.auth,
                 created_at = excluded.created_at",
        )
        .bind(&subscription.endpoint)
        .bind(sub)
        .bind(&subscription.p256dh)
        .bind(&subscription.auth)
        .bind(now_millis())
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(())
    }

    /// Removes `sub`'s subscription with `endpoint`; whether there was one.
    pub async fn remove_push_subscription(
        &self,
        sub: &str,
        endpoint: &str,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM push_subscriptions WHERE sub = $1 AND endpoint = $2")
            .bind(sub)
            .bind(endpoint)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Removes the subscription with `endpoint`, whoever's: its push service said it is gone.
    pub async fn forget_push_endpoint(&self, endpoint: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM push_subscriptions WHERE endpoint = $1")
            .bind(endpoint)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn push_subscriptions(
        &self,
        sub: &str,
    ) -> Result<Vec<StoredSubscription>, StoreError> {
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT endpoint, p256dh, auth FROM push_subscriptions WHERE sub = $1 ORDER BY endpoint",
        )
        .bind(sub)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(endpoint, p256dh, auth)| StoredSubscription {
                endpoint,
                p256dh,
                auth,
            })
            .collect())
    }

    /// The VAPID key every hub signs with: `generate`'s, when no hub stored one before.
    pub async fn push_key(&self, generate: impl FnOnce() -> String) -> Result<String, StoreError> {
        sqlx::query(
            "INSERT INTO push_keys (id, private_key) VALUES (1, $1) ON CONFLICT (id) DO NOTHING",
        )
        .bind(generate())
        .execute(&self.pool)
        .await?;
        let (key,): (String,) = sqlx::query_as("SELECT private_key FROM push_keys WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        Ok(key)
    }

    /// Claims the push of `record` to `endpoint` before it is sent.
    pub async fn claim_push(&self, endpoint: &str, record: &str) -> Result<Claim, StoreError> {
        loop {
            let inserted = sqlx::query(
                "INSERT INTO push_sent (endpoint, record, sent_at, done)
                 VALUES ($1, $2, $3, FALSE)
                 ON CONFLICT (endpoint, record) DO NOTHING",
            )
            .bind(endpoint)
            .bind(record)
            .bind(now_millis())
            .execute(&self.pool)
            .await?;
            if inserted.rows_affected() > 0 {
                return Ok(Claim::New);
            }
            // Counted rather than read: the Any driver decodes no SQLite boolean.
            let (claims, done): (i64, i64) = sqlx::query_as(
                "SELECT COUNT(*), COUNT(CASE WHEN done THEN 1 END) FROM push_sent
                 WHERE endpoint = $1 AND record = $2",
            )
            .bind(endpoint)
            .bind(record)
            .fetch_one(&self.pool)
            .await?;
            match (claims, done) {
                // Given back (its hub stopping) between the two statements: claim it anew.
                (0, _) => continue,
                (_, 0) => return Ok(Claim::Unfinished),
                _ => return Ok(Claim::Done),
            }
        }
    }

    /// Marks a claimed push done: the push service answered, or it was given up.
    pub async fn push_done(&self, endpoint: &str, record: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE push_sent SET done = TRUE WHERE endpoint = $1 AND record = $2")
            .bind(endpoint)
            .bind(record)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Gives a claim back: the push was not sent (the hub is stopping), and whichever hub
    /// handles the record next may send it.
    pub async fn unclaim_push(&self, endpoint: &str, record: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM push_sent WHERE endpoint = $1 AND record = $2")
            .bind(endpoint)
            .bind(record)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Forgets claims older than any record still waiting for its push.
    pub async fn prune_push_claims(&self) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM push_sent WHERE sent_at < $1")
            .bind(now_millis() - CLAIMS_KEPT_MS)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
