//! JSON for commands, outcomes and events in the tools' exports (`journal dump --json`,
//! `replay --export`): the API's own view types ([`ringfence_ingress::http::views`]), so an
//! outcome reads the same in an export as in an HTTP answer, with a snake_case `kind` added.
//!
//! Ids are decimal strings, 16-byte keys are hex strings, times are milliseconds since the
//! Unix epoch (`*_ms`) and money is in cents.

use ringfence_core::engine::Event;
use ringfence_core::{Command, Outcome, SkuView};
use ringfence_ingress::http::views::{CommandJson, EventJson, SkuJson, outcome_record};
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

/// An outcome as a JSON object: its `kind`, then the fields of its HTTP body.
#[must_use]
pub fn outcome(outcome: &Outcome) -> Value {
    value(&outcome_record(outcome))
}

/// An engine event (an expiry) as a JSON object.
#[must_use]
pub fn event(event: &Event) -> Value {
    value(&EventJson::from(event))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringfence_core::{OrderId, Rejection};

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
