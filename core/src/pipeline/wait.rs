//! Waiting and waking: what an idle stage does (spin, or spin-yield-park), how the thread that
//! makes work for it wakes it, and pinning a stage to a core.

use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

use crossbeam_utils::{Backoff, CachePadded};

use super::config::WaitStrategy;

/// A callback run to wake whoever polls egress (e.g. a `mio::Waker`). Must not block or panic.
pub type WakeHook = Arc<dyn Fn() + Send + Sync>;

/// How a parked waiter is woken.
enum Wake {
    Thread(Thread),
    Hook(WakeHook),
}

/// The sleeping side of a wake-up: a flag the waiter raises before it parks, and the thread or
/// hook to wake. Wakers pay one fence and one load when the waiter is awake.
///
/// Raising the flag, then re-checking for work, pairs with publishing work, then reading the
/// flag (both with a sequentially consistent fence between): at least one side sees the other,
/// so a wake-up is never lost. The park is also bounded, as a second line of defence.
#[derive(Default)]
pub(crate) struct Parker {
    sleeping: CachePadded<AtomicBool>,
    wake: OnceLock<Wake>,
}

impl Parker {
    /// Registers the calling thread as the one to unpark. Called once, by the waiting thread.
    pub(crate) fn register_current(&self) {
        let set = self.wake.set(Wake::Thread(std::thread::current())).is_ok();
        assert!(set, "a parker belongs to one thread");
    }

    /// Registers a hook to call instead of unparking a thread.
    pub(crate) fn register_hook(&self, hook: WakeHook) -> bool {
        self.wake.set(Wake::Hook(hook)).is_ok()
    }

    /// Whether a thread or hook is registered to be woken.
    pub(crate) fn has_waker(&self) -> bool {
        self.wake.get().is_some()
    }

    /// Announces that the waiter is about to sleep. The caller must re-check for work after
    /// this and call [`Parker::awake`] when it is running again.
    pub(crate) fn prepare_sleep(&self) {
        self.sleeping.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
    }

    /// The waiter is running again.
    pub(crate) fn awake(&self) {
        self.sleeping.store(false, Ordering::Relaxed);
    }

    /// Wakes the waiter if it announced it would sleep. Call after publishing the work.
    pub(crate) fn wake(&self) {
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) && self.sleeping.swap(false, Ordering::AcqRel) {
            match self.wake.get() {
                Some(Wake::Thread(thread)) => thread.unpark(),
                Some(Wake::Hook(hook)) => hook(),
                None => {}
            }
        }
    }
}

/// The longest park of a waiter with nothing due on a timer ([`Idler::idle_quiet`]): the
/// bound on a missed wake-up once the node is quiet. Parks grow to it by doubling from the
/// strategy's `park_us_max`, so an idle node wakes a few times a second instead of a thousand.
pub(crate) const QUIET_PARK_MAX: Duration = Duration::from_millis(200);

/// An idle loop's state: call [`Idler::idle`] each time a poll finds nothing and
/// [`Idler::reset`] when it finds work.
pub(crate) struct Idler {
    strategy: WaitStrategy,
    backoff: Backoff,
    /// When the backoff ran out in the current idle spell.
    yielding_since: Option<Instant>,
    /// The next quiet park; back to the strategy's bound when work comes.
    quiet_park: Duration,
}

impl Idler {
    pub(crate) fn new(strategy: WaitStrategy) -> Idler {
        let quiet_park = Idler::park_bound(strategy);
        Idler { strategy, backoff: Backoff::new(), yielding_since: None, quiet_park }
    }

    pub(crate) fn reset(&mut self) {
        self.backoff.reset();
        self.yielding_since = None;
        self.quiet_park = Idler::park_bound(self.strategy);
    }

    fn park_bound(strategy: WaitStrategy) -> Duration {
        match strategy {
            WaitStrategy::BusySpin => Duration::ZERO,
            WaitStrategy::SpinThenPark { park_us_max, .. } => {
                Duration::from_micros(u64::from(park_us_max))
            }
        }
    }

    /// [`Idler::idle`] for a waiter that has nothing due on a timer (no flush pending):
    /// nothing but a wake-up can give it work, so each park in an idle spell may be twice the
    /// last, up to [`QUIET_PARK_MAX`]. Wake-ups are never lost (see [`Parker`]); the bound
    /// only limits the damage if one were.
    pub(crate) fn idle_quiet(&mut self, parker: &Parker, has_work: impl FnOnce() -> bool) {
        let park = self.quiet_park;
        if self.idle_for(parker, has_work, park) {
            self.quiet_park = (park * 2).min(QUIET_PARK_MAX.max(park));
        }
        assert!(self.quiet_park <= QUIET_PARK_MAX.max(Idler::park_bound(self.strategy)));
    }

    /// Waits a little: spins; or snoozes, yields for the strategy's window, then parks until
    /// `parker` is woken (or the strategy's bound passes). `has_work` is re-checked after
    /// announcing the sleep.
    pub(crate) fn idle(&mut self, parker: &Parker, has_work: impl FnOnce() -> bool) {
        let bound = Idler::park_bound(self.strategy);
        self.idle_for(parker, has_work, bound);
    }

    /// One step of an idle spell, parking for at most `park`; whether it parked.
    fn idle_for(
        &mut self,
        parker: &Parker,
        has_work: impl FnOnce() -> bool,
        park: Duration,
    ) -> bool {
        match self.strategy {
            WaitStrategy::BusySpin => {
                std::hint::spin_loop();
                false
            }
            WaitStrategy::SpinThenPark { yield_us, .. } => {
                if !self.backoff.is_completed() {
                    self.backoff.snooze();
                    return false;
                }
                let now = Instant::now();
                let since = *self.yielding_since.get_or_insert(now);
                if now.duration_since(since) < Duration::from_micros(u64::from(yield_us)) {
                    std::thread::yield_now();
                    return false;
                }
                parker.prepare_sleep();
                let parked = !has_work();
                if parked {
                    std::thread::park_timeout(park);
                }
                parker.awake();
                parked
            }
        }
    }
}

/// Pins the calling thread to `core`, if one is given. A failed pin is a warning, not an error:
/// the stage runs unpinned and says so.
pub(crate) fn pin_current(stage: &str, core: Option<usize>) {
    let Some(core) = core else { return };
    let known = core_affinity::get_core_ids().is_some_and(|ids| ids.iter().any(|id| id.id == core));
    if !known || !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
        tracing::warn!(
            target: "ringfence",
            "could not pin stage `{stage}` to core {core}; running unpinned"
        );
    }
}
