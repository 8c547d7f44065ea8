//! Bearer tokens with roles, the same way in every Firebreak HTTP API (feature `http`).
//!
//! Tokens are configured as SHA-256 hashes, never as secrets, in a TOML file (`--tokens FILE`)
//! or the same TOML in an environment variable:
//!
//! ```toml
//! [[tokens]]
//! name = "remediator"          # who: recorded as the holder of what it does
//! role = "requester"           # viewer < requester < operator < admin
//! sha256 = "9f86d08…"          # hex SHA-256 of the secret (`firebreak token new` makes both)
//! ```
//!
//! [`require`] is an axum middleware: no or an unknown token is 401, a role below the route's is
//! 403; the caller goes into the request's extensions as a [`Caller`].

use std::sync::Arc;

use axum::{
    Json,
    extract::{Request, State},
    http::{StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use firebreak_schema::Role;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// Who made a request, as its token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name.
    pub name: String,
    /// The token's role.
    pub role: Role,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    role: Role,
    #[serde(deserialize_with = "hex_digest")]
    sha256: [u8; 32],
}

fn hex_digest<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<[u8; 32], D::Error> {
    let s = String::deserialize(d)?;
    let bytes = hex::decode(s.trim()).map_err(|e| serde::de::Error::custom(format!("sha256: {e}")))?;
    bytes.try_into().map_err(|_| serde::de::Error::custom("sha256: expected 64 hex digits (32 bytes)"))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    tokens: Vec<Entry>,
}

/// The accepted tokens.
#[derive(Debug, Clone)]
pub struct Tokens {
    entries: Vec<Entry>,
}

impl Tokens {
    /// Parses the TOML form; an error names the line.
    pub fn parse(text: &str) -> Result<Self> {
        let f: File = toml::from_str(text).map_err(|e| Error::Tokens(e.to_string()))?;
        if f.tokens.is_empty() {
            return Err(Error::Tokens("no tokens: at least one `[[tokens]]` entry is needed".into()));
        }
        let mut names = std::collections::BTreeSet::new();
        for e in &f.tokens {
            if e.name.is_empty() || e.name.len() > 128 || e.name.chars().any(char::is_control) {
                return Err(Error::Tokens(format!(
                    "token name `{}` is empty, too long or has control characters",
                    e.name
                )));
            }
            if !names.insert(e.name.clone()) {
                return Err(Error::Tokens(format!("token name `{}` appears twice", e.name)));
            }
        }
        Ok(Self { entries: f.tokens })
    }

    /// Reads a tokens file.
    pub fn load(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Tokens(format!("{}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| Error::Tokens(format!("{}: {e}", path.display())))
    }

    /// The caller a bearer secret belongs to.
    pub fn check(&self, secret: &str) -> Option<Caller> {
        let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        // Compare every entry in full, so the time taken says nothing about the secret.
        let mut found = None;
        for e in &self.entries {
            let diff = e.sha256.iter().zip(digest.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 {
                found = Some(Caller { name: e.name.clone(), role: e.role });
            }
        }
        found
    }
}

/// The hex SHA-256 of a secret, as a tokens file holds it.
pub fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A new random secret (256 bits, hex).
pub fn new_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

/// One `[[tokens]]` entry in TOML.
pub fn entry(name: &str, role: Role, secret: &str) -> String {
    format!("[[tokens]]\nname = {}\nrole = \"{}\"\nsha256 = \"{}\"\n", toml_string(name), role.as_str(), hash(secret))
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// What [`require`] needs: the tokens and the least role of the routes it guards.
#[derive(Clone)]
pub struct Guard {
    /// The accepted tokens.
    pub tokens: Arc<Tokens>,
    /// The least role.
    pub role: Role,
}

fn refuse(code: StatusCode, message: String) -> Response {
    let mut r = (code, Json(serde_json::json!({"error": message}))).into_response();
    if code == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    }
    r
}

/// Middleware: 401 without a known bearer token, 403 below the guard's role; otherwise the
/// [`Caller`] is added to the request's extensions.
pub async fn require(State(guard): State<Guard>, mut req: Request, next: Next) -> Response {
    let secret = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
    let Some(caller) = secret.and_then(|s| guard.tokens.check(s.trim())) else {
        return refuse(StatusCode::UNAUTHORIZED, "a valid bearer token is required".into());
    };
    if caller.role < guard.role {
        return refuse(
            StatusCode::FORBIDDEN,
            format!("token `{}` has role {}; this needs {}", caller.name, caller.role.as_str(), guard.role.as_str()),
        );
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Any tokens file is tokens or an error naming what is wrong; never a panic.
        #[test]
        fn any_tokens_file_parses_or_is_an_error(
            text in "\\PC{0,400}",
            lines in proptest::collection::vec(
                "\\[\\[tokens\\]\\]|name = \"[^\"]{0,20}\"|role = \"(viewer|requester|operator|admin|root)\"|sha256 = \"[0-9a-f]{0,70}\"",
                0..12,
            ),
        ) {
            let _ = Tokens::parse(&text);
            if let Ok(t) = Tokens::parse(&lines.join("\n")) {
                proptest::prop_assert!(!t.entries.is_empty());
            }
        }
    }

    #[test]
    fn tokens_are_checked_by_hash_and_files_are_validated() {
        let text = format!("{}\n{}", entry("rem", Role::Requester, "s3cret"), entry("ops", Role::Operator, "other"));
        assert!(!text.contains("s3cret"), "no secret at rest");
        let t = Tokens::parse(&text).unwrap();
        assert_eq!(t.check("s3cret"), Some(Caller { name: "rem".into(), role: Role::Requester }));
        assert_eq!(t.check("other").map(|c| c.role), Some(Role::Operator));
        assert_eq!(t.check("guess"), None);
        assert!(Role::Admin > Role::Operator && Role::Operator > Role::Requester && Role::Requester > Role::Viewer);
        for (bad, why) in [
            ("", "no tokens"),
            ("[[tokens]]\nname = \"a\"\nrole = \"god\"\nsha256 = \"00\"\n", "line 3"),
            ("[[tokens]]\nname = \"a\"\nrole = \"viewer\"\nsha256 = \"abcd\"\n", "64 hex digits"),
            (&format!("{}{}", entry("a", Role::Viewer, "x"), entry("a", Role::Viewer, "y")), "twice"),
        ] {
            let e = Tokens::parse(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        assert_eq!(new_secret().len(), 64);
        assert_ne!(new_secret(), new_secret());
    }
}
