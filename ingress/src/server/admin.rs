//! The admin calls that are not engine commands: promoting a standby and switching
//! replication's ack mode. They go to the backend on the event-loop thread (a promotion takes
//! a few milliseconds), are answered at once, and each one is logged.

use std::time::Instant;

use ringfence_core::RequestKey;
use serde_json::json;

use super::Server;
use crate::backend::Backend;
use crate::http::Response;
use crate::http::api::ReplicationMode;

impl<B: Backend> Server<B> {
    /// `POST /v1/admin/promote`: 200 with the new epoch, 409 on a node that is already
    /// primary, 503 when the promotion failed or was refused (a standby that may lack
    /// acknowledged writes, without `force`; no replication to promote). A retry with the
    /// `request_id` of the promotion this server made answers 200 again.
    pub(super) fn promote_response(
        &mut self,
        (request, force): (Option<RequestKey>, bool),
        now: Instant,
    ) -> Response {
        let status = self.backend.status();
        if let (Some(request), Some((promoted, epoch))) = (request, self.promoted_by) {
            if request == promoted && status.info.primary && status.info.epoch == epoch {
                return Response::json(200, &json!({ "role": "primary", "epoch": epoch }));
            }
        }
        if status.info.primary {
            self.log.warn(now, format_args!("admin: promote refused: already the primary"));
            return Response::error(
                409,
                "not_standby",
                "this node is already the primary; only a standby can be promoted",
            );
        }
        match self.backend.promote(force) {
            Ok(epoch) => {
                self.log.notice(format_args!("admin: promoted to primary in epoch {epoch}"));
                self.promoted_by = request.map(|request| (request, epoch));
                Response::json(200, &json!({ "role": "primary", "epoch": epoch }))
            }
            Err(message) => {
                self.log.warn(now, format_args!("admin: promotion failed: {message}"));
                Response::error(503, "promotion_failed", &message)
            }
        }
    }

    /// `POST /v1/admin/replication`: 200 with the mode now in force, 409 when the backend
    /// refuses the switch (e.g. no replication configured).
    pub(super) fn replication_mode_response(
        &mut self,
        mode: ReplicationMode,
        now: Instant,
    ) -> Response {
        let name = mode.name();
        match self.backend.set_replication_mode(name) {
            Ok(()) => {
                self.log.notice(format_args!("admin: replication mode set to {name}"));
                Response::json(200, &json!({ "mode": name }))
            }
            Err(message) => {
                self.log
                    .warn(now, format_args!("admin: replication mode {name} refused: {message}"));
                Response::error(409, "mode_refused", &message)
            }
        }
    }
}
