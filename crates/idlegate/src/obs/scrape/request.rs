//! Reading a request: its line and where its head ends ([`parse`]), then, for a server that
//! serves more than the metrics, the few header fields it acts on ([`fields`]).
//!
//! Contract: [`parse`] reads the request line as Go's net/http does (method, target and
//! version split by single spaces; a line without a version is HTTP/0.9's simple request,
//! answered 400) and says nothing until the head is whole or longer than [`MAX_REQUEST`]
//! (431). [`fields`] refuses what RFC 9112 says a server must or may refuse: whitespace
//! between a field's name and its colon, an obsolete line folding, a second `Host`,
//! Content-Length values that disagree or are not a number (400); [`body_length`] refuses both
//! Content-Length and Transfer-Encoding (400), a Transfer-Encoding alone (411: only
//! Content-Length bodies are read) and a body longer than the server reads (413).

/// The longest request head read; a longer one is answered 431.
pub const MAX_REQUEST: usize = 8 * 1024;

/// The methods the server knows; HEAD is answered as GET without the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verb {
    Get,
    Head,
    Post,
    /// Anything else: 405.
    Other,
}

/// Why a request is answered by the server itself, before any service sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// A request line without an HTTP version: HTTP/0.9 (400).
    Simple,
    /// Not an HTTP/1.x request line (400).
    Malformed,
    /// HTTP/2.0 and later on this socket (505).
    VersionNotSupported,
    /// A head longer than [`MAX_REQUEST`] (431).
    TooLarge,
    /// A method the server does not serve (405).
    MethodNotAllowed,
    /// A header field RFC 9112 says to refuse (400): what is wrong with it.
    BadField(&'static str),
    /// A body sent with Transfer-Encoding rather than Content-Length (411).
    LengthRequired,
    /// A body longer than the server reads (413).
    BodyTooLarge,
}

/// The request line of a whole head, and where the head ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Head {
    pub verb: Verb,
    /// The request target as sent (`/api/flows?limit=3`).
    pub target: String,
    /// HTTP/1.0 rather than HTTP/1.1.
    pub http10: bool,
    /// Where the header fields start and end (the empty line excluded) in the bytes read.
    pub fields: std::ops::Range<usize>,
    /// The head's length, its empty line included: the body starts there.
    pub len: usize,
}

impl Head {
    /// The path, without the query.
    pub fn path(&self) -> &str {
        self.target.split_once('?').map_or(&self.target, |(p, _)| p)
    }

    /// What follows `?`, or empty.
    pub fn query(&self) -> &str {
        self.target.split_once('?').map_or("", |(_, q)| q)
    }
}

/// What the bytes read so far are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Parse {
    /// More is needed.
    Incomplete,
    Refused(Refusal),
    Whole(Head),
}

#[cfg(test)]
thread_local! {
    /// How many times [`parse`] ran on this thread (the tests count them).
    pub(super) static PARSES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// What the bytes `data` read from a client are, once that is known.
pub(super) fn parse(data: &[u8]) -> Parse {
    #[cfg(test)]
    PARSES.with(|p| p.set(p.get() + 1));
    // Empty lines before the request line are ignored (RFC 9112, section 2.2).
    let start = data
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(data.len());
    let head = &data[start..];
    let too_large = || {
        if data.len() > MAX_REQUEST {
            Parse::Refused(Refusal::TooLarge)
        } else {
            Parse::Incomplete
        }
    };
    let Some(line_end) = head.iter().position(|&b| b == b'\n') else {
        return too_large();
    };
    let line = head[..line_end]
        .strip_suffix(b"\r")
        .unwrap_or(&head[..line_end]);
    let Ok(line) = std::str::from_utf8(line) else {
        return Parse::Refused(Refusal::Malformed);
    };
    // Split as Go's net/http does: method, target and version separated by single spaces.
    let (method, target, version) = match line.split_once(' ') {
        Some((method, rest)) => match rest.split_once(' ') {
            Some((target, version)) => (method, target, Some(version)),
            None => (method, rest, None),
        },
        None => return Parse::Refused(Refusal::Malformed),
    };
    let Some(version) = version else {
        return Parse::Refused(if method.is_empty() || target.is_empty() {
            Refusal::Malformed
        } else {
            Refusal::Simple
        });
    };
    if method.is_empty() || target.is_empty() || version.contains(' ') {
        return Parse::Refused(Refusal::Malformed);
    }
    let http10 = match version {
        "HTTP/1.0" => true,
        "HTTP/1.1" => false,
        v if v.starts_with("HTTP/") => return Parse::Refused(Refusal::VersionNotSupported),
        _ => return Parse::Refused(Refusal::Malformed),
    };
    // The header fields, up to the empty line.
    let fields_start = start + line_end + 1;
    let mut at = fields_start;
    let (fields_end, len) = loop {
        let Some(end) = data[at..].iter().position(|&b| b == b'\n') else {
            return too_large();
        };
        let line = &data[at..at + end];
        if line.is_empty() || line == b"\r" {
            break (at, at + end + 1);
        }
        at += end + 1;
    };
    if len > MAX_REQUEST {
        return Parse::Refused(Refusal::TooLarge);
    }
    let verb = match method {
        "GET" => Verb::Get,
        "HEAD" => Verb::Head,
        "POST" => Verb::Post,
        _ => Verb::Other,
    };
    Parse::Whole(Head {
        verb,
        target: target.to_string(),
        http10,
        fields: fields_start..fields_end,
        len,
    })
}

/// The header fields the server acts on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Fields {
    pub host: Option<String>,
    pub authorization: Option<String>,
    /// Every `Cookie` field's value.
    pub cookies: Vec<String>,
    pub content_type: Option<String>,
    pub content_length: Option<usize>,
    pub transfer_encoding: bool,
    pub last_event_id: Option<String>,
}

/// The fields of the header block `block` (the lines between the request line and the empty
/// line), or why the request is refused.
pub(super) fn fields(block: &[u8]) -> Result<Fields, Refusal> {
    let mut out = Fields::default();
    for line in block.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            // RFC 9112, section 5.2: a server may reject obs-fold with 400.
            return Err(Refusal::BadField("a header field folded over lines"));
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(Refusal::BadField("a header line without a colon"));
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.is_empty() || name.iter().any(|&b| b == b' ' || b == b'\t') {
            // RFC 9112, section 5.1: whitespace before the colon must be refused.
            return Err(Refusal::BadField(
                "whitespace in or before a header field's name",
            ));
        }
        let Ok(name) = std::str::from_utf8(name) else {
            return Err(Refusal::BadField("a header field's name that is not text"));
        };
        let value = value.trim_ascii();
        let known = [
            "host",
            "authorization",
            "cookie",
            "content-type",
            "content-length",
            "transfer-encoding",
            "last-event-id",
        ];
        let Some(&name) = known.iter().find(|k| k.eq_ignore_ascii_case(name)) else {
            continue;
        };
        let Ok(value) = std::str::from_utf8(value) else {
            return Err(Refusal::BadField(
                "a header field's value that is not UTF-8",
            ));
        };
        let value = value.to_string();
        match name {
            "host" => {
                if out.host.replace(value).is_some() {
                    // RFC 9112, section 3.2.
                    return Err(Refusal::BadField("more than one Host"));
                }
            }
            "authorization" => {
                if out.authorization.replace(value).is_some() {
                    return Err(Refusal::BadField("more than one Authorization"));
                }
            }
            "cookie" => out.cookies.push(value),
            "content-type" => out.content_type = Some(value),
            "content-length" => {
                // RFC 9112, section 6.3: a list of equal values is that value; anything
                // else is unrecoverable.
                for item in value.split(',').map(str::trim) {
                    let n = (!item.is_empty() && item.bytes().all(|b| b.is_ascii_digit()))
                        .then(|| item.parse::<usize>().ok())
                        .flatten()
                        .ok_or(Refusal::BadField("a Content-Length that is not a number"))?;
                    if out.content_length.is_some_and(|m| m != n) {
                        return Err(Refusal::BadField("Content-Length values that differ"));
                    }
                    out.content_length = Some(n);
                }
            }
            "transfer-encoding" => out.transfer_encoding = true,
            _ => out.last_event_id = Some(value),
        }
    }
    Ok(out)
}

/// The length of a POST's body, at most `max`: Content-Length, or 0 without one (RFC 9112,
/// section 6.3); a Transfer-Encoding is refused.
pub(super) fn body_length(fields: &Fields, max: usize) -> Result<usize, Refusal> {
    if fields.transfer_encoding {
        if fields.content_length.is_some() {
            // RFC 9112, section 6.1: may be refused; it is how requests are smuggled.
            return Err(Refusal::BadField(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        return Err(Refusal::LengthRequired);
    }
    match fields.content_length.unwrap_or(0) {
        n if n > max => Err(Refusal::BodyTooLarge),
        n => Ok(n),
    }
}

/// Whether a Content-Type names `application/json` (any parameters, any case: RFC 9110,
/// section 8.3.1).
pub(super) fn is_json(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(data: &[u8]) -> Head {
        match parse(data) {
            Parse::Whole(head) => head,
            other => panic!("{other:?} for {:?}", String::from_utf8_lossy(data)),
        }
    }

    fn fields_of(data: &[u8]) -> Result<Fields, Refusal> {
        let head = whole(data);
        fields(&data[head.fields]).and_then(|f| body_length(&f, 10).map(|_| f))
    }

    #[test]
    fn the_head_ends_at_its_empty_line_and_the_body_starts_after_it() {
        let data = b"POST /api/expire HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}";
        let head = whole(data);
        assert_eq!(head.verb, Verb::Post);
        assert_eq!(&data[head.len..], b"{}");
        assert_eq!(head.path(), "/api/expire");
        let head = whole(b"GET /api/flows?limit=3 HTTP/1.0\n\n");
        assert!(head.http10);
        assert_eq!((head.path(), head.query()), ("/api/flows", "limit=3"));
    }

    #[test]
    fn fields_are_read_case_insensitively_with_their_whitespace_trimmed() {
        let f = fields_of(
            b"POST / HTTP/1.1\r\nhOsT:  127.0.0.1:9466 \r\nCONTENT-TYPE: application/json; charset=utf-8\r\n\
              Content-Length: 5\r\nCookie: a=b\r\nCookie: idlegate_token=t\r\nLast-Event-ID: 7\r\n\r\n",
        )
        .unwrap();
        assert_eq!(f.host.as_deref(), Some("127.0.0.1:9466"));
        assert!(is_json(f.content_type.as_deref().unwrap()));
        assert_eq!(f.content_length, Some(5));
        assert_eq!(f.cookies, ["a=b", "idlegate_token=t"]);
        assert_eq!(f.last_event_id.as_deref(), Some("7"));
    }

    #[test]
    fn fields_rfc_9112_says_to_refuse_are_refused() {
        let cases: [(&[u8], Refusal); 9] = [
            (
                b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
                Refusal::BadField("whitespace in or before a header field's name"),
            ),
            (
                b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
                Refusal::BadField("a header field folded over lines"),
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
                Refusal::BadField("more than one Host"),
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 1, 2\r\n\r\n",
                Refusal::BadField("Content-Length values that differ"),
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
                Refusal::BadField("a Content-Length that is not a number"),
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
                Refusal::BadField("a Content-Length that is not a number"),
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                Refusal::BadField("both Content-Length and Transfer-Encoding"),
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                Refusal::LengthRequired,
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n",
                Refusal::BodyTooLarge,
            ),
        ];
        for (data, want) in cases {
            assert_eq!(
                fields_of(data),
                Err(want),
                "{}",
                String::from_utf8_lossy(data)
            );
        }
        // Equal values in a list are that value (RFC 9112, section 6.3).
        let f = fields_of(b"POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\n").unwrap();
        assert_eq!(f.content_length, Some(3));
    }

    #[test]
    fn only_application_json_is_json() {
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON ; charset=utf-8"));
        assert!(!is_json("text/plain"));
        assert!(!is_json("application/x-www-form-urlencoded"));
        assert!(!is_json("application/jsonx"));
    }
}
