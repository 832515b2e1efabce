//! A standby without coordination restarts itself to rejoin its primary (in `serve`, an `exec`
//! of the same command line, `--role standby`) from the control loop, while an operator may be
//! promoting it. The two exclude each other: a restart after the promotion stored its new
//! epoch would bring back a standby that promised an epoch it never led, whose join deposes
//! its primary.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::thread;
use std::time::Duration;

use ringfence_core::pipeline::{
    Intake, MemoryJournal, NoReplicator, Node, NodeConfig, SystemClock, Topology,
};
use ringfence_core::{Epoch, Sequence};
use ringfence_journal::epoch::Epochs;
use ringfence_replicator::auth::{ClusterId, ClusterSecret};
use ringfence_replicator::config::ReplicationConfig;
use ringfence_replicator::control::{self, Control, EpochStore, Role};

/// Epochs in memory; storing them takes `sync` after the new epochs are in place (the
/// directory sync after the epoch file's rename, on a real disk a few ms to tens of ms; here
/// long enough that the policy loop's 20 ms tick certainly falls in it).
struct SlowStore {
    epochs: Arc<Mutex<Epochs>>,
    catching_up: Arc<AtomicBool>,
    sync: Duration,
}

impl EpochStore for SlowStore {
    fn epochs(&self) -> Epochs {
        *self.epochs.lock().unwrap()
    }
    fn store(&self, epochs: Epochs) -> Result<(), String> {
        *self.epochs.lock().unwrap() = epochs;
        thread::sleep(self.sync);
        Ok(())
    }
    fn catching_up(&self) -> bool {
        self.catching_up.load(Ordering::Acquire)
    }
    fn caught_up(&self) -> Result<(), String> {
        self.catching_up.store(false, Ordering::Release);
        Ok(())
    }
    fn mark_catching_up(&self) -> Result<(), String> {
        self.catching_up.store(true, Ordering::Release);
        Ok(())
    }
    fn standby_in_sync(&self) -> bool {
        false
    }
    fn set_standby_in_sync(&self, _on: bool) -> Result<(), String> {
        Ok(())
    }
    fn acknowledges_written(&self) -> bool {
        false
    }
    fn set_acknowledges_written(&self, _on: bool) -> Result<(), String> {
        Ok(())
    }
}

fn config() -> ReplicationConfig {
    ReplicationConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        ClusterId::new("c").unwrap(),
        ClusterSecret::from_bytes(&[7; 32]).unwrap(),
        ringfence_core::EngineConfig::small(),
        std::env::temp_dir(),
    )
}

/// What the rejoin restart saw when it was asked for.
#[derive(Debug)]
struct Asked {
    why: String,
    role: Role,
    epochs: Epochs,
    /// The directory's catch-up marker when the restart was asked for.
    catching_up: bool,
}

fn run(
    follower_state: &str,
    force: bool,
    catching_up: bool,
) -> (Result<Epoch, String>, Vec<Asked>, Role) {
    let epochs = Arc::new(Mutex::new(Epochs { current: Epoch(1), promised: Epoch(1) }));
    let store = SlowStore {
        epochs: Arc::clone(&epochs),
        catching_up: Arc::new(AtomicBool::new(catching_up)),
        sync: Duration::from_millis(150),
    };
    let role = Role::Standby { primary: "127.0.0.1:9".into() };
    let clock = Arc::new(SystemClock::new());
    let control = Control::new(config(), role, (Sequence(0), Epoch(0)), Box::new(store), clock);
    let node_config =
        NodeConfig { intake: Intake::Replica, ..NodeConfig::for_tests(Topology::Stepped) };
    let node = Node::start(node_config, MemoryJournal::new(), NoReplicator::default()).unwrap();

    // As `serve` wires it without etcd; recording instead of exec'ing.
    let me: Arc<OnceLock<Weak<Control>>> = Arc::new(OnceLock::new());
    let asked = Arc::new(Mutex::new(Vec::<Asked>::new()));
    {
        let (me, asked) = (Arc::clone(&me), Arc::clone(&asked));
        let restart = Box::new(move |why: &str| {
            let control = me.get().and_then(Weak::upgrade).unwrap();
            asked.lock().unwrap().push(Asked {
                why: why.to_owned(),
                role: control.role(),
                epochs: control.epochs(),
                catching_up: control.epoch_store().catching_up(),
            });
        });
        control.rejoin_with(restart, Duration::ZERO);
    }
    me.set(Arc::downgrade(&control)).ok().unwrap();

    // The policy loop, as `Control::start` runs it (20 ms at the default 2 s timeout).
    let stop = Arc::new(AtomicBool::new(false));
    let ticker = {
        let (control, stop) = (Arc::clone(&control), Arc::clone(&stop));
        thread::spawn(move || {
            while !stop.load(Ordering::Acquire) {
                thread::sleep(Duration::from_millis(20));
                control.tick();
            }
        })
    };

    // A standby that was in sync with its primary...
    control.stream_started();
    control.caught_up();
    // ...whose follower is told, at its reconnect, that its journal diverged (or that it
    // needs a snapshot), at the moment the operator promotes it (`ringfence promote`).
    control.set_follower(follower_state, Sequence(0), 0);
    let promoted = control.promote(&node, force);

    thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Release);
    ticker.join().unwrap();
    let role = control.role();
    let asked = std::mem::take(&mut *asked.lock().unwrap());
    (promoted, asked, role)
}

/// The invariant: the promotion and the restart never both happen. Either the promotion
/// took office and no restart was asked for, or the restart was asked for, of a standby that
/// stored no new epoch and kept its catch-up marker, and the promotion was refused.
fn check_one_or_the_other(
    (promoted, asked, role): (Result<Epoch, String>, Vec<Asked>, Role),
    catching_up: bool,
) {
    match promoted {
        Ok(epoch) => {
            assert_eq!(epoch, Epoch(1 + control::PROMOTION_EPOCH_STEP));
            assert_eq!(role, Role::Primary);
            assert!(asked.is_empty(), "restarted to rejoin around a promotion: {asked:#?}");
        }
        Err(refused) => {
            assert!(refused.contains("restarting to rejoin"), "{refused}");
            assert_eq!(asked.len(), 1, "{asked:#?}");
            let first = Epochs { current: Epoch(1), promised: Epoch(1) };
            assert!(matches!(asked[0].role, Role::Standby { .. }), "{asked:#?}");
            assert_eq!((asked[0].epochs, asked[0].catching_up), (first, catching_up));
            assert!(!asked[0].why.is_empty());
        }
    }
}

#[test]
fn a_standby_told_it_diverged_is_promoted_or_restarted_never_both() {
    // Goal: a promotion whose epoch store takes 150 ms, with the control loop ticking every
    // 20 ms and the follower stopped diverged: the loop does not restart the node while the
    // promotion runs, nor once it made the node primary.
    check_one_or_the_other(run(control::DIVERGED, false, false), false);
}

#[test]
fn a_forced_promotion_of_a_standby_needing_a_snapshot_is_never_cut_short_by_the_restart() {
    // Goal: as above for a standby behind retention, promoted with force from a directory
    // catching up: a restart never comes after the promotion cleared the marker or stored
    // its epoch.
    check_one_or_the_other(run(control::NEEDS_SNAPSHOT, true, true), true);
}
