use super::{canonicalize, check_host, CanonError};

fn canon(raw: &str) -> Result<String, CanonError> {
    canonicalize(raw.as_bytes(), false).map(|t| t.request_target())
}

fn merged(raw: &str) -> Result<String, CanonError> {
    canonicalize(raw.as_bytes(), true).map(|t| t.request_target())
}

#[test]
fn unreserved_escapes_are_decoded_and_others_upper_cased() {
    assert_eq!(canon("/api/%61dmin/x").unwrap(), "/api/admin/x");
    assert_eq!(canon("/api/admi%6E").unwrap(), "/api/admin");
    assert_eq!(canon("/a%7e%2D%5F").unwrap(), "/a~-_");
    assert_eq!(canon("/a%3bb%3f").unwrap(), "/a%3Bb%3F");
    assert_eq!(canon("/a%20b").unwrap(), "/a%20b");
    assert_eq!(canon("/caf%c3%a9").unwrap(), "/caf%C3%A9");
    assert_eq!(canon("/café").unwrap(), "/caf%C3%A9");
    assert_eq!(
        canon("/x?a=%61&b").unwrap(),
        "/x?a=%61&b",
        "the query is kept as sent"
    );
    assert_eq!(canon("/plain/path.json").unwrap(), "/plain/path.json");
    assert_eq!(canon("/").unwrap(), "/");
    assert_eq!(canon("/trailing/").unwrap(), "/trailing/");
}

#[test]
fn ambiguous_targets_are_refused() {
    use CanonError::{
        Backslash, BadEscape, BadQuery, BadUtf8, DotSegment, DoubleEncoded, EmptySegment,
        EncodedControl, EncodedSeparator, NotAPath, RawByte,
    };
    for (raw, want) in [
        ("/a%2fb", EncodedSeparator),
        ("/a%2Fb", EncodedSeparator),
        ("/a%5cb", EncodedSeparator),
        ("/a/%2e%2e/b", EncodedSeparator),
        ("/a%00", EncodedSeparator),
        ("/a%0d%0aX:1", EncodedControl),
        ("/a%7f", EncodedControl),
        ("/a%252e%252e/b", DoubleEncoded),
        ("/a%252F", DoubleEncoded),
        ("/a%25%61%62", DoubleEncoded),
        ("/a%25%41b", DoubleEncoded),
        ("/a%zz", BadEscape),
        ("/a%4", BadEscape),
        ("/a%", BadEscape),
        ("/a%c0%af", BadUtf8),
        ("/a%e0%80%af", BadUtf8),
        ("/a%ed%a0%80", BadUtf8),
        ("/a%c3", BadUtf8),
        ("/a%c3/x", BadUtf8),
        ("/a b", RawByte),
        ("/a\tb", RawByte),
        ("/a\rb", RawByte),
        ("/a\x7f", RawByte),
        ("/a\\b", Backslash),
        ("/a/../b", DotSegment),
        ("/a/./b", DotSegment),
        ("/a/..", DotSegment),
        ("/health/..;/api/admin/x", DotSegment),
        ("/api/x/..;/admin/y", DotSegment),
        ("/api/.;x/admin", DotSegment),
        ("/api//admin/x", EmptySegment),
        ("/api///admin", EmptySegment),
        ("//api", EmptySegment),
        ("api/x", NotAPath),
        ("*", NotAPath),
        ("/x?a b", BadQuery),
        ("/x?a\x01", BadQuery),
    ] {
        assert_eq!(canon(raw), Err(want), "{raw:?}");
    }
    assert_eq!(
        canonicalize(b"/a\xc0\xafb", false).unwrap_err(),
        BadUtf8,
        "raw overlong UTF-8"
    );
    assert_eq!(canonicalize(b"/x?\xff", false).unwrap_err(), BadQuery);
}

#[test]
fn merge_slashes_merges_empty_segments_before_matching() {
    assert_eq!(merged("/api//admin/x").unwrap(), "/api/admin/x");
    assert_eq!(merged("//api///admin//").unwrap(), "/api/admin/");
    assert_eq!(merged("/a/%2e%2e"), Err(CanonError::EncodedSeparator));
    assert_eq!(merged("/a//../b"), Err(CanonError::DotSegment));
}

#[test]
fn path_parameters_are_kept_but_not_matched() {
    let t = canonicalize(b"/api;jsessionid=1/admin;v=2/x", false).unwrap();
    assert_eq!(t.path, "/api;jsessionid=1/admin;v=2/x");
    assert_eq!(t.without_params.as_deref(), Some("/api/admin/x"));
    assert_eq!(t.match_path(), "/api/admin/x");
    let plain = canonicalize(b"/api/admin", false).unwrap();
    assert_eq!(plain.without_params, None);
    assert_eq!(plain.match_path(), "/api/admin");
    // A segment that is only a parameter leaves an empty segment behind.
    assert_eq!(
        canonicalize(b"/api/;x/admin", false).unwrap_err(),
        CanonError::EmptySegment
    );
    assert_eq!(
        canonicalize(b"/api/;x/admin", true).unwrap().match_path(),
        "/api/admin"
    );
}

#[test]
fn canonical_form_is_a_fixed_point() {
    for raw in [
        "/api/%61dmin/x",
        "/caf%c3%a9/%3b",
        "/a%20b?q=1",
        "/x;p=1/y",
        "/é/ü",
    ] {
        let once = canon(raw).unwrap();
        assert_eq!(canon(&once).unwrap(), once, "{raw}");
    }
}

#[test]
fn hosts() {
    for ok in [
        "api.example.com",
        "api.example.com:8080",
        "127.0.0.1:1",
        "[::1]",
        "[::1]:65535",
        "a_b-c",
    ] {
        assert_eq!(check_host(Some(ok)), Ok(()), "{ok}");
    }
    for bad in [
        "api.example.com:",
        "api.example.com:0",
        "api.example.com:65536",
        "api.example.com:80a",
        "api.example.com:+80",
        "a b",
        "evil.com/x",
        "user@evil.com",
        "[::1",
        "[::1]x",
        "[zz]",
        ":80",
    ] {
        assert_eq!(check_host(Some(bad)), Err(CanonError::BadHost), "{bad}");
    }
    assert_eq!(check_host(None), Err(CanonError::MissingHost));
    assert_eq!(check_host(Some("")), Err(CanonError::MissingHost));
}
