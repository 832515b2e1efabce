//! `ringfence client …`: drive a node over the binary protocol from the shell.
//!
//! Each subcommand sends one command and prints the answer as the same JSON the HTTP API
//! returns. The exit status is 0 for a success, 1 for a rejection or refusal, 2 for an error
//! reaching the node. A refusal is any error frame the node answers with — of the command
//! (`unauthorized`, `busy`, ...) or of the token (`auth_failed`, or `rate_limited` after too
//! many wrong tokens) — and is printed as the HTTP API's error JSON; an error reaching the node
//! (no address accepts, no answer in time, the connection closed, bytes that are not the
//! protocol) is a line on standard error.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use ringfence_core::{
    Action, BatchId, Command, CouponId, CreateCouponBatch, CreateSku, OrderId, Query, RequestKey,
    Reserve, SkuId, Timestamp, UserId,
};
use ringfence_ingress::http::api::{KeyMint, render_outcome};
use ringfence_ingress::http::views::{ErrorJson, NodeJson};
use ringfence_ingress::{Client, ClientError, keys};

/// Arguments of `ringfence client`.
#[derive(clap::Args, Debug)]
pub struct ClientArgs {
    /// Node address (binary protocol), `host:port` (e.g. 127.0.0.1:7001 or
    /// localhost:7001); repeat it to give standbys to fail over to.
    #[arg(long = "addr", value_name = "ADDR", default_value = "127.0.0.1:7001", value_parser = node_address)]
    pub addrs: Vec<NodeAddrs>,
    /// Admin token file for admin commands [default: RINGFENCE_ADMIN_TOKEN, else
    /// ./ringfence-data/admin.token]. Given explicitly, admin commands use it even with
    /// --token-file, and without --token-file every command does (the admin role may call
    /// anything).
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// For a node that enforces roles: the file holding this caller's token (`orders`,
    /// `payments`, `read` or `admin`), sent before every command [default:
    /// RINGFENCE_TOKEN]. Without it, only admin commands authenticate (with the admin token).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// What to send.
    #[command(subcommand)]
    pub command: ClientCommand,
}

/// The commands `ringfence client` can send.
#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Admin: define a SKU.
    CreateSku {
        /// Idempotency id (1–64 characters): a retry with the same id answers the first
        /// outcome and changes nothing. Without one, every call is a new command.
        #[arg(long)]
        request_id: Option<String>,
        /// SKU id (not zero).
        #[arg(long)]
        sku: u64,
        /// Units on sale.
        #[arg(long)]
        stock: u32,
        /// Unit price in cents.
        #[arg(long)]
        price_cents: u64,
        /// Units one user may hold (0 = no limit).
        #[arg(long, default_value_t = 0)]
        per_user_limit: u32,
        /// How long a reservation waits for payment.
        #[arg(long, default_value_t = 900_000)]
        payment_timeout_ms: u64,
        /// Sale opens at (ms since the Unix epoch).
        #[arg(long)]
        sale_start_ms: Option<u64>,
        /// Sale ends at (ms since the Unix epoch).
        #[arg(long)]
        sale_end_ms: Option<u64>,
    },
    /// Admin: add units to a SKU.
    Restock {
        /// Idempotency id (1–64 characters): a retry with the same id answers the first
        /// outcome and changes nothing. Without one, every call is a new command.
        #[arg(long)]
        request_id: Option<String>,
        /// SKU id.
        #[arg(long)]
        sku: u64,
        /// Units added.
        #[arg(long)]
        qty: u32,
    },
    /// Admin: open a SKU's sale.
    OpenSale {
        /// Idempotency id (1–64 characters): a retry with the same id answers the first
        /// outcome and changes nothing. Without one, every call is a new command.
        #[arg(long)]
        request_id: Option<String>,
        /// SKU id.
        #[arg(long)]
        sku: u64,
    },
    /// Admin: close a SKU's sale.
    CloseSale {
        /// Idempotency id (1–64 characters): a retry with the same id answers the first
        /// outcome and changes nothing. Without one, every call is a new command.
        #[arg(long)]
        request_id: Option<String>,
        /// SKU id.
        #[arg(long)]
        sku: u64,
    },
    /// Reserve units for a buyer (the flash-sale call).
    Reserve {
        /// Idempotency id (1–64 characters); reuse it to retry safely.
        #[arg(long)]
        request_id: String,
        /// Buyer.
        #[arg(long)]
        user: u64,
        /// SKU id.
        #[arg(long)]
        sku: u64,
        /// Units.
        #[arg(long, default_value_t = 1)]
        qty: u32,
        /// A claimed coupon to apply.
        #[arg(long)]
        coupon: Option<u64>,
    },
    /// Record a payment for a reserved order.
    Pay {
        /// Order id.
        order: u64,
        /// Idempotency id.
        #[arg(long)]
        request_id: String,
        /// The payment provider's reference.
        #[arg(long)]
        payment_ref: String,
        /// Must equal the order's amount.
        #[arg(long)]
        amount_cents: u64,
    },
    /// Cancel a reserved order (as its buyer, or as admin without --user).
    Cancel {
        /// Order id.
        order: u64,
        /// Idempotency id.
        #[arg(long)]
        request_id: Option<String>,
        /// The buyer; omit to cancel as admin.
        #[arg(long)]
        user: Option<u64>,
    },
    /// Admin: mark a paid order shipped.
    Ship {
        /// Order id.
        order: u64,
        /// Idempotency id (1–64 characters): a retry with the same id answers the first
        /// outcome and changes nothing. Without one, every call is a new command.
        #[arg(long)]
        request_id: Option<String>,
    },
    /// Confirm receipt of a shipped order.
    Complete {
        /// Order id.
        order: u64,
        /// Idempotency id.
        #[arg(long)]
        request_id: String,
        /// The buyer.
        #[arg(long)]
        user: u64,
    },
    /// Refund a paid order before shipping (the `payments` role, or admin; with only an admin
    /// token configured, admin).
    Refund {
        /// Order id.
        order: u64,
        /// Idempotency id (1–64 characters): a retry with the same id answers the first
        /// outcome and changes nothing. Without one, every call is a new command.
        #[arg(long)]
        request_id: Option<String>,
    },
    /// Admin: define a coupon batch.
    CreateBatch {
        /// Idempotency id (1–64 characters): a retry with the same id answers the first
        /// outcome and changes nothing. Without one, every call is a new command.
        #[arg(long)]
        request_id: Option<String>,
        /// Batch id (not zero).
        #[arg(long)]
        batch: u64,
        /// Coupons in the batch.
        #[arg(long)]
        quantity: u32,
        /// Coupons one user may claim (0 = no limit).
        #[arg(long, default_value_t = 0)]
        per_user_limit: u32,
        /// Discount per coupon.
        #[arg(long)]
        discount_cents: u64,
        /// Minimum order amount.
        #[arg(long, default_value_t = 0)]
        min_amount_cents: u64,
        /// Claims open at (ms since the Unix epoch).
        #[arg(long)]
        valid_from_ms: u64,
        /// Claims close and coupons expire at (ms since the Unix epoch).
        #[arg(long)]
        valid_until_ms: u64,
    },
    /// Claim one coupon from a batch.
    Claim {
        /// Idempotency id.
        #[arg(long)]
        request_id: String,
        /// The buyer.
        #[arg(long)]
        user: u64,
        /// Batch id.
        #[arg(long)]
        batch: u64,
    },
    /// Show a SKU.
    Sku {
        /// SKU id.
        sku: u64,
    },
    /// Show an order.
    Order {
        /// Order id.
        order: u64,
    },
    /// Show a claimed coupon.
    Coupon {
        /// Coupon id.
        coupon: u64,
    },
    /// Show a coupon batch.
    Batch {
        /// Batch id.
        batch: u64,
    },
    /// Admin: snapshot the engine's state now.
    Snapshot,
    /// Show the node's role, sequence and state hash.
    Node,
    /// Check that the node answers.
    Ping,
}

/// Runs one client command.
pub fn run(args: ClientArgs) -> ExitCode {
    match execute(args) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("ringfence client: error: {message}");
            ExitCode::from(2)
        }
    }
}

/// The addresses one `--addr` stands for: an IP address and port, or every address a host
/// name resolves to now, in the resolver's order (`localhost` may be `::1` first; the client
/// moves on from an address that refuses).
#[derive(Clone, Debug)]
pub struct NodeAddrs(Vec<SocketAddr>);

fn node_address(text: &str) -> Result<NodeAddrs, String> {
    if let Ok(address) = text.parse() {
        return Ok(NodeAddrs(vec![address]));
    }
    let addresses: Vec<SocketAddr> = text
        .to_socket_addrs()
        .map_err(|e| format!("`{text}`: {e} (give host:port, e.g. 127.0.0.1:7001)"))?
        .collect();
    if addresses.is_empty() {
        return Err(format!("`{text}` resolves to no address"));
    }
    Ok(NodeAddrs(addresses))
}

fn execute(args: ClientArgs) -> Result<ExitCode, String> {
    let addrs: Vec<SocketAddr> = args.addrs.iter().flat_map(|node| node.0.clone()).collect();
    let mut client = Client::connect(&addrs).map_err(|e| e.to_string())?;
    let role_token = caller_token(args.token_file.as_ref())?;
    let chosen_admin = args.admin_token_file.as_ref();
    let first_token = match (&role_token, chosen_admin) {
        (Some(token), _) => Some(token.clone()),
        // An admin token named and no other: the caller is the operator, for every command.
        (None, Some(file)) => Some(admin_token(Some(file))?),
        (None, None) => None,
    };
    if let Some(token) = first_token {
        if let Err(error) = client.authenticate(&token) {
            return refusal(error);
        }
    }
    match args.command {
        ClientCommand::Node => {
            let info = match client.node() {
                Ok(info) => info,
                Err(error) => return refusal(error),
            };
            let json = serde_json::to_string(&NodeJson::from_info(&info))
                .expect("the API's views always serialize");
            println!("{json}");
            return Ok(ExitCode::SUCCESS);
        }
        ClientCommand::Ping => {
            if let Err(error) = client.ping() {
                return refusal(error);
            }
            println!("{{\"status\":\"ok\",\"node\":\"{}\"}}", client.peer());
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let command = to_command(args.command)?;
    // An admin command sends the admin token when the connection does not carry it yet:
    // with no token at all (the default admin token), or with a role token beside a named
    // admin token. A role token alone may be `admin`; a named admin token alone was sent.
    let admin_needed = ringfence_ingress::server::needs_admin(&command);
    if admin_needed && role_token.is_some() == chosen_admin.is_some() {
        if let Err(error) = client.authenticate(&admin_token(chosen_admin)?) {
            return refusal(error);
        }
    }
    match client.call(command) {
        Ok(outcome) => {
            let response = render_outcome(&outcome);
            print!("{}", String::from_utf8_lossy(&response.body));
            Ok(if outcome.is_rejected() { ExitCode::FAILURE } else { ExitCode::SUCCESS })
        }
        Err(error) => refusal(error),
    }
}

/// A failed call's exit: the node's refusal — of the command or of the token — printed as the
/// HTTP API's error JSON, exit 1; anything else is an error reaching the node, returned for
/// [`run`] to report (exit 2).
fn refusal(error: ClientError) -> Result<ExitCode, String> {
    match error {
        ClientError::Refused(error) => {
            let json = serde_json::to_string(&ErrorJson::new(error.code.name(), error.message))
                .expect("the API's views always serialize");
            println!("{json}");
            Ok(ExitCode::FAILURE)
        }
        error => Err(error.to_string()),
    }
}

/// This caller's token for a node that enforces roles: `file`, else `RINGFENCE_TOKEN`, else
/// none.
pub(crate) fn caller_token(file: Option<&PathBuf>) -> Result<Option<String>, String> {
    if let Some(path) = file {
        let token = std::fs::read_to_string(path)
            .map_err(|e| format!("reading the token from {}: {e}", path.display()))?;
        return Ok(Some(token.trim().to_owned()));
    }
    Ok(std::env::var("RINGFENCE_TOKEN").ok().map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()))
}

/// The admin token: `file`, else `RINGFENCE_ADMIN_TOKEN`, else `./ringfence-data/admin.token`.
pub(crate) fn admin_token(file: Option<&PathBuf>) -> Result<String, String> {
    if file.is_none() {
        if let Ok(token) = std::env::var("RINGFENCE_ADMIN_TOKEN") {
            return Ok(token.trim().to_owned());
        }
    }
    let path = file.cloned().unwrap_or_else(|| PathBuf::from("./ringfence-data/admin.token"));
    let token = std::fs::read_to_string(&path).map_err(|e| {
        format!("admin command: reading the admin token from {}: {e}", path.display())
    })?;
    Ok(token.trim().to_owned())
}

fn key(request_id: &str) -> Result<RequestKey, String> {
    if keys::is_valid_key_string(request_id) {
        Ok(keys::request_key(request_id))
    } else {
        Err("--request-id must be 1 to 64 characters".into())
    }
}

/// The key of an admin command: from its `--request-id`, else a fresh one.
fn admin_key_or(request_id: Option<String>) -> Result<RequestKey, String> {
    match request_id {
        Some(request_id) => key(&request_id),
        None => Ok(admin_key()),
    }
}

/// A fresh key for an admin command given no request id.
fn admin_key() -> RequestKey {
    let nonce = u128::from(ringfence_ingress::backend::now_ms()) << 64
        | u128::from(std::process::id()) << 32
        | u128::from(std::time::Instant::now().elapsed().subsec_nanos());
    KeyMint::new(nonce).next_key()
}

fn to_command(command: ClientCommand) -> Result<Command, String> {
    let keyed = |key: RequestKey, action: Action| Command::Client { key, action };
    Ok(match command {
        ClientCommand::CreateSku {
            request_id,
            sku,
            stock,
            price_cents,
            per_user_limit,
            payment_timeout_ms,
            sale_start_ms,
            sale_end_ms,
        } => keyed(
            admin_key_or(request_id)?,
            Action::CreateSku(CreateSku {
                sku: SkuId(sku),
                stock,
                price_cents,
                per_user_limit,
                payment_timeout_ms,
                sale_start: sale_start_ms.map(Timestamp),
                sale_end: sale_end_ms.map(Timestamp),
            }),
        ),
        ClientCommand::Restock { request_id, sku, qty } => {
            keyed(admin_key_or(request_id)?, Action::Restock { sku: SkuId(sku), qty })
        }
        ClientCommand::OpenSale { request_id, sku } => {
            keyed(admin_key_or(request_id)?, Action::OpenSale { sku: SkuId(sku) })
        }
        ClientCommand::CloseSale { request_id, sku } => {
            keyed(admin_key_or(request_id)?, Action::CloseSale { sku: SkuId(sku) })
        }
        ClientCommand::Reserve { request_id, user, sku, qty, coupon } => keyed(
            key(&request_id)?,
            Action::Reserve(Reserve {
                user: UserId(user),
                sku: SkuId(sku),
                qty,
                coupon: coupon.map(CouponId),
            }),
        ),
        ClientCommand::Pay { order, request_id, payment_ref, amount_cents } => {
            if !keys::is_valid_key_string(&payment_ref) {
                return Err("--payment-ref must be 1 to 64 characters".into());
            }
            let payment_ref = keys::payment_ref(&payment_ref);
            keyed(
                key(&request_id)?,
                Action::Pay { order: OrderId(order), payment_ref, amount_cents },
            )
        }
        ClientCommand::Cancel { order, request_id, user } => {
            let order = OrderId(order);
            match (user, request_id) {
                (Some(user), Some(id)) => {
                    keyed(key(&id)?, Action::Cancel { order, user: UserId(user) })
                }
                (Some(_), None) => return Err("cancel as a buyer needs --request-id".into()),
                (None, id) => {
                    let key = id.map(|id| key(&id)).transpose()?.unwrap_or_else(admin_key);
                    keyed(key, Action::AdminCancel { order })
                }
            }
        }
        ClientCommand::Ship { order, request_id } => {
            keyed(admin_key_or(request_id)?, Action::Ship { order: OrderId(order) })
        }
        ClientCommand::Complete { order, request_id, user } => {
            keyed(key(&request_id)?, Action::Complete { order: OrderId(order), user: UserId(user) })
        }
        ClientCommand::Refund { order, request_id } => {
            keyed(admin_key_or(request_id)?, Action::Refund { order: OrderId(order) })
        }
        ClientCommand::CreateBatch {
            request_id,
            batch,
            quantity,
            per_user_limit,
            discount_cents,
            min_amount_cents,
            valid_from_ms,
            valid_until_ms,
        } => keyed(
            admin_key_or(request_id)?,
            Action::CreateCouponBatch(CreateCouponBatch {
                batch: BatchId(batch),
                quantity,
                per_user_limit,
                discount_cents,
                min_amount_cents,
                valid_from: Timestamp(valid_from_ms),
                valid_until: Timestamp(valid_until_ms),
            }),
        ),
        ClientCommand::Claim { request_id, user, batch } => keyed(
            key(&request_id)?,
            Action::ClaimCoupon { user: UserId(user), batch: BatchId(batch) },
        ),
        ClientCommand::Sku { sku } => Command::Query(Query::Sku(SkuId(sku))),
        ClientCommand::Order { order } => Command::Query(Query::Order(OrderId(order))),
        ClientCommand::Coupon { coupon } => Command::Query(Query::Coupon(CouponId(coupon))),
        ClientCommand::Batch { batch } => Command::Query(Query::Batch(BatchId(batch))),
        ClientCommand::Snapshot => Command::Snapshot,
        ClientCommand::Node | ClientCommand::Ping => {
            return Err("node and ping are answered without a command".into());
        }
    })
}
