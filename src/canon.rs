//! The one canonical form of a request target, decided once per request. Route matching, the
//! policy's `input.request.path`, the approval binding, the decision log and the request line
//! sent upstream all use it, so the upstream acts on exactly the path that was authorized.
//!
//! Canonical form (RFC 3986 §6.2.2): percent-encoded unreserved characters (`A-Z a-z 0-9 - _
//! ~`) are decoded, every other escape is written with upper-case hex, and raw UTF-8 is
//! percent-encoded. What cannot be made unambiguous is refused: encoded `/` `\` `.` NUL and
//! control characters, double encoding (`%25` + hex), invalid or overlong UTF-8, raw
//! whitespace, control or backslash bytes, dot segments (also `..;x`), and empty segments
//! (`//`) unless the listener merges them. `;` path parameters are kept here and refused by
//! the proxy unless the matched route allows them; routes match on the path without them.

use std::borrow::Cow;
use std::fmt;

/// Why a request target was refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CanonError {
    NotAPath,
    BadEscape,
    EncodedSeparator,
    EncodedControl,
    DoubleEncoded,
    BadUtf8,
    RawByte,
    Backslash,
    DotSegment,
    EmptySegment,
    BadQuery,
    MissingHost,
    BadHost,
}

impl CanonError {
    pub fn message(self) -> &'static str {
        match self {
            CanonError::NotAPath => "the request target is not an absolute path",
            CanonError::BadEscape => "the request path has an invalid percent-escape",
            CanonError::EncodedSeparator => {
                "the request path encodes a separator, dot or NUL (%2F, %5C, %2E, %00)"
            }
            CanonError::EncodedControl => "the request path encodes a control character",
            CanonError::DoubleEncoded => "the request path is double-encoded (%25 before hex)",
            CanonError::BadUtf8 => "the request path holds invalid or overlong UTF-8",
            CanonError::RawByte => "the request target holds whitespace or control characters",
            CanonError::Backslash => "the request path holds a backslash",
            CanonError::DotSegment => "the request path is not canonical (dot segments)",
            CanonError::EmptySegment => "the request path has empty segments (//)",
            CanonError::BadQuery => {
                "the request query holds whitespace, control characters or invalid UTF-8"
            }
            CanonError::MissingHost => "the request has no Host",
            CanonError::BadHost => "the request's Host is not a valid host[:port]",
        }
    }
}

impl fmt::Display for CanonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

/// A request target in canonical form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target<'a> {
    /// The canonical path, as forwarded (keeps `;` parameters and the client's case).
    pub path: Cow<'a, str>,
    /// When the path holds `;` parameters: the path routes match against, without them (and
    /// the empty segments they leave merged when the listener merges slashes).
    pub without_params: Option<String>,
    pub query: Option<&'a str>,
}

impl Target<'_> {
    /// The path routes match against.
    pub fn match_path(&self) -> &str {
        self.without_params.as_deref().unwrap_or(&self.path)
    }

    /// `path[?query]` as it goes on the request line.
    pub fn request_target(&self) -> String {
        match self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.to_string(),
        }
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~')
}

/// Whether `b` may stand raw in a canonical path (RFC 3986 pchar and `/`, plus the printable
/// characters clients commonly leave unescaped). Everything else is refused or escaped.
fn raw_ok(b: u8) -> Result<(), CanonError> {
    match b {
        0x00..=0x20 | 0x7f => Err(CanonError::RawByte),
        b'\\' => Err(CanonError::Backslash),
        _ => Ok(()),
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn push_escaped(out: &mut String, b: u8) {
    out.push('%');
    out.push(HEX[usize::from(b >> 4)] as char);
    out.push(HEX[usize::from(b & 15)] as char);
}

/// Validate a run of non-ASCII bytes as UTF-8 and write it escaped.
fn flush_utf8(run: &mut Vec<u8>, out: &mut String) -> Result<(), CanonError> {
    if run.is_empty() {
        return Ok(());
    }
    std::str::from_utf8(run).map_err(|_| CanonError::BadUtf8)?;
    for b in run.drain(..) {
        push_escaped(out, b);
    }
    Ok(())
}

/// Decode unreserved escapes, upper-case the others, escape raw UTF-8; refuse the rest.
fn normalise_bytes(raw: &[u8]) -> Result<String, CanonError> {
    let mut out = String::with_capacity(raw.len() + 8);
    let mut run = Vec::new();
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b == b'%' {
            let (Some(hi), Some(lo)) = (
                raw.get(i + 1).copied().and_then(hex),
                raw.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(CanonError::BadEscape);
            };
            let v = hi << 4 | lo;
            i += 3;
            if v >= 0x80 {
                run.push(v);
                continue;
            }
            flush_utf8(&mut run, &mut out)?;
            match v {
                b'/' | b'\\' | b'.' | 0 => return Err(CanonError::EncodedSeparator),
                0x01..=0x1f | 0x7f => return Err(CanonError::EncodedControl),
                v if is_unreserved(v) => out.push(v as char),
                v => push_escaped(&mut out, v),
            }
        } else if b >= 0x80 {
            run.push(b);
            i += 1;
        } else {
            flush_utf8(&mut run, &mut out)?;
            raw_ok(b)?;
            out.push(b as char);
            i += 1;
        }
    }
    flush_utf8(&mut run, &mut out)?;
    // Double encoding (`%25` + two hex digits, also when a decoded escape supplied them) would
    // read as another escape to an upstream that decodes twice.
    let b = out.as_bytes();
    let double = (0..b.len().saturating_sub(4))
        .any(|i| &b[i..i + 3] == b"%25" && hex(b[i + 3]).is_some() && hex(b[i + 4]).is_some());
    if double {
        return Err(CanonError::DoubleEncoded);
    }
    Ok(out)
}

/// Check the segments of a normalised path; merge empty ones when `merge_slashes`.
/// Returns the path with empty segments merged (borrowed when nothing was merged).
fn check_segments(path: &str, merge_slashes: bool) -> Result<Cow<'_, str>, CanonError> {
    let mut merged = false;
    let mut segments = path[1..].split('/').peekable();
    while let Some(seg) = segments.next() {
        let name = seg.split(';').next().unwrap_or("");
        if name == "." || name == ".." {
            return Err(CanonError::DotSegment);
        }
        // An empty last segment is a trailing slash, not an empty segment.
        if seg.is_empty() && segments.peek().is_some() {
            if !merge_slashes {
                return Err(CanonError::EmptySegment);
            }
            merged = true;
        }
    }
    if !merged {
        return Ok(Cow::Borrowed(path));
    }
    let mut out = String::with_capacity(path.len());
    let mut segments = path[1..].split('/').peekable();
    while let Some(seg) = segments.next() {
        if !seg.is_empty() || segments.peek().is_none() {
            out.push('/');
            out.push_str(seg);
        }
    }
    Ok(Cow::Owned(out))
}

/// The routing view of a canonical path: `;` parameters removed from every segment.
fn without_params(path: &str, merge_slashes: bool) -> Result<String, CanonError> {
    let stripped: Vec<&str> = path[1..]
        .split('/')
        .map(|seg| seg.split(';').next().unwrap_or(""))
        .collect();
    let joined = format!("/{}", stripped.join("/"));
    Ok(check_segments(&joined, merge_slashes)?.into_owned())
}

fn check_query(q: &[u8]) -> Result<&str, CanonError> {
    if q.iter().any(|&b| b <= 0x20 || b == 0x7f) {
        return Err(CanonError::BadQuery);
    }
    std::str::from_utf8(q).map_err(|_| CanonError::BadQuery)
}

/// Canonicalise an origin-form request target (`/path[?query]`, raw bytes as received).
pub fn canonicalize(raw: &[u8], merge_slashes: bool) -> Result<Target<'_>, CanonError> {
    let (path, query) = match raw.iter().position(|&b| b == b'?') {
        Some(i) => (&raw[..i], Some(check_query(&raw[i + 1..])?)),
        None => (raw, None),
    };
    if path.first() != Some(&b'/') {
        return Err(CanonError::NotAPath);
    }
    let plain = path.iter().all(|&b| b != b'%' && b < 0x80);
    let normalised: Cow<'_, str> = if plain {
        for &b in path {
            raw_ok(b)?;
        }
        // All ASCII: valid UTF-8.
        Cow::Borrowed(std::str::from_utf8(path).map_err(|_| CanonError::BadUtf8)?)
    } else {
        Cow::Owned(normalise_bytes(path)?)
    };
    let path: Cow<'_, str> = match normalised {
        Cow::Borrowed(p) => check_segments(p, merge_slashes)?,
        Cow::Owned(p) => Cow::Owned(check_segments(&p, merge_slashes)?.into_owned()),
    };
    let without_params = match path.contains(';') {
        true => Some(without_params(&path, merge_slashes)?),
        false => None,
    };
    Ok(Target {
        path,
        without_params,
        query,
    })
}

/// A `Host` (or `:authority`): reg-name, IPv4 or `[IPv6]`, optional `:port` (1–65535).
pub fn check_host(host: Option<&str>) -> Result<(), CanonError> {
    let host = host.ok_or(CanonError::MissingHost)?;
    if host.is_empty() {
        return Err(CanonError::MissingHost);
    }
    let port = if let Some(rest) = host.strip_prefix('[') {
        let (v6, after) = rest.split_once(']').ok_or(CanonError::BadHost)?;
        if v6.is_empty()
            || !v6
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return Err(CanonError::BadHost);
        }
        match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or(CanonError::BadHost)?),
        }
    } else {
        let (name, port) = match host.rsplit_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (host, None),
        };
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        {
            return Err(CanonError::BadHost);
        }
        port
    };
    if let Some(p) = port {
        let ok = !p.is_empty()
            && p.len() <= 5
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u32>().is_ok_and(|n| (1..=65535).contains(&n));
        if !ok {
            return Err(CanonError::BadHost);
        }
    }
    Ok(())
}

/// Methods a route without `methods:` accepts. TRACE, CONNECT, lower-case spellings and
/// extension methods (WebDAV's PROPFIND, …) are accepted only where a route lists them.
pub const DEFAULT_METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// Request headers that make some upstreams act on another path or method than the request
/// line's; removed before forwarding unless the route passes them on.
pub const REROUTING_HEADERS: &[&str] = &[
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-forwarded-host",
    "x-forwarded-prefix",
    "x-forwarded-uri",
    "x-forwarded-path",
    "x-forwarded-port",
    "x-forwarded-server",
    "x-forwarded-scheme",
    "x-original-host",
    "x-host",
    "forwarded",
];

#[cfg(test)]
mod tests;
