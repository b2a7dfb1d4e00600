//! Best-effort mapping from a field path (`routes[1].auth.issuer`) to a line of block-style
//! YAML. serde keeps no spans, so validation errors find their line here. When a segment
//! cannot be found (flow style `{ a: b }`, say) the deepest line found is returned.

enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

fn segments(path: &str) -> Vec<Seg<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, rest) = part.split_once('[').unwrap_or((part, ""));
        if !key.is_empty() {
            out.push(Seg::Key(key));
        }
        for idx in rest.split('[') {
            if let Ok(i) = idx.trim_end_matches(']').parse() {
                out.push(Seg::Index(i));
            }
        }
    }
    out
}

struct Line<'a> {
    /// Column of the first character.
    indent: usize,
    /// Whether the line starts a sequence item (`- `).
    dash: bool,
    /// Column of the key (after `- ` on item lines).
    key_indent: usize,
    key: Option<&'a str>,
}

fn parse_line(raw: &str) -> Option<Line<'_>> {
    let trimmed = raw.trim_start();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return None;
    }
    let indent = raw.len() - trimmed.len();
    let (dash, body, key_indent) = match trimmed.strip_prefix("- ") {
        Some(rest) => {
            let inner = rest.trim_start();
            (true, inner, indent + 2 + (rest.len() - inner.len()))
        }
        None if trimmed == "-" => (true, "", indent + 2),
        None => (false, trimmed, indent),
    };
    let key = body
        .split_once(':')
        .map(|(k, _)| k.trim().trim_matches('"').trim_matches('\''))
        .filter(|k| !k.is_empty() && !k.contains(' ') && !k.starts_with('{'));
    Some(Line {
        indent,
        dash,
        key_indent,
        key,
    })
}

fn range<'l, 'a>(
    lines: &'l [Option<Line<'a>>],
    start: usize,
    end: usize,
) -> impl Iterator<Item = (usize, &'l Line<'a>)> + 'l {
    (start..end).filter_map(move |i| lines[i].as_ref().map(|l| (i, l)))
}

/// 1-based line number of `path` in `text`.
pub fn line_of(text: &str, path: &str) -> Option<usize> {
    let lines: Vec<Option<Line<'_>>> = text.lines().map(parse_line).collect();
    let (mut start, mut end) = (0usize, lines.len());
    let mut found = None;
    for seg in segments(path) {
        match seg {
            Seg::Key(k) => {
                let Some(level) = range(&lines, start, end).next().map(|(_, l)| l.key_indent)
                else {
                    break;
                };
                let Some((at, _)) = range(&lines, start, end)
                    .find(|(_, l)| l.key_indent == level && l.key == Some(k))
                else {
                    break;
                };
                found = Some(at + 1);
                start = at + 1;
                end = range(&lines, start, end)
                    .find(|(_, l)| l.indent <= level && (l.dash || l.key_indent <= level))
                    .map_or(end, |(i, _)| i);
            }
            Seg::Index(n) => {
                let Some(level) = range(&lines, start, end)
                    .filter(|(_, l)| l.dash)
                    .map(|(_, l)| l.indent)
                    .min()
                else {
                    break;
                };
                let items: Vec<usize> = range(&lines, start, end)
                    .filter(|(_, l)| l.dash && l.indent == level)
                    .map(|(i, _)| i)
                    .collect();
                let Some(&at) = items.get(n) else { break };
                found = Some(at + 1);
                end = items.get(n + 1).copied().unwrap_or(end);
                start = at;
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::line_of;

    const DOC: &str = "version: 1
listen: \"127.0.0.1:8080\"
issuers:
  - name: corp
    issuer: https://idp/
    audiences: [a]
routes:
  - name: one
    upstream: http://127.0.0.1:1
    auth: { issuer: corp }
  - name: two
    upstream: http://127.0.0.1:2
    auth:
      issuer: nope
      require_scopes: [x]
";

    #[test]
    fn finds_nested_fields() {
        assert_eq!(line_of(DOC, "version"), Some(1));
        assert_eq!(line_of(DOC, "issuers[0].issuer"), Some(5));
        assert_eq!(line_of(DOC, "routes[0].name"), Some(8));
        assert_eq!(line_of(DOC, "routes[1].upstream"), Some(12));
        assert_eq!(line_of(DOC, "routes[1].auth.issuer"), Some(14));
        assert_eq!(line_of(DOC, "routes[1].auth.require_scopes"), Some(15));
    }

    #[test]
    fn falls_back_to_deepest_found_line() {
        // flow mapping: `issuer` is on the `auth:` line
        assert_eq!(line_of(DOC, "routes[0].auth.issuer"), Some(10));
        assert_eq!(line_of(DOC, "routes[5].name"), Some(7));
        assert_eq!(line_of(DOC, "nothing"), None);
    }
}
