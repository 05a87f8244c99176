//! What an RFC 8484 request asks for, judged from its parts before any DNS
//! is done: the path (and the client ID it may carry), the method, the
//! `dns` parameter of a GET, the content type of a POST. Pure, so that
//! every refusal is tested (and fuzzed) without a socket.
//!
//! Each refusal is an HTTP status a user can read in curl or a browser's
//! network panel; none of them says anything about which client IDs exist:
//! an unknown ID gets the very same 404 as an unknown path.

use base64::engine::general_purpose::GeneralPurpose;
use base64::engine::{DecodePaddingMode, GeneralPurposeConfig};
use base64::Engine;

use crate::proto::dns::{self, QueryInfo};

/// The largest DNS message (and so POST body) a request may carry: what
/// the 2-byte length of DNS over TCP allows, as for DoT.
pub const MAX_MESSAGE: usize = 65_535;

/// The media type of DNS messages over HTTP (RFC 8484 §6).
pub const DNS_MESSAGE: &str = "application/dns-message";

/// base64url (RFC 4648 §5). RFC 8484 §4.1 says without padding; a padded
/// value is read too, as other servers do, since it is unambiguous.
const BASE64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a request gets no DNS answer, with its HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// An unknown path, or a client ID that is not listed (the same
    /// answer, so that IDs cannot be probed).
    #[error("not found")]
    NotFound,
    #[error("only GET and POST are served here")]
    MethodNotAllowed,
    #[error("a GET needs the query's DNS message in the dns parameter")]
    NoDnsParameter,
    #[error("the dns parameter is not base64url")]
    BadBase64,
    #[error("the DNS message does not parse")]
    BadMessage,
    #[error("a POST must have content-type application/dns-message")]
    UnsupportedMediaType,
    #[error("a DNS message is at most 65535 bytes")]
    TooLarge,
    #[error("the request body did not arrive within the read timeout")]
    Timeout,
    /// The client a trusted proxy names is outside `--allow-from`.
    #[error("this client is not served here")]
    Forbidden,
    /// Over `--max-qps-per-ip` or `--max-qps-per-client-id`, with
    /// `--rate-limit-action drop` or `close`, or banned.
    #[error("too many queries from this client: slow down")]
    RateLimited,
}

impl Refusal {
    /// The status code that carries this refusal.
    pub fn status(self) -> u16 {
        match self {
            Refusal::NotFound => 404,
            Refusal::MethodNotAllowed => 405,
            Refusal::NoDnsParameter | Refusal::BadBase64 | Refusal::BadMessage => 400,
            Refusal::UnsupportedMediaType => 415,
            Refusal::TooLarge => 413,
            Refusal::Timeout => 408,
            Refusal::Forbidden => 403,
            Refusal::RateLimited => 429,
        }
    }
}

/// Where a request's path leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<'a> {
    /// The DoH path itself.
    Plain,
    /// The DoH path followed by `/ID`: a client ID (AdGuard's convention,
    /// what browsers and Windows can carry in a DoH template).
    WithId(&'a str),
}

/// Matches `path` against the DoH path `base` (such as `/dns-query`). One
/// trailing segment is an ID; it is returned as written, to be judged by
/// the client-ID gate (which checks its syntax and the list).
pub fn route<'a>(base: &str, path: &'a str) -> Result<Route<'a>, Refusal> {
    let rest = path.strip_prefix(base).ok_or(Refusal::NotFound)?;
    match rest {
        "" => Ok(Route::Plain),
        _ => match rest.strip_prefix('/') {
            Some(id) if !id.is_empty() && !id.contains('/') => Ok(Route::WithId(id)),
            _ => Err(Refusal::NotFound),
        },
    }
}

/// The method of a request, as far as DoH cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

impl Method {
    /// GET and POST only (RFC 8484 §4.1); HEAD has no body to carry an
    /// answer in, and anything else has no meaning here.
    pub fn of(method: &str) -> Result<Method, Refusal> {
        match method {
            "GET" => Ok(Method::Get),
            "POST" => Ok(Method::Post),
            _ => Err(Refusal::MethodNotAllowed),
        }
    }
}

/// The DNS message of a GET: the `dns` parameter of the query string,
/// base64url-decoded. Other parameters are ignored (a cache-buster such as
/// `&ct` may come along); a repeated `dns` takes the first.
pub fn get_message(query: Option<&str>) -> Result<Vec<u8>, Refusal> {
    let value = query
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix("dns="))
        .ok_or(Refusal::NoDnsParameter)?;
    // Four characters carry three bytes: anything longer than a largest
    // message is refused before decoding.
    if value.len() > MAX_MESSAGE.div_ceil(3) * 4 {
        return Err(Refusal::TooLarge);
    }
    let message = BASE64URL.decode(value).map_err(|_| Refusal::BadBase64)?;
    if message.len() > MAX_MESSAGE {
        return Err(Refusal::TooLarge);
    }
    Ok(message)
}

/// Whether a POST's `content-type` is the DNS message type. Media types
/// are compared without case, and parameters after `;` are ignored.
pub fn is_dns_message(content_type: Option<&[u8]>) -> bool {
    content_type
        .and_then(|value| std::str::from_utf8(value).ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case(DNS_MESSAGE))
}

/// Checks that `message` is a DNS query dotgate can read (a header and one
/// question), and returns what the query path needs of it: anything else
/// is a 400, not a DNS error, since the client sent no DNS message at all.
pub fn check_message(message: &[u8]) -> Result<QueryInfo, Refusal> {
    if message.len() < dns::HEADER_LEN {
        return Err(Refusal::BadMessage);
    }
    dns::parse_query(message).map_err(|_| Refusal::BadMessage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_route_to_the_endpoint_or_to_an_id() {
        assert_eq!(route("/dns-query", "/dns-query"), Ok(Route::Plain));
        assert_eq!(
            route("/dns-query", "/dns-query/alice"),
            Ok(Route::WithId("alice"))
        );
        for other in [
            "/",
            "/dns-query/",
            "/dns-query/a/b",
            "/dns-queryx",
            "/dns",
            "/index.html",
        ] {
            assert_eq!(
                route("/dns-query", other),
                Err(Refusal::NotFound),
                "{other}"
            );
        }
    }

    #[test]
    fn only_get_and_post_are_served() {
        assert_eq!(Method::of("GET"), Ok(Method::Get));
        assert_eq!(Method::of("POST"), Ok(Method::Post));
        for other in ["HEAD", "PUT", "DELETE", "OPTIONS", "get"] {
            assert_eq!(Method::of(other), Err(Refusal::MethodNotAllowed), "{other}");
        }
    }

    #[test]
    fn the_dns_parameter_is_base64url_without_padding() {
        // RFC 8484 §4.1.1's example query for www.example.com, ID 0.
        let example = "AAABAAABAAAAAAAAA3d3dwdleGFtcGxlA2NvbQAAAQAB";
        let message = get_message(Some(&format!("dns={example}"))).unwrap();
        assert_eq!(message.len(), 33);
        assert!(check_message(&message).is_ok());
        assert_eq!(
            get_message(Some(&format!("ct&dns={example}&x=1"))).unwrap(),
            message
        );
        // Padded is read too.
        assert_eq!(get_message(Some("dns=AAE=")).unwrap(), vec![0, 1]);
        assert_eq!(get_message(None), Err(Refusal::NoDnsParameter));
        assert_eq!(get_message(Some("name=x")), Err(Refusal::NoDnsParameter));
        for bad in ["dns=%%%", "dns=AA+/", "dns=A"] {
            assert_eq!(get_message(Some(bad)), Err(Refusal::BadBase64), "{bad}");
        }
        let huge = format!("dns={}", "A".repeat(90_000));
        assert_eq!(get_message(Some(&huge)), Err(Refusal::TooLarge));
    }

    #[test]
    fn a_message_must_be_a_readable_query() {
        assert_eq!(check_message(&[]), Err(Refusal::BadMessage));
        assert_eq!(check_message(&[0; 11]), Err(Refusal::BadMessage));
        // A header announcing a question that is not there.
        let mut header = [0u8; 12];
        header[5] = 1;
        assert_eq!(check_message(&header), Err(Refusal::BadMessage));
    }

    #[test]
    fn the_media_type_is_compared_without_case_or_parameters() {
        assert!(is_dns_message(Some(b"application/dns-message")));
        assert!(is_dns_message(Some(b"Application/DNS-Message; charset=x")));
        assert!(!is_dns_message(Some(b"application/json")));
        assert!(!is_dns_message(Some(b"application/dns-message-x")));
        assert!(!is_dns_message(None));
        assert!(!is_dns_message(Some(&[0xff, 0xfe])));
    }

    #[test]
    fn every_refusal_has_its_status() {
        assert_eq!(Refusal::NotFound.status(), 404);
        assert_eq!(Refusal::MethodNotAllowed.status(), 405);
        assert_eq!(Refusal::BadBase64.status(), 400);
        assert_eq!(Refusal::UnsupportedMediaType.status(), 415);
        assert_eq!(Refusal::TooLarge.status(), 413);
    }
}
