//! The JSON API: routes requests to engine commands and renders outcomes as JSON with statuses.
//!
//! Contract (`docs/openapi.yaml`, shapes in [`super::views`]): ids (`sku`, `user`, `batch`,
//! `order_id`, `coupon_id`) are written as decimal strings and read as decimal strings or
//! JSON integers; quantities are JSON integers; times are milliseconds since the Unix epoch;
//! errors are `{"error": "<snake_case_code>", "message": "...", "field": "<name>"}`, `field`
//! naming the request field at fault where there is one. A retry with the same `request_id`
//! gets the engine's original outcome, and since rendering depends on the outcome alone, the
//! same status and body.

use ringfence_core::{
    Action, BatchId, Command, CouponId, CreateCouponBatch, CreateSku, OrderId, Outcome, Query,
    Rejection, RequestKey, Reserve, SkuId, Timestamp, UserId,
};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use xxhash_rust::xxh3::xxh3_128;

use super::listing::{PageRequest, parse_page_request};
use super::views::{self, ErrorJson, Id, OutcomeJson};
use super::{Request, Response};
use crate::keys;
use crate::roles::{Caller, Need, Role, call_need};

/// What the server does with a routed request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// Submit the command to the engine and render its outcome.
    Submit(Command),
    /// `GET /health`: liveness (503 once the node has failed).
    Health,
    /// `GET /ready`: whether writes are taken now (503 with the reason when not).
    Ready,
    /// `GET /v1/node`.
    Node,
    /// `GET /metrics`.
    Metrics,
    /// `GET /openapi.yaml`: the API's description.
    OpenApi,
    /// `GET /v1/skus`: one page of the catalogue ([`super::listing`]).
    ListSkus(PageRequest),
    /// `POST /v1/admin/promote`: make this standby the primary; a retry with the same
    /// request key answers the first promotion's result. `force`: even one that may lack
    /// acknowledged writes.
    Promote {
        /// The idempotency key, if the caller gave one.
        request: Option<RequestKey>,
        /// Accept losing what the standby lacks.
        force: bool,
    },
    /// `POST /v1/admin/replication`: switch replication's ack mode.
    SetReplicationMode(ReplicationMode),
}

/// The ack modes an operator may switch replication to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicationMode {
    /// An answer waits for the standby's durable acknowledgement.
    Sync,
    /// An answer waits for the local journal only; the standby may lag.
    Async,
}

impl ReplicationMode {
    /// `sync` or `async`, as the API and the replicator spell it.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            ReplicationMode::Sync => "sync",
            ReplicationMode::Async => "async",
        }
    }
}

/// The admin bearer token.
#[derive(Clone)]
pub struct AdminToken(Vec<u8>);

impl AdminToken {
    /// A token; must not be empty.
    #[must_use]
    pub fn new(token: &str) -> AdminToken {
        assert!(!token.is_empty(), "the admin token must not be empty");
        AdminToken(token.as_bytes().to_vec())
    }

    /// Whether `presented` is the token, compared in time independent of where they differ.
    #[must_use]
    pub fn allows(&self, presented: Option<&[u8]>) -> bool {
        let Some(presented) = presented else { return false };
        if presented.len() != self.0.len() {
            return false;
        }
        // Constant time: how much of a guess matches must not show in the answer's timing.
        bool::from(subtle::ConstantTimeEq::ct_eq(presented, &self.0[..]))
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

/// Mints unique request keys for admin calls that carry no `request_id` (creating a SKU twice
/// must answer `sku_exists`, not the first creation's outcome). Keys hash a per-process nonce
/// and a counter, so they differ across restarts of the same node.
#[derive(Debug)]
pub struct KeyMint {
    nonce: u128,
    counter: u64,
}

impl KeyMint {
    /// A mint seeded with `nonce` (e.g. start time and process id).
    #[must_use]
    pub fn new(nonce: u128) -> KeyMint {
        KeyMint { nonce, counter: 0 }
    }

    /// A key no other call of this mint returns.
    pub fn next_key(&mut self) -> RequestKey {
        self.counter += 1;
        let mut bytes = [0u8; 24];
        bytes[..16].copy_from_slice(&self.nonce.to_le_bytes());
        bytes[16..].copy_from_slice(&self.counter.to_le_bytes());
        RequestKey(xxh3_128(&bytes).to_le_bytes())
    }
}

/// Routes one request where client commands are open (only an admin token configured): the
/// bearer is the admin token or no token at all. Without an admin token (`None`), every admin
/// call is refused. `Err` is a response to send at once (bad request, unauthorized, ...).
pub fn route(
    request: &Request<'_>,
    admin: Option<&AdminToken>,
    mint: &mut KeyMint,
) -> Result<Call, Response> {
    let is_admin = admin.is_some_and(|token| token.allows(request.bearer));
    let caller = if is_admin { Caller::Role(Role::Admin) } else { Caller::Open };
    route_as(request, caller, mint)
}

/// Routes one request from `caller`, whose bearer token was already judged: parses it into a
/// call, then checks the call against the role table ([`crate::roles`]): 401 `unauthorized`
/// without an accepted token, 403 `forbidden` naming the role needed when the token's role
/// does not allow it. A caller without a token where roles are enforced learns nothing from
/// a malformed body: it is 401 too.
pub fn route_as(
    request: &Request<'_>,
    caller: Caller,
    mint: &mut KeyMint,
) -> Result<Call, Response> {
    let call = match parse_call(request, caller == Caller::Role(Role::Admin), mint) {
        Err(response) if response.status == 400 && caller == Caller::Anonymous => {
            let message = "every call but /health and /ready needs a token: send \
                           `Authorization: Bearer <token>`";
            return Err(Response::error(401, "unauthorized", message));
        }
        parsed => parsed?,
    };
    // A page in an operator's browser can send a simple cross-origin request to a loopback
    // node, no token needed where client commands are open: refused, whatever it asks.
    if request.from_web_page && !matches!(call, Call::Health | Call::Ready | Call::OpenApi) {
        let message = "requests from web pages (with an `Origin` header) are refused: the API \
                       is for services";
        return Err(Response::error(403, "cross_origin", message));
    }
    authorize(caller, call_need(&call))?;
    Ok(call)
}

/// The refusal of a call that needs `need` by `caller`, if it is refused.
fn authorize(caller: Caller, need: Need) -> Result<(), Response> {
    if caller.allows(need) {
        return Ok(());
    }
    match (caller, need.role()) {
        (Caller::Role(has), Some(role)) => Err(forbidden(has, role)),
        _ => Err(unauthorized(caller, need)),
    }
}

fn unauthorized(caller: Caller, need: Need) -> Response {
    // Where client commands are open, the admin token is the only one there is.
    let message = match (caller, need.role()) {
        (Caller::Open, _) | (_, Some(Role::Admin) | None) => {
            "admin call: send `Authorization: Bearer <token>` with the node's admin token (the \
             one it was given, or <data-dir>/admin.token where it made its own)"
                .into()
        }
        (_, Some(Role::Read)) => "this call needs a token of any role: send `Authorization: \
                                  Bearer <token>`"
            .into(),
        (_, Some(role)) => format!(
            "this call needs a token of the `{}` role (or `admin`): send `Authorization: \
             Bearer <token>`",
            role.name()
        ),
    };
    Response::error(401, "unauthorized", &message)
}

fn forbidden(has: Role, needed: Role) -> Response {
    let also = if needed == Role::Admin { "" } else { " (or `admin`)" };
    let message = format!(
        "this call needs the `{}` role{also}; the token's role is `{}`",
        needed.name(),
        has.name()
    );
    Response::error(403, "forbidden", &message)
}

/// Parses a request into a call. `is_admin` only tells an operator's cancel (no `user`) from
/// a buyer's; whether the caller may make the call is [`authorize`]'s to decide.
fn parse_call(request: &Request<'_>, is_admin: bool, mint: &mut KeyMint) -> Result<Call, Response> {
    let segments: Vec<&str> = request.path.trim_end_matches('/').split('/').skip(1).collect();
    if segments.iter().any(|segment| segment.is_empty()) {
        // `//` inside a path names no endpoint (a trailing `/` is forgiven above).
        return Err(Response::error(404, "not_found", "no such endpoint"));
    }
    let body = request.body;
    // HEAD is GET without the body (RFC 9110, section 9.3.2): routed the same; the connection
    // leaves the body out.
    let method = if request.method == "HEAD" { "GET" } else { request.method };
    let call = match (method, segments.as_slice()) {
        ("GET", ["health"]) => Call::Health,
        ("GET", ["ready"]) => Call::Ready,
        ("GET", ["metrics"]) => Call::Metrics,
        ("GET", ["openapi.yaml"]) => Call::OpenApi,
        ("GET", ["v1", "node"]) => Call::Node,
        ("GET", ["v1", "skus"]) => Call::ListSkus(parse_page_request(request.query)?),
        ("GET", ["v1", "skus", sku]) => query(Query::Sku(SkuId(path_id(sku, "sku")?))),
        ("GET", ["v1", "orders", id]) => query(Query::Order(OrderId(path_id(id, "order_id")?))),
        // `claim` is a literal path, not a coupon id: GET there is a 405, not an id refused.
        ("GET", ["v1", "coupons", id]) if *id != "claim" => {
            query(Query::Coupon(CouponId(path_id(id, "coupon_id")?)))
        }
        ("GET", ["v1", "coupon-batches", id]) => {
            query(Query::Batch(BatchId(path_id(id, "batch")?)))
        }
        ("POST", ["v1", "orders"]) => reserve(body)?,
        ("POST", ["v1", "orders", id, verb]) => {
            let order = OrderId(path_id(id, "order_id")?);
            order_call(order, verb, body, is_admin, mint)?
        }
        ("POST", ["v1", "coupons", "claim"]) => claim(body)?,
        ("POST", ["v1", "skus"]) => create_sku(body, mint)?,
        ("POST", ["v1", "skus", sku, verb]) => {
            sku_call(SkuId(path_id(sku, "sku")?), verb, body, mint)?
        }
        ("POST", ["v1", "coupon-batches"]) => create_batch(body, mint)?,
        ("POST", ["v1", "admin", "snapshot"]) => {
            let body: AdminBody = parse_body(body)?;
            check_request_id(body.request_id.as_deref())?;
            Call::Submit(Command::Snapshot)
        }
        ("POST", ["v1", "admin", "promote"]) => {
            let body: PromoteBody = parse_body(body)?;
            let request = body.request_id.as_deref().map(client_key).transpose()?;
            Call::Promote { request, force: body.force.unwrap_or(false) }
        }
        ("POST", ["v1", "admin", "replication"]) => replication_mode(body)?,
        (_, path) if let Some(allowed) = allowed_methods(path) => {
            let message = format!("method not allowed here; this endpoint takes {allowed}");
            return Err(Response::error(405, "method_not_allowed", &message).allow(allowed));
        }
        _ => return Err(Response::error(404, "not_found", "no such endpoint")),
    };
    Ok(call)
}

/// The methods an endpoint of the routing table above takes, for the `Allow` header of a 405;
/// `None` for a path that is no endpoint (404).
fn allowed_methods(path: &[&str]) -> Option<&'static str> {
    Some(match path {
        ["health" | "ready" | "metrics" | "openapi.yaml"] | ["v1", "node"] => "GET, HEAD",
        ["v1", "skus"] => "GET, HEAD, POST",
        ["v1", "skus" | "orders" | "coupon-batches", _] => "GET, HEAD",
        ["v1", "coupons", "claim"] => "POST",
        ["v1", "coupons", _] => "GET, HEAD",
        ["v1", "skus" | "orders", _, _] | ["v1", "orders" | "coupon-batches"] => "POST",
        ["v1", "admin", "snapshot" | "promote" | "replication"] => "POST",
        _ => return None,
    })
}

fn query(query: Query) -> Call {
    Call::Submit(Command::Query(query))
}

/// An id in the path: digits only.
fn path_id(text: &str, field: &'static str) -> Result<u64, Response> {
    views::parse_decimal(text).map_err(|why| invalid(field, &format!("`{field}`: {why}")))
}

/// A 400 `invalid_argument` naming the request field at fault.
pub(super) fn invalid(field: &str, message: &str) -> Response {
    Response::error_json(
        400,
        &ErrorJson::new("invalid_argument", message.to_owned()).with_field(field),
    )
}

/// Longest client-supplied field name echoed back in an error.
const FIELD_NAME_ECHO_MAX: usize = 64;

/// Longest message about a body's value sent back: serde's messages quote the value or the
/// field name they refused, which a hostile body makes as long as the body limit allows.
const MESSAGE_ECHO_MAX: usize = 200;

/// `message`, cut at [`MESSAGE_ECHO_MAX`] bytes (on a character's boundary) and marked `...`
/// where it was cut.
fn cut_short(mut message: String) -> String {
    if message.len() > MESSAGE_ECHO_MAX {
        let mut end = MESSAGE_ECHO_MAX;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str("...");
    }
    message
}

/// Parses a body, naming the field at fault when one is: the path of a value of the wrong
/// type or range, or the field a message names (missing or unknown).
///
/// A body of nothing but JSON's whitespace (RFC 8259: space, tab, line feed, carriage return)
/// is an empty object; any other byte, a form feed among them, is parsed as JSON.
fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, Response> {
    let json_whitespace = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    let body = if body.iter().all(json_whitespace) { b"{}".as_slice() } else { body };
    let malformed = |error: &serde_json::Error| {
        Response::error(400, "malformed_json", &format!("body is not JSON: {error}"))
    };
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let inner = error.inner();
        if inner.is_syntax() || inner.is_eof() {
            return malformed(inner);
        }
        let message = inner.to_string();
        let path = error.path().to_string();
        // Bodies are flat objects: a path that is not one field name names no field.
        let is_field = path.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        let field = if path == "." { backticked(&message) } else { is_field.then_some(path) };
        let message = cut_short(message);
        match field {
            Some(field) => {
                invalid(&field.chars().take(FIELD_NAME_ECHO_MAX).collect::<String>(), &message)
            }
            None => Response::error(400, "invalid_request", &message),
        }
    })?;
    deserializer.end().map_err(|error| malformed(&error))?;
    Ok(value)
}

/// The first name quoted in backticks in a serde message (`missing field `qty``).
fn backticked(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let end = start + message[start..].find('`')?;
    Some(message[start..end].to_owned())
}

fn check_request_id(request_id: Option<&str>) -> Result<(), Response> {
    match request_id {
        Some(request_id) => client_key(request_id).map(|_| ()),
        None => Ok(()),
    }
}

fn client_key(request_id: &str) -> Result<RequestKey, Response> {
    if !keys::is_valid_key_string(request_id) {
        return Err(invalid("request_id", "`request_id` must be 1 to 64 characters"));
    }
    Ok(keys::request_key(request_id))
}

fn admin_key(request_id: Option<&str>, mint: &mut KeyMint) -> Result<RequestKey, Response> {
    match request_id {
        Some(request_id) => client_key(request_id),
        None => Ok(mint.next_key()),
    }
}

/// The field of an argument the engine refuses as `invalid_argument`, named before the
/// command is submitted; the checks mirror the engine's, in its order (a test holds the two
/// together). Quantities are the engine's to judge (`invalid_qty`, whose field is `qty`).
#[must_use]
pub fn invalid_argument(action: &Action) -> Option<&'static str> {
    match action {
        Action::CreateSku(create) => {
            let window_empty = matches!((create.sale_start, create.sale_end),
                (Some(start), Some(end)) if end <= start);
            if create.sku.0 == 0 {
                Some("sku")
            } else if create.payment_timeout_ms == 0 {
                Some("payment_timeout_ms")
            } else if window_empty {
                Some("sale_end_ms")
            } else {
                None
            }
        }
        Action::CreateCouponBatch(create) => {
            if create.batch.0 == 0 {
                Some("batch")
            } else if create.quantity == 0 {
                Some("quantity")
            } else if create.valid_until <= create.valid_from {
                Some("valid_until_ms")
            } else {
                None
            }
        }
        // A zero quantity is refused first, as `invalid_qty`.
        Action::Reserve(reserve) if reserve.qty != 0 && reserve.user.0 == 0 => Some("user"),
        Action::ClaimCoupon { user, .. } if user.0 == 0 => Some("user"),
        _ => None,
    }
}

/// A client command, once its arguments pass the checks that name a field.
fn submit(key: RequestKey, action: Action) -> Result<Call, Response> {
    if let Some(field) = invalid_argument(&action) {
        let message = format!("`{field}` is out of range (see docs/openapi.yaml)");
        return Err(invalid(field, &message));
    }
    Ok(Call::Submit(Command::Client { key, action }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReserveBody {
    request_id: String,
    user: Id,
    sku: Id,
    qty: u32,
    coupon_id: Option<Id>,
}

fn reserve(body: &[u8]) -> Result<Call, Response> {
    let body: ReserveBody = parse_body(body)?;
    let reserve = Reserve {
        user: UserId(body.user.0),
        sku: SkuId(body.sku.0),
        qty: body.qty,
        coupon: body.coupon_id.map(|c| CouponId(c.0)),
    };
    let key = client_key(&body.request_id)?;
    submit(key, Action::Reserve(reserve))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PayBody {
    request_id: String,
    payment_ref: String,
    amount_cents: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserBody {
    request_id: Option<String>,
    user: Option<Id>,
}

fn order_call(
    order: OrderId,
    verb: &str,
    body: &[u8],
    is_admin: bool,
    mint: &mut KeyMint,
) -> Result<Call, Response> {
    let (key, action) = match verb {
        "pay" => {
            let body: PayBody = parse_body(body)?;
            if !keys::is_valid_key_string(&body.payment_ref) {
                return Err(invalid("payment_ref", "`payment_ref` must be 1 to 64 characters"));
            }
            let payment_ref = keys::payment_ref(&body.payment_ref);
            let key = client_key(&body.request_id)?;
            (key, Action::Pay { order, payment_ref, amount_cents: body.amount_cents })
        }
        "cancel" | "complete" => {
            let body: UserBody = parse_body(body)?;
            match (verb, body.user) {
                ("cancel", Some(user)) => {
                    (user_key(&body.request_id)?, Action::Cancel { order, user: UserId(user.0) })
                }
                ("complete", Some(user)) => {
                    (user_key(&body.request_id)?, Action::Complete { order, user: UserId(user.0) })
                }
                ("cancel", None) if is_admin => {
                    (admin_key(body.request_id.as_deref(), mint)?, Action::AdminCancel { order })
                }
                ("cancel", None) => {
                    let message = "missing field `user`: a buyer's cancel names the buyer; an \
                                   operator's cancel (no `user`) needs the admin token";
                    return Err(invalid("user", message));
                }
                _ => return Err(invalid("user", "missing field `user`")),
            }
        }
        "ship" | "refund" => {
            let body: AdminBody = parse_body(body)?;
            let key = admin_key(body.request_id.as_deref(), mint)?;
            let action =
                if verb == "ship" { Action::Ship { order } } else { Action::Refund { order } };
            (key, action)
        }
        _ => return Err(Response::error(404, "not_found", "no such order action")),
    };
    submit(key, action)
}

fn user_key(request_id: &Option<String>) -> Result<RequestKey, Response> {
    match request_id {
        Some(request_id) => client_key(request_id),
        None => Err(invalid("request_id", "missing field `request_id`")),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminBody {
    request_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PromoteBody {
    request_id: Option<String>,
    force: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RestockBody {
    request_id: Option<String>,
    qty: u32,
}

fn sku_call(sku: SkuId, verb: &str, body: &[u8], mint: &mut KeyMint) -> Result<Call, Response> {
    let (request_id, action) = match verb {
        "restock" => {
            let body: RestockBody = parse_body(body)?;
            (body.request_id, Action::Restock { sku, qty: body.qty })
        }
        "open" | "close" => {
            let body: AdminBody = parse_body(body)?;
            let action =
                if verb == "open" { Action::OpenSale { sku } } else { Action::CloseSale { sku } };
            (body.request_id, action)
        }
        _ => return Err(Response::error(404, "not_found", "no such SKU action")),
    };
    let key = admin_key(request_id.as_deref(), mint)?;
    submit(key, action)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateSkuBody {
    request_id: Option<String>,
    sku: Id,
    stock: u32,
    price_cents: u64,
    #[serde(default)]
    per_user_limit: u32,
    payment_timeout_ms: u64,
    sale_start_ms: Option<u64>,
    sale_end_ms: Option<u64>,
}

fn create_sku(body: &[u8], mint: &mut KeyMint) -> Result<Call, Response> {
    let body: CreateSkuBody = parse_body(body)?;
    let create = CreateSku {
        sku: SkuId(body.sku.0),
        stock: body.stock,
        price_cents: body.price_cents,
        per_user_limit: body.per_user_limit,
        payment_timeout_ms: body.payment_timeout_ms,
        sale_start: body.sale_start_ms.map(Timestamp),
        sale_end: body.sale_end_ms.map(Timestamp),
    };
    let key = admin_key(body.request_id.as_deref(), mint)?;
    submit(key, Action::CreateSku(create))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBatchBody {
    request_id: Option<String>,
    batch: Id,
    quantity: u32,
    #[serde(default)]
    per_user_limit: u32,
    discount_cents: u64,
    #[serde(default)]
    min_amount_cents: u64,
    valid_from_ms: u64,
    valid_until_ms: u64,
}

fn create_batch(body: &[u8], mint: &mut KeyMint) -> Result<Call, Response> {
    let body: CreateBatchBody = parse_body(body)?;
    let create = CreateCouponBatch {
        batch: BatchId(body.batch.0),
        quantity: body.quantity,
        per_user_limit: body.per_user_limit,
        discount_cents: body.discount_cents,
        min_amount_cents: body.min_amount_cents,
        valid_from: Timestamp(body.valid_from_ms),
        valid_until: Timestamp(body.valid_until_ms),
    };
    let key = admin_key(body.request_id.as_deref(), mint)?;
    submit(key, Action::CreateCouponBatch(create))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplicationBody {
    /// Accepted so every admin call takes one; switching to a mode is idempotent by itself.
    request_id: Option<String>,
    mode: String,
}

fn replication_mode(body: &[u8]) -> Result<Call, Response> {
    let body: ReplicationBody = parse_body(body)?;
    check_request_id(body.request_id.as_deref())?;
    let mode = match body.mode.as_str() {
        "sync" => ReplicationMode::Sync,
        "async" => ReplicationMode::Async,
        other => {
            let message = format!("`mode` must be \"sync\" or \"async\", got {other:?}");
            return Err(invalid("mode", &cut_short(message)));
        }
    };
    Ok(Call::SetReplicationMode(mode))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClaimBody {
    request_id: String,
    user: Id,
    batch: Id,
}

fn claim(body: &[u8]) -> Result<Call, Response> {
    let body: ClaimBody = parse_body(body)?;
    let key = client_key(&body.request_id)?;
    submit(key, Action::ClaimCoupon { user: UserId(body.user.0), batch: BatchId(body.batch.0) })
}

/// The response for an engine outcome: status from the outcome alone, body its JSON view.
#[must_use]
pub fn render_outcome(outcome: &Outcome) -> Response {
    let response = Response::body(outcome_status(outcome), &OutcomeJson::from(outcome));
    if *outcome == Outcome::Rejected(Rejection::CapacityExhausted) {
        response.retry_after(1)
    } else {
        response
    }
}

/// HTTP status of an outcome: 201 for what creates (a SKU, a batch, an order, a coupon), 202
/// for a snapshot request, 200 for the rest of the successes.
#[must_use]
pub fn outcome_status(outcome: &Outcome) -> u16 {
    match outcome {
        Outcome::Rejected(rejection) => rejection_status(*rejection),
        Outcome::SkuCreated(_)
        | Outcome::Reserved { .. }
        | Outcome::BatchCreated(_)
        | Outcome::CouponClaimed { .. } => 201,
        Outcome::SnapshotRequested { .. } => 202,
        _ => 200,
    }
}

/// HTTP status of a rejection.
#[must_use]
pub fn rejection_status(rejection: Rejection) -> u16 {
    match rejection {
        Rejection::UnknownSku
        | Rejection::UnknownOrder
        | Rejection::UnknownCoupon
        | Rejection::UnknownBatch => 404,
        Rejection::InvalidQty | Rejection::InvalidArgument => 400,
        Rejection::NotOwner => 403,
        Rejection::RequestKeyReused => 422,
        Rejection::CapacityExhausted => 503,
        _ => 409,
    }
}

/// The API's error code of a rejection (see [`views::rejection_code`]).
#[must_use]
pub fn rejection_code(rejection: Rejection) -> &'static str {
    views::rejection_code(rejection)
}

/// The API's OpenAPI 3.1 description, `docs/openapi.yaml`, built into the binary so what a
/// node serves is the document of its own build.
pub const OPENAPI_YAML: &str = include_str!("../../../docs/openapi.yaml");

/// `GET /openapi.yaml`.
#[must_use]
pub fn openapi_response() -> Response {
    Response {
        status: 200,
        content_type: "application/yaml",
        body: OPENAPI_YAML.as_bytes().to_vec(),
        retry_after_s: None,
        allow: None,
    }
}
