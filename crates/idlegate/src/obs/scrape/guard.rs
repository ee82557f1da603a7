//! The checks of [`Guard`] a request passes before a service sees it.
//!
//! Contract, in this order: on a loopback address the `Host` field must name a loopback host
//! (`localhost`, or an IP literal in 127.0.0.0/8 or `[::1]`, any port), else 403: a page of
//! another site that made its own name resolve to 127.0.0.1 (DNS rebinding) sends its own
//! name. With a token, `GET /?token=TOKEN` is answered 303 to `/` with this server's
//! session cookie (a wrong token 401), and every other request carries the token as
//! `Authorization: Bearer TOKEN` or the session cookie, else 401 with
//! `WWW-Authenticate: Bearer`. The session cookie ([`Access`]) is named after the port the
//! server listens on (`idlegate_PORT`: cookies are shared by every port of a host, RFC 6265,
//! section 8.5, so two servers on one host must not overwrite each other's) and holds a
//! random secret made when the server started, not the token: a cookie another server of the
//! host receives is not the token scripts use, and it opens no other server and no later run.
//! Secrets are compared with `subtle`'s constant-time equality (the time taken does not tell
//! how many leading bytes were right; the length may show). A POST must say
//! `Content-Type: application/json`, else 415: a page of another origin cannot send that
//! without a CORS preflight, which this server never allows.

use super::request::{is_json, Fields, Head, Verb};
use crate::obs::http::Response;
use anyhow::{anyhow, Result};
use std::borrow::Cow;
use subtle::ConstantTimeEq;

/// What a service's server with a token lets in: the token, and the session cookie it gives
/// a browser for it.
#[derive(Clone)]
pub(super) struct Access {
    pub(super) token: String,
    /// The cookie's name: `idlegate_PORT`.
    pub(super) cookie: String,
    /// The cookie's value: 32 random bytes in hex, made when the server started.
    pub(super) secret: String,
}

impl Access {
    /// The access of a server with `token` listening on `port`, with a new session secret.
    pub(super) fn new(token: &str, port: u16) -> Result<Access> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)
            .map_err(|e| anyhow!("making the API's session cookie: no random bytes: {e}"))?;
        Ok(Access {
            token: token.to_string(),
            cookie: format!("idlegate_{port}"),
            secret: bytes.iter().map(|b| format!("{b:02x}")).collect(),
        })
    }
}

/// What the guard makes of a request.
#[derive(Debug)]
pub(super) enum Verdict {
    /// The service may answer it.
    Pass,
    /// The guard answers it.
    Answer(Response),
}

/// Checks a whole request head for a server listening on a loopback address or not.
pub(super) fn check(
    access: Option<&Access>,
    loopback: bool,
    head: &Head,
    fields: &Fields,
) -> Verdict {
    if loopback {
        match fields.host.as_deref() {
            Some(host) if is_loopback_host(host) => {}
            Some(host) => {
                return Verdict::Answer(Response::error(
                    403,
                    &format!(
                        "Host {host:?} is not a loopback name: this server answers only requests \
                         for 127.0.0.1, localhost or [::1] (a page of another site that \
                         resolves its name to a loopback address is refused)"
                    ),
                ))
            }
            None => {
                return Verdict::Answer(Response::error(
                    400,
                    "a request without a Host header field (RFC 9112, section 3.2)",
                ))
            }
        }
    }
    if let Some(access) = access {
        let read = matches!(head.verb, Verb::Get | Verb::Head);
        if read && head.path() == "/" {
            if let Some(given) = query_token(head.query()) {
                if !equal(given.as_bytes(), access.token.as_bytes()) {
                    return Verdict::Answer(unauthorized(
                        "the token in ?token= is not this server's",
                    ));
                }
                return Verdict::Answer(Response {
                    status: 303,
                    content_type: "text/plain; charset=utf-8",
                    headers: vec![
                        ("Location", "/".to_string()),
                        (
                            "Set-Cookie",
                            format!(
                                "{}={}; HttpOnly; SameSite=Strict; Path=/",
                                access.cookie, access.secret
                            ),
                        ),
                        ("Cache-Control", "no-store".to_string()),
                    ],
                    body: Cow::Borrowed(b""),
                });
            }
        }
        // The bearer token against the token, each cookie of this server's name against the
        // session secret (never the other way round).
        let carried = bearer(fields.authorization.as_deref())
            .map(|t| (t, access.token.as_str()))
            .into_iter()
            .chain(
                fields
                    .cookies
                    .iter()
                    .flat_map(|c| cookie_values(c, &access.cookie))
                    .map(|v| (v, access.secret.as_str())),
            )
            .collect::<Vec<(&str, &str)>>();
        // Every candidate compared, so that the time does not tell which one was right.
        let right = carried.iter().fold(false, |ok, (c, want)| {
            ok | equal(c.as_bytes(), want.as_bytes())
        });
        if !right {
            return Verdict::Answer(unauthorized(if carried.is_empty() {
                "this server needs its token: send Authorization: Bearer TOKEN, or open /?token=TOKEN once in a browser"
            } else {
                "the token sent is not this server's"
            }));
        }
    }
    if head.verb == Verb::Post && !fields.content_type.as_deref().is_some_and(is_json) {
        return Verdict::Answer(Response::error(
            415,
            "a POST must say Content-Type: application/json",
        ));
    }
    Verdict::Pass
}

/// 401 with `WWW-Authenticate: Bearer` (RFC 9110, section 11.6.1; RFC 6750, section 3).
fn unauthorized(message: &str) -> Response {
    let mut response = Response::error(401, message);
    response
        .headers
        .push(("WWW-Authenticate", "Bearer".to_string()));
    response
}

/// Constant-time equality of two tokens.
fn equal(a: &[u8], b: &[u8]) -> bool {
    bool::from(a.ct_eq(b))
}

/// Whether a `Host` field's value (`name[:port]`) names this machine's loopback: `localhost`,
/// an IPv4 literal in 127.0.0.0/8, `[::1]`.
pub(super) fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        let Some((literal, port)) = rest.split_once(']') else {
            return false;
        };
        if !(port.is_empty() || port.strip_prefix(':').is_some_and(is_port)) {
            return false;
        }
        return literal
            .parse::<std::net::Ipv6Addr>()
            .is_ok_and(|a| a.is_loopback());
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if is_port(port) => name,
            Some(_) => return false,
            None => host,
        }
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|a| a.is_loopback())
}

fn is_port(port: &str) -> bool {
    !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit())
}

/// The token of `Authorization: Bearer TOKEN` (the scheme in any case: RFC 9110, section 11.1).
fn bearer(authorization: Option<&str>) -> Option<&str> {
    let (scheme, token) = authorization?.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// Every value of the cookie `name` in one `Cookie` field (`a=b; idlegate_9466=…`).
fn cookie_values<'a>(cookie: &'a str, name: &'a str) -> impl Iterator<Item = &'a str> {
    cookie.split(';').filter_map(move |pair| {
        let (key, value) = pair.trim().split_once('=')?;
        (key == name).then_some(value)
    })
}

/// The value of `token=` in a query, percent-decoded.
fn query_token(query: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let value = pair.strip_prefix("token=")?;
        percent_decode(value)
    })
}

/// `%XX` decoded; `None` for a bad escape or bytes that are not UTF-8. A `+` stays a `+`:
/// a token never holds a space ([`token_is_sendable`]), and base64 tokens hold `+`, which a
/// user pastes into `/?token=` as it is (the form encoding's `+` for a space would refuse
/// two tokens in five).
fn percent_decode(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Whether `token` can travel in every way the guard reads it: visible ASCII without the
/// characters a cookie value or a header cannot hold unquoted (RFC 6265, section 4.1.1:
/// no space, `"`, `,`, `;` or `\`).
pub fn token_is_sendable(token: &str) -> bool {
    token
        .bytes()
        .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b',' | b';' | b'\\'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_localhost_127_0_0_0_8_and_ipv6_one_with_any_port() {
        for host in [
            "127.0.0.1",
            "127.0.0.1:9466",
            "127.1.2.3:80",
            "localhost",
            "LocalHost:9466",
            "[::1]",
            "[::1]:9466",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:9466",
            "localhost.evil.example",
            "192.0.2.1:9466",
            "[::2]:9466",
            "[::1]x",
            "127.0.0.1:x",
            "::1",
            "",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn the_token_is_read_from_bearer_any_case_and_the_query_a_cookie_by_its_name() {
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        let values: Vec<&str> = cookie_values(
            "a=1; idlegate_9466=xyz;b=2; idlegate_9467=w",
            "idlegate_9466",
        )
        .collect();
        assert_eq!(values, ["xyz"]);
        assert_eq!(query_token("x=1&token=a%2Bb+c").as_deref(), Some("a+b+c"));
        assert_eq!(query_token("tokens=1"), None);
        assert_eq!(query_token("token=%zz"), None);
    }

    #[test]
    fn only_tokens_a_cookie_can_carry_are_sendable() {
        assert!(token_is_sendable("0123456789abcdef-_.~+/="));
        for bad in ["a b", "a;b", "a,b", "a\"b", "a\\b", "é", "a\tb"] {
            assert!(!token_is_sendable(bad), "{bad:?}");
        }
    }
}
