//! Label and field selectors, as the API server parses them.

use serde_json::Value;

use crate::{At, Error, Result};

#[derive(Debug, Clone, PartialEq)]
enum Term {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selector(Vec<Term>);

impl Selector {
    /// Parses a label selector (`a=b,c!=d,e in (x,y),!f,g`).
    pub fn labels(s: &str) -> Result<Self> {
        Self::parse(s, true)
    }

    /// Parses a field selector (`spec.nodeName=n1,status.phase!=Failed`).
    pub fn fields(s: &str) -> Result<Self> {
        Self::parse(s, false)
    }

    fn parse(s: &str, sets: bool) -> Result<Self> {
        let mut terms = Vec::new();
        for raw in split_terms(s) {
            let t = raw.trim();
            if t.is_empty() {
                continue;
            }
            let bad = || Error::BadRequest(format!("unable to parse requirement: `{t}`"));
            let term = if let Some((k, v)) = t.split_once("!=") {
                Term::NotEq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
                Term::Eq(k.trim().into(), v.trim().into())
            } else if sets && (t.contains(" in ") || t.contains(" notin ")) {
                let (k, rest, neg) = match t.split_once(" notin ") {
                    Some((k, r)) => (k, r, true),
                    None => t.split_once(" in ").map(|(k, r)| (k, r, false)).ok_or_else(bad)?,
                };
                let inner = rest.trim().strip_prefix('(').and_then(|r| r.strip_suffix(')')).ok_or_else(bad)?;
                let vals = inner.split(',').map(|v| v.trim().to_owned()).collect();
                if neg { Term::NotIn(k.trim().into(), vals) } else { Term::In(k.trim().into(), vals) }
            } else if sets && let Some(k) = t.strip_prefix('!') {
                Term::NotExists(k.trim().into())
            } else if sets && !t.contains(' ') {
                Term::Exists(t.into())
            } else {
                return Err(bad());
            };
            terms.push(term);
        }
        Ok(Self(terms))
    }

    /// The value a term `key=value` requires, if the selector has one: what an index serves.
    pub fn required(&self, key: &str) -> Option<&str> {
        self.0.iter().find_map(|t| match t {
            Term::Eq(k, v) if k == key => Some(v.as_str()),
            _ => None,
        })
    }

    /// Whether an object's labels match.
    pub fn matches_labels(&self, obj: &Value) -> bool {
        self.matches_label_map(obj.at("/metadata/labels"))
    }

    /// Whether a label map (an object's `metadata.labels`) matches.
    pub fn matches_label_map(&self, labels: Option<&Value>) -> bool {
        self.eval(|k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str))
    }

    /// Whether an object's fields match (a field path is looked up in the JSON; missing is "").
    pub fn matches_fields(&self, obj: &Value) -> bool {
        self.eval(|k| {
            let ptr = format!("/{}", k.replace('.', "/"));
            Some(obj.at(&ptr).and_then(Value::as_str).unwrap_or(""))
        })
    }

    /// Whether the selector matches a label map given as JSON (`{"app": "web"}`), as
    /// `matchLabels` of a PodDisruptionBudget.
    pub fn from_match_labels(v: Option<&Value>) -> Self {
        let terms = v
            .and_then(Value::as_object)
            .map(|m| m.iter().map(|(k, v)| Term::Eq(k.clone(), v.as_str().unwrap_or_default().to_owned())).collect())
            .unwrap_or_default();
        Self(terms)
    }

    fn eval<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.0.iter().all(|t| match t {
            Term::Eq(k, v) => get(k) == Some(v.as_str()),
            Term::NotEq(k, v) => get(k) != Some(v.as_str()),
            Term::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Term::NotIn(k, vs) => !get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Term::Exists(k) => get(k).is_some(),
            Term::NotExists(k) => get(k).is_none(),
        })
    }
}

fn split_terms(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn label_selectors() {
        let pod = json!({"metadata": {"labels": {"app": "web", "tier": "front"}}});
        for (sel, want) in [
            ("", true),
            ("app=web", true),
            ("app==web,tier=front", true),
            ("app!=web", false),
            ("app in (db, web)", true),
            ("app notin (web)", false),
            ("tier", true),
            ("!tier", false),
            ("!missing,app in (web),tier!=back", true),
        ] {
            assert_eq!(Selector::labels(sel).unwrap().matches_labels(&pod), want, "{sel}");
        }
        assert!(Selector::labels("app in web").is_err());
    }

    #[test]
    fn field_selectors() {
        let pod = json!({"metadata": {"name": "p", "namespace": "ns"}, "spec": {"nodeName": "n1"}});
        assert!(Selector::fields("spec.nodeName=n1").unwrap().matches_fields(&pod));
        assert!(!Selector::fields("spec.nodeName=n2").unwrap().matches_fields(&pod));
        assert!(Selector::fields("spec.nodeName!=n2,metadata.namespace=ns").unwrap().matches_fields(&pod));
        assert!(Selector::fields("status.phase=").unwrap().matches_fields(&pod));
    }
}
