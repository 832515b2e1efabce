//! Callers authorised by role, through real sockets on both ports: with role tokens configured
//! every call but `/health`, `/ready` and `PING` needs a token whose role allows it (401 or
//! `unauthorized` without one, 403 or `forbidden` naming the role needed beyond it); with
//! only the admin token, buyer commands and reads stay open and refund and admin calls need
//! the admin token.

mod common;

use common::{Http, HttpResponse, TOKEN, start};
use ringfence_core::{
    Action, Command, OrderId, Outcome, Query, RequestKey, Reserve, SkuId, UserId,
};
use ringfence_ingress::wire::ErrorCode;
use ringfence_ingress::{Client, ClientError, Role, ServerConfig, ServerHandle};

const ORDERS: &str = "orders-token-for-the-storefront";
const PAYMENTS: &str = "payments-token-for-the-psp-side";
const READ: &str = "read-token-for-the-dashboards";
const SKU: &str =
    r#"{"sku":1,"stock":50,"price_cents":100,"per_user_limit":0,"payment_timeout_ms":600000}"#;

fn with_roles() -> ServerConfig {
    ServerConfig {
        role_tokens: vec![
            (Role::Orders, ORDERS.into()),
            (Role::Payments, PAYMENTS.into()),
            (Role::Read, READ.into()),
        ],
        ..ServerConfig::loopback()
    }
}

/// Every caller in the tests: no token, then each role's token.
const CALLERS: [Option<&str>; 5] = [None, Some(READ), Some(ORDERS), Some(PAYMENTS), Some(TOKEN)];

fn name(caller: Option<&str>) -> &'static str {
    match caller {
        None => "no token",
        Some(READ) => "read",
        Some(ORDERS) => "orders",
        Some(PAYMENTS) => "payments",
        Some(_) => "admin",
    }
}

fn assert_refused(response: &HttpResponse, status: u16, role_needed: &str, who: &str) {
    let json = response.json();
    assert_eq!(response.status, status, "{who}: {json}");
    let code = if status == 401 { "unauthorized" } else { "forbidden" };
    assert_eq!(json["error"], code, "{who}: {json}");
    let message = json["message"].as_str().unwrap();
    if status == 403 {
        assert!(message.contains(&format!("`{role_needed}` role")), "{who}: {message}");
    }
}

fn reserve_body(n: u32) -> String {
    format!(r#"{{"request_id":"r-{n}","user":{n},"sku":1,"qty":1}}"#)
}

/// Reserves one unit as the orders service; returns the order id.
fn reserve(http: &mut Http, n: u32) -> String {
    let response = http.call("POST", "/v1/orders", Some(&reserve_body(n)), Some(ORDERS));
    assert_eq!(response.status, 201, "{:?}", response.json());
    response.json()["order_id"].as_str().unwrap().to_owned()
}

fn pay_body(n: u32) -> String {
    format!(r#"{{"request_id":"p-{n}","payment_ref":"psp-{n}","amount_cents":100}}"#)
}

#[test]
fn http_calls_need_a_token_whose_role_allows_them() {
    // Goal: over HTTP, each call is allowed to exactly the roles of the table: no token is 401,
    // a token of the wrong role 403 naming the role needed; the right role gets the engine's
    // answer. /health and /ready need nothing.
    let server = start(with_roles());
    let mut http = Http::connect(server.http_addr().unwrap());
    for caller in CALLERS {
        let who = name(caller);
        assert_eq!(http.call("GET", "/health", None, caller).status, 200, "{who}");
        assert_eq!(http.call("GET", "/ready", None, caller).status, 200, "{who}");
        let create = http.call("POST", "/v1/skus", Some(SKU), caller);
        match caller {
            None => assert_refused(&create, 401, "admin", who),
            Some(TOKEN) => assert_eq!(create.status, 201, "{:?}", create.json()),
            Some(_) => assert_refused(&create, 403, "admin", who),
        }
    }
    for (n, caller) in (1..).zip(CALLERS) {
        let who = name(caller);
        // Reads: any role.
        for path in ["/v1/skus/1", "/v1/node", "/metrics"] {
            let read = http.call("GET", path, None, caller);
            match caller {
                None => assert_refused(&read, 401, "read", who),
                Some(_) => assert_eq!(read.status, 200, "{who} {path}"),
            }
        }
        // The order service's calls: orders and admin.
        let reserve = http.call("POST", "/v1/orders", Some(&reserve_body(n)), caller);
        match caller {
            None => assert_refused(&reserve, 401, "orders", who),
            Some(ORDERS | TOKEN) => assert_eq!(reserve.status, 201, "{who}"),
            Some(_) => assert_refused(&reserve, 403, "orders", who),
        }
        let claim = r#"{"request_id":"c","user":1,"batch":9}"#;
        let claim = http.call("POST", "/v1/coupons/claim", Some(claim), caller);
        match caller {
            None => assert_refused(&claim, 401, "orders", who),
            Some(ORDERS | TOKEN) => assert_eq!(claim.status, 404, "{who}: no batch 9"),
            Some(_) => assert_refused(&claim, 403, "orders", who),
        }
        // The payment service's calls: payments and admin.
        let order = self::reserve(&mut http, 100 + n);
        let pay = http.call("POST", &format!("/v1/orders/{order}/pay"), Some(&pay_body(n)), caller);
        let refund = http.call("POST", &format!("/v1/orders/{order}/refund"), None, caller);
        match caller {
            None => {
                assert_refused(&pay, 401, "payments", who);
                assert_refused(&refund, 401, "payments", who);
            }
            Some(PAYMENTS | TOKEN) => {
                assert_eq!(pay.status, 200, "{who}: {:?}", pay.json());
                assert_eq!(refund.status, 200, "{who}: {:?}", refund.json());
            }
            Some(_) => {
                assert_refused(&pay, 403, "payments", who);
                assert_refused(&refund, 403, "payments", who);
            }
        }
        // Fulfilment: admin only.
        let ship = http.call("POST", &format!("/v1/orders/{order}/ship"), None, caller);
        match caller {
            None => assert_refused(&ship, 401, "admin", who),
            Some(TOKEN) => assert_eq!(ship.status, 409, "{who}: a refunded order does not ship"),
            Some(_) => assert_refused(&ship, 403, "admin", who),
        }
    }
    // A malformed body without a token says nothing but 401; a wrong token is 401 too.
    let bad = http.call("POST", "/v1/orders", Some("{"), None);
    assert_refused(&bad, 401, "", "no token, bad body");
    let wrong = http.call("GET", "/v1/skus/1", None, Some("not-a-configured-token"));
    assert_refused(&wrong, 401, "", "wrong token");
    server.shutdown().unwrap();
}

fn key(n: u64) -> RequestKey {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&n.to_le_bytes());
    bytes[8] = 0xB1;
    RequestKey(bytes)
}

fn query_sku() -> Command {
    Command::Query(Query::Sku(SkuId(1)))
}

fn reserve_command(n: u64) -> Command {
    let reserve = Reserve { user: UserId(n), sku: SkuId(1), qty: 1, coupon: None };
    Command::Client { key: key(n), action: Action::Reserve(reserve) }
}

fn pay_command(n: u64, order: OrderId) -> Command {
    let payment_ref = ringfence_ingress::keys::payment_ref(&format!("psp-{n}"));
    Command::Client { key: key(n), action: Action::Pay { order, payment_ref, amount_cents: 100 } }
}

fn refund_command(n: u64, order: OrderId) -> Command {
    Command::Client { key: key(n), action: Action::Refund { order } }
}

fn client(server: &ServerHandle, token: Option<&str>) -> Client {
    let mut client = Client::connect(&[server.binary_addr().unwrap()]).unwrap();
    if let Some(token) = token {
        client.authenticate(token).unwrap();
    }
    client
}

fn refused_code(result: Result<Outcome, ClientError>) -> ErrorCode {
    match result {
        Err(ClientError::Refused(error)) => {
            if error.code == ErrorCode::Forbidden {
                assert!(error.message.contains("role"), "{}", error.message);
            }
            assert!(!error.fatal, "a refusal by role keeps the connection");
            error.code
        }
        other => panic!("not refused: {other:?}"),
    }
}

#[test]
fn binary_auth_gives_the_connection_a_role() {
    // Goal: on the binary port, AUTH gives the connection its token's role: commands beyond it
    // get a non-fatal `forbidden`, commands before any AUTH `unauthorized` (and NODE too);
    // PING needs nothing, and a wrong token is refused and closes the connection.
    let server = start(with_roles());
    let mut http = Http::connect(server.http_addr().unwrap());
    assert_eq!(http.call("POST", "/v1/skus", Some(SKU), Some(TOKEN)).status, 201);
    let order = |id: &str| OrderId(id.parse().unwrap());

    let mut anonymous = client(&server, None);
    anonymous.ping().unwrap();
    assert_eq!(refused_code(anonymous.call(query_sku())), ErrorCode::Unauthorized);
    assert_eq!(refused_code(anonymous.call(reserve_command(1))), ErrorCode::Unauthorized);
    // Said as the HTTP API says it: a read takes any role's token, a write its role's or admin's.
    let said = |result: Result<Outcome, ClientError>| match result {
        Err(ClientError::Refused(error)) => error.message,
        other => panic!("not refused: {other:?}"),
    };
    let read_refused = said(anonymous.call(query_sku()));
    assert!(read_refused.contains("a token of any role"), "{read_refused}");
    let write_refused = said(anonymous.call(reserve_command(10)));
    assert!(write_refused.contains("the `orders` role (or `admin`)"), "{write_refused}");
    assert!(matches!(
        anonymous.node(),
        Err(ClientError::Refused(error)) if error.code == ErrorCode::Unauthorized
    ));

    let mut read = client(&server, Some(READ));
    assert!(matches!(read.call(query_sku()), Ok(Outcome::Sku(_))));
    read.node().unwrap();
    assert_eq!(refused_code(read.call(reserve_command(2))), ErrorCode::Forbidden);

    let mut orders = client(&server, Some(ORDERS));
    assert!(matches!(orders.call(reserve_command(3)), Ok(Outcome::Reserved { .. })));
    let paid = order(&reserve(&mut http, 4));
    assert_eq!(refused_code(orders.call(pay_command(5, paid))), ErrorCode::Forbidden);
    assert_eq!(refused_code(orders.call(refund_command(6, paid))), ErrorCode::Forbidden);
    assert!(matches!(orders.call(query_sku()), Ok(Outcome::Sku(_))), "still usable");

    let mut payments = client(&server, Some(PAYMENTS));
    assert_eq!(refused_code(payments.call(reserve_command(7))), ErrorCode::Forbidden);
    assert!(matches!(payments.call(pay_command(8, paid)), Ok(Outcome::Paid { .. })));
    assert!(matches!(payments.call(refund_command(9, paid)), Ok(Outcome::Refunded { .. })));
    assert_eq!(refused_code(payments.call(Command::Snapshot)), ErrorCode::Forbidden);

    // A second AUTH replaces the role.
    payments.authenticate(TOKEN).unwrap();
    assert!(matches!(payments.call(Command::Snapshot), Ok(Outcome::SnapshotRequested { .. })));

    let mut wrong = Client::connect(&[server.binary_addr().unwrap()]).unwrap();
    match wrong.authenticate("not-a-configured-token") {
        Err(ClientError::Refused(error)) => {
            assert_eq!(error.code, ErrorCode::AuthFailed);
            assert!(error.fatal);
        }
        other => panic!("a wrong token was not refused: {other:?}"),
    }
    server.shutdown().unwrap();
}

#[test]
fn with_only_the_admin_token_buyer_commands_and_reads_stay_open() {
    // Goal: today's deployments (only the admin token) are unchanged: reads, reserve and pay
    // need no token on either port; refund and admin calls need the admin token (401 and
    // `unauthorized`, never 403: there is no other role to name).
    let server = start(ServerConfig::loopback());
    let mut http = Http::connect(server.http_addr().unwrap());
    assert_refused(&http.call("POST", "/v1/skus", Some(SKU), None), 401, "admin", "no token");
    assert_eq!(http.call("POST", "/v1/skus", Some(SKU), Some(TOKEN)).status, 201);
    assert_eq!(http.call("GET", "/v1/skus/1", None, None).status, 200);
    assert_eq!(http.call("GET", "/metrics", None, None).status, 200);
    let reserve = http.call("POST", "/v1/orders", Some(&reserve_body(1)), None);
    assert_eq!(reserve.status, 201);
    let order = reserve.json()["order_id"].as_str().unwrap().to_owned();
    let pay = http.call("POST", &format!("/v1/orders/{order}/pay"), Some(&pay_body(1)), None);
    assert_eq!(pay.status, 200);
    let refund = http.call("POST", &format!("/v1/orders/{order}/refund"), None, None);
    assert_refused(&refund, 401, "admin", "no token");
    assert!(refund.json()["message"].as_str().unwrap().contains("admin"));

    let mut anonymous = client(&server, None);
    assert!(matches!(anonymous.call(query_sku()), Ok(Outcome::Sku(_))));
    assert!(matches!(anonymous.call(reserve_command(2)), Ok(Outcome::Reserved { .. })));
    let paid = OrderId(order.parse().unwrap());
    assert_eq!(refused_code(anonymous.call(refund_command(3, paid))), ErrorCode::Unauthorized);
    anonymous.node().unwrap();
    let mut admin = client(&server, Some(TOKEN));
    assert!(matches!(admin.call(refund_command(4, paid)), Ok(Outcome::Refunded { .. })));
    server.shutdown().unwrap();
}

#[test]
fn wrong_role_tokens_count_against_the_address() {
    // Goal: with roles enforced, wrong tokens go through the per-address limiter like wrong
    // admin tokens: after the burst even a right role token is refused unchecked (429).
    let config =
        ServerConfig { auth_failures_burst: 2, auth_failure_refill_ms: 600_000, ..with_roles() };
    let server = start(config);
    let mut http = Http::connect(server.http_addr().unwrap());
    for guess in ["guess-1", "guess-2"] {
        assert_refused(&http.call("GET", "/v1/skus/1", None, Some(guess)), 401, "", guess);
    }
    let limited = http.call("GET", "/v1/skus/1", None, Some(READ));
    assert_eq!(limited.status, 429, "{:?}", limited.json());
    assert_eq!(limited.json()["error"], "auth_rate_limited");
    server.shutdown().unwrap();
}
