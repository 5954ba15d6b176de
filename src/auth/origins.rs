//! Which browser origins may use the gateway: cross-origin long-polling (CORS) and WebSocket
//! handshakes that carry an `Origin` header.
//!
//! An origin is matched exactly, byte for byte, as browsers serialize it: `scheme://host[:port]`
//! in lower case, without a path and without the scheme's default port. The list is checked
//! once at startup so a mistyped entry fails there instead of silently matching nothing.

use std::fmt;

/// Code of a WebSocket handshake refused for its `Origin`.
pub const REFUSED_CODE: &str = "origin_not_allowed";
/// What the refused page's operator should do.
pub const REFUSED_MESSAGE: &str =
    "this page's origin is not allowed to connect; add it to GATEWAY_CORS_ORIGINS as scheme://host[:port]";

/// The origins allowed to talk to the gateway from a browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedOrigins {
    /// Every origin (`*`; the default under `--dev`).
    Any,
    /// Exactly these origins; empty means no cross-origin polling, and no check of WebSocket
    /// origins (browsers do not apply CORS to WebSockets, so only a list makes them refusable).
    Listed(Vec<String>),
}

impl Default for AllowedOrigins {
    fn default() -> Self {
        AllowedOrigins::Listed(Vec::new())
    }
}

impl fmt::Display for AllowedOrigins {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllowedOrigins::Any => f.write_str("*"),
            AllowedOrigins::Listed(list) => f.write_str(&list.join(",")),
        }
    }
}

impl AllowedOrigins {
    /// Parses a comma-separated list (`*` alone for every origin; empty for none). The error
    /// names the entry at fault and what to write instead.
    pub fn parse(s: &str) -> Result<Self, String> {
        let entries: Vec<&str> = s
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .collect();
        if entries.contains(&"*") {
            if entries.len() > 1 {
                return Err("'*' allows every origin and cannot be combined with others".into());
            }
            return Ok(AllowedOrigins::Any);
        }
        let mut list = Vec::with_capacity(entries.len());
        for e in entries {
            check_origin(e)?;
            if !list.iter().any(|l: &String| l == e) {
                list.push(e.to_owned());
            }
        }
        Ok(AllowedOrigins::Listed(list))
    }

    /// Whether a request with this `Origin` header value gets CORS answers.
    pub fn allows(&self, origin: &[u8]) -> bool {
        match self {
            AllowedOrigins::Any => true,
            AllowedOrigins::Listed(list) => list.iter().any(|o| o.as_bytes() == origin),
        }
    }

    /// Whether a WebSocket handshake with this `Origin` (if any) is accepted: always without a
    /// header (non-browser clients) or without a list; otherwise only for a listed origin.
    pub fn admits_websocket(&self, origin: Option<&[u8]>) -> bool {
        match (self, origin) {
            (_, None) | (AllowedOrigins::Any, _) => true,
            (AllowedOrigins::Listed(list), Some(o)) => list.is_empty() || self.allows(o),
        }
    }

    /// Whether any cross-origin request can get CORS answers.
    pub fn is_open(&self) -> bool {
        !matches!(self, AllowedOrigins::Listed(l) if l.is_empty())
    }
}

/// `scheme://host[:port]` exactly as a browser sends it in `Origin`.
fn check_origin(e: &str) -> Result<(), String> {
    let form = "write origins as scheme://host[:port], e.g. https://app.example.com or http://localhost:5173";
    let Some((scheme, rest)) = e.split_once("://") else {
        return Err(format!("'{e}' is not an origin; {form}"));
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_lowercase())
        && scheme.bytes().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'+' | b'-' | b'.')
        });
    if !scheme_ok {
        return Err(format!(
            "'{e}' has an invalid scheme (browsers send it in lower case); {form}"
        ));
    }
    if rest.contains(['/', '?', '#']) {
        let bare = rest.split(['/', '?', '#']).next().unwrap_or("");
        return Err(format!(
            "'{e}' has a path; an origin has none: write {scheme}://{bare}"
        ));
    }
    if rest.contains('@') {
        return Err(format!("'{e}' has user information; {form}"));
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, _)) if !h.ends_with(']') && h.contains(':') => (rest, None), // bare IPv6
        Some((h, p)) => (h, Some(p)),
        None => (rest, None),
    };
    let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        !v6.is_empty()
            && v6
                .bytes()
                .all(|c| c.is_ascii_hexdigit() || c == b':' || c == b'.')
    } else {
        !host.is_empty()
            && host
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_'))
            && !host.contains(':')
    };
    if !host_ok {
        return Err(format!("'{e}' has an invalid host; {form}"));
    }
    if host.bytes().any(|c| c.is_ascii_uppercase()) {
        return Err(format!(
            "'{e}': browsers send the host in lower case; write {scheme}://{}{}",
            host.to_ascii_lowercase(),
            port.map(|p| format!(":{p}")).unwrap_or_default()
        ));
    }
    if let Some(port) = port {
        match port.parse::<u16>() {
            Ok(p) if p > 0 && !port.starts_with('0') => {
                let default = matches!((scheme, p), ("http", 80) | ("https", 443));
                if default {
                    return Err(format!(
                        "'{e}': browsers leave out the default port; write {scheme}://{host}"
                    ));
                }
            }
            _ => return Err(format!("'{e}' has an invalid port; {form}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(v: &[&str]) -> AllowedOrigins {
        AllowedOrigins::Listed(v.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn parses_lists_star_and_empty() {
        assert_eq!(AllowedOrigins::parse("").unwrap(), listed(&[]));
        assert_eq!(AllowedOrigins::parse(" * ").unwrap(), AllowedOrigins::Any);
        assert_eq!(
            AllowedOrigins::parse(
                "https://app.example.com, http://localhost:5173,https://app.example.com"
            )
            .unwrap(),
            listed(&["https://app.example.com", "http://localhost:5173"])
        );
        assert_eq!(
            AllowedOrigins::parse("http://[::1]:8080,capacitor://localhost").unwrap(),
            listed(&["http://[::1]:8080", "capacitor://localhost"])
        );
    }

    #[test]
    fn refuses_what_never_matches_a_browser_origin() {
        for (bad, says) in [
            ("app.example.com", "scheme://host"),
            ("https://app.example.com/", "write https://app.example.com"),
            (
                "https://app.example.com/path",
                "write https://app.example.com",
            ),
            ("https://App.Example.com", "write https://app.example.com"),
            (
                "https://app.example.com:443",
                "write https://app.example.com",
            ),
            ("http://localhost:80", "write http://localhost"),
            ("http://localhost:0", "invalid port"),
            ("http://localhost:99999", "invalid port"),
            ("http://localhost:", "invalid port"),
            ("HTTP://localhost", "invalid scheme"),
            ("https://user@host", "user information"),
            ("https://", "invalid host"),
            ("*,https://a.example", "cannot be combined"),
        ] {
            let e = AllowedOrigins::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn matches_exactly() {
        let l = listed(&["https://app.example.com", "http://localhost:5173"]);
        assert!(l.allows(b"https://app.example.com"));
        assert!(l.allows(b"http://localhost:5173"));
        for other in [
            &b"http://app.example.com"[..],
            b"https://app.example.com:8443",
            b"https://evil.app.example.com",
            b"https://app.example.com.evil",
            b"null",
        ] {
            assert!(!l.allows(other), "{other:?}");
            assert!(!l.admits_websocket(Some(other)));
        }
        assert!(l.admits_websocket(None));
        assert!(l.is_open());
    }

    #[test]
    fn empty_list_opens_nothing_and_refuses_no_websocket() {
        let none = AllowedOrigins::default();
        assert!(!none.is_open());
        assert!(!none.allows(b"https://app.example.com"));
        assert!(none.admits_websocket(Some(b"https://app.example.com")));
        let any = AllowedOrigins::Any;
        assert!(any.allows(b"https://anything.example"));
        assert!(any.admits_websocket(Some(b"https://anything.example")));
    }
}
