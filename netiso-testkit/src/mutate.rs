//! The frame mutator: a deterministic generator and edits of a template
//! frame. One copy, used by the random frame test (`tests/random_frames.rs`,
//! random edits), the packet fuzz target (`fuzz/fuzz_targets/packet.rs`,
//! edits decoded from libFuzzer's input) and the kernel fuzzer's generator
//! (`tests/kernel_fuzz/gen.rs`, the generator). Uses std only.
use std::cell::Cell;

/// xorshift64*: deterministic, so a failure names a seed that reproduces it.
pub struct Rng(Cell<u64>);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(Cell::new(seed))
    }

    /// The generator of frame `index` of the run with `seed` (splitmix64 of
    /// both): any frame can be rebuilt alone from the seed and its index.
    pub fn for_frame(seed: u64, index: u64) -> Self {
        let mut z = seed ^ index.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        Self::new(z | 1)
    }
    pub fn next(&self) -> u64 {
        let mut x = self.0.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    /// True with probability `num / den`.
    pub fn chance(&self, num: usize, den: usize) -> bool {
        self.below(den) < num
    }
    pub fn byte(&self) -> u8 {
        self.next() as u8
    }
    pub fn u16(&self) -> u16 {
        self.next() as u16
    }
    pub fn pick<T: Copy>(&self, v: &[T]) -> T {
        v[self.below(v.len())]
    }
    pub fn bytes(&self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
}

/// Header fields where small changes matter most (IHL, lengths, protocol
/// / next header, fragment bits, first extension header), as offsets into
/// an untagged frame.
pub const HOT: [usize; 12] = [14, 16, 17, 20, 21, 22, 23, 34, 35, 54, 55, 56];
/// Edits applied to one template at most ([`apply`]).
pub const MAX_EDITS: usize = 8;
/// Bytes one [`Edit::Append`] adds at most.
pub const MAX_APPEND: usize = 64;

/// One change to a frame. Offsets are taken modulo what the frame has, so
/// that any value is a valid edit (as fuzzer input decodes to).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Edit {
    /// Sets a byte past the source MAC (a changed source MAC is simply a
    /// spoofed-MAC drop), at `12 + at % (len - 12)`.
    Byte { at: usize, value: u8 },
    /// Sets the header field `HOT[which % HOT.len()]`, if the frame has it.
    Hot { which: usize, value: u8 },
    /// Keeps the first `max(keep, 14)` bytes.
    Truncate { keep: usize },
    /// Appends up to [`MAX_APPEND`] bytes.
    Append { bytes: Vec<u8> },
}

impl Edit {
    pub fn apply(&self, f: &mut Vec<u8>) {
        match self {
            Edit::Byte { at, value } => {
                if f.len() > 12 {
                    let i = 12 + at % (f.len() - 12);
                    f[i] = *value;
                }
            }
            Edit::Hot { which, value } => {
                let i = HOT[which % HOT.len()];
                if i < f.len() {
                    f[i] = *value;
                }
            }
            Edit::Truncate { keep } => f.truncate((*keep).max(14)),
            Edit::Append { bytes } => f.extend(bytes.iter().take(MAX_APPEND)),
        }
    }

    /// A random edit of `f`: bytes past the source MAC twice as often as
    /// the other kinds; a cut keeps at least the Ethernet header.
    pub fn random(r: &Rng, f: &[u8]) -> Self {
        match r.below(5) {
            0 | 1 => Edit::Byte {
                at: r.next() as usize,
                value: r.byte(),
            },
            2 => Edit::Truncate {
                keep: 14 + r.below(f.len().saturating_sub(13).max(1)),
            },
            3 => {
                let n = r.below(32);
                Edit::Append { bytes: r.bytes(n) }
            }
            _ => Edit::Hot {
                which: r.below(HOT.len()),
                value: r.byte(),
            },
        }
    }
}

/// `template` with the first [`MAX_EDITS`] of `edits` applied in order.
pub fn apply(template: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut f = template.to_vec();
    for e in edits.iter().take(MAX_EDITS) {
        e.apply(&mut f);
    }
    f
}

/// `f` with one to four random edits.
pub fn mutate(r: &Rng, mut f: Vec<u8>) -> Vec<u8> {
    for _ in 0..1 + r.below(4) {
        Edit::random(r, &f).apply(&mut f);
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_stay_inside_the_frame_and_keep_the_ethernet_header() {
        let r = Rng::new(7);
        let template: Vec<u8> = (0..60).collect();
        for _ in 0..10_000 {
            let f = mutate(&r, template.clone());
            assert!(f.len() >= 14, "{f:?}");
            assert_eq!(f[..12], template[..12], "MACs are never edited");
        }
        let mut f = template.clone();
        Edit::Byte {
            at: 48,
            value: 0xff,
        }
        .apply(&mut f);
        assert_eq!(f[12], 0xff);
        Edit::Hot {
            which: 12 + 7,
            value: 9,
        }
        .apply(&mut f);
        assert_eq!(f[HOT[7]], 9);
        Edit::Truncate { keep: 3 }.apply(&mut f);
        assert_eq!(f.len(), 14);
        Edit::Append {
            bytes: vec![1; 100],
        }
        .apply(&mut f);
        assert_eq!(f.len(), 14 + MAX_APPEND);
    }

    #[test]
    fn the_generator_is_the_seeded_xorshift() {
        let r = Rng::new(1);
        assert_eq!(r.next(), 0x47e4_ce4b_896c_dd1d);
        assert_eq!(Rng::for_frame(9, 3).next(), Rng::for_frame(9, 3).next());
        assert_ne!(Rng::for_frame(9, 3).next(), Rng::for_frame(9, 4).next());
    }
}
