//! A stop asked while `serve` replaces itself is carried into the new run.
//!
//! A node that must rejoin its primary restarts by `exec` of its own binary
//! (`replication::restart`). SIGINT and SIGTERM are taken by `serve`'s signal thread, and a
//! signal it took in the microseconds between the restart's last look for a stop and the
//! `exec` would be lost with the old process image: the new run would start as a standby, and
//! a supervisor waiting for the stop would wait out its timeout.
//!
//! So the restarting thread first blocks both signals (for itself) and names itself
//! ([`before_exec`]), then looks whether a stop was asked. An action on both signals
//! ([`carry_stops_across_restarts`]), run by whichever thread the signal interrupts before
//! `serve`'s own handling, marks the stop and, if a thread has named itself, sends the signal
//! on to it. A thread that blocks a signal keeps it pending, and `exec` keeps a thread's
//! pending signals and its mask: the new run starts with the stop pending and blocked, and
//! takes it once its own signal watch is installed ([`unblock_stop_signals`]). The mark and
//! the name are sequentially consistent, so of a signal and a restart that race at least one
//! sees the other: the restart does not happen, or the stop follows the new run.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use signal_hook::consts::{SIGINT, SIGTERM};

/// A stop was asked (SIGINT or SIGTERM), since [`carry_stops_across_restarts`].
static STOP_ASKED: AtomicBool = AtomicBool::new(false);
/// The thread (kernel id) about to replace the process, blocking the stop signals; 0 for none.
static RESTARTING_THREAD: AtomicI32 = AtomicI32::new(0);

/// Installs the action that marks a stop and sends it on to a restarting thread. Call it before
/// `serve` installs its own handling of the signals, which runs after it.
pub fn carry_stops_across_restarts() -> io::Result<()> {
    for signal in [SIGINT, SIGTERM] {
        // SAFETY: the action is async-signal-safe: it touches two atomics and makes one
        // system call (`tgkill`), with no allocation and no lock.
        unsafe { signal_hook::low_level::register(signal, move || on_stop_signal(signal)) }?;
    }
    Ok(())
}

/// The action on a stop signal, in signal context.
fn on_stop_signal(signal: libc::c_int) {
    STOP_ASKED.store(true, Ordering::SeqCst);
    let thread = RESTARTING_THREAD.load(Ordering::SeqCst);
    if thread != 0 {
        // Pending on the restarting thread, which blocks it (this action never runs there),
        // so it survives the `exec`.
        // SAFETY: `tgkill` is a plain system call on this process's own thread id.
        unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), thread, signal) };
    }
}

/// A stop was asked before the restart: the node stops instead.
#[derive(Debug, PartialEq, Eq)]
pub struct StopAsked;

/// Called by the thread about to `exec` a new run: blocks the stop signals for it and names
/// it, so that a stop from now on is pending in the new run; `Err` if one was asked already
/// (the node is stopping: do not restart). The signals stay blocked for this thread either
/// way, so one sent on to it after an `Err` is never taken here.
pub fn before_exec() -> Result<(), StopAsked> {
    set_stop_signals(libc::SIG_BLOCK);
    // SAFETY: `gettid` takes no argument and cannot fail.
    let me = unsafe { libc::gettid() };
    RESTARTING_THREAD.store(me, Ordering::SeqCst);
    if STOP_ASKED.load(Ordering::SeqCst) {
        RESTARTING_THREAD.store(0, Ordering::SeqCst);
        return Err(StopAsked);
    }
    Ok(())
}

/// Takes the stop signals on the calling thread again. A run started by a restart inherits
/// them blocked, with a stop perhaps pending: `serve` calls this on its main thread once its
/// signal watch is installed, and the pending stop, if any, is taken then.
pub fn unblock_stop_signals() {
    set_stop_signals(libc::SIG_UNBLOCK);
}

/// Blocks or unblocks SIGINT and SIGTERM for the calling thread (`how`).
fn set_stop_signals(how: libc::c_int) {
    // SAFETY: `set` is a local `sigset_t`, initialised by `sigemptyset` before use; the calls
    // change only this thread's signal mask.
    let result = unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&raw mut set);
        libc::sigaddset(&raw mut set, SIGINT);
        libc::sigaddset(&raw mut set, SIGTERM);
        libc::pthread_sigmask(how, &raw const set, std::ptr::null_mut())
    };
    // Fails only for an invalid `how`, and both are constants.
    assert_eq!(result, 0, "pthread_sigmask refused its arguments");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `signal` is pending for the calling thread (or the process).
    fn pending(signal: libc::c_int) -> bool {
        // SAFETY: a local set filled by `sigpending`, then read.
        unsafe {
            let mut set = std::mem::zeroed::<libc::sigset_t>();
            assert_eq!(libc::sigpending(&raw mut set), 0);
            libc::sigismember(&raw const set, signal) == 1
        }
    }

    #[test]
    fn a_stop_during_a_restart_is_left_pending_on_the_restarting_thread_and_one_before_it_refuses_it()
     {
        // Goal: a SIGTERM taken by another thread while a thread prepares to `exec` is sent on
        // to that thread, blocked there, so that `exec` carries it into the new run; a stop
        // asked before the preparation makes it refuse, and the node stops instead.
        carry_stops_across_restarts().unwrap();
        let (ready, restarting) = std::sync::mpsc::channel();
        let (go, proceed) = std::sync::mpsc::channel::<()>();
        let restarter = std::thread::spawn(move || {
            assert_eq!(before_exec(), Ok(()), "no stop asked yet");
            ready.send(()).unwrap();
            proceed.recv().unwrap();
            let carried = pending(SIGTERM);
            // Taken here, so that the test process is left as it was.
            if carried {
                // SAFETY: a local set holding SIGTERM, which this thread blocks and has pending.
                unsafe {
                    let mut set = std::mem::zeroed::<libc::sigset_t>();
                    libc::sigemptyset(&raw mut set);
                    libc::sigaddset(&raw mut set, SIGTERM);
                    let mut taken = 0;
                    assert_eq!(libc::sigwait(&raw const set, &raw mut taken), 0);
                    assert_eq!(taken, SIGTERM);
                }
            }
            RESTARTING_THREAD.store(0, Ordering::SeqCst);
            carried
        });
        restarting.recv().unwrap();
        // The signal interrupts another thread, one that does not block it: this one.
        // SAFETY: a signal to this process's own thread, whose action is installed above.
        unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), libc::gettid(), SIGTERM) };
        assert!(STOP_ASKED.load(Ordering::SeqCst), "the action ran and marked the stop");
        go.send(()).unwrap();
        assert!(restarter.join().unwrap(), "the stop is pending on the restarting thread");
        // A stop was asked: the next restart is refused, and its thread names itself nowhere.
        let refused = std::thread::spawn(before_exec).join().unwrap();
        assert_eq!(refused, Err(StopAsked));
        assert_eq!(RESTARTING_THREAD.load(Ordering::SeqCst), 0);
    }
}
