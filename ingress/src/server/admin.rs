//! The admin calls that are not engine commands: promoting a standby and switching
//! replication's ack mode. Each one is logged. What the backend carries out at once (a
//! promotion without a witness takes a few milliseconds) is answered at once; what waits on
//! something slower ([`AdminCall::Later`]: a switchover or a mode switch through the witness,
//! seconds at worst) runs on the `ringfence-admin` thread, one call at a time in the order
//! asked, while the event loop serves everyone else, and is answered in its HTTP slot when it
//! ends.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::Instant;

use mio::Waker;
use ringfence_core::RequestKey;
use serde_json::json;

use super::Server;
use super::conn::Conn;
use crate::backend::{AdminCall, Backend};
use crate::http::Response;
use crate::http::api::ReplicationMode;

/// Admin calls waiting for the admin thread or under way on it, all connections together:
/// enough for an operator's retries; beyond them a call is refused, since each may take
/// seconds and a long queue would carry out calls long after they were asked.
pub(super) const ADMIN_WAITING_MAX: usize = 4;

/// Where a call carried out later is answered: an HTTP slot of a connection.
#[derive(Clone, Copy)]
struct Slot {
    conn: usize,
    conn_id: u64,
    seq: u64,
    keep_alive: bool,
}

/// What a call carried out later asked.
#[derive(Clone, Copy)]
enum Asked {
    /// A promotion, with the request id it carried.
    Promotion(Option<RequestKey>),
    ModeSwitch(ReplicationMode),
}

/// A call's work: the new epoch of a promotion (0 for a mode switch), or why it failed.
type Work = Box<dyn FnOnce() -> Result<u64, String> + Send>;

/// A call handed to the admin thread, and then its answer.
type Job = (Slot, Asked, Work);
type Answer = (Slot, Asked, Result<u64, String>);

/// The admin thread, started at the first call that waits, and the calls it owes answers.
pub(super) struct AdminCalls {
    waker: Arc<Waker>,
    jobs: Option<Sender<Job>>,
    answers: Receiver<Answer>,
    answered: Sender<Answer>,
    /// Calls handed to the thread and not yet answered.
    waiting: usize,
}

impl AdminCalls {
    pub(super) fn new(waker: Arc<Waker>) -> AdminCalls {
        let (answered, answers) = mpsc::channel();
        AdminCalls { waker, jobs: None, answers, answered, waiting: 0 }
    }

    /// Calls handed to the admin thread and not yet answered.
    pub(super) fn waiting(&self) -> usize {
        self.waiting
    }

    /// Hands `job` to the admin thread, starting it if need be. `false` when no thread can
    /// take it (nothing was handed over).
    fn hand_over(&mut self, job: Job) -> bool {
        assert!(self.waiting < ADMIN_WAITING_MAX, "callers check the room first");
        let mut job = job;
        // A thread that ended (it never should: a call that panics is answered as failed)
        // is replaced once.
        for _ in 0..2 {
            if self.jobs.is_none() && !self.start() {
                return false;
            }
            let jobs = self.jobs.as_ref().expect("started above");
            match jobs.send(job) {
                Ok(()) => {
                    self.waiting += 1;
                    return true;
                }
                Err(mpsc::SendError(back)) => {
                    job = back;
                    self.jobs = None;
                }
            }
        }
        false
    }

    /// Starts the admin thread; `false` when it cannot be started.
    fn start(&mut self) -> bool {
        assert!(self.jobs.is_none(), "one admin thread at a time");
        let (jobs, taken) = mpsc::channel::<Job>();
        let answered = self.answered.clone();
        let waker = Arc::clone(&self.waker);
        let thread = std::thread::Builder::new().name("ringfence-admin".into());
        let spawned = thread.spawn(move || {
            // Ends when the server drops its sender; an answer nobody takes any more (the
            // server stopped) is dropped.
            for (slot, asked, work) in taken {
                let result = catch_unwind(AssertUnwindSafe(work)).unwrap_or_else(|panic| {
                    let why = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    Err(format!("the admin call failed on the node: {why}"))
                });
                if answered.send((slot, asked, result)).is_err() {
                    return;
                }
                let _ = waker.wake();
            }
        });
        if spawned.is_err() {
            return false;
        }
        self.jobs = Some(jobs);
        true
    }
}

impl<B: Backend> Server<B> {
    /// `POST /v1/admin/promote`: 200 with the new epoch, 409 on a node that is already
    /// primary, 503 when the promotion failed or was refused (a standby that may lack
    /// acknowledged writes, without `force`; no replication to promote). A retry with the
    /// `request_id` of the promotion this server made answers 200 again. `None`: the answer
    /// comes later, in the slot reserved on `conn`.
    pub(super) fn promote_response(
        &mut self,
        (request, force): (Option<RequestKey>, bool),
        (conn, index): (&mut Conn, usize),
        (keep_alive, head_only): (bool, bool),
        now: Instant,
    ) -> Option<Response> {
        if let Some(settled) = self.already_primary(request, now) {
            return Some(settled);
        }
        if self.admin.waiting() >= ADMIN_WAITING_MAX {
            return Some(Response::error(503, "promotion_failed", &admin_busy_message()));
        }
        let answer = match self.backend.promote(force) {
            AdminCall::Done(result) => result,
            AdminCall::Later(work) => {
                let asked = Asked::Promotion(request);
                match self.defer((conn, index), (keep_alive, head_only), asked, work) {
                    Ok(()) => return None,
                    Err(message) => Err(message),
                }
            }
        };
        Some(self.promoted(request, answer, now))
    }

    /// The answer to a promotion asked of a node that is already the primary: 200 again to a
    /// retry of the promotion this server made (same `request_id`), 409 to any other.
    fn already_primary(&mut self, request: Option<RequestKey>, now: Instant) -> Option<Response> {
        let status = self.backend.status();
        if let (Some(request), Some((promoted, epoch))) = (request, self.promoted_by) {
            if request == promoted && status.info.primary && status.info.epoch == epoch {
                return Some(Response::json(200, &json!({ "role": "primary", "epoch": epoch })));
            }
        }
        if !status.info.primary {
            return None;
        }
        self.log.warn(now, format_args!("admin: promote refused: already the primary"));
        Some(Response::error(
            409,
            "not_standby",
            "this node is already the primary; only a standby can be promoted",
        ))
    }

    /// The answer to a promotion that ended with `answer`, logged.
    fn promoted(
        &mut self,
        request: Option<RequestKey>,
        answer: Result<u64, String>,
        now: Instant,
    ) -> Response {
        match answer {
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
    /// refuses the switch (e.g. no replication configured). `None`: the answer comes later,
    /// in the slot reserved on `conn`.
    pub(super) fn replication_mode_response(
        &mut self,
        mode: ReplicationMode,
        (conn, index): (&mut Conn, usize),
        (keep_alive, head_only): (bool, bool),
        now: Instant,
    ) -> Option<Response> {
        if self.admin.waiting() >= ADMIN_WAITING_MAX {
            return Some(self.mode_set(mode, Err(admin_busy_message()), now));
        }
        let answer = match self.backend.set_replication_mode(mode.name()) {
            AdminCall::Done(result) => result,
            AdminCall::Later(work) => {
                let work: Work = Box::new(move || work().map(|()| 0));
                let asked = Asked::ModeSwitch(mode);
                match self.defer((conn, index), (keep_alive, head_only), asked, work) {
                    Ok(()) => return None,
                    Err(message) => Err(message),
                }
            }
        };
        Some(self.mode_set(mode, answer, now))
    }

    /// The answer to a mode switch that ended with `answer`, logged.
    fn mode_set(
        &mut self,
        mode: ReplicationMode,
        answer: Result<(), String>,
        now: Instant,
    ) -> Response {
        let name = mode.name();
        match answer {
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

    /// Reserves `conn`'s next HTTP slot for the answer to `work` and hands it to the admin
    /// thread; `Err` (nothing reserved) when the thread cannot take it.
    fn defer(
        &mut self,
        (conn, index): (&mut Conn, usize),
        (keep_alive, head_only): (bool, bool),
        asked: Asked,
        work: Work,
    ) -> Result<(), String> {
        let slot = Slot { conn: index, conn_id: conn.id, seq: conn.next_http_seq(), keep_alive };
        if !self.admin.hand_over((slot, asked, work)) {
            return Err("the admin thread could not be started; nothing was done".into());
        }
        conn.push_http_pending(head_only);
        Ok(())
    }

    /// Answers the admin calls the admin thread has finished, each in its connection's slot
    /// (a connection closed meanwhile gets nothing; the call was carried out all the same).
    pub(super) fn drain_admin_answers(&mut self) {
        let now = Instant::now();
        while let Ok((slot, asked, result)) = self.admin.answers.try_recv() {
            assert!(self.admin.waiting > 0, "an answer to a call handed over");
            self.admin.waiting -= 1;
            let response = match (asked, result) {
                // A promotion queued behind another that made this node the primary (a retry
                // of it, say) is answered as if it had been asked after that one.
                (Asked::Promotion(request), Err(failed)) => {
                    match self.already_primary(request, now) {
                        Some(settled) => settled,
                        None => self.promoted(request, Err(failed), now),
                    }
                }
                (Asked::Promotion(request), Ok(epoch)) => self.promoted(request, Ok(epoch), now),
                (Asked::ModeSwitch(mode), result) => self.mode_set(mode, result.map(|_| ()), now),
            };
            let Some(conn) = self.conns.get_mut(slot.conn).and_then(Option::as_mut) else {
                continue;
            };
            // A connection whose answer is pending never lingers: its slot keeps it open.
            if conn.id != slot.conn_id {
                continue;
            }
            assert!(conn.lingering_since().is_none(), "a lingering connection owed an answer");
            conn.fill_http_slot(slot.seq, &response, slot.keep_alive, now);
            self.dirty.push(slot.conn);
            if conn.read_paused {
                self.resume.push(slot.conn);
            }
        }
    }
}

fn admin_busy_message() -> String {
    format!(
        "{ADMIN_WAITING_MAX} admin calls that wait on the witness are still under way; nothing \
         was done: see /v1/node, then ask again"
    )
}
