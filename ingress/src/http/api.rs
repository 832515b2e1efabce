//! The JSON API: routes requests to engine commands and renders outcomes as JSON with statuses.
//!
//! Contract: `sku`, `user`, `batch` and quantities are JSON integers; `order_id` and `coupon_id`
//! are decimal strings (snowflake ids exceed what JavaScript numbers hold exactly); times are
//! milliseconds since the Unix epoch; errors are `{"error": "<snake_case_code>", "message":
//! "..."}`. A retry with the same `request_id` gets the engine's original outcome, and since
//! rendering depends on the outcome alone, the same status and body.

use ringfence_core::{
    Action, BatchId, BatchView, Command, CouponId, CouponState, CouponView, CreateCouponBatch,
    CreateSku, OrderId, OrderView, Outcome, Query, Rejection, RequestKey, Reserve, SkuId, SkuView,
    Timestamp, UserId,
};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use xxhash_rust::xxh3::xxh3_128;

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
    /// `POST /v1/admin/promote`: make this standby the primary.
    Promote,
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
            "admin call: send `Authorization: Bearer <token>` (see <data-dir>/admin.token)".into()
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
    let body = request.body;
    let call = match (request.method, segments.as_slice()) {
        ("GET", ["health"]) => Call::Health,
        ("GET", ["ready"]) => Call::Ready,
        ("GET", ["metrics"]) => Call::Metrics,
        ("GET", ["v1", "node"]) => Call::Node,
        ("GET", ["v1", "skus", sku]) => query(Query::Sku(SkuId(integer(sku, "sku")?))),
        ("GET", ["v1", "orders", id]) => query(Query::Order(OrderId(integer(id, "order_id")?))),
        ("GET", ["v1", "coupons", id]) => query(Query::Coupon(CouponId(integer(id, "coupon_id")?))),
        ("GET", ["v1", "coupon-batches", id]) => {
            query(Query::Batch(BatchId(integer(id, "batch")?)))
        }
        ("POST", ["v1", "orders"]) => reserve(body)?,
        ("POST", ["v1", "orders", id, verb]) => {
            let order = OrderId(integer(id, "order_id")?);
            order_call(order, verb, body, is_admin, mint)?
        }
        ("POST", ["v1", "coupons", "claim"]) => claim(body)?,
        ("POST", ["v1", "skus"]) => create_sku(body, mint)?,
        ("POST", ["v1", "skus", sku, verb]) => {
            sku_call(SkuId(integer(sku, "sku")?), verb, body, mint)?
        }
        ("POST", ["v1", "coupon-batches"]) => create_batch(body, mint)?,
        ("POST", ["v1", "admin", "snapshot"]) => Call::Submit(Command::Snapshot),
        ("POST", ["v1", "admin", "promote"]) => {
            let EmptyBody {} = parse_body(body)?;
            Call::Promote
        }
        ("POST", ["v1", "admin", "replication"]) => replication_mode(body)?,
        (_, path) if is_known_path(path) => {
            return Err(Response::error(405, "method_not_allowed", "method not allowed here"));
        }
        _ => return Err(Response::error(404, "not_found", "no such endpoint")),
    };
    Ok(call)
}

fn is_known_path(path: &[&str]) -> bool {
    matches!(
        path,
        ["health"]
            | ["ready"]
            | ["metrics"]
            | ["v1", "node"]
            | ["v1", "skus", ..]
            | ["v1", "orders", ..]
            | ["v1", "coupons", ..]
            | ["v1", "coupon-batches", ..]
            | ["v1", "admin", "snapshot" | "promote" | "replication"]
    )
}

fn query(query: Query) -> Call {
    Call::Submit(Command::Query(query))
}

fn integer(text: &str, what: &str) -> Result<u64, Response> {
    // `u64::from_str` accepts a leading '+'; the contract says digits only.
    if text.is_empty() || text.len() > 20 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(&format!("`{what}` must be a decimal integer, got {text:?}")));
    }
    text.parse().map_err(|_| invalid(&format!("`{what}` {text} is out of range")))
}

fn invalid(message: &str) -> Response {
    Response::error(400, "invalid_request", message)
}

fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, Response> {
    let body = if body.iter().all(u8::is_ascii_whitespace) { b"{}".as_slice() } else { body };
    serde_json::from_slice(body).map_err(|error| {
        if error.is_syntax() || error.is_eof() {
            Response::error(400, "malformed_json", &format!("body is not JSON: {error}"))
        } else {
            invalid(&error.to_string())
        }
    })
}

fn client_key(request_id: &str) -> Result<RequestKey, Response> {
    let chars = request_id.chars().count();
    if chars == 0 || chars > keys::KEY_STRING_LEN_MAX {
        return Err(invalid("`request_id` must be 1 to 64 characters"));
    }
    Ok(keys::request_key(request_id))
}

fn admin_key(request_id: Option<&str>, mint: &mut KeyMint) -> Result<RequestKey, Response> {
    match request_id {
        Some(request_id) => client_key(request_id),
        None => Ok(mint.next_key()),
    }
}

fn decimal_id<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let Some(text) = Option::<String>::deserialize(d)? else { return Ok(None) };
    if text.is_empty() || text.len() > 20 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(serde::de::Error::custom(format!(
            "expected a decimal string id, got {text:?}"
        )));
    }
    text.parse().map(Some).map_err(|_| serde::de::Error::custom("id out of range"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReserveBody {
    request_id: String,
    user: u64,
    sku: u64,
    qty: u32,
    #[serde(default, deserialize_with = "decimal_id")]
    coupon_id: Option<u64>,
}

fn reserve(body: &[u8]) -> Result<Call, Response> {
    let body: ReserveBody = parse_body(body)?;
    let reserve = Reserve {
        user: UserId(body.user),
        sku: SkuId(body.sku),
        qty: body.qty,
        coupon: body.coupon_id.map(CouponId),
    };
    let key = client_key(&body.request_id)?;
    Ok(Call::Submit(Command::Client { key, action: Action::Reserve(reserve) }))
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
    user: Option<u64>,
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
                return Err(invalid("`payment_ref` must be 1 to 64 bytes"));
            }
            let payment_ref = keys::payment_ref(&body.payment_ref);
            let key = client_key(&body.request_id)?;
            (key, Action::Pay { order, payment_ref, amount_cents: body.amount_cents })
        }
        "cancel" | "complete" => {
            let body: UserBody = parse_body(body)?;
            match (verb, body.user) {
                ("cancel", Some(user)) => {
                    (user_key(&body.request_id)?, Action::Cancel { order, user: UserId(user) })
                }
                ("complete", Some(user)) => {
                    (user_key(&body.request_id)?, Action::Complete { order, user: UserId(user) })
                }
                ("cancel", None) if is_admin => {
                    (admin_key(body.request_id.as_deref(), mint)?, Action::AdminCancel { order })
                }
                _ => return Err(invalid("missing field `user`")),
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
    Ok(Call::Submit(Command::Client { key, action }))
}

fn user_key(request_id: &Option<String>) -> Result<RequestKey, Response> {
    match request_id {
        Some(request_id) => client_key(request_id),
        None => Err(invalid("missing field `request_id`")),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminBody {
    request_id: Option<String>,
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
    Ok(Call::Submit(Command::Client { key, action }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateSkuBody {
    request_id: Option<String>,
    sku: u64,
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
        sku: SkuId(body.sku),
        stock: body.stock,
        price_cents: body.price_cents,
        per_user_limit: body.per_user_limit,
        payment_timeout_ms: body.payment_timeout_ms,
        sale_start: body.sale_start_ms.map(Timestamp),
        sale_end: body.sale_end_ms.map(Timestamp),
    };
    let key = admin_key(body.request_id.as_deref(), mint)?;
    Ok(Call::Submit(Command::Client { key, action: Action::CreateSku(create) }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBatchBody {
    request_id: Option<String>,
    batch: u64,
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
        batch: BatchId(body.batch),
        quantity: body.quantity,
        per_user_limit: body.per_user_limit,
        discount_cents: body.discount_cents,
        min_amount_cents: body.min_amount_cents,
        valid_from: Timestamp(body.valid_from_ms),
        valid_until: Timestamp(body.valid_until_ms),
    };
    let key = admin_key(body.request_id.as_deref(), mint)?;
    Ok(Call::Submit(Command::Client { key, action: Action::CreateCouponBatch(create) }))
}

/// A body that must be empty or `{}`: a field the call does not take is refused, not ignored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmptyBody {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplicationBody {
    mode: String,
}

fn replication_mode(body: &[u8]) -> Result<Call, Response> {
    let body: ReplicationBody = parse_body(body)?;
    let mode = match body.mode.as_str() {
        "sync" => ReplicationMode::Sync,
        "async" => ReplicationMode::Async,
        other => {
            return Err(invalid(&format!("`mode` must be \"sync\" or \"async\", got {other:?}")));
        }
    };
    Ok(Call::SetReplicationMode(mode))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClaimBody {
    request_id: String,
    user: u64,
    batch: u64,
}

fn claim(body: &[u8]) -> Result<Call, Response> {
    let body: ClaimBody = parse_body(body)?;
    let key = client_key(&body.request_id)?;
    let action = Action::ClaimCoupon { user: UserId(body.user), batch: BatchId(body.batch) };
    Ok(Call::Submit(Command::Client { key, action }))
}

/// The response for an engine outcome: status from the outcome alone, body its JSON view.
#[must_use]
pub fn render_outcome(outcome: &Outcome) -> Response {
    let (status, body) = match outcome {
        Outcome::Rejected(rejection) => return render_rejection(*rejection),
        Outcome::SkuCreated(view) => (201, sku_json(view)),
        Outcome::Restocked(view) | Outcome::SaleChanged(view) | Outcome::Sku(view) => {
            (200, sku_json(view))
        }
        Outcome::Reserved { order, expires_at, amount_cents } => (
            201,
            json!({
                "order_id": order.0.to_string(),
                "state": "reserved",
                "expires_at_ms": expires_at.0,
                "amount_cents": amount_cents,
            }),
        ),
        Outcome::Paid { order } => (200, order_state_json(*order, "paid")),
        Outcome::Cancelled { order } => (200, order_state_json(*order, "cancelled")),
        Outcome::Shipped { order } => (200, order_state_json(*order, "shipped")),
        Outcome::Completed { order } => (200, order_state_json(*order, "completed")),
        Outcome::Refunded { order } => (200, order_state_json(*order, "refunded")),
        Outcome::BatchCreated(view) => (201, batch_json(view)),
        Outcome::Batch(view) => (200, batch_json(view)),
        Outcome::CouponClaimed { coupon, batch, valid_until } => (
            201,
            json!({
                "coupon_id": coupon.0.to_string(),
                "batch": batch.0,
                "state": "available",
                "valid_until_ms": valid_until.0,
            }),
        ),
        Outcome::Order(view) => (200, order_json(view)),
        Outcome::Coupon(view) => (200, coupon_json(view)),
        Outcome::SnapshotRequested { last_sequence, running_hash } => (
            202,
            json!({
                "last_sequence": last_sequence.0,
                "state_hash": format!("{running_hash:016x}"),
            }),
        ),
        Outcome::Ticked { now } => (200, json!({ "now_ms": now.0 })),
    };
    Response::json(status, &body)
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

/// The API's error code of a rejection: the engine's code, except that the HTTP API speaks
/// of request ids, not request keys.
#[must_use]
pub fn rejection_code(rejection: Rejection) -> &'static str {
    match rejection {
        Rejection::RequestKeyReused => "request_id_reused",
        other => other.code(),
    }
}

fn rejection_message(rejection: Rejection) -> String {
    match rejection {
        Rejection::SoldOut => "not enough units (or coupons) left".into(),
        Rejection::LimitExceeded => "the user would hold more than the per-user limit".into(),
        Rejection::SaleNotOpen => "the sale has not started yet".into(),
        Rejection::SaleClosed => "the sale has ended or was closed".into(),
        Rejection::UnknownSku => "no SKU with that id".into(),
        Rejection::UnknownOrder => "no such order".into(),
        Rejection::UnknownCoupon => "no such coupon".into(),
        Rejection::UnknownBatch => "no such coupon batch".into(),
        Rejection::InvalidQty => {
            "quantity is zero, above the per-order maximum, or overflows".into()
        }
        Rejection::CouponInvalid => {
            "the coupon is not the buyer's, is locked, used or expired, or the order is too small"
                .into()
        }
        Rejection::CapacityExhausted => {
            "a table, or the user's share of it, is full; retry later".into()
        }
        Rejection::SkuExists => "a SKU with that id already exists".into(),
        Rejection::BatchExists => "a coupon batch with that id already exists".into(),
        Rejection::InvalidArgument => "a field is out of range".into(),
        Rejection::InvalidState { current } => {
            format!("the order is {} and cannot make this transition", current.name())
        }
        Rejection::PaymentConflict => "the order was paid with a different payment_ref".into(),
        Rejection::WrongAmount { expected_cents } => {
            format!("amount_cents must equal the order's amount, {expected_cents}")
        }
        Rejection::NotOwner => "the user is not the order's buyer".into(),
        Rejection::RequestKeyReused => {
            "this request_id was already used for a different request".into()
        }
        other => format!("refused: {}", other.code()),
    }
}

fn render_rejection(rejection: Rejection) -> Response {
    let mut body = json!({
        "error": rejection_code(rejection),
        "message": rejection_message(rejection),
    });
    match rejection {
        Rejection::InvalidState { current } => body["current_state"] = json!(current.name()),
        Rejection::WrongAmount { expected_cents } => body["expected_cents"] = json!(expected_cents),
        _ => {}
    }
    let response = Response::json(rejection_status(rejection), &body);
    if rejection == Rejection::CapacityExhausted { response.retry_after(1) } else { response }
}

fn order_state_json(order: OrderId, state: &str) -> Value {
    json!({ "order_id": order.0.to_string(), "state": state })
}

/// JSON view of a SKU.
#[must_use]
pub fn sku_json(view: &SkuView) -> Value {
    json!({
        "sku": view.sku.0,
        "stock": view.stock,
        "available": view.available,
        "reserved": view.reserved,
        "sold": view.sold,
        "price_cents": view.price_cents,
        "per_user_limit": view.per_user_limit,
        "open": view.open,
        "payment_timeout_ms": view.payment_timeout_ms,
        "sale_start_ms": view.sale_start.map(|t| t.0),
        "sale_end_ms": view.sale_end.map(|t| t.0),
    })
}

/// JSON view of an order. The payment reference is shown as the hex of its 16-byte hash.
#[must_use]
pub fn order_json(view: &OrderView) -> Value {
    json!({
        "order_id": view.order.0.to_string(),
        "user": view.user.0,
        "sku": view.sku.0,
        "qty": view.qty,
        "amount_cents": view.amount_cents,
        "state": view.state.name(),
        "created_at_ms": view.created_at.0,
        "expires_at_ms": view.expires_at.0,
        "coupon_id": view.coupon.map(|c| c.0.to_string()),
        "payment_ref_hash": view.payment_ref.map(|r| hex(&r.0)),
    })
}

/// JSON view of a coupon batch.
#[must_use]
pub fn batch_json(view: &BatchView) -> Value {
    json!({
        "batch": view.batch.0,
        "quantity": view.quantity,
        "remaining": view.remaining,
        "per_user_limit": view.per_user_limit,
        "discount_cents": view.discount_cents,
        "min_amount_cents": view.min_amount_cents,
        "valid_from_ms": view.valid_from.0,
        "valid_until_ms": view.valid_until.0,
    })
}

/// JSON view of a claimed coupon.
#[must_use]
pub fn coupon_json(view: &CouponView) -> Value {
    let (state, order) = match view.state {
        CouponState::Available => ("available", None),
        CouponState::Locked(order) => ("locked", Some(order)),
        CouponState::Used(order) => ("used", Some(order)),
        CouponState::Expired => ("expired", None),
    };
    json!({
        "coupon_id": view.coupon.0.to_string(),
        "batch": view.batch.0,
        "user": view.user.0,
        "state": state,
        "order_id": order.map(|o| o.0.to_string()),
        "discount_cents": view.discount_cents,
        "valid_until_ms": view.valid_until.0,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
