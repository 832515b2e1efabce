//! Who may do what: the roles a token carries and the one table of what each call needs, used
//! by both ports.
//!
//! ringfence authenticates the platform's *services*, not shoppers (as Redis ACLs do): the
//! storefront's order service, the payment service, operators, and read-only consumers such as
//! dashboards. Each configured token carries one [`Role`].
//!
//! The table ([`call_need`], [`command_need`], [`Caller::allows`]):
//! - nothing — `/health`, `/ready`, binary `PING`: anyone.
//! - read — queries (SKU, order, coupon, batch), `/v1/node` and binary `NODE`, `/metrics`:
//!   roles read, orders, payments, admin.
//! - orders — reserve, cancel by the buyer, complete, claim a coupon: orders, admin.
//! - payments — pay, refund: payments, admin.
//! - admin — create SKU, restock, open and close a sale, cancel as operator, ship, create a
//!   coupon batch, snapshot, promote, replication mode: admin only.
//!
//! Two modes, chosen by the configuration, not per request:
//! - **Roles enforced** (any `orders`, `payments` or `read` token configured): a call needs a
//!   token whose role allows it. No token, or a wrong one, is [`Caller::Anonymous`].
//! - **Client commands open** (only the admin token, the quick start): a caller without the
//!   admin token is [`Caller::Open`], allowed what needed no token before roles existed — reads,
//!   the order calls and pay — but not refund or the admin calls. `serve` allows this mode on
//!   loopback listeners, or beyond only when the operator acknowledges it.

use ringfence_core::{Action, Command};

use crate::http::api::Call;

/// The role a configured token carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Reads and metrics: dashboards, reconciliation jobs.
    Read,
    /// The order service: reserve, cancel, complete, claim coupons, and reads.
    Orders,
    /// The payment service: pay and refund, and reads (it checks an order's amount).
    Payments,
    /// Operators: everything.
    Admin,
}

impl Role {
    /// Every role, in the order documentation lists them.
    pub const ALL: [Role; 4] = [Role::Orders, Role::Payments, Role::Admin, Role::Read];

    /// The role's name in configuration files, messages and the API.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Orders => "orders",
            Role::Payments => "payments",
            Role::Admin => "admin",
        }
    }

    /// The role named `name`, if any.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.name() == name)
    }
}

/// What a call needs. `Pay` and `Refund` are both the payment service's, but only `Pay` was
/// open before roles existed, so the open mode tells them apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Liveness and readiness: anyone.
    Nothing,
    /// Queries, node status, metrics.
    Read,
    /// The order service's writes.
    Orders,
    /// Paying an order.
    Pay,
    /// Refunding a paid order.
    Refund,
    /// Catalogue, fulfilment, snapshots, replication control.
    Admin,
}

impl Need {
    /// The role a refusal names: the narrowest one that allows the call (`None` for
    /// [`Need::Nothing`], which is never refused).
    #[must_use]
    pub fn role(self) -> Option<Role> {
        match self {
            Need::Nothing => None,
            Need::Read => Some(Role::Read),
            Need::Orders => Some(Role::Orders),
            Need::Pay | Need::Refund => Some(Role::Payments),
            Need::Admin => Some(Role::Admin),
        }
    }
}

/// Who is calling, as far as authorisation cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    /// No accepted token, where client commands and reads are open (only an admin token is
    /// configured).
    Open,
    /// No accepted token, where roles are enforced.
    Anonymous,
    /// A token of this role.
    Role(Role),
}

impl Caller {
    /// The caller without an accepted token: [`Caller::Anonymous`] when roles are enforced.
    #[must_use]
    pub fn without_token(roles_enforced: bool) -> Caller {
        if roles_enforced { Caller::Anonymous } else { Caller::Open }
    }

    /// Whether this caller may make a call that needs `need`.
    #[must_use]
    // One row per caller reads as the table in the module doc; `matches!` would run them
    // together.
    #[allow(clippy::match_like_matches_macro)]
    pub fn allows(self, need: Need) -> bool {
        match (self, need) {
            (_, Need::Nothing) | (Caller::Role(Role::Admin), _) => true,
            (Caller::Role(Role::Read), Need::Read) => true,
            (Caller::Role(Role::Orders), Need::Read | Need::Orders) => true,
            (Caller::Role(Role::Payments), Need::Read | Need::Pay | Need::Refund) => true,
            (Caller::Open, Need::Read | Need::Orders | Need::Pay) => true,
            _ => false,
        }
    }
}

/// What an engine command needs: the command half of the table in the module doc.
#[must_use]
pub fn command_need(command: &Command) -> Need {
    match command {
        Command::Query(_) => Need::Read,
        // Clients never send `Tick` (the decoders refuse it); were one to arrive, only an
        // operator could.
        Command::Snapshot | Command::Tick => Need::Admin,
        Command::Client { action, .. } => match action {
            Action::Reserve(_)
            | Action::Cancel { .. }
            | Action::Complete { .. }
            | Action::ClaimCoupon { .. } => Need::Orders,
            Action::Pay { .. } => Need::Pay,
            Action::Refund { .. } => Need::Refund,
            Action::CreateSku(_)
            | Action::Restock { .. }
            | Action::OpenSale { .. }
            | Action::CloseSale { .. }
            | Action::AdminCancel { .. }
            | Action::Ship { .. }
            | Action::CreateCouponBatch(_) => Need::Admin,
        },
    }
}

/// What a routed call needs, on either port (the binary `NODE` is [`Call::Node`], `PING` is
/// [`Call::Health`]).
#[must_use]
pub fn call_need(call: &Call) -> Need {
    match call {
        Call::Submit(command) => command_need(command),
        Call::Health | Call::Ready | Call::OpenApi => Need::Nothing,
        Call::Node | Call::Metrics | Call::ListSkus(_) => Need::Read,
        Call::Promote { .. } | Call::SetReplicationMode(_) => Need::Admin,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEEDS: [Need; 6] =
        [Need::Nothing, Need::Read, Need::Orders, Need::Pay, Need::Refund, Need::Admin];

    fn allowed(caller: Caller) -> Vec<Need> {
        NEEDS.into_iter().filter(|need| caller.allows(*need)).collect()
    }

    #[test]
    fn each_caller_is_allowed_exactly_its_row_of_the_table() {
        // Goal: the role table as the module doc states it, and the open mode allows what
        // needed no token before roles: reads, the order calls and pay, not refund.
        use Need::*;
        assert_eq!(allowed(Caller::Role(Role::Admin)), NEEDS.to_vec());
        assert_eq!(allowed(Caller::Role(Role::Read)), [Nothing, Read]);
        assert_eq!(allowed(Caller::Role(Role::Orders)), [Nothing, Read, Orders]);
        assert_eq!(allowed(Caller::Role(Role::Payments)), [Nothing, Read, Pay, Refund]);
        assert_eq!(allowed(Caller::Open), [Nothing, Read, Orders, Pay]);
        assert_eq!(allowed(Caller::Anonymous), [Nothing]);
    }

    #[test]
    fn a_refusal_names_a_role_that_would_be_allowed() {
        // Goal: the role named in a 403 or `forbidden` frame really allows the call.
        for need in NEEDS {
            match need.role() {
                None => assert_eq!(need, Need::Nothing),
                Some(role) => assert!(Caller::Role(role).allows(need), "{need:?}"),
            }
        }
    }

    #[test]
    fn role_names_round_trip() {
        // Goal: every role parses from its own name, and nothing else parses.
        for role in Role::ALL {
            assert_eq!(Role::from_name(role.name()), Some(role));
        }
        assert_eq!(Role::from_name("Admin"), None);
        assert_eq!(Role::from_name("payment"), None);
    }
}
