//! Guessing the admin token through real sockets: after a few wrong tokens an address is
//! refused on both ports without its token being checked — the right token too — while other
//! addresses are served as before, and the metrics count failures and refusals.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::time::Duration;

use common::{Http, TOKEN, connect_from, start};
use ringfence_ingress::ServerConfig;
use ringfence_ingress::wire::{self, ErrorCode, Response};

/// Wrong tokens an address may present before it is limited, in these tests.
const BURST: u32 = 3;
const SKU: &str =
    r#"{"sku":1,"stock":5,"price_cents":100,"per_user_limit":1,"payment_timeout_ms":60000}"#;

fn config() -> ServerConfig {
    ServerConfig {
        auth_failures_burst: BURST,
        // Ten minutes: no budget refills while a test runs.
        auth_failure_refill_ms: 600_000,
        ..ServerConfig::loopback()
    }
}

/// Sends one `AUTH` frame with `token` and returns the answer.
fn binary_auth(mut stream: TcpStream, token: &str) -> Response {
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut frame = Vec::new();
    wire::encode_auth(&mut frame, 7, token.as_bytes());
    stream.write_all(&frame).unwrap();
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((frame, _)) = wire::try_frame(&buffer).unwrap() {
            assert_eq!(frame.correlation, 7);
            return wire::decode_response(&frame).unwrap();
        }
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "the server closed without answering AUTH");
        buffer.extend_from_slice(&chunk[..n]);
    }
}

fn metrics(http: &mut Http) -> String {
    let response = http.call("GET", "/metrics", None, None);
    assert_eq!(response.status, 200);
    String::from_utf8(response.body).unwrap()
}

fn assert_limited(response: &Response) {
    let Response::Error(error) = response else { panic!("not an error: {response:?}") };
    assert_eq!(error.code, ErrorCode::RateLimited, "{}", error.message);
    assert!(error.fatal, "an AUTH is answered by AUTH_OK or a fatal error");
    assert!(error.retry_after_ms > 0 && error.retry_after_ms <= 600_000);
    assert!(error.message.contains("not checked"), "{}", error.message);
}

#[test]
fn guesses_from_one_address_are_refused_unchecked_after_the_budget() {
    // Goal: (a) after BURST wrong bearer tokens, every token from that address — the right one
    // included, on both ports — is refused with 429 `auth_rate_limited` and a retry hint, while
    // its anonymous requests are served; (b) another address (127.0.0.2) is unaffected: wrong
    // tokens are 401, the right one works; (c) the metrics count failures and refusals.
    let server = start(config());
    let (binary, http_addr) = (server.binary_addr().unwrap(), server.http_addr().unwrap());
    let mut http = Http::connect(http_addr);
    for n in 0..BURST {
        let guess = format!("guess-{n}");
        let response = http.call("POST", "/v1/skus", Some(SKU), Some(&guess));
        assert_eq!(response.status, 401, "{:?}", response.json());
    }
    for token in ["guess-after-the-budget", TOKEN] {
        let response = http.call("POST", "/v1/skus", Some(SKU), Some(token));
        assert_eq!(response.status, 429, "{:?}", response.json());
        assert_eq!(response.json()["error"], "auth_rate_limited");
        let retry_s: u64 = response.header("retry-after").expect("Retry-After").parse().unwrap();
        assert!((1..=600).contains(&retry_s), "{retry_s}");
    }
    assert_limited(&binary_auth(TcpStream::connect(binary).unwrap(), TOKEN));
    let health = http.call("GET", "/health", None, None);
    assert_eq!(health.status, 200, "a request without a token is no attempt");

    let other = Ipv4Addr::new(127, 0, 0, 2);
    let mut other_failures = 0;
    match (connect_from(other, http_addr), connect_from(other, binary)) {
        (Ok(http_stream), Ok(binary_stream)) => {
            let mut http = Http::over(http_stream);
            let wrong = http.call("POST", "/v1/skus", Some(SKU), Some("another-guess"));
            assert_eq!(wrong.status, 401, "{:?}", wrong.json());
            other_failures = 1;
            let right = http.call("POST", "/v1/skus", Some(SKU), Some(TOKEN));
            assert_eq!(right.status, 201, "{:?}", right.json());
            assert_eq!(binary_auth(binary_stream, TOKEN), Response::AuthOk);
        }
        (Err(error), _) | (_, Err(error)) => {
            println!("skipping the second-address half: cannot connect from {other}: {error}");
        }
    }

    let text = metrics(&mut http);
    let failures = u64::from(BURST) + other_failures;
    for line in [
        format!("ringfence_auth_failures_total{{protocol=\"http\"}} {failures}\n"),
        "ringfence_auth_failures_total{protocol=\"binary\"} 0\n".to_owned(),
        "ringfence_auth_rate_limited_total{protocol=\"http\"} 2\n".to_owned(),
        "ringfence_auth_rate_limited_total{protocol=\"binary\"} 1\n".to_owned(),
        format!("ringfence_auth_addresses_tracked {}\n", 1 + other_failures),
        "ringfence_auth_addresses_evicted_total 0\n".to_owned(),
    ] {
        assert!(text.contains(&line), "no `{}` in:\n{text}", line.trim_end());
    }
    server.shutdown().unwrap();
}

#[test]
fn wrong_binary_tokens_spend_the_same_budget_as_http_ones() {
    // Goal: the budget is per address across both ports: BURST wrong AUTH frames (each fatal,
    // so one connection each) leave the right bearer token refused on HTTP, and the metrics
    // count them as binary failures.
    let server = start(config());
    let (binary, http_addr) = (server.binary_addr().unwrap(), server.http_addr().unwrap());
    for n in 0..BURST {
        let answer = binary_auth(TcpStream::connect(binary).unwrap(), &format!("guess-{n}"));
        let Response::Error(error) = answer else { panic!("{answer:?}") };
        assert_eq!((error.code, error.fatal), (ErrorCode::AuthFailed, true));
    }
    assert_limited(&binary_auth(TcpStream::connect(binary).unwrap(), TOKEN));
    let mut http = Http::connect(http_addr);
    let response = http.call("POST", "/v1/skus", Some(SKU), Some(TOKEN));
    assert_eq!(response.status, 429, "{:?}", response.json());
    let text = metrics(&mut http);
    for line in [
        format!("ringfence_auth_failures_total{{protocol=\"binary\"}} {BURST}\n"),
        "ringfence_auth_rate_limited_total{protocol=\"binary\"} 1\n".to_owned(),
        "ringfence_auth_rate_limited_total{protocol=\"http\"} 1\n".to_owned(),
    ] {
        assert!(text.contains(&line), "no `{}` in:\n{text}", line.trim_end());
    }
    server.shutdown().unwrap();
}
