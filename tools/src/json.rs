//! JSON for commands and SKUs in the tools' output (the fields of `journal dump`'s text lines,
//! the summary of `replay --json`): the API's own view types
//! ([`ringfence_ingress::http::views`]), as `replay --export` and `journal dump --json` write
//! their lines, so an outcome reads the same in an export as in an HTTP answer, with a
//! snake_case `kind` added.
//!
//! Ids are decimal strings, 16-byte keys are hex strings, times are milliseconds since the
//! Unix epoch (`*_ms`) and money is in cents.

use ringfence_core::{Command, SkuView};
use ringfence_ingress::http::views::{CommandJson, SkuJson};
use serde::Serialize;
use serde_json::Value;

fn value<T: Serialize>(view: &T) -> Value {
    serde_json::to_value(view).expect("the API's views always serialize")
}

/// A command as a JSON object.
#[must_use]
pub fn command(command: &Command) -> Value {
    value(&CommandJson::from(command))
}

/// The short kind name of a command (for statistics).
#[must_use]
pub fn command_kind(command: &Command) -> &'static str {
    command.kind()
}

/// A SKU's figures as JSON.
#[must_use]
pub fn sku(view: &SkuView) -> Value {
    value(&SkuJson::from(view))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringfence_core::{OrderId, Outcome, Rejection};
    use ringfence_ingress::http::views::outcome_record;

    /// An outcome as `replay --export` writes it: its `kind`, then the fields of its HTTP body.
    fn outcome(outcome: &Outcome) -> Value {
        value(&outcome_record(outcome))
    }

    #[test]
    fn an_exported_outcome_is_its_http_body_with_a_kind() {
        // Goal: the export and the HTTP API render one outcome with the same fields.
        let outcomes = [
            Outcome::Paid { order: OrderId(u64::MAX) },
            Outcome::Rejected(Rejection::SoldOut),
            Outcome::Rejected(Rejection::InvalidQty),
        ];
        for one in outcomes {
            let mut exported = outcome(&one);
            let kind = exported.as_object_mut().unwrap().remove("kind").unwrap();
            let response = ringfence_ingress::http::api::render_outcome(&one);
            let body: Value = serde_json::from_slice(&response.body).unwrap();
            assert_eq!(exported, body, "{kind}");
        }
        assert_eq!(outcome(&outcomes[0])["order_id"], u64::MAX.to_string());
    }
}
