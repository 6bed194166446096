//! Where bias, bans, penalties and DRY write: a whole loaded row, or a patch over the row as
//! the caller stored it.
//!
//! Those stages touch a few ids (the bias's, the history's), but writing them into a copy of
//! the row costs a read and a write of all V logits. A plan that reads the row in place (the
//! sparse top-k plan) takes the changed ids as a patch instead: [`Patch`] keeps the new
//! values of the touched ids and reads every other one from the stored row. (k-scaling
//! shifts the whole row, so a row with it on is always loaded.)

use crate::elem::{Elem, Real};
use std::collections::HashMap;

/// A row the modifying stages read and write one id at a time.
pub(crate) trait Logits<F> {
    /// The current value of id `j`.
    fn get(&self, j: usize) -> F;
    /// Sets id `j`.
    fn set(&mut self, j: usize, v: F);
}

impl<F: Real> Logits<F> for [F] {
    #[inline(always)]
    fn get(&self, j: usize) -> F {
        self[j]
    }
    #[inline(always)]
    fn set(&mut self, j: usize, v: F) {
        self[j] = v;
    }
}

/// The touched ids of a row stored as `x`, with their new values.
pub(crate) struct Patch<'a, T: Elem> {
    /// The row as stored.
    pub(crate) x: &'a [T],
    /// The new values of the touched ids.
    pub(crate) values: &'a mut HashMap<u32, T::C>,
}

impl<T: Elem> Logits<T::C> for Patch<'_, T> {
    #[inline(always)]
    fn get(&self, j: usize) -> T::C {
        self.values
            .get(&(j as u32))
            .copied()
            .unwrap_or_else(|| self.x[j].load())
    }
    #[inline(always)]
    fn set(&mut self, j: usize, v: T::C) {
        self.values.insert(j as u32, v);
    }
}
