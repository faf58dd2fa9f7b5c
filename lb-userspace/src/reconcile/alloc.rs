//! Allocators of the data plane's shared index spaces: VIP and backend ids,
//! and regions of the `RINGS` array. Pure bookkeeping, no map access.

/// Free regions of the `RINGS` array, first fit, merged on free.
#[derive(Clone, Debug)]
pub struct RingSpace {
    free: Vec<(u32, u32)>,
}

impl RingSpace {
    pub fn new(capacity: u32) -> Self {
        Self {
            free: vec![(0, capacity)],
        }
    }

    pub fn alloc(&mut self, size: u32) -> Option<u32> {
        let i = self.free.iter().position(|&(_, len)| len >= size)?;
        let (base, len) = self.free[i];
        if len == size {
            self.free.remove(i);
        } else {
            self.free[i] = (base + size, len - size);
        }
        Some(base)
    }

    /// Takes `[base, base + size)` out of the free regions (adoption).
    pub fn reserve(&mut self, base: u32, size: u32) {
        let end = base + size;
        let mut next = Vec::with_capacity(self.free.len() + 1);
        for &(b, l) in &self.free {
            let e = b + l;
            if e <= base || b >= end {
                next.push((b, l));
                continue;
            }
            if b < base {
                next.push((b, base - b));
            }
            if e > end {
                next.push((end, e - end));
            }
        }
        self.free = next;
    }

    pub fn free(&mut self, base: u32, size: u32) {
        self.free.push((base, size));
        self.free.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(self.free.len());
        for &(b, l) in &self.free {
            match merged.last_mut() {
                Some((mb, ml)) if *mb + *ml == b => *ml += l,
                _ => merged.push((b, l)),
            }
        }
        self.free = merged;
    }
}

/// Ids 1..=capacity, handed out round-robin so that a freed id is reused as
/// late as possible (a stale flow entry then finds the slot empty, or taken
/// by another VIP, and is re-balanced).
#[derive(Clone, Debug)]
pub struct IdPool {
    capacity: u32,
    used: Vec<bool>,
    cursor: u32,
    in_use: u32,
}

impl IdPool {
    pub fn new(capacity: u32) -> Self {
        Self {
            capacity,
            used: vec![false; capacity as usize + 1],
            cursor: 0,
            in_use: 0,
        }
    }

    pub fn available(&self) -> usize {
        (self.capacity - self.in_use) as usize
    }

    pub fn alloc(&mut self) -> Option<u32> {
        if self.in_use == self.capacity {
            return None;
        }
        loop {
            self.cursor = self.cursor % self.capacity + 1;
            if !self.used[self.cursor as usize] {
                self.used[self.cursor as usize] = true;
                self.in_use += 1;
                return Some(self.cursor);
            }
        }
    }

    /// Marks an id adopted from the kernel as in use.
    pub fn mark(&mut self, id: u32) {
        if id >= 1 && id <= self.capacity && !std::mem::replace(&mut self.used[id as usize], true) {
            self.in_use += 1;
            self.cursor = self.cursor.max(id);
        }
    }

    /// Marks every id `other` has in use as in use here too.
    pub fn keep_used(&mut self, other: &IdPool) {
        for id in 1..=self.capacity.min(other.capacity) {
            if other.used[id as usize] {
                self.mark(id);
            }
        }
    }

    pub fn free(&mut self, id: u32) {
        if std::mem::replace(&mut self.used[id as usize], false) {
            self.in_use -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_space_first_fit_and_merge() {
        let mut r = RingSpace::new(100);
        assert_eq!(r.alloc(30), Some(0));
        assert_eq!(r.alloc(30), Some(30));
        assert_eq!(r.alloc(50), None, "only 40 left");
        r.free(0, 30);
        assert_eq!(r.alloc(40), Some(60));
        r.free(30, 30);
        // 0..60 merged back into one region.
        assert_eq!(r.alloc(60), Some(0));
        assert_eq!(r.alloc(1), None);
    }

    #[test]
    fn ids_are_reused_as_late_as_possible() {
        let mut p = IdPool::new(3);
        assert_eq!((p.alloc(), p.alloc()), (Some(1), Some(2)));
        p.free(1);
        assert_eq!(p.alloc(), Some(3), "a fresh id before the freed one");
        assert_eq!(p.alloc(), Some(1));
        assert_eq!(p.alloc(), None);
        assert_eq!(p.available(), 0);
        p.free(2);
        p.free(2);
        assert_eq!(p.available(), 1, "a double free is harmless");
    }
}
