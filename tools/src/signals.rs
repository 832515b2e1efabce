//! SIGINT and SIGTERM in `serve`: taken on one thread, and never lost to a restart.
//!
//! A node that must rejoin its primary restarts by `exec` of its own binary
//! (`replication::restart`). A stop signal some thread had taken, but not yet acted on, when
//! the `exec` replaced the process would be lost with the old image: the new run would start
//! as a standby, and a supervisor waiting for the stop would wait out its timeout.
//!
//! So no thread takes a stop signal asynchronously. `serve` blocks both signals on its main
//! thread before it starts any other ([`take_stop_signals`]), so every thread of the process
//! blocks them, and a signal sent to the process stays pending until one thread takes it
//! synchronously (`sigtimedwait`), holding a lock while it waits. A restart takes the same lock
//! ([`before_exec`]), and holds it through the `exec`: a stop taken before it refuses the
//! restart (the node stops instead), and one sent after it stays pending, which `exec` keeps,
//! for the new run to take at its start. The new run takes it as any run takes a stop before
//! it serves ([`on_stop`] not yet set): it ends as the signal's default action would.
//!
//! Only a signal sent to the process is taken (`kill`, a supervisor, a terminal's Ctrl-C): one
//! sent to a single thread other than the signal thread (`tgkill`, `pthread_kill`) stays
//! pending on that thread, which blocks it, until the process ends.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use libc::{SIGINT, SIGTERM, c_int};

/// The stop signals taken so far: held while one is waited for, and by a restart through its
/// `exec`.
static TAKING: Mutex<u32> = Mutex::new(0);
/// A restart waits for [`TAKING`]: the signal thread lets it go first (the lock is not fair,
/// and that thread takes it again as soon as it lets it go).
static RESTART_WAITING: AtomicBool = AtomicBool::new(false);

/// What the first stop signal does, once the node serves (before: the signal's default action).
type OnStop = Box<dyn FnOnce(c_int) + Send>;
static ON_STOP: Mutex<Option<OnStop>> = Mutex::new(None);

/// How long the signal thread waits for a signal at a time, holding [`TAKING`]: the most a
/// restart waits to take it.
const TAKE_WAIT: Duration = Duration::from_millis(100);
/// The most a node stopped while it starts waits for its last log line to be written.
const SAY_WAIT: Duration = Duration::from_millis(100);

fn lock<T>(mutex: &'static Mutex<T>) -> MutexGuard<'static, T> {
    // Nothing is left half-changed under these locks: a panic while one was held leaves it
    // as it was.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Blocks SIGINT and SIGTERM on the calling thread, and so on every thread it starts from now
/// on, and starts the thread that takes them. Call it first in `serve`, on the main thread,
/// before any other thread starts. Until [`on_stop`] is set, a stop signal ends the process
/// as its default action would (a node stopped while it starts); after, the first calls the
/// action, and the second exits at once (status 130).
pub fn take_stop_signals() -> io::Result<()> {
    set_mask(libc::SIG_BLOCK);
    std::thread::Builder::new().name("ringfence-signals".into()).spawn(take_forever)?;
    Ok(())
}

/// Sets what the first stop signal does from now on (it is given the signal's number).
pub fn on_stop(action: impl FnOnce(c_int) + Send + 'static) {
    *lock(&ON_STOP) = Some(Box::new(action));
}

fn take_forever() {
    loop {
        if RESTART_WAITING.load(Ordering::Acquire) {
            // Signals sent meanwhile stay pending: the restart's to carry, or ours after it.
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        let (signal, taken) = {
            let mut taken = lock(&TAKING);
            let Some(signal) = wait_for_stop(TAKE_WAIT) else { continue };
            *taken += 1;
            (signal, *taken)
        };
        if taken > 1 {
            crate::serve::log(format_args!("second signal: exiting now"));
            std::process::exit(130);
        }
        let action = lock(&ON_STOP).take();
        match action {
            Some(action) => action(signal),
            None => end_as_by_default(signal),
        }
    }
}

/// Ends the process as `signal`'s default action does: terminated by it.
fn end_as_by_default(signal: c_int) -> ! {
    // Said on another thread, waited for briefly: a log that cannot be written (a full pipe,
    // a stalled journal daemon) must not keep a stopped node from ending.
    let (said, spoken) = std::sync::mpsc::channel();
    let say = move || {
        crate::serve::log(format_args!("signal {signal} while starting: exiting"));
        let _ = said.send(());
    };
    if std::thread::Builder::new().spawn(say).is_ok() {
        let _ = spoken.recv_timeout(SAY_WAIT);
    }
    // SAFETY: restores the default action of a signal this process never handles otherwise.
    unsafe { libc::signal(signal, libc::SIG_DFL) };
    set_mask(libc::SIG_UNBLOCK);
    // SAFETY: raised on this thread, which now takes it: the process is terminated by it.
    unsafe { libc::raise(signal) };
    // Not reached: the default action of both signals is to terminate.
    std::process::exit(128 + signal);
}

/// A stop signal pending for the process, taken; `None` after `wait` without one.
fn wait_for_stop(wait: Duration) -> Option<c_int> {
    let set = stop_set();
    let timeout = libc::timespec {
        tv_sec: wait.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(wait.subsec_nanos()),
    };
    // SAFETY: both pointers are to locals that outlive the call; no `siginfo` is asked for.
    let signal = unsafe { libc::sigtimedwait(&raw const set, std::ptr::null_mut(), &timeout) };
    // -1: the time ran out (EAGAIN) or another signal interrupted the wait (EINTR).
    (signal > 0).then_some(signal)
}

/// A stop was taken before the restart: the node stops instead.
#[derive(Debug)]
pub struct StopAsked;

/// Holds stop signals off until the process is replaced: held through the `exec`.
pub struct ExecHold {
    _taken: MutexGuard<'static, u32>,
}

/// Called by the thread about to `exec` a new run: waits until no stop signal is being taken
/// (at most [`TAKE_WAIT`]) and holds them off, so that one sent from now on stays pending for
/// the new run; `Err` if one was taken already (the node is stopping: do not restart). Hold
/// what it returns through the `exec`.
pub fn before_exec() -> Result<ExecHold, StopAsked> {
    RESTART_WAITING.store(true, Ordering::Release);
    let taken = lock(&TAKING);
    RESTART_WAITING.store(false, Ordering::Release);
    if *taken > 0 {
        return Err(StopAsked);
    }
    Ok(ExecHold { _taken: taken })
}

/// SIGINT and SIGTERM, as a set.
fn stop_set() -> libc::sigset_t {
    // SAFETY: `set` is initialised by `sigemptyset` before the signals are added.
    unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&raw mut set);
        libc::sigaddset(&raw mut set, SIGINT);
        libc::sigaddset(&raw mut set, SIGTERM);
        set
    }
}

/// Blocks or unblocks SIGINT and SIGTERM for the calling thread (`how`).
fn set_mask(how: c_int) {
    let set = stop_set();
    // SAFETY: changes only this thread's signal mask, from a set initialised above.
    let result = unsafe { libc::pthread_sigmask(how, &raw const set, std::ptr::null_mut()) };
    // Fails only for an invalid `how`, and both callers pass constants.
    assert_eq!(result, 0, "pthread_sigmask refused its arguments");
}
