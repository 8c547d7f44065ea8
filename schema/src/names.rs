//! Name syntax as Kubernetes checks it, for every boundary that takes names from outside.

/// A DNS-1123 subdomain (node names, most object names): at most 253 characters of lowercase
/// letters, digits, `-` and `.`, starting and ending with a letter or digit.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
}

/// A label value: empty, or at most 63 characters of letters, digits, `-`, `_` and `.`,
/// starting and ending with a letter or digit.
pub fn is_label_value(s: &str) -> bool {
    s.is_empty()
        || (s.len() <= 63
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && s.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric()))
}

/// A qualified name (label and annotation keys): an optional DNS-1123 subdomain prefix and `/`,
/// then 1 to 63 characters of letters, digits, `-`, `_` and `.`, starting and ending with a
/// letter or digit.
pub fn is_qualified_name(s: &str) -> bool {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    prefix.is_none_or(is_dns1123_subdomain) && !name.is_empty() && is_label_value(name)
}

/// Text fit to record and show: at most `max` characters (as a JSON Schema `maxLength` counts
/// them: an operator's note in Chinese gets as many as one in English), no control characters
/// (no NUL, ESC, CR, LF) and no bidirectional overrides.
pub fn is_plain_text(s: &str, max: usize) -> bool {
    (s.len() <= max || s.chars().count() <= max)
        && !s
            .chars()
            .any(|c| c.is_control() || ('\u{202a}'..='\u{202e}').contains(&c) || ('\u{2066}'..='\u{2069}').contains(&c))
}

/// Checks an `http://` or `https://` URL with a host; returns it without a trailing `/`.
pub fn http_url(s: &str) -> Result<String, String> {
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
        .ok_or_else(|| format!("`{s}` is not an http:// or https:// URL"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let name = host.rsplit_once(':').map_or(host, |(h, port)| if port.parse::<u16>().is_ok() { h } else { host });
    if name.is_empty() || name.contains(['@', ' ']) {
        return Err(format!("`{s}` has no host"));
    }
    Ok(s.trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualified_names_are_label_keys() {
        for ok in ["app", "topology.kubernetes.io/zone", "example.com/rack-7", "A_b.c"] {
            assert!(is_qualified_name(ok), "{ok}");
        }
        for bad in ["", "a/b/c", "/x", "x/", "Example.com/x", "-x", "x-", &"a".repeat(64), "a b"] {
            assert!(!is_qualified_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn names_as_kubernetes_checks_them() {
        for ok in ["n1", "c1-node-001", "a.b-c", &"a".repeat(253)] {
            assert!(is_dns1123_subdomain(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a/b", "a b", &"a".repeat(254), "a\0b"] {
            assert!(!is_dns1123_subdomain(bad), "{bad:?}");
        }
        for ok in ["", "zone-a", "Rack_7.b"] {
            assert!(is_label_value(ok), "{ok}");
        }
        for bad in ["-bad value!", "_a", &"a".repeat(64)] {
            assert!(!is_label_value(bad), "{bad}");
        }
        assert!(is_plain_text("remediator/0190-abc", 256));
        for bad in ["a\u{1b}[31m", "a\r\nb", "a\u{202e}b", "a\0"] {
            assert!(!is_plain_text(bad, 256), "{bad:?}");
        }
        assert!(!is_plain_text(&"a".repeat(257), 256));
        assert!(is_plain_text(&"节点".repeat(128), 256), "characters are counted, not bytes");
        assert!(!is_plain_text(&format!("{}x", "节点".repeat(128)), 256));
    }
}
