use proptest::prelude::*;
use ringfence_core::{
    Action, Command, OrderId, OrderState, Outcome, Query, Rejection, Reserve, SkuId, Timestamp,
    UserId,
};

use super::api::{AdminToken, Call, KeyMint, ReplicationMode, render_outcome, route};
use super::*;
use ringfence_core::arb;

const LIMITS: Limits = Limits { header_max: 1024, body_max: 256 };

fn post(path: &str, body: &str, bearer: Option<&str>) -> Vec<u8> {
    let auth = bearer.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn call(bytes: &[u8], bearer_ok: bool) -> Result<Call, Response> {
    let (request, used) = try_request(bytes, LIMITS).unwrap().unwrap();
    assert_eq!(used, bytes.len());
    let token = AdminToken::new(if bearer_ok { "secret" } else { "other" });
    route(&request, Some(&token), &mut KeyMint::new(1))
}

fn error_body(response: &Response) -> serde_json::Value {
    serde_json::from_slice(&response.body).unwrap()
}

fn error_code(response: &Response) -> String {
    let value: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    value["error"].as_str().unwrap().to_owned()
}

#[test]
fn a_cancel_without_user_is_the_operators_and_says_so_without_the_token() {
    // Goal: a cancel naming no `user` is an operator's cancel with the admin token; without
    // it, the refusal names the missing field and says the admin token makes it an operator's.
    let cancel = post("/v1/orders/77/cancel", r#"{"request_id":"c"}"#, Some("secret"));
    let Call::Submit(Command::Client { action, .. }) = call(&cancel, true).unwrap() else {
        panic!("not a command")
    };
    assert_eq!(action, Action::AdminCancel { order: OrderId(77) });
    let refused = call(&cancel, false).unwrap_err();
    let error = error_body(&refused);
    assert_eq!((refused.status, error["field"].as_str()), (400, Some("user")));
    assert!(error["message"].as_str().unwrap().contains("admin token"), "{error}");
}

#[test]
fn reserve_maps_to_the_engine_command() {
    // Goal: POST /v1/orders becomes a keyed Reserve with the hashed request id.
    let bytes = post("/v1/orders", r#"{"request_id":"r-1","user":7,"sku":1,"qty":2}"#, None);
    let expected = Command::Client {
        key: crate::keys::request_key("r-1"),
        action: Action::Reserve(Reserve { user: UserId(7), sku: SkuId(1), qty: 2, coupon: None }),
    };
    assert_eq!(call(&bytes, false).unwrap(), Call::Submit(expected));
}

#[test]
fn ids_are_read_as_decimal_strings_or_integers() {
    // Goal: every id in a body is taken in either spelling, up to 2^64 - 1, and nothing else.
    let ok = post(
        "/v1/orders",
        r#"{"request_id":"r","user":"7","sku":1,"qty":1,"coupon_id":"18446744073709551615"}"#,
        None,
    );
    let Call::Submit(Command::Client { action: Action::Reserve(r), .. }) =
        call(&ok, false).unwrap()
    else {
        panic!("not a reserve")
    };
    assert_eq!((r.user.0, r.coupon.unwrap().0), (7, u64::MAX));
    let as_number =
        post("/v1/orders", r#"{"request_id":"r","user":7,"sku":1,"qty":1,"coupon_id":5}"#, None);
    assert!(call(&as_number, false).is_ok());
    let signed = post("/v1/orders", r#"{"request_id":"r","user":7,"sku":"+1","qty":1}"#, None);
    let refused = error_body(&call(&signed, false).unwrap_err());
    assert_eq!(
        (refused["error"].as_str(), refused["field"].as_str()),
        (Some("invalid_argument"), Some("sku"))
    );
}

#[test]
fn bad_json_wrong_types_and_missing_fields_are_400_naming_the_field() {
    // Goal: every malformed body gets a 400 with a code saying which kind of mistake it is,
    // and the request field at fault whenever there is one.
    let cases = [
        (r#"{"request_id":"r","user":7,"sku":1"#, "malformed_json", None),
        (r#"{"request_id":"r","user":true,"sku":1,"qty":1}"#, "invalid_argument", Some("user")),
        (r#"{"request_id":"r","user":7,"sku":1}"#, "invalid_argument", Some("qty")),
        (r#"{"request_id":"r","user":7,"sku":1,"qty":-1}"#, "invalid_argument", Some("qty")),
        (r#"{"request_id":"r","user":7,"sku":1,"qty":1.5}"#, "invalid_argument", Some("qty")),
        (r#"{"request_id":"","user":7,"sku":1,"qty":1}"#, "invalid_argument", Some("request_id")),
        (
            r#"{"request_id":"r","user":7,"sku":1,"qty":1,"extra":1}"#,
            "invalid_argument",
            Some("extra"),
        ),
        (r#"{"request_id":"r","user":0,"sku":1,"qty":1}"#, "invalid_argument", Some("user")),
        (r#"{"request_id":"r","user":7,"sku":1,"qty":1} x"#, "malformed_json", None),
        (r#"[1,2,3]"#, "invalid_request", None),
    ];
    for (body, code, field) in cases {
        let response = call(&post("/v1/orders", body, None), false).unwrap_err();
        assert_eq!(response.status, 400, "{body}");
        let error = error_body(&response);
        assert_eq!(
            (error["error"].as_str(), error["field"].as_str()),
            (Some(code), field),
            "{body}"
        );
    }
    let long_id = format!(r#"{{"request_id":"{}","user":7,"sku":1,"qty":1}}"#, "x".repeat(65));
    assert_eq!(call(&post("/v1/orders", &long_id, None), false).unwrap_err().status, 400);
    let bad_path = call(b"GET /v1/orders/12x HTTP/1.1\r\nHost: t\r\n\r\n", false).unwrap_err();
    assert_eq!(error_body(&bad_path)["field"], "order_id");
}

#[test]
fn arguments_the_engine_refuses_are_named_before_submission() {
    // Goal: `invalid_argument` names the field for every argument check of the engine.
    let admin = |path: &str, body: &str| call(&post(path, body, Some("secret")), true);
    let cases = [
        ("/v1/skus", r#"{"sku":0,"stock":1,"price_cents":1,"payment_timeout_ms":1}"#, "sku"),
        (
            "/v1/skus",
            r#"{"sku":1,"stock":1,"price_cents":1,"payment_timeout_ms":0}"#,
            "payment_timeout_ms",
        ),
        (
            "/v1/skus",
            concat!(
                r#"{"sku":1,"stock":1,"price_cents":1,"payment_timeout_ms":1,"#,
                r#""sale_start_ms":5,"sale_end_ms":5}"#
            ),
            "sale_end_ms",
        ),
        (
            "/v1/coupon-batches",
            r#"{"batch":1,"quantity":0,"discount_cents":1,"valid_from_ms":1,"valid_until_ms":2}"#,
            "quantity",
        ),
        ("/v1/coupons/claim", r#"{"request_id":"c","user":0,"batch":1}"#, "user"),
    ];
    for (path, body, field) in cases {
        let refused = error_body(&admin(path, body).unwrap_err());
        assert_eq!(
            (refused["error"].as_str(), refused["field"].as_str()),
            (Some("invalid_argument"), Some(field)),
            "{body}"
        );
    }
}

#[test]
fn a_refused_value_or_field_name_is_quoted_cut_short() {
    // Goal: serde's messages (and the replication call's for its `mode`) quote the value or
    // the field name a body got wrong; a hostile body makes those as long as the body limit
    // allows, and the error sends back at most the start of them, still naming the field.
    let limits = Limits { header_max: 1024, body_max: 16_384 };
    let (value, name) = ("\u{e9}".repeat(3_000), "q".repeat(3_000));
    let order = |body: String| ("/v1/orders", body);
    let bodies = [
        (
            order(format!(r#"{{"request_id":"r","user":1,"sku":"1","qty":"{value}"}}"#)),
            "qty",
            "\u{e9}",
        ),
        (order(format!(r#"{{"request_id":"r","user":1,"sku":1,"qty":1,"{name}":1}}"#)), "qqq", "q"),
        (("/v1/admin/replication", format!(r#"{{"mode":"{name}"}}"#)), "mode", "q"),
    ];
    for ((path, body), field, quoted) in bodies {
        let bytes = post(path, &body, Some("secret"));
        let (request, _) = try_request(&bytes, limits).unwrap().unwrap();
        let token = AdminToken::new("secret");
        let refused = route(&request, Some(&token), &mut KeyMint::new(1)).unwrap_err();
        let error = error_body(&refused);
        let message = error["message"].as_str().unwrap();
        assert!(message.len() <= 203 && message.ends_with("..."), "{message}");
        assert!(message.contains(&quoted.repeat(10)), "{message}");
        assert_eq!(error["error"], "invalid_argument", "{error}");
        assert!(error["field"].as_str().unwrap().starts_with(field), "{error}");
    }
}

#[test]
fn only_json_whitespace_makes_an_empty_body() {
    // Goal: a body of JSON's own whitespace is the empty object every field of which is
    // optional; a body holding any other byte -- a form feed or a vertical tab, which ASCII
    // calls whitespace and JSON does not -- is malformed, never read as empty.
    for body in ["", " \t\r\n"] {
        let routed = call(&post("/v1/admin/snapshot", body, Some("secret")), true);
        assert!(matches!(routed, Ok(Call::Submit(Command::Snapshot))), "{body:?}");
    }
    for body in ["\x0c", " \x0b ", "\r\n\x0c"] {
        let refused = call(&post("/v1/admin/snapshot", body, Some("secret")), true).unwrap_err();
        assert_eq!(
            (refused.status, error_code(&refused)),
            (400, "malformed_json".into()),
            "{body:?}"
        );
    }
}

#[test]
fn admin_routes_need_the_bearer_token() {
    // Goal: SKU creation without the token is 401; with it, a command with a minted key.
    let body =
        r#"{"sku":1,"stock":10,"price_cents":100,"per_user_limit":1,"payment_timeout_ms":1000}"#;
    let response = call(&post("/v1/skus", body, None), true).unwrap_err();
    assert_eq!(response.status, 401);
    let response = call(&post("/v1/skus", body, Some("wrong")), true).unwrap_err();
    assert_eq!(response.status, 401);
    let ok = call(&post("/v1/skus", body, Some("secret")), true).unwrap();
    assert!(matches!(ok, Call::Submit(Command::Client { action: Action::CreateSku(_), .. })));
    let ship = post("/v1/orders/5/ship", "", None);
    assert_eq!(call(&ship, true).unwrap_err().status, 401);
}

#[test]
fn replication_admin_routes_need_the_token_and_a_known_mode() {
    // Goal: promote and the mode switch are admin calls that never reach the engine; the mode
    // must be `sync` or `async`, and promote takes only an id and `force`.
    let unforced = |request| Call::Promote { request, force: false };
    let promote = post("/v1/admin/promote", "", Some("secret"));
    assert_eq!(call(&promote, true).unwrap(), unforced(None));
    assert_eq!(
        call(&post("/v1/admin/promote", "{}", Some("secret")), true).unwrap(),
        unforced(None)
    );
    let keyed = post("/v1/admin/promote", r#"{"request_id":"p-1"}"#, Some("secret"));
    let key = crate::keys::request_key("p-1");
    assert_eq!(call(&keyed, true).unwrap(), unforced(Some(key)));
    let forced = post("/v1/admin/promote", r#"{"force":true}"#, Some("secret"));
    assert_eq!(call(&forced, true).unwrap(), Call::Promote { request: None, force: true });
    let bad_force = post("/v1/admin/promote", r#"{"force":"yes"}"#, Some("secret"));
    assert_eq!(call(&bad_force, true).unwrap_err().status, 400);
    assert_eq!(call(&post("/v1/admin/promote", "", None), true).unwrap_err().status, 401);
    let extra = post("/v1/admin/promote", r#"{"epoch":3}"#, Some("secret"));
    assert_eq!(call(&extra, true).unwrap_err().status, 400);
    let mode = |body: &str| call(&post("/v1/admin/replication", body, Some("secret")), true);
    assert_eq!(
        mode(r#"{"mode":"sync"}"#).unwrap(),
        Call::SetReplicationMode(ReplicationMode::Sync)
    );
    assert_eq!(
        mode(r#"{"mode":"async"}"#).unwrap(),
        Call::SetReplicationMode(ReplicationMode::Async)
    );
    for bad in [r#"{"mode":"SYNC"}"#, r#"{"mode":""}"#, r#"{}"#, r#"{"mode":"sync","x":1}"#] {
        assert_eq!(mode(bad).unwrap_err().status, 400, "{bad}");
    }
    let anonymous = post("/v1/admin/replication", r#"{"mode":"sync"}"#, None);
    assert_eq!(call(&anonymous, true).unwrap_err().status, 401);
    let get = b"GET /v1/admin/promote HTTP/1.1\r\nHost: t\r\n\r\n";
    assert_eq!(call(get, true).unwrap_err().status, 405);
}

#[test]
fn minted_admin_keys_are_unique() {
    // Goal: two admin calls without request_id never share a key.
    let mut mint = KeyMint::new(42);
    assert_ne!(mint.next_key(), mint.next_key());
    assert_ne!(KeyMint::new(1).next_key(), KeyMint::new(2).next_key());
}

#[test]
fn reads_and_unknown_paths() {
    // Goal: GET routes map to queries; unknown paths are 404, wrong methods 405.
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").into_bytes();
    assert_eq!(
        call(&get("/v1/skus/9"), false).unwrap(),
        Call::Submit(Command::Query(Query::Sku(SkuId(9))))
    );
    assert_eq!(
        call(&get("/v1/orders/123?x=1"), false).unwrap(),
        Call::Submit(Command::Query(Query::Order(OrderId(123))))
    );
    assert_eq!(call(&get("/health"), false).unwrap(), Call::Health);
    assert_eq!(call(&get("/nope"), false).unwrap_err().status, 404);
    assert_eq!(call(&get("/v1/orders"), false).unwrap_err().status, 405);
    assert_eq!(call(&get("/v1/skus/+5"), false).unwrap_err().status, 400);
    assert_eq!(call(&get("/v1/skus/99999999999999999999999"), false).unwrap_err().status, 400);
}

#[test]
fn rejections_map_to_statuses_and_codes() {
    // Goal: the documented status for each rejection, and request_id_reused for reused keys.
    let cases = [
        (Rejection::SoldOut, 409, "sold_out"),
        (Rejection::LimitExceeded, 409, "limit_exceeded"),
        (Rejection::SaleNotOpen, 409, "sale_not_open"),
        (Rejection::SaleClosed, 409, "sale_closed"),
        (Rejection::SkuExists, 409, "sku_exists"),
        (Rejection::UnknownSku, 404, "unknown_sku"),
        (Rejection::InvalidQty, 400, "invalid_qty"),
        (Rejection::RequestKeyReused, 422, "request_id_reused"),
        (Rejection::InvalidState { current: OrderState::Expired }, 409, "invalid_state"),
    ];
    for (rejection, status, code) in cases {
        let response = render_outcome(&Outcome::Rejected(rejection));
        assert_eq!(response.status, status);
        assert_eq!(error_code(&response), code);
    }
}

#[test]
fn reserved_renders_decimal_order_id() {
    // Goal: a reservation answers 201 with the order id as a decimal string.
    let outcome =
        Outcome::Reserved { order: OrderId(u64::MAX), expires_at: Timestamp(5), amount_cents: 100 };
    let response = render_outcome(&outcome);
    assert_eq!(response.status, 201);
    let value: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(value["order_id"], "18446744073709551615");
    assert_eq!(value["state"], "reserved");
    assert_eq!(value["expires_at_ms"], 5);
}

#[test]
fn keep_alive_pipelining_and_limits() {
    // Goal: two pipelined requests frame one after the other; limits give 431 and 413.
    let mut bytes = b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n".to_vec();
    bytes.extend_from_slice(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let (first, used) = try_request(&bytes, LIMITS).unwrap().unwrap();
    assert!(first.keep_alive);
    let (second, _) = try_request(&bytes[used..], LIMITS).unwrap().unwrap();
    assert_eq!(second.path, "/metrics");
    assert!(!second.keep_alive);
    let huge_head = format!("GET / HTTP/1.1\r\nHost: t\r\nX: {}\r\n", "a".repeat(2000));
    let error = try_request(huge_head.as_bytes(), LIMITS).unwrap_err();
    assert_eq!(error.status_and_code().0, 431);
    let big_body = b"POST /v1/orders HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n";
    assert_eq!(try_request(big_body, LIMITS).unwrap_err().status_and_code().0, 413);
    let chunked = b"POST /v1/orders HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_eq!(try_request(chunked, LIMITS).unwrap_err().status_and_code().0, 501);
    assert_eq!(
        try_request(b"\x00\x01garbage\r\n\r\n", LIMITS).unwrap_err().status_and_code().0,
        400
    );
    let http10 = b"GET /health HTTP/1.0\r\n\r\n";
    assert!(!try_request(http10, LIMITS).unwrap().unwrap().0.keep_alive);
}

#[test]
fn a_head_response_is_the_get_response_without_its_body() {
    // Goal: written for HEAD, a response keeps its status and every header, `content-length`
    // the body's length included, and leaves the body out (RFC 9110, section 9.3.2).
    let response = Response::error(404, "unknown_sku", "no such SKU").retry_after(3);
    let (mut full, mut head) = (Vec::new(), Vec::new());
    response.write(&mut full, true);
    response.write_for(&mut head, true, true);
    assert!(!response.body.is_empty());
    assert_eq!(full.len(), head.len() + response.body.len());
    assert_eq!(&full[..head.len()], &head[..]);
    let text = String::from_utf8(head).unwrap();
    assert!(text.ends_with("\r\n\r\n"), "{text}");
    assert!(text.contains(&format!("content-length: {}\r\n", response.body.len())), "{text}");
}

#[test]
fn an_http_11_request_carries_exactly_one_host() {
    // Goal: RFC 9112, section 3.2: an HTTP/1.1 request without a Host, or with two, is a
    // 400 `invalid_host` (the connection closes); HTTP/1.0 needs none; the name's case is free.
    let cases: [(&[u8], Result<(), u8>); 5] = [
        (b"GET /health HTTP/1.1\r\n\r\n", Err(0)),
        (b"GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", Err(2)),
        (b"GET /health HTTP/1.1\r\nhOsT: a\r\n\r\n", Ok(())),
        (b"GET /health HTTP/1.1\r\nHost:\r\n\r\n", Ok(())),
        (b"GET /health HTTP/1.0\r\n\r\n", Ok(())),
    ];
    for (bytes, expected) in cases {
        let text = String::from_utf8_lossy(bytes);
        match (try_request(bytes, LIMITS), expected) {
            (Ok(Some((request, _))), Ok(())) => assert_eq!(request.path, "/health", "{text}"),
            (Err(error), Err(count)) => {
                assert_eq!(error, HttpError::Host(count), "{text}");
                assert_eq!(error.status_and_code(), (400, "invalid_host"), "{text}");
            }
            (other, _) => panic!("{text}: {other:?}"),
        }
    }
}

#[test]
fn expect_continue_head_waits_for_continue_until_its_body_starts() {
    // Goal: a complete head with `Expect: 100-continue` and no body yet frames as waiting for
    // `100 Continue`; once body bytes arrive it is partial, then complete; an over-limit body
    // is 413 at once; HTTP/1.0 and bodiless requests never wait.
    let body = r#"{"request_id":"r","user":7,"sku":1,"qty":1}"#;
    let head = format!(
        "POST /v1/orders HTTP/1.1\r\nHost: t\r\nExpect: 100-Continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    assert_eq!(try_frame(&head.as_bytes()[..head.len() - 2], LIMITS), Ok(Framed::Partial));
    assert_eq!(try_frame(head.as_bytes(), LIMITS), Ok(Framed::ExpectsContinue));
    assert_eq!(try_request(head.as_bytes(), LIMITS), Ok(None));
    let whole = format!("{head}{body}");
    assert_eq!(try_frame(&whole.as_bytes()[..head.len() + 3], LIMITS), Ok(Framed::Partial));
    let Ok(Framed::Complete(request, used)) = try_frame(whole.as_bytes(), LIMITS) else {
        panic!("the request with its body is complete")
    };
    assert_eq!((request.body, used), (body.as_bytes(), whole.len()));
    let over = "POST /v1/orders HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 257\r\n\r\n";
    let error = try_frame(over.as_bytes(), LIMITS).unwrap_err();
    assert_eq!(error, HttpError::BodyTooLarge { length: 257, max: LIMITS.body_max });
    let http10 = "POST /v1/orders HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n";
    assert_eq!(try_frame(http10.as_bytes(), LIMITS), Ok(Framed::Partial));
    let bodiless =
        "POST /v1/orders HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n";
    assert!(matches!(try_frame(bodiless.as_bytes(), LIMITS), Ok(Framed::Complete(_, _))));
}

/// A POST to `/v1/orders` with `fields` as its header lines and `body` after the head.
fn post_with(fields: &str, body: &str) -> Vec<u8> {
    format!("POST /v1/orders HTTP/1.1\r\nHost: x\r\n{fields}\r\n{body}").into_bytes()
}

fn refusal(bytes: &[u8]) -> HttpError {
    try_frame(bytes, LIMITS).expect_err("the framing is refused")
}

#[test]
fn a_single_plain_content_length_frames_the_body() {
    // Goal: one Content-Length of plain digits frames exactly that many bytes, including `0`,
    // leading zeros (1*DIGIT allows them) and whitespace around the value, which is not part
    // of it; the bytes after the body are the next request.
    let cases = [
        ("Content-Length: 0\r\n", ""),
        ("Content-Length: 5\r\n", "hello"),
        ("Content-Length: 007\r\n", "1234567"),
        ("Content-Length: 00000000000000000000000000003\r\n", "abc"),
        ("Content-Length:\t 2 \t\r\n", "hi"),
        ("content-LENGTH: 2\r\n", "hi"),
    ];
    for (fields, body) in cases {
        let mut bytes = post_with(fields, body);
        let head_and_body = bytes.len();
        bytes.extend_from_slice(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
        let (request, used) = try_request(&bytes, LIMITS).unwrap().unwrap();
        assert_eq!((request.body, used), (body.as_bytes(), head_and_body), "{fields:?}");
        let (next, _) = try_request(&bytes[used..], LIMITS).unwrap().unwrap();
        assert_eq!(next.path, "/health");
    }
}

#[test]
fn repeated_content_length_is_refused_even_with_equal_values() {
    // Goal: two Content-Length lines, equal or not, adjacent or apart, and one line holding a
    // list are all refused as duplicates with 400, before any body is awaited.
    let cases = [
        "Content-Length: 5\r\nContent-Length: 5\r\n",
        "Content-Length: 5\r\nContent-Length: 6\r\n",
        "Content-Length: 0\r\nX-Pad: y\r\ncontent-length: 0\r\n",
        "Content-Length: 5, 5\r\n",
        "Content-Length: 5,5\r\n",
        "Content-Length: 5,\r\n",
        "Content-Length: ,5\r\n",
    ];
    for fields in cases {
        let error = refusal(&post_with(fields, "hello"));
        assert_eq!(error, HttpError::DuplicateContentLength, "{fields:?}");
        assert_eq!(error.status_and_code(), (400, "duplicate_content_length"));
        // The head alone is enough: the refusal does not wait for a body.
        let head = post_with(fields, "");
        assert_eq!(refusal(&head), HttpError::DuplicateContentLength, "{fields:?}");
    }
}

#[test]
fn content_length_that_is_not_plain_digits_is_refused() {
    // Goal: a sign, inner space, hex, a decimal point, an empty value, non-ASCII bytes and a
    // value beyond u64::MAX are each a 400 invalid_content_length that quotes the value.
    let cases: [&[u8]; 11] = [
        b"+5",
        b"-5",
        b"5 5",
        b"0x5",
        b"5a",
        b"5.0",
        b"",
        b"\xc2\xb5",
        b"\xef\xbc\x95",
        b"18446744073709551616",
        b"99999999999999999999999999999999999999999999",
    ];
    for value in cases {
        let mut bytes = b"POST /v1/orders HTTP/1.1\r\nHost: t\r\nContent-Length: ".to_vec();
        bytes.extend_from_slice(value);
        bytes.extend_from_slice(b"\r\n\r\nhello");
        let error = refusal(&bytes);
        let shown = String::from_utf8_lossy(value);
        assert!(matches!(error, HttpError::InvalidContentLength(_)), "{shown:?}: {error:?}");
        assert_eq!(error.status_and_code(), (400, "invalid_content_length"));
    }
    let error = refusal(&post_with("Content-Length: +5\r\n", "hello"));
    assert_eq!(error.to_string().split(';').next(), Some(r#"Content-Length "+5" is not a length"#));
    // u64::MAX itself is a length, just over the body limit.
    let largest = post_with("Content-Length: 18446744073709551615\r\n", "");
    assert_eq!(refusal(&largest), HttpError::BodyTooLarge { length: u64::MAX, max: 256 });
}

#[test]
fn an_id_is_one_to_twenty_digits_within_u64_and_a_bad_one_is_quoted_cut_short() {
    // Goal: ids read as the API document's `Id` pattern says: 1 to 20 digits, leading zeros
    // allowed, at most 2^64 - 1; anything else is refused with a message that quotes at
    // most the start of what was sent.
    assert_eq!(views::parse_decimal("007"), Ok(7));
    assert_eq!(views::parse_decimal("00000000000000000001"), Ok(1));
    assert_eq!(views::parse_decimal("18446744073709551615"), Ok(u64::MAX));
    let over = views::parse_decimal("18446744073709551616").unwrap_err();
    assert!(over.contains("out of range"), "{over}");
    for bad in ["", "+5", "5 ", "0x5", "\u{1d7d3}", "000000000000000000001"] {
        let why = views::parse_decimal(bad).unwrap_err();
        assert!(why.contains("1 to 20 digits") && why.contains(&format!("{bad:?}")), "{why}");
    }
    let why = views::parse_decimal(&"9x".repeat(5_000)).unwrap_err();
    assert!(why.len() < 90 && why.ends_with(r#"9x9x"..."#), "{why}");
}

#[test]
fn a_long_bad_content_length_is_quoted_cut_short() {
    // Goal: the message quoting a refused value stays short however long the value is.
    let fields = format!("Content-Length: {}\r\n", "9x".repeat(300));
    let error = refusal(&post_with(&fields, ""));
    let message = error.to_string();
    assert!(message.len() < 150, "{message}");
    assert!(message.contains(r#"9x9x""#) && message.contains("..."), "{message}");
}

#[test]
fn transfer_encoding_is_refused_and_with_content_length_as_bad_framing() {
    // Goal: Transfer-Encoding alone stays 501; together with Content-Length, in either order
    // and whatever the coding, it is a 400 (RFC 9112, section 6.1), before any body arrives;
    // a repeated Content-Length next to it is still a duplicate.
    assert_eq!(
        refusal(&post_with("Transfer-Encoding: chunked\r\n", "")),
        HttpError::TransferEncoding
    );
    let cases = [
        "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        "Content-Length: 0\r\ntransfer-encoding: identity\r\n",
        "Transfer-Encoding: gzip, chunked\r\nContent-Length: 5\r\n",
    ];
    for fields in cases {
        let error = refusal(&post_with(fields, ""));
        assert_eq!(error, HttpError::TransferEncodingWithContentLength, "{fields:?}");
        assert_eq!(error.status_and_code(), (400, "transfer_encoding_with_content_length"));
    }
    let both = "Content-Length: 5\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n";
    assert_eq!(refusal(&post_with(both, "")), HttpError::DuplicateContentLength);
}

#[test]
fn obs_fold_and_whitespace_before_the_colon_are_malformed() {
    // Goal: the header lines RFC 9112 section 5 forbids in requests -- a folded continuation
    // line, whitespace between a field name and its colon, a field line that starts with
    // whitespace -- are 400 malformed_request. httparse refuses them in requests; this pins
    // that, so a parser upgrade or option cannot let a hidden Content-Length through.
    let cases = [
        "X-Folded: a\r\n b\r\nContent-Length: 0\r\n",
        "X-Folded: a\r\n\tContent-Length: 5\r\n",
        "Content-Length: 0\r\n 5\r\n",
        "Content-Length : 5\r\n",
        "Content-Length\t: 5\r\n",
        " Content-Length: 5\r\n",
        "Content Length: 5\r\n",
    ];
    for fields in cases {
        let error = refusal(&post_with(fields, "hello"));
        assert!(matches!(error, HttpError::Malformed(_)), "{fields:?}: {error:?}");
        assert_eq!(error.status_and_code(), (400, "malformed_request"));
    }
}

#[test]
fn response_has_length_and_retry_after() {
    // Goal: responses carry Content-Length, Connection, and Retry-After when set.
    let mut out = Vec::new();
    Response::error(503, "busy", "ring full").retry_after(1).write(&mut out, true);
    let text = String::from_utf8(out).unwrap();
    assert!(text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
    assert!(text.contains("retry-after: 1\r\n"));
    assert!(text.contains("connection: keep-alive\r\n"));
    let body = text.split("\r\n\r\n").nth(1).unwrap();
    assert!(text.contains(&format!("content-length: {}\r\n", body.len())));
}

fn valid_requests() -> Vec<Vec<u8>> {
    vec![
        post("/v1/orders", r#"{"request_id":"r-1","user":7,"sku":1,"qty":2}"#, None),
        post("/v1/orders/77/pay", r#"{"request_id":"p","payment_ref":"x","amount_cents":5}"#, None),
        post("/v1/orders/77/cancel", r#"{"request_id":"c","user":7}"#, None),
        post("/v1/skus/3/restock", r#"{"qty":4}"#, Some("secret")),
        post("/v1/coupons/claim", r#"{"request_id":"k","user":1,"batch":2}"#, None),
        b"GET /v1/skus/1 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn random_bytes_never_panic_the_parser_or_router(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        // Goal: arbitrary input frames, waits or errors with a 4xx/5xx; never a panic.
        match try_request(&bytes, LIMITS) {
            Ok(Some((request, used))) => {
                prop_assert!(used <= bytes.len());
                let _ = route(&request, Some(&AdminToken::new("secret")), &mut KeyMint::new(0));
            }
            Ok(None) => prop_assert!(bytes.len() <= LIMITS.header_max + LIMITS.body_max),
            Err(error) => prop_assert!(error.status_and_code().0 >= 400),
        }
    }

    #[test]
    fn mutated_requests_never_panic(
        which in 0usize..6,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..5),
        cut in any::<usize>(),
    ) {
        // Goal: valid requests with corrupted or missing bytes get typed errors, never a panic.
        let mut bytes = valid_requests()[which].clone();
        for (at, byte) in flips {
            let at = at % bytes.len();
            bytes[at] ^= byte;
        }
        bytes.truncate(cut % (bytes.len() + 1));
        if let Ok(Some((request, _))) = try_request(&bytes, LIMITS) {
            if let Err(response) = route(&request, Some(&AdminToken::new("secret")), &mut KeyMint::new(0)) {
                prop_assert!(response.status >= 400);
                let value: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
                prop_assert!(value["error"].is_string());
            }
        }
    }

    #[test]
    fn every_outcome_renders_json(outcome in arb::outcome()) {
        // Goal: every outcome renders a JSON body with a status in the documented ranges.
        let response = render_outcome(&outcome);
        prop_assert!((200..600).contains(&response.status));
        let value: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        prop_assert_eq!(value.get("error").is_some(), outcome.is_rejected());
    }
}

/// Actions whose argument fields are drawn from tiny ranges, so zeros and empty windows are
/// common.
fn argument_action() -> impl Strategy<Value = Action> {
    let small = || 0u64..3;
    prop_oneof![
        (small(), small(), small(), small()).prop_map(|(sku, timeout, start, end)| {
            Action::CreateSku(ringfence_core::CreateSku {
                sku: SkuId(sku),
                stock: 1,
                price_cents: 1,
                per_user_limit: 0,
                payment_timeout_ms: timeout,
                sale_start: (start > 0).then_some(Timestamp(start)),
                sale_end: (end > 0).then_some(Timestamp(end)),
            })
        }),
        (small(), 0u32..3, small(), small()).prop_map(|(batch, quantity, from, until)| {
            Action::CreateCouponBatch(ringfence_core::CreateCouponBatch {
                batch: ringfence_core::BatchId(batch),
                quantity,
                per_user_limit: 0,
                discount_cents: 1,
                min_amount_cents: 0,
                valid_from: Timestamp(from),
                valid_until: Timestamp(until),
            })
        }),
        (small(), small(), 0u32..3).prop_map(|(user, sku, qty)| {
            Action::Reserve(Reserve { user: UserId(user), sku: SkuId(sku), qty, coupon: None })
        }),
        (small(), small()).prop_map(|(user, batch)| Action::ClaimCoupon {
            user: UserId(user),
            batch: ringfence_core::BatchId(batch),
        }),
    ]
}

proptest! {
    #[test]
    fn the_fields_named_before_submission_are_the_engines_invalid_arguments(
        actions in proptest::collection::vec(argument_action(), 1..40),
    ) {
        // Goal: the HTTP layer names a field exactly when the engine would refuse the command
        // as `invalid_argument`, so the two checks cannot drift apart.
        let mut engine = ringfence_core::Engine::new(ringfence_core::EngineConfig::small());
        for (n, action) in actions.into_iter().enumerate() {
            let sequence = n as u64 + 1;
            let key = ringfence_core::RequestKey::from_u128(u128::from(sequence));
            let outcome = engine.apply(&ringfence_core::Sequenced {
                sequence: ringfence_core::Sequence(sequence),
                timestamp: Timestamp(1),
                command: Command::Client { key, action },
            });
            let refused = outcome == Outcome::Rejected(Rejection::InvalidArgument);
            prop_assert_eq!(
                super::api::invalid_argument(&action).is_some(),
                refused,
                "{:?} -> {:?}",
                action,
                outcome
            );
        }
    }
}

/// The `(method, path template)` pairs `docs/openapi.yaml` describes, read from its `paths:`
/// section by indentation (two spaces for a path, four for a method).
fn documented_routes() -> Vec<(String, String)> {
    let mut routes = Vec::new();
    let mut path = None;
    let mut in_paths = false;
    for line in super::api::OPENAPI_YAML.lines() {
        if !line.starts_with(' ') {
            in_paths = line == "paths:";
            continue;
        }
        if !in_paths {
            continue;
        }
        if let Some(p) = line.strip_prefix("  /").and_then(|rest| rest.strip_suffix(':')) {
            path = Some(format!("/{p}"));
        } else if let Some(method) = line.strip_prefix("    ").and_then(|m| m.strip_suffix(':')) {
            if ["get", "post", "put", "delete", "patch"].contains(&method) {
                let path = path.clone().expect("a method under a path");
                routes.push((method.to_uppercase(), path));
            }
        }
    }
    routes
}

/// A concrete path for a template: every `{id}` parameter becomes `12`.
fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(|segment| if segment.starts_with('{') { "12" } else { segment })
        .collect::<Vec<_>>()
        .join("/")
}

fn is_routed(method: &str, path: &str) -> bool {
    let request = format!("{method} {path} HTTP/1.1\r\nHost: t\r\n\r\n");
    let (request, _) = try_request(request.as_bytes(), Limits::default()).unwrap().unwrap();
    match route(&request, Some(&AdminToken::new("secret")), &mut KeyMint::new(0)) {
        Ok(_) => true,
        Err(response) => !matches!(response.status, 404 | 405),
    }
}

#[test]
fn a_405_names_in_allow_exactly_the_methods_the_path_takes() {
    // Goal: a 405 carries `Allow` (RFC 9110, section 15.5.6) listing exactly the methods the
    // router serves on that path, checked against the router itself on every documented path;
    // a path with an empty segment is no endpoint (404), and an absolute-form target is routed
    // as its path.
    let methods = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"];
    let documented = documented_routes();
    for (_, template) in &documented {
        let path = concrete(template);
        let routed: Vec<&str> = methods.iter().copied().filter(|m| is_routed(m, &path)).collect();
        assert!(!routed.is_empty(), "{path}");
        // HEAD goes wherever GET goes, to the same call.
        assert_eq!(routed.contains(&"GET"), routed.contains(&"HEAD"), "{path}");
        if routed.contains(&"GET") {
            let as_call = |method: &str| {
                let request = format!("{method} {path} HTTP/1.1\r\nHost: t\r\n\r\n");
                call(request.as_bytes(), true).map_err(|r| r.status)
            };
            assert_eq!(as_call("HEAD"), as_call("GET"), "{path}");
        }
        for method in methods.iter().filter(|m| !routed.contains(m)) {
            let request = format!("{method} {path} HTTP/1.1\r\nHost: t\r\n\r\n");
            let response = call(request.as_bytes(), true).unwrap_err();
            assert_eq!(response.status, 405, "{method} {path}");
            assert_eq!(response.allow, Some(routed.join(", ").as_str()), "{method} {path}");
            let mut written = Vec::new();
            response.write(&mut written, true);
            let head = String::from_utf8_lossy(&written).to_lowercase();
            assert!(head.contains(&format!("\r\nallow: {}\r\n", routed.join(", ").to_lowercase())));
        }
    }
    assert_eq!(
        call(b"GET /v1/skus//9 HTTP/1.1\r\nHost: t\r\n\r\n", false).unwrap_err().status,
        404
    );
    assert_eq!(call(b"GET //health HTTP/1.1\r\nHost: t\r\n\r\n", false).unwrap_err().status, 404);
    let absolute = b"GET http://127.0.0.1:8080/v1/skus/9?x=1 HTTP/1.1\r\nHost: t\r\n\r\n";
    assert_eq!(call(absolute, false).unwrap(), Call::Submit(Command::Query(Query::Sku(SkuId(9)))));
    let no_path = b"GET HTTP://node HTTP/1.1\r\nHost: t\r\n\r\n";
    assert_eq!(call(no_path, false).unwrap_err().status, 404);
}

#[test]
fn the_router_serves_exactly_the_routes_the_openapi_document_describes() {
    // Goal: every documented operation is routed, and every method on every path the
    // document or a near miss names is routed only if documented: the two cannot drift.
    let documented = documented_routes();
    assert!(documented.len() >= 25, "{documented:?}");
    let mut paths: Vec<String> = documented.iter().map(|(_, p)| concrete(p)).collect();
    paths.extend(
        ["/", "/v1", "/v1/admin", "/v1/orders/12/fly", "/v1/skus/12/drop", "/v2/skus"]
            .map(String::from),
    );
    paths.extend(["/v1/coupons/12/x", "/v1/admin/shutdown", "/openapi.json"].map(String::from));
    for path in &paths {
        for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            let is_documented = documented.iter().any(|(m, p)| m == method && concrete(p) == *path);
            assert_eq!(is_routed(method, path), is_documented, "{method} {path}");
        }
    }
}

#[test]
fn every_error_code_the_api_can_answer_is_in_the_document() {
    // Goal: a client generated from the document knows every `error` code it can meet.
    let start = super::api::OPENAPI_YAML.find("    ErrorCode:").unwrap();
    let end = start + super::api::OPENAPI_YAML[start..].find("    Error:").unwrap();
    let listed = &super::api::OPENAPI_YAML[start..end];
    let listed: Vec<&str> = listed
        .split(|c: char| !(c.is_ascii_lowercase() || c == '_'))
        .filter(|w| !w.is_empty())
        .collect();
    let mut codes: Vec<&str> = (0..=255u8)
        .filter_map(|tag| ringfence_core::codec::decode_outcome(&[0x12, tag]).ok())
        .filter_map(|outcome| match outcome {
            Outcome::Rejected(rejection) => Some(super::api::rejection_code(rejection)),
            _ => None,
        })
        .collect();
    assert!(codes.len() >= 17, "every one-byte rejection decoded: {codes:?}");
    let with_fields = [
        Rejection::InvalidState { current: OrderState::Paid },
        Rejection::WrongAmount { expected_cents: 1 },
    ];
    codes.extend(with_fields.map(super::api::rejection_code));
    let framing = [
        HttpError::Malformed(String::new()),
        HttpError::HeadersTooLarge(1),
        HttpError::TooManyHeaders,
        HttpError::BodyTooLarge { length: 1, max: 0 },
        HttpError::TransferEncoding,
        HttpError::DuplicateContentLength,
        HttpError::InvalidContentLength(String::new()),
        HttpError::TransferEncodingWithContentLength,
    ];
    codes.extend(framing.iter().map(|error| error.status_and_code().1));
    for code in codes {
        assert!(listed.contains(&code), "error code {code} is not in ErrorCode");
    }
}

#[test]
fn a_request_from_a_web_page_is_refused_whatever_it_asks() {
    // Goal: a page in an operator's browser cannot use a loopback node where client commands
    // are open: a request with an `Origin` header (a "simple" cross-origin POST needs no
    // preflight) is 403 `cross_origin`, token or not; the probes and the document stay open.
    let body = r#"{"request_id":"r-1","user":7,"sku":1,"qty":1}"#;
    let from_page = |bytes: Vec<u8>| {
        let text = String::from_utf8(bytes).unwrap();
        text.replacen("Host: x\r\n", "Host: x\r\nOrigin: http://evil.example\r\n", 1).into_bytes()
    };
    for bearer in [None, Some("secret")] {
        let refused = call(&from_page(post("/v1/orders", body, bearer)), bearer.is_some());
        let refused = refused.expect_err("a web page's request is refused");
        assert_eq!((refused.status, error_code(&refused)), (403, "cross_origin".to_owned()));
    }
    let read = from_page(b"GET /v1/skus/1 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec());
    assert_eq!(call(&read, false).expect_err("a read too").status, 403);
    let health = from_page(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n".to_vec());
    assert_eq!(call(&health, false).unwrap(), Call::Health);
    // Without the header the same reservation is routed.
    assert!(matches!(call(&post("/v1/orders", body, None), false), Ok(Call::Submit(_))));
}
