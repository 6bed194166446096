//! Where bias, bans, penalties and DRY write: a whole loaded row, or a patch over the row as
//! the caller stored it.
//!
//! Those stages touch a few ids (the bias's, the history's), but writing them into a copy of
//! the row costs a read and a write of all V logits. A plan that reads the row in place (the
//! sparse top-k plan) takes the changed ids as a patch instead: [`Patch`] keeps the new
//! values of the touched ids and reads every other one from the stored row. (k-scaling
//! shifts the whole row, so a row with it on is always loaded.)

use crate::elem::{Elem, Real};

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

/// The new values of the ids a row's stages touched: a list, and a dense index of it over
/// the vocabulary (no hashing: a history of thousands of ids costs a few ns per id). The
/// index is cleared id by id, so reusing it costs nothing per vocabulary entry.
#[derive(Debug, Default)]
pub(crate) struct PatchBuf<F> {
    /// `slot[j]`: 1 + the position of id `j` in `ids`, or 0.
    slot: Vec<u32>,
    pub(crate) ids: Vec<u32>,
    pub(crate) vals: Vec<F>,
}

impl<F: Copy> PatchBuf<F> {
    /// Empties the patch, for a row of `v` ids.
    pub(crate) fn reset(&mut self, v: usize) {
        for &j in &self.ids {
            self.slot[j as usize] = 0;
        }
        self.ids.clear();
        self.vals.clear();
        if self.slot.len() < v {
            self.slot.resize(v, 0);
        }
    }

    /// The number of touched ids.
    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }

    /// The new value of id `j`, if it was touched.
    #[inline(always)]
    pub(crate) fn get(&self, j: usize) -> Option<F> {
        match self.slot[j] {
            0 => None,
            n => Some(self.vals[n as usize - 1]),
        }
    }

    #[inline(always)]
    fn set(&mut self, j: usize, v: F) {
        match self.slot[j] {
            0 => {
                self.ids.push(j as u32);
                self.vals.push(v);
                self.slot[j] = self.ids.len() as u32;
            }
            n => self.vals[n as usize - 1] = v,
        }
    }
}

/// A row stored as `x` seen through its patch.
pub(crate) struct Patch<'a, T: Elem> {
    /// The row as stored.
    pub(crate) x: &'a [T],
    /// The new values of the touched ids.
    pub(crate) buf: &'a mut PatchBuf<T::C>,
}

impl<T: Elem> Logits<T::C> for Patch<'_, T> {
    #[inline(always)]
    fn get(&self, j: usize) -> T::C {
        match self.buf.get(j) {
            Some(v) => v,
            None => self.x[j].load(),
        }
    }
    #[inline(always)]
    fn set(&mut self, j: usize, v: T::C) {
        self.buf.set(j, v);
    }
}
