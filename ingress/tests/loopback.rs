//! The network front through real sockets on loopback: a flash sale over both protocols,
//! expiry seen over HTTP, idempotent retries across protocols, admin access, and HTTP
//! `Expect: 100-continue`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Http, TOKEN, create_sku, start, start_node};
use ringfence_core::pipeline::Topology;
use ringfence_core::{Action, Command, Outcome, Query, Rejection, Reserve, SkuId, UserId};
use ringfence_ingress::{Client, ServerConfig, keys};

const BUYERS: u64 = 10_000;
const CONNECTIONS: u64 = 50;
const STOCK: u64 = 1_000;

/// What one buyer's first attempt got: an order id or a rejection code.
type Results = Arc<Mutex<BTreeMap<u64, Result<u64, String>>>>;

fn reserve_command(user: u64, sku: u64) -> Command {
    Command::Client {
        key: keys::request_key(&format!("buy-{user}")),
        action: Action::Reserve(Reserve {
            user: UserId(user),
            sku: SkuId(sku),
            qty: 1,
            coupon: None,
        }),
    }
}

/// Sends `commands` pipelined, resending those refused as busy (a full ring is back-pressure,
/// not an answer) until each has an outcome.
fn outcomes_retrying_busy(client: &mut Client, commands: &[Command]) -> Vec<Outcome> {
    let mut outcomes: Vec<Option<Outcome>> = vec![None; commands.len()];
    loop {
        let pending: Vec<usize> = (0..commands.len()).filter(|&i| outcomes[i].is_none()).collect();
        if pending.is_empty() {
            return outcomes.into_iter().map(Option::unwrap).collect();
        }
        let batch: Vec<Command> = pending.iter().map(|&i| commands[i]).collect();
        for (&i, answer) in pending.iter().zip(client.pipeline(&batch).expect("pipeline")) {
            match answer {
                Ok(outcome) => outcomes[i] = Some(outcome),
                Err(refusal) => {
                    assert_eq!(refusal.code.name(), "busy", "only back-pressure is retried");
                    std::thread::sleep(Duration::from_millis(u64::from(refusal.retry_after_ms)));
                }
            }
        }
    }
}

fn binary_buyers(addr: std::net::SocketAddr, users: Vec<u64>, results: &Results) {
    let mut client = Client::connect(&[addr]).expect("connect");
    for chunk in users.chunks(50) {
        let commands: Vec<Command> = chunk.iter().map(|&u| reserve_command(u, 1)).collect();
        let answers = outcomes_retrying_busy(&mut client, &commands);
        // Every tenth buyer retries: the answer must be identical.
        let retries: Vec<Command> = commands.iter().step_by(10).copied().collect();
        let again = outcomes_retrying_busy(&mut client, &retries);
        for (retry, first) in again.iter().zip(answers.iter().step_by(10)) {
            assert_eq!(retry, first, "a retry must get the original answer");
        }
        let mut results = results.lock().unwrap();
        for (&user, answer) in chunk.iter().zip(answers) {
            let entry = match answer {
                Outcome::Reserved { order, .. } => Ok(order.0),
                Outcome::Rejected(rejection) => Err(rejection.code().to_owned()),
                other => panic!("unexpected outcome {other:?}"),
            };
            results.insert(user, entry);
        }
    }
}

fn reserve_body(user: u64) -> String {
    format!(r#"{{"request_id":"buy-{user}","user":{user},"sku":1,"qty":1}}"#)
}

/// Sends one reservation per user, pipelined, resending those answered 503 busy.
fn http_reserve_retrying_busy(http: &mut Http, users: &[u64]) -> Vec<common::HttpResponse> {
    let mut answers: Vec<Option<common::HttpResponse>> = (0..users.len()).map(|_| None).collect();
    loop {
        let pending: Vec<usize> = (0..users.len()).filter(|&i| answers[i].is_none()).collect();
        if pending.is_empty() {
            return answers.into_iter().map(Option::unwrap).collect();
        }
        let mut bytes = Vec::new();
        for &i in &pending {
            let body = reserve_body(users[i]);
            bytes.extend(Http::request_bytes("POST", "/v1/orders", Some(&body), None));
        }
        http.send(&bytes);
        for &i in &pending {
            let response = http.read_response().expect("response");
            if response.status == 503 {
                assert_eq!(response.json()["error"], "busy");
                assert_eq!(response.header("retry-after"), Some("1"));
                std::thread::sleep(Duration::from_millis(5));
            } else {
                answers[i] = Some(response);
            }
        }
    }
}

fn http_buyers(addr: std::net::SocketAddr, users: Vec<u64>, results: &Results) {
    let mut http = Http::connect(addr);
    for chunk in users.chunks(50) {
        // Pipelined: all requests of the chunk written before any response is read.
        let answers = http_reserve_retrying_busy(&mut http, chunk);
        let retry = http_reserve_retrying_busy(&mut http, &chunk[..1]).pop().unwrap();
        assert_eq!((retry.status, &retry.body), (answers[0].status, &answers[0].body));
        let mut results = results.lock().unwrap();
        for (&user, response) in chunk.iter().zip(answers) {
            let json = response.json();
            let entry = match response.status {
                201 => Ok(json["order_id"].as_str().unwrap().parse().unwrap()),
                409 => Err(json["error"].as_str().unwrap().to_owned()),
                other => panic!("unexpected status {other}: {json}"),
            };
            results.insert(user, entry);
        }
    }
}

#[test]
fn flash_sale_through_the_compact_pipeline_node() {
    // Goal: 10,000 buyers over 50 connections (half binary, half HTTP) competing for 1,000
    // units get exactly 1,000 reservations, each buyer at most one, retries answered
    // identically — through the real node as `serve` runs it on a small machine (compact
    // topology, egress polled by the event loop).
    flash_sale(start_node(ServerConfig::loopback(), Topology::Compact));
}

#[test]
fn flash_sale_through_the_inline_node() {
    // Goal: the same flash sale with the processor run by the event loop itself (`serve
    // --topology inline`).
    flash_sale(start_node(ServerConfig::loopback(), Topology::Stepped));
}

#[test]
fn flash_sale_through_the_parallel_pipeline_node() {
    // Goal: the same flash sale through the real node, parallel topology with an egress thread.
    flash_sale(start_node(ServerConfig::loopback(), Topology::Parallel));
}

fn flash_sale(server: ringfence_ingress::ServerHandle) {
    let binary = server.binary_addr().unwrap();
    let http_addr = server.http_addr().unwrap();
    let mut admin = Http::connect(http_addr);
    create_sku(&mut admin, 1, STOCK as u32, 1, 600_000);
    let results: Results = Arc::default();
    let threads: Vec<_> = (0..CONNECTIONS)
        .map(|connection| {
            let users: Vec<u64> = (1..=BUYERS).filter(|u| u % CONNECTIONS == connection).collect();
            let results = Arc::clone(&results);
            std::thread::spawn(move || {
                if connection % 2 == 0 {
                    binary_buyers(binary, users, &results);
                } else {
                    http_buyers(http_addr, users, &results);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("buyer thread");
    }
    let results = results.lock().unwrap();
    assert_eq!(results.len() as u64, BUYERS);
    let orders: BTreeSet<u64> = results.values().filter_map(|r| r.as_ref().ok().copied()).collect();
    let reserved = results.values().filter(|r| r.is_ok()).count() as u64;
    assert_eq!(reserved, STOCK, "exactly the stock is reserved");
    assert_eq!(orders.len() as u64, STOCK, "every reservation has its own order");
    assert!(results.values().all(|r| r.is_ok() || r.as_ref().unwrap_err() == "sold_out"));
    // A buyer who already holds a unit is refused by the per-user limit.
    let winner = *results.iter().find(|(_, r)| r.is_ok()).unwrap().0;
    let body = format!(r#"{{"request_id":"again-{winner}","user":{winner},"sku":1,"qty":1}}"#);
    let response = admin.call("POST", "/v1/orders", Some(&body), None);
    assert_eq!(response.status, 409);
    let code = response.json()["error"].as_str().unwrap().to_owned();
    assert!(code == "limit_exceeded" || code == "sold_out", "{code}");
    let sku = admin.call("GET", "/v1/skus/1", None, None).json();
    assert_eq!(sku["available"], 0);
    assert_eq!(sku["reserved"], STOCK);
    assert_eq!(sku["stock"], STOCK);
    server.shutdown().unwrap();
}

#[test]
fn payment_expiry_returns_stock_visible_over_http() {
    // Goal: an unpaid reservation expires by the node's ticks alone and its unit is available
    // again in GET /v1/skus; the order reads as expired and paying it is refused.
    payment_expiry_over_http(Topology::Compact);
}

#[test]
fn payment_expiry_on_an_inline_node_needs_no_traffic() {
    // Goal: the same with the processor on the event loop (`serve`'s `inline`): with no
    // request arriving, the loop still wakes and steps the node when the deadline comes due.
    // A read submitted before a missed tick is answered from the unexpired state, so the first
    // read after a silent wait fails if the loop only steps the node when input arrives.
    payment_expiry_over_http(Topology::Stepped);
}

fn payment_expiry_over_http(topology: Topology) {
    let server = start_node(ServerConfig::loopback(), topology);
    let mut http = Http::connect(server.http_addr().unwrap());
    create_sku(&mut http, 7, 3, 0, 50);
    let body = r#"{"request_id":"exp-1","user":9,"sku":7,"qty":2}"#;
    let reserved = http.call("POST", "/v1/orders", Some(body), None);
    assert_eq!(reserved.status, 201);
    let order_id = reserved.json()["order_id"].as_str().unwrap().to_owned();
    assert_eq!(http.call("GET", "/v1/skus/7", None, None).json()["available"], 1);
    // No request for forty times the payment timeout: only the node's own timing can fire it
    // (a liveness bound with room for a loaded machine, not a speed target).
    std::thread::sleep(Duration::from_millis(2_000));
    let sku = http.call("GET", "/v1/skus/7", None, None).json();
    assert_eq!((sku["available"].clone(), sku["reserved"].clone()), (3.into(), 0.into()), "{sku}");
    let order = http.call("GET", &format!("/v1/orders/{order_id}"), None, None).json();
    assert_eq!(order["state"], "expired");
    let pay = r#"{"request_id":"exp-pay","payment_ref":"psp-1","amount_cents":1000}"#;
    let response = http.call("POST", &format!("/v1/orders/{order_id}/pay"), Some(pay), None);
    assert_eq!(response.status, 409);
    assert_eq!(response.json()["current_state"], "expired");
    server.shutdown().unwrap();
}

#[test]
fn order_lifecycle_over_http() {
    // Goal: reserve, pay (twice with the same reference), ship and complete through the API,
    // with the statuses and bodies of the contract.
    let server = start(ServerConfig::loopback());
    let mut http = Http::connect(server.http_addr().unwrap());
    create_sku(&mut http, 2, 10, 2, 60_000);
    let reserved = http.call(
        "POST",
        "/v1/orders",
        Some(r#"{"request_id":"o1","user":5,"sku":2,"qty":2}"#),
        None,
    );
    assert_eq!(reserved.status, 201);
    let json = reserved.json();
    let order = json["order_id"].as_str().unwrap().to_owned();
    assert_eq!(json["amount_cents"], 1000);
    let pay = r#"{"request_id":"pay-1","payment_ref":"psp-9","amount_cents":1000}"#;
    let paid = http.call("POST", &format!("/v1/orders/{order}/pay"), Some(pay), None);
    assert_eq!((paid.status, paid.json()["state"].clone()), (200, "paid".into()));
    let pay_again = r#"{"request_id":"pay-2","payment_ref":"psp-9","amount_cents":1000}"#;
    let again = http.call("POST", &format!("/v1/orders/{order}/pay"), Some(pay_again), None);
    assert_eq!(again.status, 200);
    let reused = r#"{"request_id":"pay-1","payment_ref":"psp-other","amount_cents":1000}"#;
    let reused = http.call("POST", &format!("/v1/orders/{order}/pay"), Some(reused), None);
    assert_eq!((reused.status, reused.json()["error"].clone()), (422, "request_id_reused".into()));
    let ship = http.call("POST", &format!("/v1/orders/{order}/ship"), None, None);
    assert_eq!(ship.status, 401);
    let ship = http.call("POST", &format!("/v1/orders/{order}/ship"), None, Some(TOKEN));
    assert_eq!(ship.status, 200);
    let complete = r#"{"request_id":"done-1","user":5}"#;
    let done = http.call("POST", &format!("/v1/orders/{order}/complete"), Some(complete), None);
    assert_eq!(done.json()["state"], "completed");
    let view = http.call("GET", &format!("/v1/orders/{order}"), None, None).json();
    assert_eq!(view["state"], "completed");
    assert_eq!(view["user"], "5");
    let sku = http.call("GET", "/v1/skus/2", None, None).json();
    assert_eq!((sku["sold"].clone(), sku["available"].clone()), (2.into(), 8.into()));
    assert_eq!(http.call("GET", "/v1/skus/99", None, None).status, 404);
    let exists = r#"{"sku":2,"stock":1,"price_cents":1,"payment_timeout_ms":1}"#;
    let exists = http.call("POST", "/v1/skus", Some(exists), Some(TOKEN));
    assert_eq!((exists.status, exists.json()["error"].clone()), (409, "sku_exists".into()));
    server.shutdown().unwrap();
}

#[test]
fn a_request_id_means_the_same_on_both_ports() {
    // Goal: a reservation made over HTTP and retried over the binary protocol with the key
    // derived from the same request id gets the same order.
    let server = start(ServerConfig::loopback());
    let mut http = Http::connect(server.http_addr().unwrap());
    create_sku(&mut http, 3, 5, 0, 60_000);
    let body = r#"{"request_id":"same-id","user":4,"sku":3,"qty":1}"#;
    let first = http.call("POST", "/v1/orders", Some(body), None).json();
    let mut client = Client::connect(&[server.binary_addr().unwrap()]).unwrap();
    let command = Command::Client {
        key: keys::request_key("same-id"),
        action: Action::Reserve(Reserve { user: UserId(4), sku: SkuId(3), qty: 1, coupon: None }),
    };
    let Outcome::Reserved { order, .. } = client.call(command).unwrap() else { panic!() };
    assert_eq!(first["order_id"], order.0.to_string());
    let sku = client.call(Command::Query(Query::Sku(SkuId(3)))).unwrap();
    let Outcome::Sku(view) = sku else { panic!() };
    assert_eq!(view.available, 4);
    server.shutdown().unwrap();
}

#[test]
fn binary_admin_commands_need_auth() {
    // Goal: an admin command without AUTH is refused (connection kept), after AUTH it runs,
    // and a wrong token closes the connection.
    let server = start(ServerConfig::loopback());
    let addr = server.binary_addr().unwrap();
    let mut client = Client::connect(&[addr]).unwrap();
    let create = Command::Client {
        key: keys::request_key("create-4"),
        action: Action::CreateSku(ringfence_core::CreateSku {
            sku: SkuId(4),
            stock: 1,
            price_cents: 1,
            per_user_limit: 0,
            payment_timeout_ms: 1_000,
            sale_start: None,
            sale_end: None,
        }),
    };
    let answers = client.pipeline(&[create]).unwrap();
    assert_eq!(answers[0].as_ref().unwrap_err().code.name(), "unauthorized");
    client.ping().unwrap();
    client.authenticate(TOKEN).unwrap();
    assert!(matches!(client.call(create).unwrap(), Outcome::SkuCreated(_)));
    assert_eq!(client.call(create).unwrap(), client.call(create).unwrap());
    let info = client.node().unwrap();
    assert!(info.primary);
    assert!(info.last_sequence >= 1);
    let mut other = Client::connect(&[addr]).unwrap();
    assert!(other.authenticate("wrong").is_err());
    let unknown = client.call(Command::Query(Query::Sku(SkuId(5)))).unwrap();
    assert_eq!(unknown, Outcome::Rejected(Rejection::UnknownSku));
    server.shutdown().unwrap();
}

#[test]
fn health_node_and_metrics_endpoints() {
    // Goal: the operational endpoints answer with their documented shapes, including the
    // pipeline node's ring and stage metrics.
    let server = start_node(ServerConfig::loopback(), Topology::Compact);
    let mut http = Http::connect(server.http_addr().unwrap());
    assert_eq!(http.call("GET", "/health", None, None).json()["status"], "ok");
    create_sku(&mut http, 1, 1, 0, 1_000);
    let node = http.call("GET", "/v1/node", None, None).json();
    assert_eq!(node["role"], "primary");
    assert!(node["last_sequence"].as_u64().unwrap() >= 1);
    assert_eq!(node["state_hash"].as_str().unwrap().len(), 16);
    // The hash is stated with the sequence it was taken after and the logical time then.
    let state = &node["state"];
    assert_eq!((&state["hash"], &state["sequence"]), (&node["state_hash"], &node["last_sequence"]));
    assert!(state["as_of_ms"].as_u64().unwrap() > 1_600_000_000_000, "{node}");
    let metrics = http.call("GET", "/metrics", None, None);
    assert!(metrics.header("content-type").unwrap().starts_with("text/plain"));
    let text = String::from_utf8(metrics.body).unwrap();
    assert!(text.contains("ringfence_outcomes_total{outcome=\"sku_created\"} 1"), "{text}");
    assert!(text.contains("ringfence_request_latency_seconds_count"));
    // A catalogue page of 100 positions holding one SKU: the positions past its end are no
    // `unknown_sku` answers; a query for a SKU that does not exist is one.
    let page = http.call("GET", "/v1/skus?limit=100", None, None).json();
    assert_eq!(page["skus"].as_array().map(Vec::len), Some(1), "{page}");
    assert_eq!(http.call("GET", "/v1/skus/7", None, None).status, 404);
    let text = String::from_utf8(http.call("GET", "/metrics", None, None).body).unwrap();
    assert!(text.contains("ringfence_outcomes_total{outcome=\"unknown_sku\"} 1\n"), "{text}");
    assert!(text.contains("ringfence_ring_size 1024"), "{text}");
    assert!(text.contains("ringfence_stage_lag{stage="), "{text}");
    let snapshot = http.call("POST", "/v1/admin/snapshot", None, Some(TOKEN));
    assert_eq!(snapshot.status, 202);
    server.shutdown().unwrap();
}

#[test]
fn client_fails_over_to_the_next_address() {
    // Goal: a client given several node addresses skips one that refuses connections, and when
    // its node goes away mid-session it reconnects to the next one and gets its answer there.
    let first = start(ServerConfig::loopback());
    let second = start(ServerConfig::loopback());
    let refused = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let (a, b) = (first.binary_addr().unwrap(), second.binary_addr().unwrap());
    let mut client = Client::connect(&[refused, a, b]).unwrap();
    assert_eq!(client.peer(), a);
    client.ping().unwrap();
    first.shutdown().unwrap();
    let answer = client.call(Command::Query(Query::Sku(SkuId(1)))).unwrap();
    assert_eq!(answer, Outcome::Rejected(Rejection::UnknownSku));
    assert_eq!(client.peer(), b);
    second.shutdown().unwrap();
}

#[test]
fn head_answers_a_read_without_its_body_and_the_connection_goes_on() {
    // Goal: HEAD on a query (answered through the node), on a page of the catalogue and on an
    // endpoint answered at once, each pipelined on one connection: every response carries the
    // GET response's status and content-length and no body, so the next response follows
    // directly; a POST-only endpoint answers HEAD with 405 and `Allow`.
    let server = start(ServerConfig::loopback());
    let addr = server.http_addr().unwrap();
    let mut http = Http::connect(addr);
    create_sku(&mut http, 1, 10, 0, 600_000);
    let paths = ["/v1/skus/1", "/v1/skus", "/health"];
    let mut lengths = Vec::new();
    for path in paths {
        let get = http.call("GET", path, None, None);
        assert_eq!(get.status, 200, "{path}");
        lengths.push(get.body.len());
    }
    let mut bytes = Vec::new();
    for path in paths {
        bytes.extend_from_slice(
            format!("HEAD {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes(),
        );
    }
    bytes.extend_from_slice(
        b"HEAD /v1/orders HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    http.send(&bytes);
    let mut answer = Vec::new();
    std::io::Read::read_to_end(http.stream(), &mut answer).expect("the responses");
    let answer = String::from_utf8(answer).expect("text");
    let responses: Vec<&str> = answer.split_terminator("\r\n\r\n").collect();
    assert_eq!(responses.len(), 4, "{answer}");
    for ((path, length), head) in paths.iter().zip(&lengths).zip(&responses) {
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{path}: {head}");
        assert!(head.contains(&format!("content-length: {length}\r\n")), "{path}: {head}");
    }
    assert!(responses[3].starts_with("HTTP/1.1 405"), "{}", responses[3]);
    assert!(responses[3].contains("allow: POST\r\n"), "{}", responses[3]);
}

#[test]
fn expect_continue_gets_100_before_the_body_and_413_without_it() {
    // Goal: a head with `Expect: 100-continue` is answered `100 Continue` before its body is
    // sent, then with the final response; behind a pipelined request still in flight the 100
    // follows that request's response; a declared body over the limit gets 413 at once.
    let server = start(ServerConfig::loopback());
    let addr = server.http_addr().unwrap();
    let mut http = Http::connect(addr);
    create_sku(&mut http, 1, 10, 0, 600_000);
    // Padding keeps the JSON valid while taking the body past curl's 1 KiB threshold.
    let padded = |user: u64| format!("{}{}", reserve_body(user), " ".repeat(1_200));
    let head = |body: &str| {
        format!(
            "POST /v1/orders HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
    };
    let body = padded(1);
    http.send(head(&body).as_bytes());
    let mut interim = vec![0; b"HTTP/1.1 100 Continue\r\n\r\n".len()];
    std::io::Read::read_exact(http.stream(), &mut interim).expect("100 Continue");
    assert_eq!(interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    http.send(body.as_bytes());
    let response = http.read_response().expect("the final response");
    assert_eq!(response.status, 201, "{}", response.json());
    let body = padded(2);
    let mut bytes = Http::request_bytes("POST", "/v1/orders", Some(&reserve_body(3)), None);
    bytes.extend_from_slice(head(&body).as_bytes());
    http.send(&bytes);
    assert_eq!(http.read_response().expect("the first response").status, 201);
    assert_eq!(http.read_response().expect("100 Continue").status, 100);
    http.send(body.as_bytes());
    assert_eq!(http.read_response().expect("the final response").status, 201);
    let sku = http.call("GET", "/v1/skus/1", None, None).json();
    assert_eq!(sku["reserved"], 3);
    let mut http = Http::connect(addr);
    let too_large = head(&"x".repeat(ServerConfig::default().body_max + 1));
    http.send(too_large.as_bytes());
    let response = http.read_response().expect("413 without the body");
    assert_eq!((response.status, response.json()["error"].clone()), (413, "body_too_large".into()));
    assert!(http.closed_by_server());
    server.shutdown().unwrap();
}

#[test]
fn the_catalogue_is_listed_page_by_page_in_creation_order() {
    // Goal: following `next_cursor` from the first page visits every SKU once, in the order
    // they were created, each with its live figures; the last page says there is no next.
    let server = start_node(ServerConfig::loopback(), Topology::Compact);
    let mut http = Http::connect(server.http_addr().unwrap());
    let created = [9, 3, 7, 1, 5];
    for sku in created {
        create_sku(&mut http, sku, 10, 0, 60_000);
    }
    let reserve = r#"{"request_id":"l-1","user":4,"sku":"7","qty":2}"#;
    assert_eq!(http.call("POST", "/v1/orders", Some(reserve), None).status, 201);
    let mut seen = Vec::new();
    let mut path = "/v1/skus?limit=2".to_owned();
    loop {
        let page = http.call("GET", &path, None, None);
        assert_eq!(page.status, 200);
        let page = page.json();
        for sku in page["skus"].as_array().unwrap() {
            let id: u64 = sku["sku"].as_str().unwrap().parse().unwrap();
            let available = if id == 7 { 8 } else { 10 };
            assert_eq!(sku["available"], available, "{sku}");
            seen.push(id);
        }
        match page["next_cursor"].as_str() {
            Some(next) => path = format!("/v1/skus?limit=2&cursor={next}"),
            None => break,
        }
    }
    assert_eq!(seen, created);
    let whole = http.call("GET", "/v1/skus", None, None).json();
    assert_eq!(
        (whole["skus"].as_array().unwrap().len(), whole["next_cursor"].is_null()),
        (5, true)
    );
    let too_many = http.call("GET", "/v1/skus?limit=1000", None, None);
    assert_eq!((too_many.status, too_many.json()["field"].as_str()), (400, Some("limit")));
}

#[test]
fn a_retried_admin_call_with_its_request_id_changes_nothing() {
    // Goal: admin calls are idempotent with a request_id (a retried restock adds the stock
    // once, a retried creation answers the creation), and without one each call is new.
    let server = start_node(ServerConfig::loopback(), Topology::Compact);
    let mut http = Http::connect(server.http_addr().unwrap());
    let create =
        r#"{"request_id":"c-1","sku":"4","stock":10,"price_cents":5,"payment_timeout_ms":1000}"#;
    let first = http.call("POST", "/v1/skus", Some(create), Some(TOKEN));
    let again = http.call("POST", "/v1/skus", Some(create), Some(TOKEN));
    assert_eq!((first.status, again.status), (201, 201));
    assert_eq!(first.json(), again.json());
    let restock = Some(r#"{"request_id":"r-1","qty":5}"#);
    for _ in 0..3 {
        let answer = http.call("POST", "/v1/skus/4/restock", restock, Some(TOKEN));
        assert_eq!((answer.status, answer.json()["stock"].as_u64()), (200, Some(15)));
    }
    let unkeyed = Some(r#"{"qty":5}"#);
    http.call("POST", "/v1/skus/4/restock", unkeyed, Some(TOKEN));
    let twice = http.call("POST", "/v1/skus/4/restock", unkeyed, Some(TOKEN));
    assert_eq!(twice.json()["stock"], 25);
    let reused = Some(r#"{"request_id":"r-1","qty":6}"#);
    let refused = http.call("POST", "/v1/skus/4/restock", reused, Some(TOKEN));
    assert_eq!(
        (refused.status, refused.json()["error"].as_str()),
        (422, Some("request_id_reused"))
    );
}

/// One request with `host` as its `Host` field, on a connection of its own.
fn call_as_host(addr: std::net::SocketAddr, host: &str, request: &str) -> common::HttpResponse {
    let mut http = Http::connect(addr);
    let (line, rest) = request.split_once("\r\n").expect("a request line");
    http.send(format!("{line}\r\nHost: {host}\r\n{rest}").as_bytes());
    http.read_response().expect("a response")
}

#[test]
fn where_client_commands_are_open_only_known_host_names_are_answered() {
    // Goal: DNS rebinding. A page that had its own name resolve to a loopback node sends that
    // name as `Host` and no `Origin`: without a token, it is refused 403 `host_not_allowed`,
    // reads and writes alike, the node keeps serving; IP literals, `localhost` and listed names
    // are answered; `/health` is answered to anyone; the admin token is answered whatever the
    // name; with role tokens the name does not matter (the token is the defence).
    let config = ServerConfig {
        allowed_hosts: vec!["shop-api.internal".into()],
        ..ServerConfig::loopback()
    };
    let server = start(config);
    let addr = server.http_addr().unwrap();
    create_sku(&mut Http::connect(addr), 1, 10, 0, 600_000);
    let read = "GET /v1/skus/1 HTTP/1.1\r\n\r\n";
    let order = r#"{"request_id":"r-1","user":7,"sku":1,"qty":1}"#;
    let write =
        format!("POST /v1/orders HTTP/1.1\r\nContent-Length: {}\r\n\r\n{order}", order.len());
    for request in [read, &write] {
        let refused = call_as_host(addr, "rebound.attacker.example:7080", request);
        let body = refused.json();
        assert_eq!((refused.status, &body["error"]), (403, &"host_not_allowed".into()), "{body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(message.contains("rebound.attacker.example"), "{body}");
    }
    let sku = call_as_host(addr, "localhost:7080", read).json();
    assert_eq!(sku["reserved"], 0, "the refused reservation was taken: {sku}");
    for host in ["127.0.0.1:7080", "[::1]:7080", "SHOP-API.internal"] {
        assert_eq!(call_as_host(addr, host, read).status, 200, "{host}");
    }
    assert_eq!(
        call_as_host(addr, "rebound.attacker.example", "GET /health HTTP/1.1\r\n\r\n").status,
        200
    );
    let admin = format!("GET /v1/skus/1 HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n");
    assert_eq!(call_as_host(addr, "rebound.attacker.example", &admin).status, 200);
    drop(server);

    let read_token = "read-token-of-at-least-thirty-two-chars";
    let config = ServerConfig {
        role_tokens: vec![(ringfence_ingress::roles::Role::Read, read_token.into())],
        ..ServerConfig::loopback()
    };
    let server = start(config);
    let addr = server.http_addr().unwrap();
    let with_token =
        format!("GET /v1/skus/1 HTTP/1.1\r\nAuthorization: Bearer {read_token}\r\n\r\n");
    let answered = call_as_host(addr, "any.name.example", &with_token);
    assert_eq!(answered.status, 404, "a token is judged, not the name: {}", answered.json());
}

#[test]
fn a_client_whose_connection_the_node_closed_reconnects_for_ping_node_and_auth() {
    // Goal: a node closes idle connections without a word (`idle_timeout_ms`, or to admit a
    // new client at `connections_max`); the client's next `ping`, `node` or `authenticate`
    // reconnects and is answered, as a command already does. Fails where only `pipeline`
    // reconnects: every later ping, node or AUTH reports the node unreachable, for good.
    let config = ServerConfig { idle_timeout_ms: 200, ..ServerConfig::loopback() };
    let server = start(config);
    let mut client = Client::connect(&[server.binary_addr().unwrap()]).unwrap();
    client.ping().unwrap();
    let idle_closed = Duration::from_millis(600);
    std::thread::sleep(idle_closed);
    client.ping().unwrap();
    std::thread::sleep(idle_closed);
    assert!(client.node().unwrap().primary);
    std::thread::sleep(idle_closed);
    client.authenticate(TOKEN).unwrap();
    std::thread::sleep(idle_closed);
    let unknown = client.call(Command::Query(Query::Sku(SkuId(9)))).unwrap();
    assert_eq!(unknown, Outcome::Rejected(Rejection::UnknownSku));
    server.shutdown().unwrap();
}
