//! How a backend's refusal reads on each port, at submission (nothing was published) or as a
//! command's completion (published, and the node could not answer it).
//!
//! One mapping for both ports keeps them saying the same thing: the HTTP error code is the
//! binary [`ErrorCode`]'s name (but for a failed node: `node_unavailable` on HTTP, the older
//! `shutting_down` on the binary port), and both carry a retry hint where retrying helps.

use serde_json::json;

use crate::backend::Refusal;
use crate::http::Response;
use crate::wire::ErrorCode;

/// Retry hint for `replication_unavailable`: the standby needs a reconnect, or the operator
/// a decision, so retrying at once only adds load.
const REPLICATION_RETRY_MS: u32 = 1_000;

/// When the refusal happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stage {
    /// At submission: the command was not published.
    Submit,
    /// As the command's completion: it was published and got no outcome.
    Completion,
}

/// The binary `ERROR` frame's code, retry hint and message for `refusal`.
pub(super) fn error_frame(
    refusal: &Refusal,
    stage: Stage,
    busy_retry_ms: u32,
) -> (ErrorCode, u32, String) {
    match (refusal, stage) {
        (Refusal::Busy, _) => (ErrorCode::Busy, busy_retry_ms, "busy: retry later".into()),
        (Refusal::ShuttingDown, _) => {
            (ErrorCode::ShuttingDown, 0, "the node is shutting down".into())
        }
        (Refusal::Failed(message), Stage::Submit) => (ErrorCode::ShuttingDown, 0, message.clone()),
        (Refusal::Failed(message), Stage::Completion) => {
            let message = format!("the node could not answer: {message}");
            (ErrorCode::ShuttingDown, busy_retry_ms, message)
        }
        (Refusal::NotPrimary { .. }, _) => (ErrorCode::NotPrimary, 0, refusal.to_string()),
        (Refusal::ReplicationUnavailable, stage) => {
            let message = replication_message(stage).to_owned();
            (ErrorCode::ReplicationUnavailable, REPLICATION_RETRY_MS, message)
        }
        (Refusal::JournalFailed(cause), stage) => {
            (ErrorCode::JournalFailed, 0, journal_message(cause, stage))
        }
    }
}

/// The HTTP response for `refusal`: 503 with `Retry-After`, except `not_primary`, which
/// names the primary instead (retrying here does not help).
pub(super) fn http_response(refusal: &Refusal, stage: Stage) -> Response {
    match refusal {
        Refusal::Busy => {
            Response::error(503, "busy", "the node is at capacity; retry shortly").retry_after(1)
        }
        Refusal::ShuttingDown => {
            Response::error(503, "shutting_down", "the node is shutting down").retry_after(1)
        }
        Refusal::Failed(message) => {
            Response::error(503, "node_unavailable", message).retry_after(1)
        }
        Refusal::NotPrimary { primary } => {
            let body = json!({
                "error": ErrorCode::NotPrimary.name(),
                "message": refusal.to_string(),
                "primary": primary,
            });
            Response::json(503, &body)
        }
        Refusal::ReplicationUnavailable => {
            let code = ErrorCode::ReplicationUnavailable.name();
            Response::error(503, code, replication_message(stage)).retry_after(1)
        }
        // No retry hint: retrying does not help until the operator fixes the disk and
        // restarts the node.
        Refusal::JournalFailed(cause) => {
            Response::error(503, ErrorCode::JournalFailed.name(), &journal_message(cause, stage))
        }
    }
}

/// What a client is told when the journal failed: the cause, and whether its command may
/// have taken effect.
fn journal_message(cause: &str, stage: Stage) -> String {
    match stage {
        Stage::Submit => format!(
            "writes are refused: the journal cannot make them durable ({cause}); reads are \
             served; the node takes writes again once restarted on a working disk"
        ),
        Stage::Completion => format!(
            "the command was not made durable: the journal failed ({cause}); retry with the \
             same request id once the node is back to learn its outcome"
        ),
    }
}

fn replication_message(stage: Stage) -> &'static str {
    match stage {
        Stage::Submit => {
            "writes are held: the standby stopped acknowledging, the lease could not be \
             renewed, or a switchover or promotion is under way; retry shortly (reads are \
             served)"
        }
        Stage::Completion => {
            "the command was applied on this node but the standby did not acknowledge it; \
             retry with the same request id to learn its outcome"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_ports_name_a_refusal_alike() {
        // Goal: every refusal has the same code name on both ports, at submission and as a
        // completion, and the HTTP answer is a 503.
        let refusals = [
            Refusal::Busy,
            Refusal::ShuttingDown,
            Refusal::Failed("stage `blp` failed".into()),
            Refusal::NotPrimary { primary: Some("10.0.0.1:7080".into()) },
            Refusal::NotPrimary { primary: None },
            Refusal::ReplicationUnavailable,
            Refusal::JournalFailed("creating segment 9.seg: No space left on device".into()),
        ];
        for refusal in &refusals {
            for stage in [Stage::Submit, Stage::Completion] {
                let (code, _, _) = error_frame(refusal, stage, 10);
                let response = http_response(refusal, stage);
                let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
                assert_eq!(response.status, 503);
                let http_code = body["error"].as_str().unwrap();
                let same = http_code == code.name() || code == ErrorCode::ShuttingDown;
                assert!(same, "{refusal:?}: {http_code} vs {}", code.name());
            }
        }
    }

    #[test]
    fn not_primary_names_the_primary_on_both_ports() {
        // Goal: a known primary's address is in the HTTP body's `primary` and in the binary
        // message; an unknown one is `null`.
        let known = Refusal::NotPrimary { primary: Some("10.0.0.1:7080".into()) };
        let (code, retry_ms, message) = error_frame(&known, Stage::Submit, 10);
        assert_eq!((code, retry_ms), (ErrorCode::NotPrimary, 0));
        assert_eq!(message, "not primary; primary at 10.0.0.1:7080");
        let body = http_response(&known, Stage::Submit).body;
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["primary"], "10.0.0.1:7080");
        let unknown = http_response(&Refusal::NotPrimary { primary: None }, Stage::Submit);
        let body: serde_json::Value = serde_json::from_slice(&unknown.body).unwrap();
        assert!(body["primary"].is_null());
        assert_eq!(unknown.retry_after_s, None);
    }

    #[test]
    fn an_unreplicated_completion_says_to_retry_with_the_same_id() {
        // Goal: the completion's message tells the client its command may have been applied,
        // unlike the refusal at submission, where nothing was published.
        let refusal = Refusal::ReplicationUnavailable;
        let (_, retry_ms, message) = error_frame(&refusal, Stage::Completion, 10);
        assert_eq!(retry_ms, REPLICATION_RETRY_MS);
        assert!(message.contains("same request id"), "{message}");
        let (_, _, message) = error_frame(&refusal, Stage::Submit, 10);
        assert!(message.starts_with("writes are held") && !message.contains("same"), "{message}");
        assert_eq!(http_response(&refusal, Stage::Completion).retry_after_s, Some(1));
    }
}
