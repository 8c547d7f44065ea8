//! Webhook subscriptions for platform services that do not read Kafka: each `[[webhooks]]` of
//! the `--subscriptions` TOML file is told, with an HMAC-signed POST, of every incident that
//! opens or changes state and matches its filter (clusters, classes, least severity).
//!
//! ```toml
//! [[webhooks]]
//! url = "https://tickets.example/firebreak"
//! secret_env = "TICKETS_WEBHOOK_SECRET"   # the variable that holds the signing secret
//! clusters = ["prod-a", "prod-b"]          # optional: every cluster when absent
//! classes = ["hardware"]                   # optional: every class when absent
//! min_severity = "warning"                 # optional: info when absent
//! ```
//!
//! A call is stored with the mark that publishes its change on the incidents topic and sent by
//! `upkeep`'s webhook task until the receiver answers 2xx, with a growing delay between attempts:
//! a slow or dead receiver never holds up ingest, and a restart loses no call.

use firebreak_schema::{FaultClass, Incident, Severity};

use crate::{Error, Result};

/// One webhook subscription as written in the file.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    url: String,
    secret_env: String,
    #[serde(default)]
    clusters: Vec<String>,
    #[serde(default)]
    classes: Vec<FaultClass>,
    #[serde(default)]
    min_severity: Option<Severity>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    webhooks: Vec<Entry>,
}

/// A webhook subscription, its secret read.
#[derive(Clone)]
pub struct Webhook {
    /// Where to POST.
    pub url: String,
    secret: String,
    clusters: Vec<String>,
    classes: Vec<FaultClass>,
    min_severity: Severity,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook").field("url", &self.url).finish_non_exhaustive()
    }
}

impl Webhook {
    /// Whether an incident passes this subscription's filter.
    pub fn wants(&self, i: &Incident) -> bool {
        (self.clusters.is_empty() || self.clusters.contains(&i.cluster))
            && (self.classes.is_empty() || self.classes.contains(&i.class))
            && i.severity >= self.min_severity
    }

    /// The signing secret.
    pub(crate) fn secret(&self) -> &[u8] {
        self.secret.as_bytes()
    }
}

/// Reads a subscriptions file; `env` looks up the secrets' variables. Every entry is checked:
/// a URL that is not http(s), a variable that is unset or empty, an unknown key is an error
/// that names the entry.
pub fn parse(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Vec<Webhook>> {
    let f: File = toml::from_str(text).map_err(|e| Error::BadRequest(format!("subscriptions: {e}")))?;
    f.webhooks
        .into_iter()
        .enumerate()
        .map(|(n, e)| {
            let at = |what: String| Error::BadRequest(format!("subscriptions: webhooks[{n}]: {what}"));
            let url = firebreak_schema::names::http_url(&e.url).map_err(at)?;
            let secret = env(&e.secret_env).filter(|s| !s.is_empty()).ok_or_else(|| {
                at(format!("the variable {} that should hold the secret is unset or empty", e.secret_env))
            })?;
            Ok(Webhook {
                url,
                secret,
                clusters: e.clusters,
                classes: e.classes,
                min_severity: e.min_severity.unwrap_or(Severity::Info),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscription_filters_by_cluster_class_and_severity_and_every_mistake_is_named() {
        let env = |k: &str| (k == "S").then(|| "secret".to_owned());
        let w = parse(
            "[[webhooks]]\nurl = \"http://h/x\"\nsecret_env = \"S\"\nclusters = [\"c1\"]\nclasses = [\"hardware\"]\nmin_severity = \"warning\"\n",
            env,
        )
        .unwrap();
        let mut i: Incident = serde_json::from_value(serde_json::json!({
            "id": uuid::Uuid::now_v7(), "fingerprint": "c1/n/NicDown", "cluster": "c1", "node": "n",
            "class": "hardware", "kind": "NicDown", "severity": "critical", "state": "open", "reason": "",
            "first_seen": "2026-11-30T00:00:00Z", "last_seen": "2026-11-30T00:00:00Z", "occurrences": 1,
            "expected": 0, "updated_at": "2026-11-30T00:00:00Z", "version": 1
        }))
        .unwrap();
        assert!(w[0].wants(&i));
        i.severity = Severity::Info;
        assert!(!w[0].wants(&i), "below the least severity");
        i.severity = Severity::Warning;
        i.cluster = "c2".into();
        assert!(!w[0].wants(&i), "another cluster");
        for (text, says) in [
            ("[[webhooks]]\nurl = \"ftp://h\"\nsecret_env = \"S\"\n", "webhooks[0]"),
            ("[[webhooks]]\nurl = \"http://h\"\nsecret_env = \"UNSET\"\n", "UNSET"),
            ("[[webhooks]]\nurl = \"http://h\"\nsecret_env = \"S\"\nmin_severity = \"loud\"\n", "loud"),
            ("[[webhooks]]\nurl = \"http://h\"\nsecret = \"inline\"\n", "secret"),
        ] {
            let e = parse(text, env).unwrap_err().to_string();
            assert!(e.contains(says), "{e} should name {says}");
        }
    }
}
