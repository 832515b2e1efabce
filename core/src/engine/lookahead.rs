//! The prefetch lookahead for commands that arrive one at a time: a replay, the snapshot
//! writer's shadow engine following the journal.
//!
//! The pipeline's processor hints each command eight slots before it applies it, so the index
//! slots a command will probe load while the commands before it are applied. A caller handed
//! one command at a time gets the same by holding the last few: [`Lookahead::push`] hints the
//! command it is given and applies the one [`Lookahead::DISTANCE`] before it;
//! [`Lookahead::finish`] applies the rest. The order of application, and so every outcome and
//! the state, are exactly those of applying each command as it comes: a hint changes nothing.

use std::collections::VecDeque;

use super::Engine;
use crate::command::Sequenced;
use crate::types::Sequence;

/// Commands held between the hint and the apply.
pub struct Lookahead {
    held: VecDeque<Sequenced>,
    /// The last command pushed, and the last handed to `apply`.
    pushed: Option<Sequence>,
    applied: Option<Sequence>,
}

const _: () = assert!(Lookahead::DISTANCE >= 1 && Lookahead::DISTANCE <= 64);
// A hint's later steps come up to `ORDER_SKU_HINT_DELAY` hints after its first, before the
// apply.
const _: () = assert!(Lookahead::DISTANCE > super::ORDER_SKU_HINT_DELAY);

impl Default for Lookahead {
    fn default() -> Self {
        // One more than the distance: a command is pushed before the oldest leaves.
        let held = VecDeque::with_capacity(Lookahead::DISTANCE + 1);
        Lookahead { held, pushed: None, applied: None }
    }
}

impl Lookahead {
    /// How many commands after its hint a command is applied: the pipeline processor's.
    pub const DISTANCE: usize = 8;

    /// Hints `command` to `engine`, then, once [`Lookahead::DISTANCE`] commands are held,
    /// hands the oldest to `apply`, which applies it to `engine` (`Engine::apply` or
    /// `apply_observed`). Commands come in sequence order.
    pub fn push(
        &mut self,
        engine: &mut Engine,
        command: Sequenced,
        apply: impl FnOnce(&mut Engine, &Sequenced),
    ) {
        let last = self.held.back().map_or(engine.last_sequence(), |held| held.sequence);
        assert!(command.sequence > last, "command {} after {last}", command.sequence);
        // The engine applies each held command without loading its slots again.
        engine.set_hinted_ahead(true);
        engine.prefetch(&command);
        self.held.push_back(command);
        self.pushed = Some(command.sequence);
        if self.held.len() > Lookahead::DISTANCE {
            let oldest = self.held.pop_front().expect("more than DISTANCE held");
            apply(engine, &oldest);
            self.applied = Some(oldest.sequence);
            // Applied first in, first out: what is still held comes after it.
            let next = self.held.front().map(|held| held.sequence);
            assert!(next.is_some_and(|next| next > oldest.sequence), "held out of order");
        }
        assert!(self.held.len() <= Lookahead::DISTANCE, "more held than the distance");
    }

    /// Applies every command still held, in order, through `apply`, and leaves `engine`
    /// hinting each command itself again, as when applying one command at a time.
    pub fn finish(&mut self, engine: &mut Engine, mut apply: impl FnMut(&mut Engine, &Sequenced)) {
        while let Some(command) = self.held.pop_front() {
            apply(engine, &command);
            self.applied = Some(command.sequence);
        }
        engine.set_hinted_ahead(false);
        // Every command pushed was handed over, the last one last.
        assert_eq!(self.applied, self.pushed, "a command held was never applied");
    }
}
