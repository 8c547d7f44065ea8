//! Signed webhooks: a JSON body POSTed with `X-Firebreak-Signature: sha256=<hex>`, the
//! HMAC-SHA256 of the exact body under a shared secret, and `X-Firebreak-Event: <event>`;
//! retried with backoff in the background, never holding up the caller.

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

use crate::retry;

/// `sha256=<hex>` of the body under the secret.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// One attempt: POSTs `body` (JSON) to `url`, signed with `secret`, as event `event`; an error
/// for a transport failure or a status that is not 2xx.
pub async fn send(
    http: &reqwest::Client,
    url: &str,
    secret: &[u8],
    event: &str,
    body: Vec<u8>,
) -> Result<(), reqwest::Error> {
    http.post(url)
        .header("content-type", "application/json")
        .header("x-firebreak-signature", signature(secret, &body))
        .header("x-firebreak-event", event)
        .body(body)
        .send()
        .await?
        .error_for_status()
        .map(|_| ())
}

/// How long a durable outbox keeps trying a call before it gives the call up: a receiver down
/// for a day is down for good as far as this call goes (the giving up is recorded where the
/// call's subject is shown, and counted).
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(24 * 3600);

/// What a durable outbox does with a call after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Try again after this long: 2 s, 4 s, 8 s … up to 256 s, by the attempts so far.
    RetryIn(Duration),
    /// Stored longer than [`GIVE_UP_AFTER`] ago: undeliverable; this long ago.
    GiveUp(Duration),
}

/// What to do with the call `id` (a UUIDv7: it holds when the call was stored) after its
/// `attempts`th failed attempt, at `now`.
pub fn after_failure(id: uuid::Uuid, attempts: i64, now: std::time::SystemTime) -> AfterFailure {
    let stored = id.get_timestamp().map(|t| {
        let (secs, nanos) = t.to_unix();
        std::time::UNIX_EPOCH + Duration::new(secs, nanos)
    });
    // An id without a time (not a UUIDv7) is judged by its attempts alone: never given up.
    match stored.and_then(|at| now.duration_since(at).ok()) {
        Some(age) if age >= GIVE_UP_AFTER => AfterFailure::GiveUp(age),
        _ => AfterFailure::RetryIn(Duration::from_secs(1 << attempts.clamp(1, 8))),
    }
}

/// Sends `body` (JSON) to `url`, signed with `secret`, in the background: up to 8 attempts
/// over a few minutes, then given up with an error log. `what` names it in the logs. Not
/// durable: for notices a restart may lose (the gate's halts, also on the changes topic); a
/// call that must survive a restart goes through its service's stored outbox and [`send`].
pub fn deliver(
    http: &reqwest::Client,
    url: &str,
    secret: &[u8],
    event: &'static str,
    body: Vec<u8>,
    what: String,
    cancel: &CancellationToken,
) {
    let (http, url, cancel, secret) = (http.clone(), url.to_owned(), cancel.clone(), secret.to_vec());
    tokio::spawn(async move {
        let policy = retry::Policy::times(8, Duration::from_millis(500), Duration::from_secs(60));
        let sent = policy.until_ok(&what, &cancel, || send(&http, &url, &secret, event, body.clone())).await;
        match sent {
            Some(()) => tracing::info!(%url, what, event, "webhook delivered"),
            None => tracing::error!(%url, what, event, "webhook given up"),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_is_retried_with_a_growing_delay_then_given_up_after_a_day() {
        let now = std::time::SystemTime::now();
        let stored = |ago: Duration| {
            let at = (now - ago).duration_since(std::time::UNIX_EPOCH).unwrap();
            uuid::Uuid::new_v7(uuid::Timestamp::from_unix(uuid::NoContext, at.as_secs(), at.subsec_nanos()))
        };
        let fresh = stored(Duration::from_secs(60));
        assert_eq!(after_failure(fresh, 1, now), AfterFailure::RetryIn(Duration::from_secs(2)));
        assert_eq!(after_failure(fresh, 3, now), AfterFailure::RetryIn(Duration::from_secs(8)));
        assert_eq!(after_failure(fresh, 40, now), AfterFailure::RetryIn(Duration::from_secs(256)));
        let almost = stored(GIVE_UP_AFTER - Duration::from_secs(1));
        assert!(matches!(after_failure(almost, 300, now), AfterFailure::RetryIn(_)), "a day is not over");
        let old = stored(GIVE_UP_AFTER + Duration::from_secs(5));
        assert!(matches!(after_failure(old, 300, now), AfterFailure::GiveUp(age) if age >= GIVE_UP_AFTER));
        assert!(
            matches!(after_failure(uuid::Uuid::new_v4(), 300, now), AfterFailure::RetryIn(_)),
            "no time in a v4 id"
        );
    }

    #[test]
    fn signature_is_rfc_4231_hmac_sha256() {
        // RFC 4231, test case 2.
        let s = super::signature(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(s, "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }
}
