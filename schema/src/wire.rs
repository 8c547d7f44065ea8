use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Serialize, de::DeserializeOwned};

use crate::{Error, Result};

/// The CloudEvents version written in `ce_specversion`.
pub const SPEC_VERSION: &str = "1.0";

/// An event that travels as a CloudEvent in Kafka binary content mode.
pub trait CloudEvent: Serialize + DeserializeOwned {
    /// Value of the `ce_type` header.
    const TYPE: &'static str;
    /// Value of the `ce_id` header.
    fn ce_id(&self) -> String;
    /// Value of the `ce_source` header.
    fn ce_source(&self) -> String;
    /// Value of the `ce_time` header.
    fn ce_time(&self) -> DateTime<Utc>;
    /// Kafka message key: `<cluster>/<node>`, so one node's events stay in one partition, in order.
    fn key(&self) -> String;
    /// Invariants checked after decoding.
    fn validate(&self) -> Result<()>;
}

/// A Kafka record, independent of any client library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireMessage {
    /// Message key.
    pub key: String,
    /// Headers in order.
    pub headers: Vec<(String, String)>,
    /// JSON body.
    pub payload: Vec<u8>,
}

/// Encodes an event: JSON body plus `ce_*` and `content-type` headers.
pub fn encode<E: CloudEvent>(event: &E) -> Result<WireMessage> {
    let payload = serde_json::to_vec(event)?;
    let time = event.ce_time().to_rfc3339_opts(SecondsFormat::AutoSi, true);
    Ok(WireMessage {
        key: event.key(),
        headers: vec![
            ("ce_specversion".into(), SPEC_VERSION.into()),
            ("ce_id".into(), event.ce_id()),
            ("ce_source".into(), event.ce_source()),
            ("ce_type".into(), E::TYPE.into()),
            ("ce_time".into(), time),
            ("content-type".into(), "application/json".into()),
        ],
        payload,
    })
}

/// Decodes a record: checks the CloudEvents headers, parses the body, validates the event.
pub fn decode<'a, E: CloudEvent>(
    headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
    payload: Option<&[u8]>,
) -> Result<E> {
    let mut spec = None;
    let mut ty = None;
    for (name, value) in headers {
        let text = |v: Option<&[u8]>| {
            std::str::from_utf8(v.unwrap_or_default())
                .map(str::to_owned)
                .map_err(|_| Error::HeaderEncoding(name.to_owned()))
        };
        match name {
            "ce_specversion" => spec = Some(text(value)?),
            "ce_type" => ty = Some(text(value)?),
            _ => {}
        }
    }
    let spec = spec.ok_or(Error::MissingHeader("ce_specversion"))?;
    if spec != SPEC_VERSION {
        return Err(Error::SpecVersion(spec));
    }
    let ty = ty.ok_or(Error::MissingHeader("ce_type"))?;
    if ty != E::TYPE {
        return Err(Error::WrongType { expected: E::TYPE, found: ty });
    }
    let payload = payload.ok_or(Error::MissingPayload)?;
    let event: E = serde_json::from_slice(payload)?;
    event.validate()?;
    if holds_nul(payload) {
        // PostgreSQL refuses a NUL in text: stored, such a record would fail its batch for ever.
        return Err(Error::Invalid("a string holds a NUL character (\\u0000), which no store keeps".into()));
    }
    Ok(event)
}

/// Whether a JSON text has a NUL in one of its strings (raw, JSON allows it only escaped).
fn holds_nul(json: &[u8]) -> bool {
    fn walk(v: &serde_json::Value) -> bool {
        match v {
            serde_json::Value::String(s) => s.contains('\0'),
            serde_json::Value::Array(a) => a.iter().any(walk),
            serde_json::Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || walk(v)),
            _ => false,
        }
    }
    // The escape is rare: only a record that has it is read again, to tell `\u0000` from `\\u0000`.
    json.windows(6).any(|w| w == br"\u0000") && serde_json::from_slice(json).is_ok_and(|v| walk(&v))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{FaultEvent, FaultKind, Heartbeat, Severity, Source, deterministic_id};

    fn fault() -> FaultEvent {
        let at = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        FaultEvent {
            id: deterministic_id(at, &["c1", "n1", "7"]),
            cluster: "c1".into(),
            node: "n1".into(),
            class: FaultKind::MemoryUncorrectable.class(),
            kind: FaultKind::MemoryUncorrectable,
            severity: Severity::Critical,
            source: Source::Agent,
            observed_at: at,
            message: "EDAC MC0: 1 UE".into(),
            evidence: BTreeMap::from([("seq".into(), "7".into())]),
        }
    }

    fn headers(m: &WireMessage) -> Vec<(&str, Option<&[u8]>)> {
        m.headers.iter().map(|(k, v)| (k.as_str(), Some(v.as_bytes()))).collect()
    }

    #[test]
    fn a_record_with_a_nul_in_a_string_is_invalid_and_a_backslash_is_not() {
        let mut f = fault();
        f.message = "EDAC MC0: 1 UE\u{0}".into();
        let msg = encode(&f).unwrap();
        assert!(matches!(decode::<FaultEvent>(headers(&msg), Some(&msg.payload)), Err(Error::Invalid(_))));
        let mut f = fault();
        f.evidence.insert("a\u{0}".into(), "x".into());
        let msg = encode(&f).unwrap();
        assert!(matches!(decode::<FaultEvent>(headers(&msg), Some(&msg.payload)), Err(Error::Invalid(_))));
        let mut f = fault();
        f.message = r"a path C:\u0000\x".into();
        let msg = encode(&f).unwrap();
        assert_eq!(decode::<FaultEvent>(headers(&msg), Some(&msg.payload)).unwrap(), f, "an escaped backslash");
    }

    proptest::proptest! {
        /// A record from a hostile or broken producer: any headers, a valid payload with bytes
        /// replaced, cut or appended. Decoding answers an event or a typed error, never a panic.
        #[test]
        fn any_record_decodes_or_is_a_typed_error(
            cuts in proptest::collection::vec((0usize..2000, proptest::num::u8::ANY), 0..8),
            truncate in proptest::option::of(0usize..2000),
            tail in proptest::collection::vec(proptest::num::u8::ANY, 0..32),
            extra in proptest::collection::vec(("ce_[a-z]{0,12}", proptest::option::of(proptest::collection::vec(proptest::num::u8::ANY, 0..16))), 0..4),
        ) {
            let msg = encode(&fault()).unwrap();
            let mut payload = msg.payload.clone();
            for (at, b) in cuts {
                if !payload.is_empty() {
                    let i = at % payload.len();
                    payload[i] = b;
                }
            }
            if let Some(t) = truncate {
                payload.truncate(t);
            }
            payload.extend(tail);
            let mut hs = headers(&msg);
            for (k, v) in &extra {
                hs.push((k.as_str(), v.as_deref()));
            }
            if let Ok(e) = decode::<FaultEvent>(hs, Some(&payload)) {
                // What decodes is valid: the names in it are names.
                proptest::prop_assert!(crate::names::is_dns1123_subdomain(&e.node), "{:?}", e.node);
            }
        }
    }

    #[test]
    fn round_trip_with_cloudevents_headers() {
        let event = fault();
        let msg = encode(&event).unwrap();
        assert_eq!(msg.key, "c1/n1");
        let h: BTreeMap<_, _> = msg.headers.iter().cloned().collect();
        assert_eq!(h["ce_specversion"], "1.0");
        assert_eq!(h["ce_type"], "io.firebreak.fault.v1");
        assert_eq!(h["ce_id"], event.id.to_string());
        assert_eq!(h["ce_source"], "/firebreak/agent/c1/n1");
        assert_eq!(h["ce_time"], "2023-11-14T22:13:20Z");
        assert_eq!(h["content-type"], "application/json");
        let back: FaultEvent = decode(headers(&msg), Some(&msg.payload)).unwrap();
        assert_eq!(back, event);
    }

    #[test]
    fn deterministic_ids_are_stable_v7_and_distinct() {
        let at = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let a = deterministic_id(at, &["c", "n", "1"]);
        assert_eq!(a, deterministic_id(at, &["c", "n", "1"]));
        assert_ne!(a, deterministic_id(at, &["c", "n", "2"]));
        assert_ne!(deterministic_id(at, &["c", "n1"]), deterministic_id(at, &["cn", "1"]));
        assert_eq!(a.get_version_num(), 7);
    }

    #[test]
    fn bad_input_is_a_typed_error() {
        let msg = encode(&fault()).unwrap();
        let h = headers(&msg);
        assert!(matches!(decode::<FaultEvent>(h.clone(), None), Err(Error::MissingPayload)));
        assert!(matches!(decode::<FaultEvent>(h.clone(), Some(b"{not json")), Err(Error::Json(_))));
        assert!(matches!(
            decode::<FaultEvent>(Vec::new(), Some(&msg.payload)),
            Err(Error::MissingHeader("ce_specversion"))
        ));
        assert!(matches!(decode::<Heartbeat>(h.clone(), Some(&msg.payload)), Err(Error::WrongType { .. })));
        let mut bad = fault();
        bad.node = String::new();
        let bad = serde_json::to_vec(&bad).unwrap();
        assert!(matches!(decode::<FaultEvent>(h.clone(), Some(&bad)), Err(Error::Invalid(_))));
        let v4 = serde_json::to_vec(&FaultEvent { id: uuid::Uuid::nil(), ..fault() }).unwrap();
        assert!(matches!(decode::<FaultEvent>(h.clone(), Some(&v4)), Err(Error::Invalid(_))));
        let bad_utf8 = vec![("ce_specversion", Some(&[0xffu8][..]))];
        assert!(matches!(decode::<FaultEvent>(bad_utf8, Some(&msg.payload)), Err(Error::HeaderEncoding(_))));
    }

    /// A topology that parses but cannot be a cluster's failure domains is refused, so the event
    /// center dead-letters it rather than grouping storms by it.
    #[test]
    fn a_topology_with_empty_labels_or_bad_node_names_is_refused() {
        let zone = "topology.kubernetes.io/zone";
        let topology = |key: &str, value: &str, node: &str| crate::Topology {
            cluster: "c1".into(),
            at: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            domains: BTreeMap::from([(key.to_owned(), BTreeMap::from([(value.to_owned(), vec![node.to_owned()])]))]),
        };
        let good = encode(&topology(zone, "a", "n1")).unwrap();
        let h = headers(&good);
        assert_eq!(decode::<crate::Topology>(h.clone(), Some(&good.payload)).unwrap(), topology(zone, "a", "n1"));
        for (key, value, node) in [("", "a", "n1"), (zone, "", "n1"), (zone, "a", ""), (zone, "a", "rack/n1")] {
            let body = serde_json::to_vec(&topology(key, value, node)).unwrap();
            let got = decode::<crate::Topology>(h.clone(), Some(&body));
            assert!(matches!(got, Err(Error::Invalid(_))), "{key:?} {value:?} {node:?}: {got:?}");
        }
    }
}
