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

/// How long a durable outbox waits before the next attempt at a call that failed `attempts`
/// times: 2 s, 4 s, 8 s … up to 5 minutes.
pub fn retry_in(attempts: i64) -> Duration {
    Duration::from_secs(1 << attempts.clamp(1, 8) as u32).min(Duration::from_secs(300))
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
    #[test]
    fn signature_is_rfc_4231_hmac_sha256() {
        // RFC 4231, test case 2.
        let s = super::signature(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(s, "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }
}
