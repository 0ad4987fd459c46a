//! AWS Signature Version 4 for S3, header form (`Authorization:
//! AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…`) and
//! presigned-URL form (`X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=…`),
//! checked against the access keys of the boot config.
//!
//! What is checked: the algorithm; a known access key; the credential
//! scope's service is `s3` and its date is the request date's (any region
//! is accepted: the appliance has one); the request time within
//! [`MAX_SKEW_S`] of the appliance's clock (`RequestTimeTooSkewed`); a
//! presigned URL not expired (`X-Amz-Expires` at most 7 days); `host` among
//! the signed headers; the signature, compared in constant time. The
//! payload hash in the canonical request is the `x-amz-content-sha256`
//! value as sent (header form) or `UNSIGNED-PAYLOAD` (presigned); the body
//! itself is checked against a hex value when it has all arrived.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use daxbox_netstack::http::Request;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::text::{hex, parse_amz_date, percent_decode, uri_encode};
use super::S3Error;

/// Largest difference between a request's time and the appliance's
/// clock, seconds (S3's 15 minutes).
pub const MAX_SKEW_S: u64 = 15 * 60;
/// Longest lifetime of a presigned URL, seconds (S3's 7 days).
pub const MAX_PRESIGNED_EXPIRES_S: u64 = 7 * 24 * 3600;
/// Most access keys the boot config may define.
pub const MAX_KEYS: usize = 16;

/// One access key.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessKey {
    /// The access key id (shown by `bootconfig`).
    pub id: String,
    /// The secret (never shown).
    pub secret: String,
    /// Only reads are allowed with it.
    pub read_only: bool,
}

impl core::fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("AccessKey")
            .field("id", &self.id)
            .field("secret", &"<hidden>")
            .field("read_only", &self.read_only)
            .finish()
    }
}

/// Who a request is from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// No credentials at all.
    Anonymous,
    /// A valid signature with this key.
    Key {
        /// Access key id.
        id: String,
        /// The key allows reads only.
        read_only: bool,
    },
}

/// How the body must be checked once it has arrived.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    /// Its SHA-256 must be this.
    Sha256([u8; 32]),
    /// Not signed (`UNSIGNED-PAYLOAD`, presigned URLs, anonymous).
    Unsigned,
    /// `aws-chunked`, unsigned chunks with trailers
    /// (`STREAMING-UNSIGNED-PAYLOAD-TRAILER`).
    StreamingUnsigned,
    /// `aws-chunked` with a signature per chunk
    /// (`STREAMING-AWS4-HMAC-SHA256-PAYLOAD`).
    StreamingSigned(ChunkSigner),
}

/// Checks the chunk signatures of a signed aws-chunked body: each chunk
/// signs its data's SHA-256 chained to the previous signature (the first
/// to the request's).
#[derive(Clone, PartialEq, Eq)]
pub struct ChunkSigner {
    key: [u8; 32],
    amz_date: String,
    scope: String,
    previous: String,
}

impl core::fmt::Debug for ChunkSigner {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("ChunkSigner")
    }
}

/// Hex SHA-256 of nothing.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

impl ChunkSigner {
    /// Checks the signature of the next chunk, whose data hashed to
    /// `data_sha256`; true when it matches (and chains on).
    pub fn check(&mut self, signature: &str, data_sha256: &[u8; 32]) -> bool {
        let string_to_sign = alloc::format!(
            "AWS4-HMAC-SHA256-PAYLOAD\n{}\n{}\n{}\n{EMPTY_SHA256}\n{}",
            self.amz_date,
            self.scope,
            self.previous,
            hex(data_sha256)
        );
        let expected = hex(&hmac(&self.key, string_to_sign.as_bytes()));
        if !constant_time_eq(expected.as_bytes(), signature.as_bytes()) {
            return false;
        }
        self.previous = expected;
        true
    }
}

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC takes keys of any length: `new_from_slice` cannot fail.
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The parts of a signature, from either form.
struct Signed<'a> {
    access_key: String,
    /// `date/region/service/aws4_request`.
    scope: String,
    signed_headers: String,
    signature: &'a str,
    amz_date: String,
    payload_hash: String,
    presigned: bool,
}

fn denied(message: &str) -> S3Error {
    S3Error::new(403, "AccessDenied", message)
}

/// Authenticates `request` at Unix time `now`.
pub fn authenticate(
    request: &Request<'_>,
    keys: &[AccessKey],
    now: u64,
) -> Result<(Principal, Payload), S3Error> {
    let signed = match (
        request.header("authorization"),
        query_value(request.query, "X-Amz-Algorithm"),
    ) {
        (Some(auth), _) => parse_header_form(request, auth)?,
        (None, Some(_)) => parse_query_form(request, now)?,
        (None, None) => return Ok((Principal::Anonymous, Payload::Unsigned)),
    };
    let mut payload = match signed.payload_hash.as_str() {
        "UNSIGNED-PAYLOAD" => Payload::Unsigned,
        "STREAMING-UNSIGNED-PAYLOAD-TRAILER" => Payload::StreamingUnsigned,
        // Filled in with the signing key below.
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD" => Payload::Unsigned,
        hash if hash.starts_with("STREAMING-") => {
            return Err(S3Error::new(
                501,
                "NotImplemented",
                "this streaming payload form is not supported: use STREAMING-UNSIGNED-PAYLOAD-TRAILER, STREAMING-AWS4-HMAC-SHA256-PAYLOAD, a hex SHA-256 or UNSIGNED-PAYLOAD",
            ))
        }
        hash => match super::text::unhex::<32>(hash) {
            Some(h) => Payload::Sha256(h),
            None => {
                return Err(S3Error::new(
                    400,
                    "InvalidArgument",
                    "x-amz-content-sha256 must be hex SHA-256 or UNSIGNED-PAYLOAD",
                ))
            }
        },
    };
    let key = keys
        .iter()
        .find(|k| k.id == signed.access_key)
        .ok_or_else(|| {
            S3Error::new(
                403,
                "InvalidAccessKeyId",
                "The AWS Access Key Id you provided does not exist in our records.",
            )
        })?;
    let time = parse_amz_date(&signed.amz_date)
        .ok_or_else(|| denied("X-Amz-Date is not a valid ISO 8601 basic time"))?;
    let mut scope_parts = signed.scope.split('/');
    let (Some(date), Some(_region), Some(service), Some("aws4_request"), None) = (
        scope_parts.next(),
        scope_parts.next(),
        scope_parts.next(),
        scope_parts.next(),
        scope_parts.next(),
    ) else {
        return Err(denied("malformed credential scope"));
    };
    if service != "s3" || !signed.amz_date.starts_with(date) || date.len() != 8 {
        return Err(denied(
            "the credential scope does not match the request date or service",
        ));
    }
    if !signed.presigned && now.abs_diff(time) > MAX_SKEW_S {
        return Err(S3Error::new(
            403,
            "RequestTimeTooSkewed",
            "The difference between the request time and the current time is too large.",
        ));
    }
    if !signed.signed_headers.split(';').any(|h| h == "host") {
        return Err(denied("the signed headers must include host"));
    }
    let canonical = canonical_request(request, &signed)?;
    let string_to_sign = alloc::format!(
        "AWS4-HMAC-SHA256\n{}\n{}\n{}",
        signed.amz_date,
        signed.scope,
        hex(&Sha256::digest(canonical.as_bytes()))
    );
    let mut signing_key = hmac(
        alloc::format!("AWS4{}", key.secret).as_bytes(),
        date.as_bytes(),
    );
    for part in signed.scope.split('/').skip(1) {
        signing_key = hmac(&signing_key, part.as_bytes());
    }
    let expected = hex(&hmac(&signing_key, string_to_sign.as_bytes()));
    if signed.payload_hash == "STREAMING-AWS4-HMAC-SHA256-PAYLOAD" {
        payload = Payload::StreamingSigned(ChunkSigner {
            key: signing_key,
            amz_date: signed.amz_date.clone(),
            scope: signed.scope.clone(),
            previous: expected.clone(),
        });
    }
    if !constant_time_eq(expected.as_bytes(), signed.signature.as_bytes()) {
        return Err(S3Error::new(
            403,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided. Check your key and signing method.",
        ));
    }
    Ok((
        Principal::Key {
            id: key.id.clone(),
            read_only: key.read_only,
        },
        payload,
    ))
}

fn parse_header_form<'a>(request: &Request<'a>, auth: &'a str) -> Result<Signed<'a>, S3Error> {
    let Some(rest) = auth.strip_prefix("AWS4-HMAC-SHA256 ") else {
        return Err(S3Error::new(
            400,
            "InvalidArgument",
            "only AWS Signature Version 4 (AWS4-HMAC-SHA256) is supported",
        ));
    };
    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed_headers = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        }
    }
    let (Some(credential), Some(signed_headers), Some(signature)) =
        (credential, signed_headers, signature)
    else {
        return Err(S3Error::new(
            400,
            "AuthorizationHeaderMalformed",
            "the Authorization header needs Credential, SignedHeaders and Signature",
        ));
    };
    let (access_key, scope) = credential
        .split_once('/')
        .ok_or_else(|| S3Error::new(400, "AuthorizationHeaderMalformed", "malformed Credential"))?;
    let amz_date = request
        .header("x-amz-date")
        .ok_or_else(|| denied("a signed request needs X-Amz-Date"))?;
    let payload_hash = request.header("x-amz-content-sha256").ok_or_else(|| {
        S3Error::new(
            400,
            "InvalidRequest",
            "Missing required header for this request: x-amz-content-sha256",
        )
    })?;
    Ok(Signed {
        access_key: access_key.to_string(),
        scope: scope.to_string(),
        signed_headers: signed_headers.to_string(),
        signature,
        amz_date: amz_date.to_string(),
        payload_hash: payload_hash.to_string(),
        presigned: false,
    })
}

fn parse_query_form<'a>(request: &Request<'a>, now: u64) -> Result<Signed<'a>, S3Error> {
    let get = |name: &str| -> Result<String, S3Error> {
        query_value(request.query, name)
            .and_then(percent_decode)
            .ok_or_else(|| denied("a presigned URL needs X-Amz-Credential, X-Amz-Date, X-Amz-Expires, X-Amz-SignedHeaders and X-Amz-Signature"))
    };
    if get("X-Amz-Algorithm")? != "AWS4-HMAC-SHA256" {
        return Err(S3Error::new(
            400,
            "InvalidArgument",
            "only AWS4-HMAC-SHA256 is supported",
        ));
    }
    let credential = get("X-Amz-Credential")?;
    let amz_date = get("X-Amz-Date")?;
    let expires: u64 = get("X-Amz-Expires")?.parse().map_err(|_| {
        S3Error::new(
            400,
            "AuthorizationQueryParametersError",
            "X-Amz-Expires must be a number",
        )
    })?;
    if expires > MAX_PRESIGNED_EXPIRES_S {
        return Err(S3Error::new(400, "AuthorizationQueryParametersError", "X-Amz-Expires must be less than a week (in seconds); that is, the given X-Amz-Expires must be less than 604800 seconds"));
    }
    let time = parse_amz_date(&amz_date)
        .ok_or_else(|| denied("X-Amz-Date is not a valid ISO 8601 basic time"))?;
    if now > time.saturating_add(expires) {
        return Err(denied("Request has expired"));
    }
    if time > now.saturating_add(MAX_SKEW_S) {
        return Err(denied("Request is not valid yet"));
    }
    let signature = query_value(request.query, "X-Amz-Signature").unwrap_or("");
    let (access_key, scope) = credential
        .split_once('/')
        .ok_or_else(|| denied("malformed X-Amz-Credential"))?;
    Ok(Signed {
        access_key: access_key.to_string(),
        scope: scope.to_string(),
        signed_headers: get("X-Amz-SignedHeaders")?,
        signature,
        amz_date,
        payload_hash: "UNSIGNED-PAYLOAD".to_string(),
        presigned: true,
    })
}

/// The raw value of query parameter `name` (not decoded).
pub fn query_value<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn canonical_request(request: &Request<'_>, signed: &Signed<'_>) -> Result<String, S3Error> {
    let malformed = || S3Error::new(400, "InvalidURI", "Couldn't parse the specified URI.");
    let path = percent_decode(request.path).ok_or_else(malformed)?;
    let uri = uri_encode(&path, true);
    let mut query: Vec<(String, String)> = Vec::new();
    for pair in request.query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if signed.presigned && k == "X-Amz-Signature" {
            continue;
        }
        let k = percent_decode(k).ok_or_else(malformed)?;
        let v = percent_decode(v).ok_or_else(malformed)?;
        query.push((uri_encode(&k, false), uri_encode(&v, false)));
    }
    query.sort();
    let query: Vec<String> = query
        .into_iter()
        .map(|(k, v)| alloc::format!("{k}={v}"))
        .collect();
    let mut headers = String::new();
    for name in signed.signed_headers.split(';') {
        // Every value of the header, in order, comma-joined; blanks
        // inside a value collapsed to one space.
        let values: Vec<String> = request
            .header_fields()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.split_ascii_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        if values.is_empty() {
            return Err(denied("a signed header is missing from the request"));
        }
        headers.push_str(name);
        headers.push(':');
        headers.push_str(&values.join(","));
        headers.push('\n');
    }
    Ok(alloc::format!(
        "{}\n{uri}\n{}\n{headers}\n{}\n{}",
        request.method,
        query.join("&"),
        signed.signed_headers,
        signed.payload_hash
    ))
}

/// Signs a request the way a client does (tests and the host tools):
/// returns the `Authorization` header value.
pub fn sign_for_test(
    method: &str,
    path: &str,
    query: &str,
    headers: &[(&str, &str)],
    key: &AccessKey,
    amz_date: &str,
    payload_hash: &str,
) -> String {
    let mut names: Vec<&str> = headers.iter().map(|(n, _)| *n).collect();
    names.sort();
    let signed_headers = names.join(";");
    let mut text = String::new();
    for (name, value) in headers {
        text.push_str(&alloc::format!("{name}: {value}\r\n"));
    }
    let text = text.trim_end_matches("\r\n").to_string();
    let request = Request {
        method,
        path,
        query,
        content_length: 0,
        chunked: false,
        headers: &text,
        peer: None,
        client_cn: None,
    };
    let scope = alloc::format!("{}/us-east-1/s3/aws4_request", &amz_date[..8]);
    let signed = Signed {
        access_key: key.id.clone(),
        scope: scope.clone(),
        signed_headers: signed_headers.clone(),
        signature: "",
        amz_date: amz_date.to_string(),
        payload_hash: payload_hash.to_string(),
        presigned: false,
    };
    let canonical = canonical_request(&request, &signed).expect("canonical request");
    let string_to_sign = alloc::format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex(&Sha256::digest(canonical.as_bytes()))
    );
    let mut signing_key = hmac(
        alloc::format!("AWS4{}", key.secret).as_bytes(),
        &amz_date.as_bytes()[..8],
    );
    for part in scope.split('/').skip(1) {
        signing_key = hmac(&signing_key, part.as_bytes());
    }
    alloc::format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={}",
        key.id,
        hex(&hmac(&signing_key, string_to_sign.as_bytes()))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of AWS's SigV4 documentation for S3 ("GET Object"),
    /// with its published signature.
    #[test]
    fn aws_documentation_example() {
        let key = AccessKey {
            id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            read_only: false,
        };
        let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let auth = sign_for_test(
            "GET",
            "/test.txt",
            "",
            &[
                ("host", "examplebucket.s3.amazonaws.com"),
                ("range", "bytes=0-9"),
                ("x-amz-content-sha256", empty),
                ("x-amz-date", "20130524T000000Z"),
            ],
            &key,
            "20130524T000000Z",
            empty,
        );
        assert!(
            auth.ends_with(
                "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
            ),
            "{auth}"
        );
        // And it verifies.
        let headers = alloc::format!(
            "Host: examplebucket.s3.amazonaws.com\r\nRange: bytes=0-9\r\nx-amz-content-sha256: {empty}\r\nx-amz-date: 20130524T000000Z\r\nAuthorization: {auth}"
        );
        let request = Request {
            method: "GET",
            path: "/test.txt",
            query: "",
            content_length: 0,
            chunked: false,
            headers: &headers,
            peer: None,
            client_cn: None,
        };
        let now = parse_amz_date("20130524T000100Z").unwrap();
        let (principal, payload) =
            authenticate(&request, core::slice::from_ref(&key), now).unwrap();
        assert!(matches!(principal, Principal::Key { .. }));
        assert!(matches!(payload, Payload::Sha256(_)));
        // A wrong secret, a skewed clock.
        let wrong = AccessKey {
            secret: "x".into(),
            ..key.clone()
        };
        assert_eq!(
            authenticate(&request, &[wrong], now).unwrap_err().code,
            "SignatureDoesNotMatch"
        );
        assert_eq!(
            authenticate(&request, core::slice::from_ref(&key), now + 16 * 60)
                .unwrap_err()
                .code,
            "RequestTimeTooSkewed"
        );
        assert_eq!(
            authenticate(&request, &[], now).unwrap_err().code,
            "InvalidAccessKeyId"
        );
    }

    /// AWS's presigned-URL example (query form), published signature.
    #[test]
    fn aws_presigned_example() {
        let key = AccessKey {
            id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            read_only: true,
        };
        let query = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404";
        let request = Request {
            method: "GET",
            path: "/test.txt",
            query,
            content_length: 0,
            chunked: false,
            headers: "Host: examplebucket.s3.amazonaws.com",
            peer: None,
            client_cn: None,
        };
        let now = parse_amz_date("20130524T010000Z").unwrap();
        let (principal, payload) =
            authenticate(&request, core::slice::from_ref(&key), now).unwrap();
        assert_eq!(
            principal,
            Principal::Key {
                id: key.id.clone(),
                read_only: true
            }
        );
        assert_eq!(payload, Payload::Unsigned);
        assert_eq!(
            authenticate(&request, &[key], now + 86_400)
                .unwrap_err()
                .message,
            "Request has expired"
        );
    }
}

#[cfg(test)]
mod streaming_tests {
    use super::*;

    /// AWS's example of a signed aws-chunked upload ("Signature
    /// Calculations for the Authorization Header: Transferring Payload in
    /// Multiple Chunks"): 66,560 bytes of `a` in chunks of 65,536 and
    /// 1,024, with the published seed and chunk signatures.
    #[test]
    fn aws_chunked_upload_example() {
        let key = AccessKey {
            id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            read_only: false,
        };
        let headers = "Host: s3.amazonaws.com\r\n\
            x-amz-date: 20130524T000000Z\r\n\
            x-amz-storage-class: REDUCED_REDUNDANCY\r\n\
            Authorization: AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;x-amz-decoded-content-length;x-amz-storage-class,Signature=4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9\r\n\
            x-amz-content-sha256: STREAMING-AWS4-HMAC-SHA256-PAYLOAD\r\n\
            Content-Encoding: aws-chunked\r\n\
            x-amz-decoded-content-length: 66560\r\n\
            Content-Length: 66824";
        let request = Request {
            method: "PUT",
            path: "/examplebucket/chunkObject.txt",
            query: "",
            content_length: 66824,
            chunked: false,
            headers,
            peer: None,
            client_cn: None,
        };
        let now = parse_amz_date("20130524T000000Z").unwrap();
        let (_, payload) = authenticate(&request, &[key], now).expect("the seed signature");
        let Payload::StreamingSigned(mut signer) = payload else {
            panic!("not a signed stream: {payload:?}");
        };
        let a64k: [u8; 32] = Sha256::digest(vec![b'a'; 65536]).into();
        let a1k: [u8; 32] = Sha256::digest(vec![b'a'; 1024]).into();
        let empty: [u8; 32] = Sha256::digest(b"").into();
        assert!(!signer.clone().check("00", &a64k));
        assert!(signer.check(
            "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
            &a64k
        ));
        assert!(signer.check(
            "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
            &a1k
        ));
        assert!(signer.check(
            "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9",
            &empty
        ));
    }
}
