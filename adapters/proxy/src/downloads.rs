//! The blobs of messages filed before them (DECISIONS D76): a message with large
//! attachments appears in the mail client at once, and its blobs are downloaded when an
//! IMAP session needs their bytes, and in the background: all of them, or (on demand) each
//! once it has waited half the server's retention, so none is lost unopened. Each
//! message's download acknowledges its envelope, so the server keeps the blobs until then.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use letterme_client::{ClientError, Downloaded, Online};

/// Downloads the blobs of messages filed before them. A message is downloaded once at a
/// time: a second asker (another IMAP session, the background) waits for the first and
/// finds them kept.
pub struct Downloads {
    online: Online,
    busy: std::sync::Mutex<HashMap<i64, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for Downloads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Downloads").finish_non_exhaustive()
    }
}

impl Downloads {
    pub fn new(online: Online) -> Self {
        Self {
            online,
            busy: std::sync::Mutex::default(),
        }
    }

    /// Downloads the blobs content `content` waits for (see
    /// [`Online::download_awaited`]).
    pub async fn download(&self, content: i64) -> Result<Downloaded, ClientError> {
        let lock = self
            .busy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(content)
            .or_default()
            .clone();
        let result = {
            let _one_at_a_time = lock.lock().await;
            self.online.download_awaited(content).await
        };
        let mut busy = self
            .busy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // The map's and ours: nobody else waits on it.
        if Arc::strong_count(&lock) == 2 {
            busy.remove(&content);
        }
        match &result {
            Ok(Downloaded::Kept) => tracing::info!(content, "downloaded a message's attachments"),
            Ok(Downloaded::Refused { envelope, reason }) => {
                tracing::warn!(id = %envelope, %reason, "a message's attachment could not be had; the message was set aside");
            }
            Ok(Downloaded::Nothing) => {}
            Err(e) => tracing::warn!(content, error = %e, "downloading attachments failed"),
        }
        result
    }

    /// Downloads the blobs of every message filed before them once it has waited `after`
    /// since the server received it, oldest first: at once with [`Duration::ZERO`] (the
    /// background setting); those that failed (the server away, say) again after a growing
    /// pause.
    pub async fn in_background(self: Arc<Self>, after: Duration) {
        let cache = self.online.me.cache.clone();
        let mut changes = cache.changes();
        let mut backoff = Duration::from_secs(1);
        loop {
            changes.borrow_and_update();
            let waiting = cache.awaiting().unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot list the messages waiting for attachments");
                Vec::new()
            });
            let now = letterme_client::now();
            let mut failed = false;
            // Checked again at least hourly: what falls due meanwhile changes nothing.
            let mut next = Duration::from_hours(1);
            for (content, received) in waiting {
                let waited = Duration::from_secs(now.saturating_sub(received));
                match after.checked_sub(waited) {
                    Some(left) if !left.is_zero() => next = next.min(left),
                    // One that fails holds up none after it.
                    _ => failed |= self.download(content).await.is_err(),
                }
            }
            if failed {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_mins(1));
                continue;
            }
            backoff = Duration::from_secs(1);
            tokio::select! {
                () = tokio::time::sleep(next) => {}
                changed = changes.changed() => if changed.is_err() {
                    return;
                },
            }
        }
    }
}
